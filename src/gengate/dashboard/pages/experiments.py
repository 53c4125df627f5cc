"""Experiments: the list, one experiment's variant metrics with always-valid intervals, and start/pause/stop.

Reads and lifecycle changes go through `gengate.store.experiments` and `gengate.outer.experiment_service` — the
same functions the CLI and the admin API use — so the dashboard cannot move an experiment in a way they would not.
"""

from __future__ import annotations

import time
from typing import cast

from starlette.responses import RedirectResponse, Response

from gengate.dashboard.html import Html, hidden_csrf, join, link, meta, notice, page, render, table, ts
from gengate.dashboard.web import Ctx, choice_param
from gengate.errors import ConfigError, Conflict, NotFound, RequestError
from gengate.eval.stats import Interval
from gengate.outer.experiment_analysis import LABELS, METRICS, Analysis
from gengate.outer.experiment_service import change_status, load_analysis
from gengate.outer.experiments import next_status
from gengate.store.experiments import ExperimentRecord, ExperimentStore

ACTIONS = ("start", "pause", "stop")
ANALYSIS_SECONDS = 30.0


def _allowed(record: ExperimentRecord) -> list[str]:
    out = []
    for action in ACTIONS:
        try:
            next_status(record.name, record.status, action)
        except Conflict:
            continue
        out.append(action)
    return out


def _forms(ctx: Ctx, record: ExperimentRecord) -> Html:
    forms = [
        render(
            '<form class="inline" method="post" action="{action}">{csrf}<button type="submit"{cls} '
            'aria-label="{verb} experiment {name}">{verb}</button></form> ',
            action=f"{ctx.plane.prefix}/experiments/{record.name}/{a}", csrf=hidden_csrf(ctx.viewer.csrf),
            cls=Html(' class="danger"' if a == "stop" else ""), verb=a.capitalize(), name=record.name,
        )
        for a in _allowed(record)
    ]  # fmt: skip
    return join(forms) if forms else Html('<span class="muted">—</span>')


def _status(status: str) -> Html:
    cls = {"running": "ok", "paused": "warn", "stopped": "muted", "shipped": "ok"}.get(status, "")
    return render('<span class="{c}">{s}</span>', c=cls, s=status)


async def experiments_list(ctx: Ctx) -> Response:
    """Every experiment, newest first, with the actions its status allows."""
    records = list(reversed(await ExperimentStore(ctx.gateway.store.engine).list()))
    rows = [
        [link(f"{ctx.plane.prefix}/experiments/{r.name}", r.name), r.app, _status(r.status),
         ", ".join(f"{v.name} ({v.weight:g})" for v in r.spec.variants), r.spec.metric, ts(r.started_at),
         ts(r.stopped_at), r.winner or "—", r.note or "", _forms(ctx, r)]
        for r in records
    ]  # fmt: skip
    grid = table(["Experiment", "App", "Status", "Variants (weight)", "Metric", "Started", "Stopped", "Winner", "Note",
                  "Actions"], rows, empty="No experiment: create one with gengate experiment create.")  # fmt: skip
    return page("Experiments", grid, ctx.shell, active="/experiments")


def _interval(interval: Interval | None, rate: bool) -> str:
    if interval is None:
        return "—"
    if rate:
        return f"[{100 * interval.low:.1f}%, {100 * interval.high:.1f}%]"
    return f"[{interval.low:.4g}, {interval.high:.4g}]"


def _value(value: float | None, rate: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if rate else f"{value:.4g}"


async def _analysis(ctx: Ctx, store: ExperimentStore, record: ExperimentRecord) -> Analysis:
    """The analysis at one look (now), kept for `ANALYSIS_SECONDS` per plane.

    `gengate experiment status` folds a look per day; one look is as valid (an always-valid p-value may be read at
    any single moment) and costs one aggregation instead of one per day, which keeps this page fast on a big log.
    """
    key = (record.name, record.status, record.stopped_at)
    cached = ctx.plane.analyses.get(key)
    if cached is not None and time.monotonic() - cached[0] < ANALYSIS_SECONDS:
        return cast(Analysis, cached[1])
    analysis = await load_analysis(store, record, buckets=1)
    if len(ctx.plane.analyses) > 100:
        ctx.plane.analyses.clear()
    ctx.plane.analyses[key] = (time.monotonic(), analysis)
    return analysis


async def experiment(ctx: Ctx) -> Response:
    """One experiment: variants with intervals, comparisons against the control, guardrails, decision."""
    store = ExperimentStore(ctx.gateway.store.engine)
    record = await store.find(ctx.request.path_params["name"])
    if record is None:
        raise NotFound("no such experiment")
    analysis = await _analysis(ctx, store, record)
    rates = {"thumbs_up_rate", "copy_rate", "block_rate", "no_answer_rate"}
    variant_rows = []
    for v in analysis.variants.values():
        for metric in METRICS:
            est = v.metrics[metric]
            rate = metric in rates
            primary = " (primary)" if metric == record.spec.metric else ""
            variant_rows.append([v.name, f"{LABELS[metric]}{primary}", _value(est.value, rate),
                                 _interval(est.interval, rate), est.units])  # fmt: skip
    comparisons = [
        [name, _value(c.mean_a, record.spec.metric in rates), _value(c.mean_b, record.spec.metric in rates),
         f"[{c.interval.low:+.4f}, {c.interval.high:+.4f}]", f"{c.p_value:.4f}", c.decision]
        for name, c in analysis.comparisons.items()
    ]  # fmt: skip
    guards = [
        [g.variant, g.guardrail.metric, g.guardrail.label(), f"{g.control:.4g}", f"{g.treatment:.4g}",
         render('<span class="bad">{t}</span>', t="breached") if g.breached else "ok"]
        for g in analysis.guardrails
    ]  # fmt: skip
    done = choice_param(ctx.request, "done", ACTIONS)
    body = render(
        '<p><a href="{back}">← Experiments</a></p>{done}{meta}<p>{forms}</p>'
        "<h2>Variants</h2>{variants}<h2>Against the control ({control})</h2>{comparisons}<h2>Guardrails</h2>{guards}",
        back=f"{ctx.plane.prefix}/experiments",
        done=notice(f"Experiment {record.name}: {done} done.") if done else Html(""),
        meta=meta([("App", record.app), ("Status", _status(record.status)), ("Metric", record.spec.metric),
                   ("Unit", record.spec.unit), ("Alpha", record.spec.alpha), ("Decision", analysis.decision),
                   ("Winner", analysis.winner or "—"), ("Note", record.note or "—"), ("Started", ts(record.started_at)),
                   ("Stopped", ts(record.stopped_at))]),
        forms=_forms(ctx, record), control=record.spec.control.name,
        variants=table(["Variant", "Metric", "Value", "Always-valid interval", "Units"], variant_rows, numeric=(2, 4),
                       caption="Per-unit estimates"),
        comparisons=table(["Treatment", "Control mean", "Treatment mean", "Difference interval", "p (always valid)",
                           "Decision"], comparisons, numeric=(1, 2, 4), empty="No treatment."),
        guards=table(["Variant", "Metric", "Bound", "Control", "Treatment", "State"], guards, numeric=(3, 4),
                     empty="No guardrail."),
    )  # fmt: skip
    return page(f"Experiment {record.name}", body, ctx.shell, active="/experiments")


async def experiment_action(ctx: Ctx) -> Response:
    """Start, pause or stop an experiment (POST with the CSRF token), then back to its page."""
    name, action = ctx.request.path_params["name"], ctx.request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound("no such action")
    store = ExperimentStore(ctx.gateway.store.engine)
    if await store.find(name) is None:
        raise NotFound("no such experiment")
    try:
        await change_status(store, ctx.gateway.settings, name, action)
    except ConfigError as exc:
        raise RequestError(exc.message) from None
    if ctx.gateway.experiments is not None:
        await ctx.gateway.experiments.refresh()  # this process at once; others within experiments.refresh_seconds
    return RedirectResponse(f"{ctx.plane.prefix}/experiments/{name}?done={action}", 303)
