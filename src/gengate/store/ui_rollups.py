"""Hourly roll-ups of the request log for the dashboard's charts and budget pages.

`roll_up` folds every complete hour that ended more than `LAG_SECONDS` ago into `ui_rollup_requests` (per team and
model: counts, errors, blocks, tokens, cost and a cumulative latency histogram), `ui_rollup_keys` (per key: requests
and cost) and `ui_rollup_apps` (per team
and app: answers and cost), a day per transaction so the request log's writer is never held up for long, and
advances `ui_rollup_state.rolled_until`. Readers combine the roll-ups before that moment with the live log after it.

Several processes may roll at once: the state moves with a conditional update, so of two processes rolling the same
hours one commits and the other rolls back; rows are never counted twice. A request recorded more than `LAG_SECONDS`
after its hour ended (the log writes within seconds; a request is timed from its start) is not in the roll-ups.

Owns: the roll-up tables' writes. Must not: render, or read for pages (that is `gengate.store.dashboard`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gengate.store.schema import (
    LATENCY_EDGES_MS,
    requests,
    responses,
    ui_rollup_apps,
    ui_rollup_keys,
    ui_rollup_requests,
    ui_rollup_state,
)

log = logging.getLogger("gengate.dashboard")
HOUR = 3600.0
LAG_SECONDS = 600.0
CHUNK_HOURS = 24


def hour_of(column: Any, dialect: str) -> sa.ColumnElement[Any]:
    """The start of the hour a timestamp column falls in."""
    # CAST truncates on SQLite (timestamps are positive, so it is floor); PostgreSQL's CAST rounds.
    hours = sa.func.floor(column / HOUR) if dialect == "postgresql" else sa.cast(column / HOUR, sa.Integer)
    return hours * HOUR


def _count_if(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


async def rolled_until(engine: AsyncEngine) -> float | None:
    """The moment before which the roll-ups hold every hour (None before the first roll)."""
    async with engine.connect() as conn:
        value = (
            await conn.execute(sa.select(ui_rollup_state.c.rolled_until).where(ui_rollup_state.c.id == 1))
        ).scalar()
    return None if value is None else float(value)


async def _start(engine: AsyncEngine, target: float) -> float:
    """The state's moment, creating it at the log's first hour (or `target` for an empty log)."""
    current = await rolled_until(engine)
    if current is not None:
        return current
    async with engine.connect() as conn:
        first = (await conn.execute(sa.select(sa.func.min(requests.c.ts)))).scalar()
    start = target if first is None else math.floor(float(first) / HOUR) * HOUR
    try:
        async with engine.begin() as conn:
            await conn.execute(ui_rollup_state.insert().values(id=1, rolled_until=min(start, target)))
    except IntegrityError:
        pass  # another process created it first
    return await rolled_until(engine) or start


async def _roll(conn: AsyncConnection, dialect: str, start: float, end: float) -> None:
    r = requests.c
    hour = hour_of(r.ts, dialect).label("hour")
    select = sa.select(
        hour, r.team, r.model, sa.func.count(), _count_if((r.status >= 400) & (r.status < 500)),
        _count_if(r.status >= 500), _count_if(r.error_code == "guard_blocked"),
        sa.func.coalesce(sa.func.sum(r.prompt_tokens), 0), sa.func.coalesce(sa.func.sum(r.completion_tokens), 0),
        sa.func.coalesce(sa.func.sum(r.cost_usd), 0.0), *(_count_if(r.latency_ms <= edge) for edge in LATENCY_EDGES_MS),
    ).where(r.ts >= start, r.ts < end).group_by(hour, r.team, r.model)  # fmt: skip
    columns = [
        "hour",
        "team",
        "model",
        "requests",
        "client_errors",
        "server_errors",
        "blocked",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        *(f"le_{i}" for i in range(len(LATENCY_EDGES_MS))),
    ]
    await conn.execute(ui_rollup_requests.insert().from_select(columns, select))
    keys = (
        sa.select(hour, r.key_id, sa.func.count(), sa.func.coalesce(sa.func.sum(r.cost_usd), 0.0))
        .where(r.ts >= start, r.ts < end, r.key_id.is_not(None))
        .group_by(hour, r.key_id)
    )
    await conn.execute(ui_rollup_keys.insert().from_select(["hour", "key_id", "requests", "cost_usd"], keys))
    a = responses.c
    app_hour = hour_of(a.ts, dialect).label("hour")
    apps = (
        sa.select(app_hour, a.team, a.app, sa.func.count(), sa.func.coalesce(sa.func.sum(a.cost_usd), 0.0))
        .where(a.ts >= start, a.ts < end)
        .group_by(app_hour, a.team, a.app)
    )
    await conn.execute(ui_rollup_apps.insert().from_select(["hour", "team", "app", "responses", "cost_usd"], apps))


async def roll_up(engine: AsyncEngine, now: float | None = None) -> float:
    """Fold the complete hours not yet rolled up; return the new `rolled_until`."""
    now = time.time() if now is None else now
    target = math.floor((now - LAG_SECONDS) / HOUR) * HOUR
    start = await _start(engine, target)
    while start < target:
        end = min(target, start + CHUNK_HOURS * HOUR)
        try:
            async with engine.begin() as conn:
                await _roll(conn, engine.dialect.name, start, end)
                moved = await conn.execute(
                    ui_rollup_state.update()
                    .where(ui_rollup_state.c.id == 1, ui_rollup_state.c.rolled_until == start)
                    .values(rolled_until=end)
                )
                if moved.rowcount != 1:
                    raise _Overtaken
        except _Overtaken:
            return await rolled_until(engine) or start  # another process rolled these hours meanwhile
        except DBAPIError as exc:  # e.g. SQLite busy beyond its timeout: pages read the live log for the rest
            log.warning("rolling up the request log failed; will retry on the next page: %s", type(exc).__name__)
            return start
        start = end
    return start


class _Overtaken(Exception):
    """The state moved under this roll: roll back."""
