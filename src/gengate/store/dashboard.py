"""Read queries behind the dashboard: traffic over time, the request log, traces, findings, feedback, spend.

Every query that can touch other teams' rows takes `team` (None: every team, for admins) and filters in SQL, so a
team member's page never loads another team's rows. The request log pages by keyset on `(ts, id)` over the `ts`
indexes, so page 1,000 costs what page 1 costs. Latency percentiles come from a histogram (counts at or below
fixed edges, summed in the same pass as the other totals) and are interpolated like Prometheus'
`histogram_quantile`: exact enough to read, and one aggregate pass on SQLite and PostgreSQL alike.

Owns: the dashboard's read queries and their value objects. Must not: write, render or decide who may see what
(callers pass the team).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from gengate.errors import RequestError
from gengate.store.schema import (
    LATENCY_EDGES_MS,
    api_keys,
    experiments,
    feedback,
    guard_findings,
    kb_documents,
    requests,
    responses,
    trace_steps,
    ui_rollup_apps,
    ui_rollup_keys,
    ui_rollup_requests,
)
from gengate.store.ui_rollups import HOUR
from gengate.telemetry.trace_steps import from_row

StatusFilter = Literal["ok", "errors", "blocked"]
_CURSOR = re.compile(r"^(\d{1,12}(?:\.\d{1,20})?)~([A-Za-z0-9._:-]{1,64})$")
_LIST_COLUMNS = (
    requests.c.id, requests.c.ts, requests.c.subject, requests.c.team, requests.c.key_id, requests.c.endpoint,
    requests.c.model, requests.c.status, requests.c.error_code, requests.c.latency_ms, requests.c.cost_usd,
    requests.c.prompt_tokens, requests.c.completion_tokens,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Window:
    """A time range cut into equal buckets (the x axis of every chart)."""

    since: float
    until: float
    bucket: float

    @property
    def buckets(self) -> int:
        """How many buckets cover the range."""
        return max(1, math.ceil((self.until - self.since) / self.bucket))


@dataclass(slots=True)
class Bucket:
    """Totals of one time bucket; `latency_le[i]` counts requests at or below `LATENCY_EDGES_MS[i]`."""

    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    blocked: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_le: list[int] = field(default_factory=lambda: [0] * len(LATENCY_EDGES_MS))


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What the request log is narrowed to (every field optional)."""

    team: str | None = None
    subject: str | None = None
    key_id: str | None = None
    model: str | None = None
    status: StatusFilter | None = None


@dataclass(frozen=True, slots=True)
class TraceDetail:
    """Everything recorded about one request."""

    request: dict[str, Any]
    findings: list[dict[str, Any]]
    response: dict[str, Any] | None
    sources: list[dict[str, Any]]  # cited documents with their title and access list
    feedback: list[dict[str, Any]]
    key_name: str | None
    # Routing attempts, retrieved chunks and tool calls, in order (gengate.telemetry.trace_steps).
    steps: list[dict[str, Any]] = field(default_factory=list)


def percentile(bucket: Bucket, q: float) -> float | None:
    """The q-quantile (0..1) of a bucket's latency, interpolated within its histogram bin; None when empty."""
    if bucket.requests == 0:
        return None
    rank = q * bucket.requests
    lower_edge, lower_count = 0.0, 0
    for edge, count in zip(LATENCY_EDGES_MS, bucket.latency_le, strict=True):
        if count >= rank:
            width = count - lower_count
            return lower_edge + (edge - lower_edge) * ((rank - lower_count) / width if width else 1.0)
        lower_edge, lower_count = float(edge), count
    return float(LATENCY_EDGES_MS[-1])  # beyond the last edge: reported as "at least" the last one


def merge(buckets: Sequence[Bucket]) -> Bucket:
    """The totals of several buckets."""
    out = Bucket()
    for b in buckets:
        out.requests += b.requests
        out.client_errors += b.client_errors
        out.server_errors += b.server_errors
        out.blocked += b.blocked
        out.prompt_tokens += b.prompt_tokens
        out.completion_tokens += b.completion_tokens
        out.cost_usd += b.cost_usd
        out.latency_le = [x + y for x, y in zip(out.latency_le, b.latency_le, strict=True)]
    return out


def parse_cursor(raw: str) -> tuple[float, str]:
    """A `next` cursor (`<ts>~<id>`) back into its parts; RequestError when it was not one of ours."""
    match = _CURSOR.match(raw)
    if match is None:
        raise RequestError("cursor is malformed", param="before")
    return float(match.group(1)), match.group(2)


def make_cursor(row: dict[str, Any]) -> str:
    """The cursor that continues after a row."""
    return f"{float(row['ts'])!r}~{row['id']}"  # repr: the exact float back, so no row repeats or goes missing


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def _plain(row: Any) -> dict[str, Any]:
    return {str(k): v for k, v in row._mapping.items()}


class DashboardQueries:
    """The dashboard's reads over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def _bucket(self, column: sa.ColumnElement[Any], window: Window) -> sa.ColumnElement[Any]:
        offset = (column - window.since) / window.bucket
        # CAST truncates on SQLite but rounds on PostgreSQL; the offset is never negative, so floor is truncation.
        return sa.func.floor(offset) if self.engine.dialect.name == "postgresql" else sa.cast(offset, sa.Integer)

    # -- traffic ------------------------------------------------------------------------------------------

    def _split(self, window: Window, rolled: float | None) -> tuple[float, float]:
        """Where the roll-ups end and the live log takes over, for a window (hour buckets only)."""
        if rolled is None or window.bucket < HOUR or window.since % HOUR or window.bucket % HOUR:
            return window.since, window.since
        edge = max(window.since, min(window.until, rolled))
        return window.since, edge

    async def traffic(self, window: Window, team: str | None, rolled: float | None = None) -> list[Bucket]:
        """Per bucket: requests, errors, blocked, tokens, cost and the latency histogram."""
        start, edge = self._split(window, rolled)
        r, u = requests.c, ui_rollup_requests.c
        live_bucket = self._bucket(r.ts, window).label("b")
        live = sa.select(
            live_bucket, sa.func.count(), _count_if((r.status >= 400) & (r.status < 500)), _count_if(r.status >= 500),
            _count_if(r.error_code == "guard_blocked"), sa.func.coalesce(sa.func.sum(r.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(r.completion_tokens), 0), sa.func.coalesce(sa.func.sum(r.cost_usd), 0.0),
            *(_count_if(r.latency_ms <= edge) for edge in LATENCY_EDGES_MS),
        ).where(r.ts >= edge, r.ts < window.until).group_by(live_bucket)  # fmt: skip
        rolled_bucket = self._bucket(u.hour, window).label("b")
        sums = [u.requests, u.client_errors, u.server_errors, u.blocked, u.prompt_tokens, u.completion_tokens,
                u.cost_usd, *(u[f"le_{i}"] for i in range(len(LATENCY_EDGES_MS)))]  # fmt: skip
        past = (
            sa.select(rolled_bucket, *(sa.func.coalesce(sa.func.sum(c), 0) for c in sums))
            .where(u.hour >= start, u.hour < edge)
            .group_by(rolled_bucket)
        )
        if team is not None:
            live, past = live.where(r.team == team), past.where(u.team == team)
        out = [Bucket() for _ in range(window.buckets)]
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(live)).all())
            if edge > start:
                rows += (await conn.execute(past)).all()
        for row in rows:
            i = int(row[0])
            if 0 <= i < len(out):
                b = Bucket(int(row[1]), int(row[2]), int(row[3]), int(row[4]), int(row[5]), int(row[6]),
                           float(row[7]), [int(v) for v in row[8:]])  # fmt: skip
                out[i] = merge([out[i], b])
        return out

    async def breakdown(
        self, window: Window, team: str | None, by: Literal["team", "model", "app"], top: int = 5,
        rolled: float | None = None,
    ) -> dict[str, tuple[list[float], list[float]]]:  # fmt: skip
        """Per group (the `top` dearest, the rest as `other`): (tokens, cost) per bucket."""
        start, edge = self._split(window, rolled)
        if by == "app":
            a, ra = responses.c, ui_rollup_apps.c
            live = sa.select(self._bucket(a.ts, window).label("b"), a.app, sa.literal(0), sa.func.sum(a.cost_usd))
            live = live.where(a.ts >= edge, a.ts < window.until).group_by(sa.text("b"), a.app)
            past = sa.select(self._bucket(ra.hour, window).label("b"), ra.app, sa.literal(0), sa.func.sum(ra.cost_usd))
            past = past.where(ra.hour >= start, ra.hour < edge).group_by(sa.text("b"), ra.app)
            if team is not None:
                live, past = live.where(a.team == team), past.where(ra.team == team)
        else:
            r, u = requests.c, ui_rollup_requests.c
            live = sa.select(
                self._bucket(r.ts, window).label("b"),
                r[by],
                sa.func.sum(r.prompt_tokens + r.completion_tokens),
                sa.func.sum(r.cost_usd),
            )
            live = live.where(r.ts >= edge, r.ts < window.until).group_by(sa.text("b"), r[by])
            past = sa.select(
                self._bucket(u.hour, window).label("b"),
                u[by],
                sa.func.sum(u.prompt_tokens + u.completion_tokens),
                sa.func.sum(u.cost_usd),
            )
            past = past.where(u.hour >= start, u.hour < edge).group_by(sa.text("b"), u[by])
            if team is not None:
                live, past = live.where(r.team == team), past.where(u.team == team)
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(live)).all())
            if edge > start:
                rows += (await conn.execute(past)).all()
        totals: dict[str, float] = {}
        for row in rows:
            name = "(none)" if row[1] is None else str(row[1])
            totals[name] = totals.get(name, 0.0) + float(row[3] or 0) + float(row[2] or 0) * 1e-9  # cost, then tokens
        keep = set(sorted(totals, key=lambda n: -totals[n])[:top])
        series: dict[str, tuple[list[float], list[float]]] = {}
        n = window.buckets
        for row in rows:
            name = "(none)" if row[1] is None else str(row[1])
            name = name if name in keep else "other"
            tok, cost = series.setdefault(name, ([0.0] * n, [0.0] * n))
            i = int(row[0])
            if 0 <= i < n:
                tok[i] += float(row[2] or 0)
                cost[i] += float(row[3] or 0)
        return dict(sorted(series.items(), key=lambda kv: (kv[0] == "other", -sum(kv[1][1]), kv[0])))

    # -- the request log ----------------------------------------------------------------------------------

    async def search(
        self, f: RequestFilter, *, before: tuple[float, str] | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the log, newest first, and the cursor of the next page (None on the last)."""
        r = requests.c
        query = sa.select(*_LIST_COLUMNS).order_by(r.ts.desc(), r.id.desc()).limit(limit + 1)
        for column, value in ((r.team, f.team), (r.subject, f.subject), (r.key_id, f.key_id), (r.model, f.model)):
            if value is not None:
                query = query.where(column == value)
        if f.status == "ok":
            query = query.where(r.status < 400)
        elif f.status == "errors":
            query = query.where(r.status >= 400)
        elif f.status == "blocked":
            query = query.where(r.error_code == "guard_blocked")
        if before is not None:
            ts, rid = before
            # A range on ts (what the index serves), then the tie-break on id within the same instant.
            query = query.where(r.ts <= ts, sa.or_(r.ts < ts, r.id < rid))
        async with self.engine.connect() as conn:
            rows = [_plain(row) for row in (await conn.execute(query)).all()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, make_cursor(rows[-1]) if more and rows else None

    async def trace(self, request_id: str, team: str | None) -> TraceDetail | None:
        """One request with its findings, steps, response record, cited sources and feedback; None when it does not
        exist or belongs to another team (the two are indistinguishable on purpose)."""
        query = sa.select(requests).where(requests.c.id == request_id)
        if team is not None:
            query = query.where(requests.c.team == team)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            request = _plain(row)
            found = guard_findings.c
            findings = [
                _plain(x)
                for x in (
                    await conn.execute(
                        sa.select(guard_findings).where(found.request_id == request_id).order_by(found.id)
                    )
                ).all()
            ]
            answer = (await conn.execute(sa.select(responses).where(responses.c.request_id == request_id))).first()
            response = _plain(answer) if answer is not None else None
            sources = await self._sources(conn, response)
            events = [
                _plain(x)
                for x in (
                    await conn.execute(
                        sa.select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.id)
                    )
                ).all()
            ]
            step = trace_steps.c
            steps = [
                from_row(_plain(x))
                for x in (
                    await conn.execute(sa.select(trace_steps).where(step.request_id == request_id).order_by(step.seq))
                ).all()
            ]
            key_name = None
            if request.get("key_id"):
                key_name = (
                    await conn.execute(sa.select(api_keys.c.name).where(api_keys.c.id == request["key_id"]))
                ).scalar()
        return TraceDetail(request, findings, response, sources, events, key_name, steps)

    async def _sources(self, conn: Any, response: dict[str, Any] | None) -> list[dict[str, Any]]:
        if response is None:
            return []
        try:
            cited = json.loads(response.get("sources") or "[]")
        except ValueError:
            return []
        out = []
        d = kb_documents.c
        for item in cited[:50] if isinstance(cited, list) else []:
            if not isinstance(item, dict):
                continue
            kb, doc_id, version = item.get("kb"), item.get("doc_id"), item.get("version")
            query = sa.select(d.title, d.access, d.suspicious, d.active).where(
                d.kb == str(kb), d.doc_id == str(doc_id), d.version == int(version or 0)
            )
            row = (await conn.execute(query)).first()
            access = sorted(json.loads(row[1] or "[]")) if row is not None else []
            out.append({"kb": kb, "doc_id": doc_id, "version": version, "title": row[0] if row else None,
                        "access": access, "suspicious": bool(row[2]) if row else False,
                        "active": bool(row[3]) if row else False, "stored": row is not None})  # fmt: skip
        return out

    # -- guardrails -----------------------------------------------------------------------------------------

    async def findings_series(self, window: Window, team: str | None) -> dict[tuple[str, str], list[int]]:
        """(detector, action) → findings per bucket."""
        g = guard_findings.c
        bucket = self._bucket(g.ts, window).label("b")
        query = (
            sa.select(bucket, g.detector, g.action, sa.func.count())
            .where(g.ts >= window.since, g.ts < window.until)
            .group_by(bucket, g.detector, g.action)
        )
        if team is not None:
            query = query.where(g.team == team)
        out: dict[tuple[str, str], list[int]] = {}
        async with self.engine.connect() as conn:
            for b, detector, action, count in (await conn.execute(query)).all():
                series = out.setdefault((str(detector), str(action)), [0] * window.buckets)
                if 0 <= int(b) < window.buckets:
                    series[int(b)] += int(count)
        return dict(sorted(out.items()))

    async def top_blocked(self, window: Window, team: str | None, limit: int = 10) -> list[tuple[str, str, int]]:
        """The categories (detector, label) that blocked most often."""
        g = guard_findings.c
        query = (
            sa.select(g.detector, g.label, sa.func.count().label("n"))
            .where(g.ts >= window.since, g.ts < window.until, g.action == "block")
            .group_by(g.detector, g.label)
            .order_by(sa.desc("n"), g.detector, g.label)
            .limit(limit)
        )
        if team is not None:
            query = query.where(g.team == team)
        async with self.engine.connect() as conn:
            return [(str(a), str(b), int(n)) for a, b, n in (await conn.execute(query)).all()]

    # -- feedback -------------------------------------------------------------------------------------------

    async def feedback_rates(self, since: float, team: str | None) -> list[dict[str, Any]]:
        """Per app since a time: answers, thumbs up/down events, copies, scores and comments."""
        f, r = feedback.c, responses.c
        events = sa.select(
            f.app, _count_if((f.kind == "thumbs") & (f.value >= 0.5)),
            _count_if((f.kind == "thumbs") & (f.value < 0.5)), _count_if(f.kind == "copy"),
            _count_if(f.kind == "score"), sa.func.avg(sa.case((f.kind == "score", f.value))),
            _count_if(f.comment.is_not(None)),
        ).where(f.ts >= since).group_by(f.app)  # fmt: skip
        answers = sa.select(r.app, sa.func.count()).where(r.ts >= since).group_by(r.app)
        if team is not None:
            events, answers = events.where(f.team == team), answers.where(r.team == team)
        async with self.engine.connect() as conn:
            counts = {a: int(n) for a, n in (await conn.execute(answers)).all()}
            rows = (await conn.execute(events)).all()
        out: dict[str | None, dict[str, Any]] = {
            app: {"app": app, "answers": n, "up": 0, "down": 0, "copies": 0, "scores": 0, "mean_score": None,
                  "comments": 0} for app, n in counts.items()
        }  # fmt: skip
        for app, up, down, copies, scores, mean, comments in rows:
            entry = out.setdefault(app, {"app": app, "answers": 0})
            entry.update(up=int(up), down=int(down), copies=int(copies), scores=int(scores), comments=int(comments),
                         mean_score=None if mean is None else float(mean))  # fmt: skip
        return sorted(out.values(), key=lambda e: str(e["app"]))

    async def comments(
        self, team: str | None, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Feedback events with a comment, newest first, and the id to continue before."""
        f = feedback.c
        query = (
            sa.select(f.id, f.request_id, f.ts, f.team, f.app, f.experiment, f.variant, f.kind, f.value, f.comment)
            .where(f.comment.is_not(None))
            .order_by(f.id.desc())
            .limit(limit + 1)
        )
        if team is not None:
            query = query.where(f.team == team)
        if before is not None:
            query = query.where(f.id < before)
        async with self.engine.connect() as conn:
            rows = [_plain(x) for x in (await conn.execute(query)).all()]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, int(rows[-1]["id"]) if more and rows else None

    # -- keys, knowledge, experiments -----------------------------------------------------------------------

    async def spend_since(
        self, column: Literal["key_id", "team"], values: Sequence[str], since: float, rolled: float | None = None
    ) -> dict[str, float]:
        """USD per key (or team) since an hour-aligned moment: roll-ups up to `rolled`, the live log after."""
        if not values:
            return {}
        edge = since if rolled is None or since % HOUR else max(since, rolled)
        r, u = requests.c, (ui_rollup_keys if column == "key_id" else ui_rollup_requests).c
        live = (
            sa.select(r[column], sa.func.sum(r.cost_usd))
            .where(r[column].in_(list(values)), r.ts >= edge)
            .group_by(r[column])
        )
        past = (
            sa.select(u[column], sa.func.sum(u.cost_usd))
            .where(u[column].in_(list(values)), u.hour >= since, u.hour < edge)
            .group_by(u[column])
        )
        out = dict.fromkeys(values, 0.0)
        async with self.engine.connect() as conn:
            rows = list((await conn.execute(live)).all())
            if edge > since:
                rows += (await conn.execute(past)).all()
        for name, usd in rows:
            out[str(name)] += float(usd or 0.0)
        return out

    async def document_versions(self, kb: str, doc_id: str) -> list[dict[str, Any]]:
        """Every stored version of one document, newest first (text left out)."""
        d = kb_documents.c
        query = (
            sa.select(d.version, d.title, d.content_hash, d.access, d.source, d.suspicious, d.active, d.created_at,
                      d.retired_at)
            .where(d.kb == kb, d.doc_id == doc_id)
            .order_by(d.version.desc())
        )  # fmt: skip
        async with self.engine.connect() as conn:
            return [_plain(x) for x in (await conn.execute(query)).all()]

    async def experiment_rows(self) -> list[dict[str, Any]]:
        """The `experiments` table as stored, newest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(experiments).order_by(experiments.c.created_at.desc()))).all()
        return [_plain(x) for x in rows]
