"""Requests: the searchable log (keyset-paginated) and the trace of one request."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from gengate.dashboard.html import Html, esc, join, link, meta, num, page, render, table, ts, url, usd
from gengate.dashboard.web import Ctx, choice_param, text_param
from gengate.errors import NotFound
from gengate.store.dashboard import DashboardQueries, RequestFilter, parse_cursor
from gengate.telemetry.trace_steps import ATTEMPT, RETRIEVAL, TOOL

PAGE_SIZE = 50
STATUSES = ("ok", "errors", "blocked")


def _status(row: dict[str, Any]) -> Html:
    status = int(row["status"])
    if row.get("error_code") == "guard_blocked":
        return render('<span class="bad">{s} blocked</span>', s=status)
    if status >= 400:
        return render('<span class="bad">{s} {code}</span>', s=status, code=row.get("error_code") or "")
    return render('<span class="ok">{s}</span>', s=status)


def _select(name: str, label: str, options: list[str], current: str | None, blank: str = "any") -> Html:
    opts = [render('<option value="">{b}</option>', b=blank)]
    for option in options:
        selected = " selected" if option == current else ""
        opts.append(render('<option value="{o}"' + selected + ">{o}</option>", o=option))
    return render(
        '<label>{label}<select name="{name}">{opts}</select></label>', label=label, name=name, opts=join(opts)
    )


def _input(name: str, label: str, value: str | None) -> Html:
    return render('<label>{label}<input name="{name}" value="{v}" autocomplete="off"></label>', label=label, name=name,
                  v=value or "")  # fmt: skip


async def request_log(ctx: Ctx) -> Response:
    """The newest requests matching the filters, a page at a time."""
    req = ctx.request
    viewer_team = ctx.viewer.team
    team = viewer_team if viewer_team is not None else text_param(req, "team")
    filters = RequestFilter(
        team=team, subject=text_param(req, "subject"), key_id=text_param(req, "key", max_len=32),
        model=text_param(req, "model"), status=choice_param(req, "status", STATUSES),  # type: ignore[arg-type]
    )  # fmt: skip
    raw_cursor = text_param(req, "before", max_len=100)
    before = parse_cursor(raw_cursor) if raw_cursor else None
    request_id = text_param(req, "id", max_len=64)
    queries = DashboardQueries(ctx.gateway.store.engine)
    if request_id is not None:
        found = await queries.trace(request_id, viewer_team)
        if found is None:
            raise NotFound(f"no request {request_id!r}")
        rows, cursor = [found.request], None
    else:
        rows, cursor = await queries.search(filters, before=before, limit=PAGE_SIZE)
    prefix = ctx.plane.prefix
    models = sorted(ctx.gateway.settings.models)
    fields = [
        _input("id", "Request id", request_id),
        _input("subject", "Subject", filters.subject),
        _input("key", "Key id", filters.key_id),
        _select("model", "Model", models, filters.model),
        _select("status", "Status", list(STATUSES), filters.status),
    ]
    if viewer_team is None:
        fields.append(_input("team", "Team", filters.team))
    form = render(
        '<form class="filters" method="get" action="{action}" role="search">{fields}'
        '<button type="submit">Search</button> <a href="{action}">Clear</a></form>',
        action=f"{prefix}/requests", fields=join(fields),
    )  # fmt: skip
    body_rows = [
        [ts(r["ts"]), link(f"{prefix}/requests/{r['id']}", r["id"]), r.get("team") or "—", r.get("subject") or "—",
         r.get("model") or "—", _status(r), num(r["latency_ms"]), num(r["prompt_tokens"] + r["completion_tokens"]),
         usd(r["cost_usd"])]
        for r in rows
    ]  # fmt: skip
    grid = table(
        ["Time (UTC)", "Request", "Team", "Subject", "Model", "Status", "Latency ms", "Tokens", "Cost"], body_rows,
        caption="Requests, newest first", numeric=(6, 7, 8), empty="No request matches.",
    )  # fmt: skip
    params = {"subject": filters.subject, "key": filters.key_id, "model": filters.model, "status": filters.status,
              "team": filters.team if viewer_team is None else None}  # fmt: skip
    pager = [link(url(f"{prefix}/requests", **params), "First page")] if before is not None else []
    if cursor is not None:
        pager.append(link(url(f"{prefix}/requests", before=cursor, **params), "Older requests →"))
    body = render('{form}{grid}<nav class="pager" aria-label="Pages">{pager}</nav>', form=form, grid=grid,
                  pager=join(pager))  # fmt: skip
    return page("Requests", body, ctx.shell, active="/requests")


def _findings(findings: list[dict[str, Any]]) -> Html:
    if not findings:
        return render('<p class="muted">{t}</p>', t="No guard findings.")
    stages: dict[str, list[dict[str, Any]]] = {}
    for f in findings:
        stages.setdefault(str(f["stage"]), []).append(f)
    parts = []
    for stage, items in stages.items():
        rows = [
            [f["detector"], f["detector_version"], f["label"], _action(str(f["action"])), f"{float(f['score']):.2f}",
             f"{f['span_start']}–{f['span_end']}", f["profile"]]
            for f in items
        ]  # fmt: skip
        parts.append(table(["Detector", "Version", "Label", "Action", "Score", "Span", "Profile"], rows,
                           caption=f"Stage: {stage}", numeric=(4,)))  # fmt: skip
    return join(parts)


def _action(action: str) -> Html:
    return render('<span class="bad">{a}</span>', a=action) if action == "block" else esc(action)


def _response(ctx: Ctx, response: dict[str, Any] | None, sources: list[dict[str, Any]]) -> Html:
    if response is None:
        return render('<p class="muted">{t}</p>', t="No app response was recorded for this request.")
    items: list[tuple[str, object]] = [
        ("App", response.get("app") or "— (model call)"), ("Outcome", response.get("outcome")),
        ("Experiment", f"{response['experiment']} / {response.get('variant')}" if response.get("experiment") else "—"),
        ("Payload kept", response.get("payload")),
    ]  # fmt: skip
    if response.get("question"):
        items.append(("Question", render("<pre>{q}</pre>", q=response["question"])))
    if response.get("answer"):
        items.append(("Answer", render("<pre>{a}</pre>", a=response["answer"])))
    rows = [
        [s["kb"], link(url(f"{ctx.plane.prefix}/knowledge/{s['kb']}/document", id=s["doc_id"]), s["doc_id"]),
         s["version"], s.get("title") or "—",
         (", ".join(s["access"]) or "nobody") if s["stored"] else "—",
         render('<span class="warn">{t}</span>', t="suspicious") if s["suspicious"] else "",
         "" if s["active"] else "retired since" if s["stored"] else "no longer stored"]
        for s in sources
    ]  # fmt: skip
    cited = table(["Knowledge base", "Document", "Version", "Title", "Access list", "Flag", "Now"], rows,
                  caption="Cited sources and who may read them", numeric=(2,), empty="No sources cited.")  # fmt: skip
    return join([meta(items), cited])


def _attempts(steps: list[dict[str, Any]]) -> Html:
    rows = []
    for n, a in enumerate((s for s in steps if s["kind"] == ATTEMPT), 1):
        result = render('<span class="ok">{t}</span>', t="answered") if a.get("ok") else _bad("failed")
        rows.append([
            n, "—" if a.get("round") is None else int(a["round"]) + 1, a.get("deployment") or "—", result,
            a.get("code") or "", "" if a.get("status") is None else a["status"], a.get("message") or "",
            num(a.get("latency_ms"), 1),
        ])  # fmt: skip
    return table(["Attempt", "Model call", "Deployment", "Result", "Error code", "Upstream status", "Error",
                  "Latency ms"], rows, caption="Each try at a deployment, in order (retries and fallbacks)",
                 numeric=(0, 1, 7), empty="No upstream was tried.")  # fmt: skip


def _retrieved(ctx: Ctx, steps: list[dict[str, Any]]) -> Html:
    rows = [
        [c.get("rank"), c.get("kb"), link(url(f"{ctx.plane.prefix}/knowledge/{c.get('kb')}/document",
                                              id=c.get("doc_id")), c.get("doc_id")),
         c.get("version"), c.get("title") or "—", c.get("chunk_id"), f"{float(c.get('score') or 0):.3f}",
         ", ".join(c.get("access") or []) or "nobody",
         _bad("dropped by the context guard") if c.get("dropped") else "used"]
        for c in steps if c["kind"] == RETRIEVAL
    ]  # fmt: skip
    return table(["Rank", "Knowledge base", "Document", "Version", "Title", "Chunk", "Score", "Access list",
                  "Context"], rows, caption="Chunks retrieved with the caller's access, and who may read them",
                 numeric=(0, 3, 5, 6), empty="No chunk was retrieved.")  # fmt: skip


def _tools(steps: list[dict[str, Any]]) -> Html:
    rows = []
    for t in (s for s in steps if s["kind"] == TOOL):
        bound = ", ".join(f"{b.get('name')} ← {b.get('source')}" for b in t.get("bound") or []) or "—"
        arguments = [*(t.get("arguments") or []), *(f"{u} (undeclared, dropped)" for u in t.get("unknown") or [])]
        ignored = ", ".join(t.get("ignored") or [])
        status = "" if t.get("status") is None else f" (HTTP {t['status']})"
        result = (render('<span class="ok">{t}</span>', t="ok" + status) if t.get("ok")
                  else _bad(t.get("error") or "failed" + status))  # fmt: skip
        rows.append([int(t.get("round") or 0) + 1, t.get("tool") or "—", bound, ", ".join(arguments) or "—",
                     _bad(ignored) if ignored else "—", result])  # fmt: skip
    return table(["Model call", "Tool", "Bound parameters ← source", "Model arguments", "Ignored (bound) keys",
                  "Result"], rows, caption="Tools the app called: bound values come from the caller, never the model",
                 numeric=(0,), empty="No tool was called.")  # fmt: skip


def _bad(text: object) -> Html:
    return render('<span class="bad">{t}</span>', t=text)


async def trace(ctx: Ctx) -> Response:
    """One request: principal, routing and each attempt, guard findings per stage, retrieved chunks, tool calls,
    the app's response, cost."""
    request_id = ctx.request.path_params["request_id"]
    detail = await DashboardQueries(ctx.gateway.store.engine).trace(request_id, ctx.viewer.team)
    if detail is None:
        raise NotFound("no such request")  # another team's request is "not found" too: ids are not confirmed
    r = detail.request
    alias = ctx.gateway.settings.models.get(r.get("model") or "")
    route = ", ".join(f"{d.provider}/{d.model}" for d in alias.deployments) if alias is not None else "—"
    principal = meta([
        ("Subject", r.get("subject") or "—"), ("Team", r.get("team") or "—"),
        ("Key", f"{r['key_id']} ({detail.key_name or 'unnamed'})" if r.get("key_id") else "— (JWT or admin)"),
    ])  # fmt: skip
    routing = meta([
        ("Endpoint", r["endpoint"]), ("Model alias", r.get("model") or "—"), ("Configured route", route),
        ("Served by", r.get("deployment") or "— (no upstream answered)"), ("Attempts", r["attempts"]),
        ("Fallbacks", r["fallbacks"]), ("Streamed", "yes" if r["stream"] else "no"),
        ("Client disconnected", "yes" if r["client_disconnected"] else "no"),
    ])  # fmt: skip
    cost = meta([
        ("Status", _status(r)), ("Latency", f"{float(r['latency_ms']):,.1f} ms"),
        ("Time to first token", "—" if r.get("ttft_ms") is None else f"{float(r['ttft_ms']):,.1f} ms"),
        ("Tokens (prompt + completion, cached)",
         f"{r['prompt_tokens']:,} + {r['completion_tokens']:,} ({r['cached_tokens']:,} cached)"),
        ("Cost", usd(r["cost_usd"])),
    ])  # fmt: skip
    events = [[ts(e["ts"]), e["kind"], "—" if e["value"] is None else e["value"], e.get("comment") or ""]
              for e in detail.feedback]  # fmt: skip
    # Every upstream attempt has been a step since schema v7: attempts without steps mean an older record.
    unrecorded = (
        render('<p class="muted">{t}</p>', t="Not recorded: this request was logged before gengate kept its steps.")
        if not detail.steps and int(r["attempts"] or 0) > 0
        else None
    )
    body = render(
        '<p><a href="{back}">← Requests</a> · <span class="mono">{id}</span> · {when}</p>'
        "<h2>Principal</h2>{principal}<h2>Routing and retries</h2>{routing}<h2>Outcome and cost</h2>{cost}"
        "<h2>Routing attempts</h2>{attempts}<h2>Guard findings by stage</h2>{findings}"
        "<h2>Retrieved chunks</h2>{chunks}<h2>Tool calls</h2>{tools}<h2>App response</h2>{response}"
        "<h2>Feedback</h2>{feedback}",
        back=f"{ctx.plane.prefix}/requests", id=r["id"], when=ts(r["ts"]), principal=principal, routing=routing,
        cost=cost, attempts=unrecorded or _attempts(detail.steps), findings=_findings(detail.findings),
        chunks=unrecorded or _retrieved(ctx, detail.steps), tools=unrecorded or _tools(detail.steps),
        response=_response(ctx, detail.response, detail.sources),
        feedback=table(["Time (UTC)", "Kind", "Value", "Comment"], events, empty="No feedback."),
    )  # fmt: skip
    return page(f"Trace {request_id}", body, ctx.shell, active="/requests")
