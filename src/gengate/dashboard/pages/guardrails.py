"""Guardrails: findings over time by detector and action, the categories that block most, recent blocks."""

from __future__ import annotations

from starlette.responses import Response

from gengate.dashboard.charts import bar_chart, line_chart
from gengate.dashboard.html import join, link, page, render, table, ts, url
from gengate.dashboard.web import Ctx, bucket_labels, range_links, window_param
from gengate.store.dashboard import DashboardQueries, RequestFilter

MAX_SERIES = 8


async def guardrails(ctx: Ctx) -> Response:
    """Charts of findings and the blocked requests of the window."""
    key, window = window_param(ctx.request)
    queries = DashboardQueries(ctx.gateway.store.engine)
    team = ctx.viewer.team
    series = await queries.findings_series(window, team)
    labels = bucket_labels(window)
    by_action: dict[str, list[float]] = {}
    for (_, action), counts in series.items():
        acc = by_action.setdefault(action, [0.0] * window.buckets)
        for i, c in enumerate(counts):
            acc[i] += c
    ranked = sorted(series.items(), key=lambda kv: -sum(kv[1]))[:MAX_SERIES]
    by_detector = {f"{d} · {a}": [float(c) for c in counts] for (d, a), counts in ranked}
    top = await queries.top_blocked(window, team)
    blocked, _ = await queries.search(RequestFilter(team=team, status="blocked"), limit=20)
    prefix = ctx.plane.prefix
    totals = table(
        ["Detector", "Action", "Findings"],
        [[d, a, f"{sum(c):,}"] for (d, a), c in sorted(series.items(), key=lambda kv: -sum(kv[1]))],
        caption="Findings in the period", numeric=(2,), empty="No findings in this period.",
    )  # fmt: skip
    recent = table(
        ["Time (UTC)", "Request", "Team", "Subject", "Model"],
        [[ts(r["ts"]), link(f"{prefix}/requests/{r['id']}", r["id"]), r.get("team") or "—", r.get("subject") or "—",
          r.get("model") or "—"] for r in blocked],
        caption="Latest blocked requests", empty="No blocked request.",
    )  # fmt: skip
    charts = join([
        line_chart("Findings by action", labels, by_action, chart_id="chart-findings-action"),
        line_chart("Findings by detector and action", labels, by_detector, chart_id="chart-findings-detector"),
        bar_chart("Top blocked categories", [(f"{d}: {label}", float(n)) for d, label, n in top]),
    ])  # fmt: skip
    body = render(
        '{ranges}<div class="charts">{charts}</div>{totals}{recent}<p>{all}</p>',
        ranges=range_links(f"{prefix}/guardrails", key), charts=charts, totals=totals, recent=recent,
        all=link(url(f"{prefix}/requests", status="blocked"), "All blocked requests →"),
    )  # fmt: skip
    return page("Guardrails", body, ctx.shell, active="/guardrails")
