"""Evaluation-run records and the outer loop's reads over production answers and knowledge history.

An evaluation run is recorded when it starts, with the knowledge state it evaluates — for every knowledge base the
app reads, the id of the newest `kb_events` row — and marked finished when it ends; knowledge drift is then the
events after those ids.

Owns: every query on `eval_runs`; the knowledge state and events of knowledge bases as the outer loop reads them;
the selection of answers (`responses` with their latest thumbs from `feedback` and their guard finding labels)
for traces-to-datasets and question drift. Must not: decide what counts as a change or a drift, redact, build
cases or write any table but `eval_runs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from gengate.outer.traces import Trace
from gengate.store.schema import eval_runs, feedback, guard_findings, kb_events, responses

FeedbackFilter = Literal["any", "up", "down", "none"]
MAX_TRACES = 50_000  # newest answers one selection reads at most
_IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class EvalRunRecord:
    """One recorded evaluation run and the knowledge it evaluated ({knowledge base: last kb_events id})."""

    run_id: str
    target: str
    dataset: str
    dataset_version: str
    variant: str
    started_at: float
    finished_at: float | None
    knowledge: dict[str, int]


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """Which answers of one app to read: a time window, the latest thumbs, guard findings, the outcome."""

    app: str
    since: float | None = None
    until: float | None = None
    feedback: FeedbackFilter = "any"
    with_findings: bool = False
    outcome: str | None = None


def _run_from(row: sa.Row[Any]) -> EvalRunRecord:
    m = row._mapping
    return EvalRunRecord(
        run_id=m["run_id"], target=m["target"], dataset=m["dataset"], dataset_version=m["dataset_version"],
        variant=m["variant"], started_at=float(m["started_at"]),
        finished_at=None if m["finished_at"] is None else float(m["finished_at"]),
        knowledge={str(k): int(v) for k, v in json.loads(m["knowledge"] or "{}").items()},
    )  # fmt: skip


class OuterRunsStore:
    """Repository over `eval_runs`, and read-only over answers, feedback, findings and knowledge history."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- knowledge state --------------------------------------------------------------------------------------

    async def knowledge_state(self, kbs: Sequence[str]) -> dict[str, int]:
        """The newest `kb_events` id of each knowledge base (0 for one with no history)."""
        if not kbs:
            return {}
        query = (
            sa.select(kb_events.c.kb, sa.func.max(kb_events.c.id))
            .where(kb_events.c.kb.in_(list(kbs)))
            .group_by(kb_events.c.kb)
        )
        async with self.engine.connect() as conn:
            found = {str(kb): int(last) for kb, last in (await conn.execute(query)).all()}
        return {kb: found.get(kb, 0) for kb in kbs}

    async def kb_events_after(self, kb: str, after: int) -> list[dict[str, Any]]:
        """A knowledge base's events with an id above `after`, oldest first."""
        query = sa.select(kb_events).where(kb_events.c.kb == kb, kb_events.c.id > after).order_by(kb_events.c.id)
        async with self.engine.connect() as conn:
            return [{str(k): v for k, v in r._mapping.items()} for r in (await conn.execute(query)).all()]

    # -- evaluation runs --------------------------------------------------------------------------------------

    async def start_run(
        self, run_id: str, *, target: str, dataset: str, dataset_version: str, variant: str, kbs: Sequence[str],
        now: float | None = None,
    ) -> EvalRunRecord:  # fmt: skip
        """Record a run as started with the current knowledge state of `kbs`.

        A resumed run keeps the record (and knowledge state) it started with: its earlier trials saw that state.
        """
        existing = await self.get_run(run_id)
        if existing is not None:
            return existing
        knowledge = await self.knowledge_state(kbs)
        async with self.engine.begin() as conn:
            await conn.execute(
                eval_runs.insert().values(
                    run_id=run_id, target=target, dataset=dataset, dataset_version=dataset_version, variant=variant,
                    started_at=now if now is not None else time.time(), finished_at=None,
                    knowledge=json.dumps(knowledge, sort_keys=True),
                )
            )  # fmt: skip
        record = await self.get_run(run_id)
        assert record is not None
        return record

    async def finish_run(self, run_id: str, now: float | None = None) -> None:
        """Mark a run finished."""
        async with self.engine.begin() as conn:
            await conn.execute(
                eval_runs.update()
                .where(eval_runs.c.run_id == run_id)
                .values(finished_at=now if now is not None else time.time())
            )

    async def get_run(self, run_id: str) -> EvalRunRecord | None:
        """One run by id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(eval_runs).where(eval_runs.c.run_id == run_id))).first()
        return _run_from(row) if row is not None else None

    async def last_run(self, target: str) -> EvalRunRecord | None:
        """The newest finished run of a target (`app/<name>` or a model alias)."""
        query = (
            sa.select(eval_runs)
            .where(eval_runs.c.target == target, eval_runs.c.finished_at.is_not(None))
            .order_by(eval_runs.c.finished_at.desc(), eval_runs.c.started_at.desc())
            .limit(1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _run_from(row) if row is not None else None

    async def runs(self, target: str | None = None, *, limit: int = 20) -> list[EvalRunRecord]:
        """Runs, newest first, optionally of one target."""
        query = sa.select(eval_runs).order_by(eval_runs.c.started_at.desc()).limit(limit)
        if target is not None:
            query = query.where(eval_runs.c.target == target)
        async with self.engine.connect() as conn:
            return [_run_from(r) for r in (await conn.execute(query)).all()]

    # -- answers ----------------------------------------------------------------------------------------------

    async def traces(self, q: TraceQuery, *, max_rows: int = MAX_TRACES) -> list[Trace]:
        """An app's answers matching the query, newest first, each with its latest thumbs and finding labels."""
        ranked = (
            sa.select(
                feedback.c.request_id, feedback.c.value, feedback.c.comment,
                sa.func.row_number()
                .over(partition_by=feedback.c.request_id, order_by=(feedback.c.ts.desc(), feedback.c.id.desc()))
                .label("rank"),
            )
            .where(feedback.c.kind == "thumbs")
            .subquery()
        )  # fmt: skip
        latest = sa.select(ranked.c.request_id, ranked.c.value, ranked.c.comment).where(ranked.c.rank == 1).subquery()
        query = (
            sa.select(responses, latest.c.value.label("thumbs"), latest.c.comment.label("thumbs_comment"))
            .select_from(responses.outerjoin(latest, latest.c.request_id == responses.c.request_id))
            .where(responses.c.app == q.app)
            .order_by(responses.c.ts.desc(), responses.c.request_id)
            .limit(max_rows)
        )
        if q.since is not None:
            query = query.where(responses.c.ts >= q.since)
        if q.until is not None:
            query = query.where(responses.c.ts < q.until)
        if q.outcome is not None:
            query = query.where(responses.c.outcome == q.outcome)
        if q.with_findings:
            query = query.where(responses.c.findings > 0)
        if q.feedback == "down":
            query = query.where(latest.c.value < 0.5)
        elif q.feedback == "up":
            query = query.where(latest.c.value >= 0.5)
        elif q.feedback == "none":
            query = query.where(latest.c.request_id.is_(None))
        async with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in (await conn.execute(query)).all()]
            labels: dict[str, list[str]] = {}
            ids = [r["request_id"] for r in rows if r["findings"]]
            for start in range(0, len(ids), _IN_CHUNK):
                found = await conn.execute(
                    sa.select(guard_findings.c.request_id, guard_findings.c.label)
                    .where(guard_findings.c.request_id.in_(ids[start : start + _IN_CHUNK]))
                    .order_by(guard_findings.c.id)
                )
                for request_id, label in found.all():
                    labels.setdefault(str(request_id), []).append(str(label))
        return [_trace(r, labels.get(r["request_id"], [])) for r in rows]

    async def recent_questions(self, app: str, *, since: float, limit: int = MAX_TRACES) -> list[str]:
        """The questions an app was asked since a time (as its payload setting kept them), newest first."""
        query = (
            sa.select(responses.c.question)
            .where(responses.c.app == app, responses.c.ts >= since, responses.c.question.is_not(None))
            .order_by(responses.c.ts.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [str(q) for (q,) in (await conn.execute(query)).all() if str(q).strip()]


def _trace(row: dict[str, Any], labels: list[str]) -> Trace:
    try:
        sources = json.loads(row.get("sources") or "[]")
    except json.JSONDecodeError:
        sources = []
    return Trace(
        request_id=str(row["request_id"]), ts=float(row["ts"]), app=str(row["app"]), subject=row.get("subject"),
        team=row.get("team"), groups=_groups(row.get("caller_groups")),
        experiment=row.get("experiment"), variant=row.get("variant"), outcome=str(row["outcome"]),
        question=row.get("question"), answer=row.get("answer"), payload=str(row["payload"]),
        cited=tuple(str(s["doc_id"]) for s in sources if isinstance(s, dict) and s.get("doc_id")),
        thumbs=None if row.get("thumbs") is None else float(row["thumbs"]), comment=row.get("thumbs_comment"),
        finding_labels=tuple(labels),
    )  # fmt: skip


def _groups(raw: str | None) -> tuple[str, ...] | None:
    """The caller's recorded groups (None for answers stored before they were recorded, or unreadable)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return tuple(str(g) for g in value) if isinstance(value, list) else None
