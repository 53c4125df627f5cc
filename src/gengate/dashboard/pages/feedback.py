"""Feedback: rates per app over a window, and the comments people left, each linked to its trace."""

from __future__ import annotations

import time

from starlette.responses import Response

from gengate.dashboard.html import join, link, page, pct, render, table, ts, url
from gengate.dashboard.web import WINDOWS, Ctx, choice_param, text_param
from gengate.errors import RequestError
from gengate.store.dashboard import DashboardQueries

PAGE_SIZE = 50


async def feedback(ctx: Ctx) -> Response:
    """Thumbs-up rate, feedback rate, copies and scores per app; comments newest first."""
    key = choice_param(ctx.request, "range", tuple(WINDOWS), "7d") or "7d"
    raw_before = text_param(ctx.request, "before", max_len=20)
    if raw_before is not None and not raw_before.isdigit():
        raise RequestError("before must be a comment id", param="before")
    before = int(raw_before) if raw_before else None
    queries = DashboardQueries(ctx.gateway.store.engine)
    team = ctx.viewer.team
    rates = await queries.feedback_rates(time.time() - WINDOWS[key][0], team)
    comments, next_id = await queries.comments(team, before=before, limit=PAGE_SIZE)
    prefix = ctx.plane.prefix
    rate_rows = [
        [r["app"] or "— (model calls)", f"{r['answers']:,}", f"{r['up']:,} / {r['down']:,}",
         pct(r["up"], r["up"] + r["down"]), pct(r["up"] + r["down"], r["answers"]), f"{r['copies']:,}",
         "—" if r["mean_score"] is None else f"{r['mean_score']:.2f} ({r['scores']:,})", f"{r['comments']:,}"]
        for r in rates
    ]  # fmt: skip
    comment_rows = [
        [ts(c["ts"]), c.get("app") or "—", c["kind"], "—" if c["value"] is None else f"{c['value']:g}", c["comment"],
         link(f"{prefix}/requests/{c['request_id']}", "trace")]
        for c in comments
    ]  # fmt: skip
    ranges = join(
        render('<li><a href="{h}"' + (' aria-current="true"' if k == key else "") + ">{k}</a></li>",
               h=url(f"{prefix}/feedback", range=k), k=k)
        for k in WINDOWS
    )  # fmt: skip
    pager = [link(url(f"{prefix}/feedback", range=key), "Newest comments")] if before is not None else []
    if next_id is not None:
        pager.append(link(url(f"{prefix}/feedback", range=key, before=next_id), "Older comments →"))
    body = render(
        '<nav aria-label="Time range" class="pager"><span>Last:</span><ul class="legend">{ranges}</ul></nav>'
        "{rates}<h2>Comments</h2>{comments}<nav class=\"pager\" aria-label=\"Comment pages\">{pager}</nav>",
        ranges=ranges,
        rates=table(["App", "Answers", "Thumbs up / down", "Thumbs-up rate", "Feedback rate", "Copies",
                     "Mean score (n)", "Comments"], rate_rows, numeric=(1, 2, 3, 4, 5, 6, 7),
                    caption=f"Feedback in the last {key}", empty="No answers or feedback in this period."),
        comments=table(["Time (UTC)", "App", "Kind", "Value", "Comment", "Trace"], comment_rows,
                       empty="No comment yet."),
        pager=join(pager),
    )  # fmt: skip
    return page("Feedback", body, ctx.shell, active="/feedback")
