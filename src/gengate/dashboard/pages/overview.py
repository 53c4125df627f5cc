"""Overview: requests, errors, latency percentiles, tokens and cost over time, by team, model and app."""

from __future__ import annotations

from starlette.responses import Response

from gengate.dashboard.charts import line_chart
from gengate.dashboard.html import cards, join, num, page, pct, render, usd
from gengate.dashboard.web import Ctx, bucket_labels, range_links, rolled, window_param
from gengate.store.dashboard import DashboardQueries, merge, percentile


def _ms(value: float) -> str:
    return f"{value:,.0f} ms"


async def overview(ctx: Ctx) -> Response:
    """Headline figures for the window and the charts."""
    key, window = window_param(ctx.request)
    queries = DashboardQueries(ctx.gateway.store.engine)
    team = ctx.viewer.team
    until = await rolled(ctx)
    buckets = await queries.traffic(window, team, until)
    labels = bucket_labels(window)
    total = merge(buckets)
    errors = total.client_errors + total.server_errors
    p50, p95 = percentile(total, 0.5), percentile(total, 0.95)
    figures = cards([
        ("Requests", num(total.requests)),
        ("Errors (4xx + 5xx)", f"{num(errors)} · {pct(errors, total.requests)}"),
        ("Blocked by guardrails", num(total.blocked)),
        ("Latency p50 / p95", "—" if p50 is None else f"{p50:,.0f} / {p95 or 0:,.0f} ms"),
        ("Tokens", num(total.prompt_tokens + total.completion_tokens)),
        ("Cost", usd(total.cost_usd)),
    ])  # fmt: skip
    charts = [
        line_chart("Requests and errors", labels, {
            "requests": [float(b.requests) for b in buckets],
            "4xx": [float(b.client_errors) for b in buckets],
            "5xx": [float(b.server_errors) for b in buckets],
        }, chart_id="chart-requests"),
        line_chart("Latency percentiles", labels, {
            "p50": [percentile(b, 0.5) for b in buckets], "p95": [percentile(b, 0.95) for b in buckets],
        }, fmt=_ms, chart_id="chart-latency"),
    ]  # fmt: skip
    groups = ["model", "app"] if team is not None else ["team", "model", "app"]
    for by in groups:
        series = await queries.breakdown(window, team, by, rolled=until)  # type: ignore[arg-type]
        charts.append(
            line_chart(f"Cost by {by}", labels, {name: cost for name, (_, cost) in series.items()}, fmt=usd,
                       chart_id=f"chart-cost-{by}")
        )  # fmt: skip
        if by != "app":
            charts.append(
                line_chart(f"Tokens by {by}", labels, {name: tok for name, (tok, _) in series.items()},
                           chart_id=f"chart-tokens-{by}")
            )  # fmt: skip
    scope = "all teams" if team is None else f"team {team}"
    body = render(
        '<p class="muted">{n} buckets · {scope} · latency percentiles from a histogram (approximate)</p>'
        '{ranges}{figures}<div class="charts">{charts}</div>',
        n=len(labels), scope=scope, ranges=range_links(ctx.plane.prefix + "/", key), figures=figures,
        charts=join(charts),
    )  # fmt: skip
    return page("Overview", body, ctx.shell, active="/")
