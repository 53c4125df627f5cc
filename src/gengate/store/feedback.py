"""Feedback and the outer loop's privacy operations over the store: events, aggregates, purge, forget.

Owns: every query on `feedback` (and the reads of `responses` that feedback needs), the aggregates that
dashboards and A/B experiments read, and the deletions that retention and "forget this person" make across
`responses`, `feedback`, `guard_findings`, `trace_steps` and `requests`. Must not: know about HTTP, settings or
callers — it takes cut-off times and subjects, never policies.

Thumbs and scores are *latest wins*: when one person changes their mind about one answer (thumbs up, later
thumbs down, each with its own event id), aggregates count only their newest thumbs — and their newest score —
for that answer, ordered by the time the gateway received them. Every event stays in the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from gengate.store.schema import feedback, fit, guard_findings, requests, responses, trace_steps

EventKey = tuple[str, str]  # (request_id, event_id): what makes an event unique


@dataclass(frozen=True, slots=True)
class ResponseRef:
    """What feedback needs to know about an answer: whose it is, when it was given, what produced it."""

    request_id: str
    ts: float
    subject: str | None
    key_id: str | None
    team: str | None
    app: str | None
    experiment: str | None
    variant: str | None
    payload: str  # full | redacted | none: what the app kept of the question and answer


@dataclass(frozen=True, slots=True)
class VariantStats:
    """One A/B variant's answers and their feedback, as sums from which means and variances follow.

    `copies` counts answers copied at least once (so `copies / responses` is a proportion), `thumbs_up` and
    `thumbs_down` count answers by each person's latest thumbs, `users` distinct subjects who got an answer.
    """

    variant: str
    responses: int
    answered: int
    blocked: int
    thumbs_up: int
    thumbs_down: int
    copies: int
    users: int
    cost_sum: float
    cost_sum_sq: float
    latency_sum: float  # milliseconds
    latency_sum_sq: float


@dataclass(frozen=True, slots=True)
class FeedbackSummary:
    """Answers and feedback for one (app, experiment, variant) group."""

    app: str | None
    experiment: str | None
    variant: str | None
    responses: int
    thumbs_up: int
    thumbs_down: int
    copies: int  # copy events
    regenerates: int
    shares: int
    scores: int  # answers with a score (latest per person)
    mean_score: float | None
    comments: int


@dataclass(frozen=True, slots=True)
class Comment:
    """One event that carries a comment (as the app's payload setting kept it)."""

    id: int
    request_id: str
    ts: float
    app: str | None
    experiment: str | None
    variant: str | None
    kind: str
    value: float | None
    comment: str


@dataclass(frozen=True, slots=True)
class PurgeCounts:
    """Rows `purge` deleted."""

    responses: int = 0
    feedback: int = 0
    trace_steps: int = 0


@dataclass(frozen=True, slots=True)
class ForgetCounts:
    """Rows `forget` deleted, and request-log rows it anonymised."""

    responses: int = 0
    feedback: int = 0
    guard_findings: int = 0
    trace_steps: int = 0
    requests_anonymised: int = 0


def _ref(row: Any) -> ResponseRef:
    m = row._mapping
    return ResponseRef(
        request_id=m["request_id"], ts=m["ts"], subject=m["subject"], key_id=m["key_id"], team=m["team"],
        app=m["app"], experiment=m["experiment"], variant=m["variant"], payload=m["payload"],
    )  # fmt: skip


def _latest(*conditions: sa.ColumnElement[bool]) -> sa.Subquery:
    """Each person's newest thumbs and newest score per answer (the `rank` 1 rows)."""
    rank = sa.func.row_number().over(
        partition_by=(feedback.c.request_id, feedback.c.subject, feedback.c.kind),
        order_by=(feedback.c.ts.desc(), feedback.c.id.desc()),
    )
    return (
        sa.select(
            feedback.c.request_id, feedback.c.app, feedback.c.experiment, feedback.c.variant, feedback.c.kind,
            feedback.c.value, rank.label("rank"),
        )
        .where(feedback.c.kind.in_(("thumbs", "score")), *conditions)
        .subquery()
    )  # fmt: skip


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


class FeedbackStore:
    """Async repository for feedback events and the outer loop's retention, over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- writing ------------------------------------------------------------------------------------------

    async def add_events(self, rows: Sequence[Mapping[str, Any]]) -> set[EventKey]:
        """Insert events, skipping any whose (request_id, event_id) is stored already; return the inserted keys.

        Text is fitted to the columns (a token's subject may be longer than the column): on PostgreSQL one event
        that does not fit would otherwise fail the group commit of every caller's events it was batched with.
        """
        if not rows:
            return set()
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        statement = (
            insert(feedback)
            .on_conflict_do_nothing(index_elements=["request_id", "event_id"])
            .returning(feedback.c.request_id, feedback.c.event_id)
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(statement, fit(feedback, rows))
            return {(r[0], r[1]) for r in result.all()}

    # -- reading ------------------------------------------------------------------------------------------

    async def get_response(self, request_id: str) -> ResponseRef | None:
        """The answer with this request id, if it is stored."""
        query = sa.select(
            responses.c.request_id, responses.c.ts, responses.c.subject, responses.c.key_id, responses.c.team,
            responses.c.app, responses.c.experiment, responses.c.variant, responses.c.payload,
        ).where(responses.c.request_id == request_id)  # fmt: skip
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _ref(row) if row is not None else None

    async def events_for(self, request_id: str) -> list[dict[str, Any]]:
        """Every stored event on one answer, oldest first."""
        query = sa.select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.id)
        async with self.engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()} for r in (await conn.execute(query)).all()]

    async def summary(
        self, *, app: str | None = None, experiment: str | None = None, since: float | None = None
    ) -> list[FeedbackSummary]:
        """Answers and feedback per (app, experiment, variant), optionally for one app, experiment or period."""
        r_where: list[sa.ColumnElement[bool]] = []
        f_where: list[sa.ColumnElement[bool]] = []
        for column, value in (("app", app), ("experiment", experiment)):
            if value is not None:
                r_where.append(responses.c[column] == value)
                f_where.append(feedback.c[column] == value)
        if since is not None:
            r_where.append(responses.c.ts >= since)
            f_where.append(feedback.c.ts >= since)
        group_r = (responses.c.app, responses.c.experiment, responses.c.variant)
        group_f = (feedback.c.app, feedback.c.experiment, feedback.c.variant)
        latest = _latest(*f_where)
        group_l = (latest.c.app, latest.c.experiment, latest.c.variant)
        thumbs, score = latest.c.kind == "thumbs", latest.c.kind == "score"
        queries = {
            "responses": sa.select(*group_r, sa.func.count()).where(*r_where).group_by(*group_r),
            "events": sa.select(
                *group_f, _count_if(feedback.c.kind == "copy"), _count_if(feedback.c.kind == "regenerate"),
                _count_if(feedback.c.kind == "share"), _count_if(feedback.c.comment.is_not(None)),
            ).where(*f_where).group_by(*group_f),
            "latest": sa.select(
                *group_l, _count_if(thumbs & (latest.c.value >= 0.5)), _count_if(thumbs & (latest.c.value < 0.5)),
                _count_if(score), sa.func.avg(sa.case((score, latest.c.value))),
            ).where(latest.c.rank == 1).group_by(*group_l),
        }  # fmt: skip
        found: dict[tuple[str | None, str | None, str | None], dict[str, Any]] = {}
        async with self.engine.connect() as conn:
            for name, query in queries.items():
                for row in (await conn.execute(query)).all():
                    found.setdefault((row[0], row[1], row[2]), {})[name] = row[3:]
        out = []
        for (g_app, g_exp, g_var), parts in sorted(found.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
            n = parts.get("responses", (0,))
            events = parts.get("events", (0, 0, 0, 0))
            up, down, scores, mean = parts.get("latest", (0, 0, 0, None))
            summary = FeedbackSummary(
                app=g_app, experiment=g_exp, variant=g_var, responses=int(n[0]), thumbs_up=int(up),
                thumbs_down=int(down), copies=int(events[0]), regenerates=int(events[1]), shares=int(events[2]),
                scores=int(scores), mean_score=None if mean is None else float(mean), comments=int(events[3]),
            )  # fmt: skip
            out.append(summary)
        return out

    async def comments(
        self, *, app: str | None = None, experiment: str | None = None, limit: int = 50, before: int | None = None
    ) -> list[Comment]:
        """Events with a comment, newest first; pass the last one's `id` as `before` for the next page."""
        query = sa.select(
            feedback.c.id, feedback.c.request_id, feedback.c.ts, feedback.c.app, feedback.c.experiment,
            feedback.c.variant, feedback.c.kind, feedback.c.value, feedback.c.comment,
        ).where(feedback.c.comment.is_not(None)).order_by(feedback.c.id.desc()).limit(limit)  # fmt: skip
        if app is not None:
            query = query.where(feedback.c.app == app)
        if experiment is not None:
            query = query.where(feedback.c.experiment == experiment)
        if before is not None:
            query = query.where(feedback.c.id < before)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Comment(**{str(k): v for k, v in r._mapping.items()}) for r in rows]

    async def variant_stats(self, experiment: str) -> dict[str, VariantStats]:
        """Per variant of one experiment: answers, outcomes, latest-wins thumbs, copied answers, users, and
        sums and sums of squares of cost (USD) and latency (ms)."""
        r = responses.c
        answers = (
            sa.select(
                r.variant, sa.func.count(), _count_if(r.outcome == "answered"), _count_if(r.outcome == "blocked"),
                sa.func.count(sa.distinct(r.subject)), sa.func.coalesce(sa.func.sum(r.cost_usd), 0.0),
                sa.func.coalesce(sa.func.sum(r.cost_usd * r.cost_usd), 0.0),
                sa.func.coalesce(sa.func.sum(r.latency_ms), 0.0),
                sa.func.coalesce(sa.func.sum(r.latency_ms * r.latency_ms), 0.0),
            )
            .where(r.experiment == experiment, r.variant.is_not(None))
            .group_by(r.variant)
        )  # fmt: skip
        latest = _latest(feedback.c.experiment == experiment, feedback.c.variant.is_not(None))
        thumbs = latest.c.kind == "thumbs"
        votes = (
            sa.select(
                latest.c.variant, _count_if(thumbs & (latest.c.value >= 0.5)),
                _count_if(thumbs & (latest.c.value < 0.5)),
            )
            .where(latest.c.rank == 1)
            .group_by(latest.c.variant)
        )  # fmt: skip
        copied = (
            sa.select(feedback.c.variant, sa.func.count(sa.distinct(feedback.c.request_id)))
            .where(feedback.c.experiment == experiment, feedback.c.kind == "copy", feedback.c.variant.is_not(None))
            .group_by(feedback.c.variant)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(answers)).all()
            thumbs_by = {v: (int(up), int(down)) for v, up, down in (await conn.execute(votes)).all()}
            copies_by = {v: int(n) for v, n in (await conn.execute(copied)).all()}
        out: dict[str, VariantStats] = {}
        for variant in sorted({row[0] for row in rows} | set(thumbs_by) | set(copies_by)):
            row = next((x for x in rows if x[0] == variant), None)
            n, answered, blocked, users, cost, cost2, lat, lat2 = row[1:] if row is not None else (0,) * 4 + (0.0,) * 4
            up, down = thumbs_by.get(variant, (0, 0))
            out[variant] = VariantStats(
                variant=variant, responses=int(n), answered=int(answered), blocked=int(blocked), thumbs_up=up,
                thumbs_down=down, copies=copies_by.get(variant, 0), users=int(users), cost_sum=float(cost),
                cost_sum_sq=float(cost2), latency_sum=float(lat), latency_sum_sq=float(lat2),
            )  # fmt: skip
        return out

    # -- retention and privacy ----------------------------------------------------------------------------

    async def purge(self, cutoffs: Mapping[str, float | None], others: float | None) -> PurgeCounts:
        """Delete answers older than their app's cut-off (a timestamp; None keeps them) with all their feedback,
        and feedback older than the cut-off. `others` applies to answers of apps not in `cutoffs` (and to plain
        model calls, whose app is NULL)."""
        scopes: list[tuple[sa.ColumnElement[bool], sa.ColumnElement[bool], float]] = [
            (responses.c.app == app, feedback.c.app == app, cutoff)
            for app, cutoff in cutoffs.items()
            if cutoff is not None
        ]
        if others is not None:
            known = list(cutoffs)
            scopes.append(
                (
                    sa.or_(responses.c.app.is_(None), responses.c.app.not_in(known)),
                    sa.or_(feedback.c.app.is_(None), feedback.c.app.not_in(known)),
                    others,
                )
            )
        deleted_r = deleted_f = deleted_s = 0
        for in_app, in_app_f, cutoff in scopes:
            expired = sa.select(responses.c.request_id).where(in_app, responses.c.ts < cutoff)
            async with self.engine.begin() as conn:
                result = await conn.execute(sa.delete(feedback).where(feedback.c.request_id.in_(expired)))
                deleted_f += result.rowcount
                # The steps say what was looked up and called for the answer (documents, tools): they go with it.
                result = await conn.execute(sa.delete(trace_steps).where(trace_steps.c.request_id.in_(expired)))
                deleted_s += result.rowcount
                result = await conn.execute(sa.delete(responses).where(in_app, responses.c.ts < cutoff))
                deleted_r += result.rowcount
                # Feedback whose answer is gone already (forgotten, or never written) expires on its own time.
                result = await conn.execute(sa.delete(feedback).where(in_app_f, feedback.c.ts < cutoff))
                deleted_f += result.rowcount
        return PurgeCounts(responses=deleted_r, feedback=deleted_f, trace_steps=deleted_s)

    async def forget(self, subject: str) -> ForgetCounts:
        """Delete one person's answers, their feedback and the guard findings and trace steps of their requests;
        keep their request-log rows (cost, tokens, latency) with the subject removed. One transaction."""
        their_requests = sa.select(requests.c.id).where(requests.c.subject == subject)
        their_answers = sa.select(responses.c.request_id).where(responses.c.subject == subject)
        async with self.engine.begin() as conn:
            findings = await conn.execute(
                sa.delete(guard_findings).where(
                    sa.or_(
                        guard_findings.c.request_id.in_(their_requests), guard_findings.c.request_id.in_(their_answers)
                    )
                )
            )
            steps = await conn.execute(
                sa.delete(trace_steps).where(
                    sa.or_(trace_steps.c.request_id.in_(their_requests), trace_steps.c.request_id.in_(their_answers))
                )
            )
            events = await conn.execute(
                sa.delete(feedback).where(
                    sa.or_(feedback.c.subject == subject, feedback.c.request_id.in_(their_answers))
                )
            )
            answers = await conn.execute(sa.delete(responses).where(responses.c.subject == subject))
            logged = await conn.execute(sa.update(requests).where(requests.c.subject == subject).values(subject=None))
        return ForgetCounts(
            responses=answers.rowcount, feedback=events.rowcount, guard_findings=findings.rowcount,
            trace_steps=steps.rowcount, requests_anonymised=logged.rowcount,
        )  # fmt: skip
