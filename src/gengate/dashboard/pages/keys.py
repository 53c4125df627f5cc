"""Keys and budgets: virtual keys with their spend against their budgets, team budgets, create and revoke.

Creating and revoking use the admin API's functions (`gengate.auth.keys.create_key`, `Store.revoke_key`) and are for
admins; team members see their team's keys and budgets. A new key's secret is shown once, in the response to the
form (never in a URL or a redirect), like the admin API shows it once.
"""

from __future__ import annotations

import time

from starlette.responses import RedirectResponse, Response

from gengate.auth.keys import BUDGET_PERIODS, KeySpec, create_key
from gengate.dashboard.html import Html, hidden_csrf, join, page, render, table, ts, usd
from gengate.dashboard.web import Ctx, choice_param, rolled, text_param
from gengate.errors import NotFound, RequestError
from gengate.policy.engine import period_start
from gengate.store.dashboard import DashboardQueries
from gengate.store.db import KeyRecord
from gengate.store.ui_sessions import UiSessionStore


def _number(form: dict[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    raw = text_param(form, name, max_len=20)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise RequestError(f"{name} must be a number", param=name) from None
    if value < 0 or value != value or value in (float("inf"),):
        raise RequestError(f"{name} must be a non-negative number", param=name)
    return value


def _spent(spent: float, budget: float | None) -> Html:
    if budget is None:
        return render("{s}", s=usd(spent))
    share = spent / budget if budget else 1.0
    cls = "bad" if share >= 1 else "warn" if share >= 0.8 else "ok"
    return render(
        '<span class="{c}">{s} of {b} ({p}%)</span>', c=cls, s=usd(spent), b=usd(budget), p=f"{100 * share:.0f}"
    )


def _create_form(ctx: Ctx) -> Html:
    periods = join(render('<option value="{p}">{p}</option>', p=p) for p in BUDGET_PERIODS)
    return render(
        '<h2>Create a key</h2><form class="stack" method="post" action="{action}">{csrf}'
        '<label>Team (required)<input name="team" required maxlength="200" autocomplete="off"></label>'
        '<label>Name<input name="name" maxlength="200" autocomplete="off"></label>'
        '<label>User<input name="user" maxlength="200" autocomplete="off"></label>'
        '<label>Requests per minute<input name="rpm" inputmode="numeric" autocomplete="off"></label>'
        '<label>Budget (USD)<input name="budget_usd" inputmode="decimal" autocomplete="off"></label>'
        '<label>Budget period<select name="budget_period">{periods}</select></label>'
        '<button type="submit">Create key</button></form>',
        action=f"{ctx.plane.prefix}/keys", csrf=hidden_csrf(ctx.viewer.csrf), periods=Html(periods),
    )  # fmt: skip


async def _rows(ctx: Ctx, keys: list[KeyRecord]) -> list[list[object]]:
    now = time.time()
    queries = DashboardQueries(ctx.gateway.store.engine)
    until = await rolled(ctx)
    spend: dict[str, float] = {}
    for period in BUDGET_PERIODS:
        ids = [k.id for k in keys if k.budget_usd is not None and k.budget_period == period]
        spend.update(await queries.spend_since("key_id", ids, period_start(period, now)[1], until))
    rows: list[list[object]] = []
    for k in keys:
        state = "revoked" if k.revoked_at else "expired" if not k.active(now) else "active"
        spent = spend.get(k.id)
        budget = "—" if spent is None else _spent(spent, k.budget_usd)
        revoke = Html("")
        if ctx.viewer.admin and state == "active":
            revoke = render(
                '<form class="inline" method="post" action="{a}">{csrf}<button type="submit" class="danger" '
                'aria-label="Revoke key {id}">Revoke</button></form>',
                a=f"{ctx.plane.prefix}/keys/{k.id}/revoke", csrf=hidden_csrf(ctx.viewer.csrf), id=k.id,
            )  # fmt: skip
        rows.append([k.id, k.name or "—", k.team, k.user or "—", k.rpm if k.rpm is not None else "—",
                     f"{k.budget_period}" if k.budget_usd is not None else "—", budget, ts(k.created_at),
                     ts(k.expires_at), state, revoke])  # fmt: skip
    return rows


async def keys_page(ctx: Ctx, created: Html | None = None, status: int = 200) -> Response:
    """Keys with spend against budget, team budgets, and (admins) the create form."""
    revoked = choice_param(ctx.request, "revoked", ("1",)) is not None
    keys = await ctx.gateway.store.list_keys(team=ctx.viewer.team, include_revoked=revoked)
    rows = await _rows(ctx, keys)
    policy = ctx.gateway.settings.policy
    teams = [ctx.viewer.team] if ctx.viewer.team is not None else sorted(policy.teams)
    team_rows = []
    until = await rolled(ctx)
    queries = DashboardQueries(ctx.gateway.store.engine)
    for team in teams:
        limits = policy.teams.get(team)
        budget = limits.budget if limits is not None and limits.budget is not None else policy.default.budget
        if budget is not None:
            label, since, _ = period_start(budget.period, time.time())
            spent = (await queries.spend_since("team", [team], since, until))[team]
            team_rows.append([team, label, _spent(spent, budget.usd)])
    toggle = render('<p><a href="{h}">{t}</a></p>', h=f"{ctx.plane.prefix}/keys" + ("" if revoked else "?revoked=1"),
                    t="Hide revoked keys" if revoked else "Show revoked keys")  # fmt: skip
    body = render(
        "{created}{toggle}{keys}<h2>Team budgets</h2>{teams}{form}",
        created=created or Html(""), toggle=toggle,
        keys=table(["Key id", "Name", "Team", "User", "RPM", "Budget period", "Spent / budget", "Created", "Expires",
                    "State", ""], rows, caption="Virtual keys", empty="No key."),
        teams=table(["Team", "Period", "Spent / budget"], team_rows, empty="No team budget configured."),
        form=_create_form(ctx) if ctx.viewer.admin else Html(""),
    )  # fmt: skip
    return page("Keys and budgets", body, ctx.shell, active="/keys", status=status)


async def keys(ctx: Ctx) -> Response:
    """GET: the keys page."""
    return await keys_page(ctx)


async def create(ctx: Ctx) -> Response:
    """POST (admins): create a key and show its secret once."""
    form = ctx.form
    period = text_param(form, "budget_period", max_len=16)
    rpm = _number(form, "rpm", int)
    spec = KeySpec(
        team=text_param(form, "team") or "", name=text_param(form, "name") or "", user=text_param(form, "user"),
        rpm=None if rpm is None else int(rpm), budget_usd=_number(form, "budget_usd", float),
        budget_period=period if form.get("budget_usd", "").strip() else None,
    )  # fmt: skip
    new = await create_key(ctx.gateway.store, spec)
    shown = render(
        '<div class="notice" role="status"><p>Key <strong>{id}</strong> created for team {team}. Copy it now: it is '
        'shown only once.</p><p><label>Secret <input readonly size="64" value="{secret}" '
        'aria-label="New key secret" class="mono" id="new-key"></label></p></div>',
        id=new.record.id, team=new.record.team, secret=new.secret,
    )  # fmt: skip
    return await keys_page(ctx, created=shown, status=201)


async def revoke(ctx: Ctx) -> Response:
    """POST (admins): revoke a key and end the dashboard sessions made with it."""
    key_id = ctx.request.path_params["key_id"]
    if not await ctx.gateway.store.revoke_key(key_id):
        raise NotFound(f"no active key {key_id!r}")
    ctx.gateway.keys.forget(key_id)
    await UiSessionStore(ctx.gateway.store.engine).delete_for_key(key_id)
    return RedirectResponse(f"{ctx.plane.prefix}/keys?revoked=1", 303)
