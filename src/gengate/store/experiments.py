"""A/B experiment storage: specs and statuses, and the per-unit totals their analysis reads.

Several gateway processes and the CLI share experiments through this table: status changes are conditional updates
(`expected` status), so two processes racing to stop the same experiment both succeed or see it stopped, never
overwrite each other.

Owns: every query on `experiments`, and the per-unit aggregation of `responses` and `feedback` for one experiment
(latest thumbs and score per answer win, like `FeedbackStore`). Must not: validate specs against the configuration,
decide transitions or compute statistics (that is `gengate.outer`).
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gengate.errors import Conflict, NotFound
from gengate.outer.experiment_analysis import UnitTotals
from gengate.outer.experiments import ExperimentSpec, spec_from_data
from gengate.store.schema import experiments, feedback, responses


@dataclass(frozen=True, slots=True)
class ExperimentRecord:
    """A stored experiment: its spec and where it is in its life."""

    name: str
    app: str
    status: str
    spec: ExperimentSpec
    created_at: float
    started_at: float | None
    stopped_at: float | None
    winner: str | None
    note: str
    # When shipped: the configuration values the winner replaced; it is served only while they are in force.
    shipped_over: dict[str, Any] | None = None


def _record(row: sa.Row[Any]) -> ExperimentRecord:
    m = row._mapping
    data = json.loads(m["spec"])
    shipped_over = data.pop("shipped_over", None)
    return ExperimentRecord(
        name=m["name"], app=m["app"], status=m["status"], spec=spec_from_data(data, f"stored experiment {m['name']}"),
        created_at=float(m["created_at"]), started_at=m["started_at"], stopped_at=m["stopped_at"],
        winner=m["winner"], note=m["note"] or "", shipped_over=shipped_over,
    )  # fmt: skip


def _spec_json(spec: ExperimentSpec, shipped_over: dict[str, Any] | None = None) -> str:
    data = spec.model_dump(mode="json")
    if shipped_over is not None:
        data["shipped_over"] = shipped_over
    return json.dumps(data, sort_keys=True, ensure_ascii=False)


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


class ExperimentStore:
    """Repository over `experiments` (and reads of `responses` and `feedback`), SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, spec: ExperimentSpec, *, now: float | None = None) -> ExperimentRecord:
        """Store a new experiment as a draft (Conflict if the name is taken)."""
        values = {
            "name": spec.name, "app": spec.app, "status": "draft", "spec": _spec_json(spec),
            "created_at": now if now is not None else time.time(), "note": "",
        }  # fmt: skip
        try:
            async with self.engine.begin() as conn:
                await conn.execute(experiments.insert().values(**values))
        except IntegrityError:
            raise Conflict(f"an experiment named {spec.name!r} exists already") from None
        return await self.get(spec.name)

    async def find(self, name: str) -> ExperimentRecord | None:
        """The experiment with this name, if any."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(experiments).where(experiments.c.name == name))).first()
        return _record(row) if row is not None else None

    async def get(self, name: str) -> ExperimentRecord:
        """The experiment with this name (NotFound otherwise)."""
        record = await self.find(name)
        if record is None:
            raise NotFound(f"no experiment named {name!r}")
        return record

    async def list(
        self, *, statuses: Iterable[str] | None = None, app: str | None = None
    ) -> builtins.list[ExperimentRecord]:
        """Experiments, oldest first, optionally only some statuses or one app."""
        query = sa.select(experiments).order_by(experiments.c.created_at, experiments.c.name)
        if statuses is not None:
            query = query.where(experiments.c.status.in_(builtins.list(statuses)))
        if app is not None:
            query = query.where(experiments.c.app == app)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def set_status(
        self, name: str, status: str, *, expected: str, now: float | None = None, winner: str | None = None,
        note: str | None = None, shipped_over: dict[str, Any] | None = None,
    ) -> bool:  # fmt: skip
        """Move an experiment from `expected` to `status`; False when it was not in `expected` any more.

        `started_at` is set on the first start, `stopped_at` when it stops or ships; a winner and a note are set
        when given; `shipped_over` is recorded with a shipped winner.
        """
        now = now if now is not None else time.time()
        values: dict[str, Any] = {"status": status}
        if status == "running":
            values["started_at"] = sa.func.coalesce(experiments.c.started_at, now)
        if status in ("stopped", "shipped"):
            values["stopped_at"] = sa.func.coalesce(experiments.c.stopped_at, now)
        if winner is not None:
            values["winner"] = winner
        if note is not None:
            values["note"] = note
        async with self.engine.begin() as conn:
            if shipped_over is not None:
                row = (await conn.execute(sa.select(experiments.c.spec).where(experiments.c.name == name))).first()
                if row is None:
                    return False
                data = json.loads(row[0])
                data["shipped_over"] = shipped_over
                values["spec"] = json.dumps(data, sort_keys=True, ensure_ascii=False)
            result = await conn.execute(
                experiments.update()
                .where(experiments.c.name == name, experiments.c.status == expected)
                .values(**values)
            )
        return bool(result.rowcount)

    async def set_note(self, name: str, note: str, *, status: str) -> bool:
        """Replace the note of an experiment still in `status` (False otherwise, or when it says this already)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                experiments.update()
                .where(experiments.c.name == name, experiments.c.status == status, experiments.c.note != note)
                .values(note=note)
            )
        return bool(result.rowcount)

    async def span(self, name: str) -> tuple[float, float] | None:
        """(first, last) time an answer of this experiment was given, if any was."""
        query = sa.select(sa.func.min(responses.c.ts), sa.func.max(responses.c.ts)).where(
            responses.c.experiment == name
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row[0] is None:
            return None
        return float(row[0]), float(row[1])

    async def unit_totals(
        self, name: str, unit: str = "subject", until: float | None = None
    ) -> builtins.list[UnitTotals]:
        """Per (variant, unit) totals of the experiment's answers and their feedback, up to `until`."""
        r = responses.c
        unit_col = r.team if unit == "team" else r.subject
        answers: builtins.list[sa.ColumnElement[bool]] = [r.experiment == name, r.variant.is_not(None)]
        events: builtins.list[sa.ColumnElement[bool]] = [feedback.c.kind.in_(("thumbs", "score", "copy"))]
        if until is not None:
            answers.append(r.ts <= until)
            events.append(feedback.c.ts <= until)
        rank = sa.func.row_number().over(
            partition_by=(feedback.c.request_id, feedback.c.kind), order_by=(feedback.c.ts.desc(), feedback.c.id.desc())
        )
        mine = sa.select(r.request_id).where(*answers)
        latest = (
            sa.select(feedback.c.request_id, feedback.c.kind, feedback.c.value, rank.label("rank"))
            .where(*events, feedback.c.request_id.in_(mine))
            .subquery()
        )
        per_answer = (
            sa.select(
                latest.c.request_id,
                sa.func.max(sa.case((latest.c.kind == "thumbs", 1), else_=0)).label("rated"),
                sa.func.max(sa.case(((latest.c.kind == "thumbs") & (latest.c.value >= 0.5), 1), else_=0)).label("up"),
                sa.func.max(sa.case((latest.c.kind == "copy", 1), else_=0)).label("copied"),
                sa.func.max(sa.case((latest.c.kind == "score", 1), else_=0)).label("scored"),
                sa.func.max(sa.case((latest.c.kind == "score", latest.c.value))).label("score"),
            )
            .where(latest.c.rank == 1)
            .group_by(latest.c.request_id)
            .subquery()
        )  # fmt: skip
        f = per_answer.c
        query = (
            sa.select(
                r.variant, unit_col, sa.func.count(), _count_if(r.outcome == "answered"),
                _count_if(r.outcome == "blocked"), _count_if(r.outcome == "no_answer"),
                sa.func.coalesce(sa.func.sum(r.cost_usd), 0.0), sa.func.coalesce(sa.func.sum(r.latency_ms), 0.0),
                sa.func.coalesce(sa.func.sum(f.rated), 0), sa.func.coalesce(sa.func.sum(f.up), 0),
                sa.func.coalesce(sa.func.sum(f.copied), 0), sa.func.coalesce(sa.func.sum(f.scored), 0),
                sa.func.coalesce(sa.func.sum(f.score), 0.0),
            )
            .select_from(responses.outerjoin(per_answer, per_answer.c.request_id == r.request_id))
            .where(*answers)
            .group_by(r.variant, unit_col)
        )  # fmt: skip
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_totals(row) for row in rows]


def _totals(found: sa.Row[Any]) -> UnitTotals:
    row: tuple[Any, ...] = tuple(found)
    return UnitTotals(
        variant=str(row[0]), unit=str(row[1]), responses=int(row[2]), answered=int(row[3]), blocked=int(row[4]),
        no_answer=int(row[5]), cost_usd=float(row[6]), latency_ms=float(row[7]), rated=int(row[8]),
        thumbs_up=int(row[9]), copied=int(row[10]), scored=int(row[11]), score_sum=float(row[12]),
    )  # fmt: skip
