"""The Store: every query gengate makes, over SQLAlchemy Core (async), parameterised only.

Owns: the engine, migrations at open, and repository methods for keys, request logs and spend. Must not:
know about HTTP, policy decisions or key formats.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gengate.errors import ConfigError
from gengate.store.schema import (
    MIGRATIONS,
    api_keys,
    fit,
    guard_findings,
    metadata,
    requests,
    responses,
    schema_version,
    trace_steps,
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A stored virtual key (never the key itself: its hash and visible prefix)."""

    id: str
    hash: str
    name: str
    team: str
    user: str | None
    models: tuple[str, ...] | None
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    budget_period: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def active(self, now: float) -> bool:
        """Not revoked and not expired."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def _key_from_row(row: sa.Row[Any]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        id=m["id"],
        hash=m["hash"],
        name=m["name"],
        team=m["team"],
        user=m["user"],
        models=tuple(json.loads(m["models"])) if m["models"] else None,
        rpm=m["rpm"],
        tpm=m["tpm"],
        budget_usd=m["budget_usd"],
        budget_period=m["budget_period"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
    )


def _plain(row: sa.Row[Any]) -> dict[str, Any]:
    """A row as a dict with plain `str` keys (SQLAlchemy's keys are a str subclass JSON encoders refuse)."""
    return {str(k): v for k, v in row._mapping.items()}


class Store:
    """Async repository over one engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self.engine.dialect.name

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version now in force."""
        async with self.engine.begin() as conn:
            # Several gateway processes (or workers) may start at once: one migrates, the others wait, then
            # find the schema current. PostgreSQL: a transaction-scoped advisory lock. SQLite: take the write
            # lock up front (the driver would otherwise run the DDL outside any transaction, and two openers
            # would both see no tables and both try to create them).
            if self.dialect == "postgresql":
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(4242001)"))
            elif self.dialect == "sqlite":
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            await conn.run_sync(lambda c: metadata.create_all(c, tables=[schema_version]))
            current = (await conn.execute(sa.select(sa.func.max(schema_version.c.version)))).scalar() or 0
            for version, step in MIGRATIONS:
                if version > current:
                    await conn.run_sync(step)
                    await conn.execute(schema_version.insert().values(version=version, applied_at=time.time()))
                    current = version
            return int(current)

    async def close(self) -> None:
        """Dispose of the engine's connections."""
        await self.engine.dispose()

    # -- keys ---------------------------------------------------------------------------------------------

    async def insert_key(self, record: KeyRecord) -> None:
        """Store a new key record."""
        values = {
            "id": record.id,
            "hash": record.hash,
            "name": record.name,
            "team": record.team,
            "user": record.user,
            "models": json.dumps(list(record.models)) if record.models is not None else None,
            "rpm": record.rpm,
            "tpm": record.tpm,
            "budget_usd": record.budget_usd,
            "budget_period": record.budget_period,
            "created_at": record.created_at,
            "expires_at": record.expires_at,
            "revoked_at": record.revoked_at,
        }
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**values))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key record with this prefix, if any."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key_from_row(row) if row is not None else None

    async def list_keys(self, team: str | None = None, include_revoked: bool = False) -> list[KeyRecord]:
        """Keys, newest first, optionally for one team."""
        query = sa.select(api_keys).order_by(api_keys.c.created_at.desc())
        if team is not None:
            query = query.where(api_keys.c.team == team)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_key_from_row(r) for r in rows]

    async def revoke_key(self, key_id: str, now: float | None = None) -> bool:
        """Mark a key revoked; False when there was no such active key."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now if now is not None else time.time())
            )
        return bool(result.rowcount)

    # -- request log --------------------------------------------------------------------------------------

    async def write_requests(
        self, rows: Sequence[dict[str, Any]], findings: Sequence[dict[str, Any]] = (),
        answers: Sequence[dict[str, Any]] = (), steps: Sequence[dict[str, Any]] = (),
    ) -> None:  # fmt: skip
        """Insert a batch of trace records (with their guard findings, responses and steps) in one transaction.

        Text is fitted to the columns first (see `schema.fit`): the log keeps what a client sent (a model name, a
        question), and on PostgreSQL one unstorable value would otherwise hold up every record queued after it.
        """
        if rows or findings or answers or steps:
            async with self.engine.begin() as conn:
                if rows:
                    await conn.execute(requests.insert(), fit(requests, rows))
                if findings:
                    await conn.execute(guard_findings.insert(), fit(guard_findings, findings))
                if answers:
                    await conn.execute(responses.insert(), fit(responses, answers))
                if steps:
                    await conn.execute(trace_steps.insert(), fit(trace_steps, steps))

    async def findings_for(self, request_id: str) -> list[dict[str, Any]]:
        """Guard findings recorded for one request."""
        query = sa.select(guard_findings).where(guard_findings.c.request_id == request_id).order_by(guard_findings.c.id)
        async with self.engine.connect() as conn:
            return [_plain(r) for r in (await conn.execute(query)).all()]

    async def steps_for(self, request_id: str) -> list[dict[str, Any]]:
        """The trace steps (routing attempts, retrieved chunks, tool calls) of one request, in order."""
        query = sa.select(trace_steps).where(trace_steps.c.request_id == request_id).order_by(trace_steps.c.seq)
        async with self.engine.connect() as conn:
            return [_plain(r) for r in (await conn.execute(query)).all()]

    async def recent_requests(
        self, *, limit: int = 50, team: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """The newest trace records first."""
        query = sa.select(requests).order_by(requests.c.ts.desc()).limit(limit)
        if team is not None:
            query = query.where(requests.c.team == team)
        if since is not None:
            query = query.where(requests.c.ts >= since)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_plain(r) for r in rows]

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        """One trace record by request id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(requests).where(requests.c.id == request_id))).first()
        return _plain(row) if row is not None else None

    async def spend_since(self, *, since: float, team: str | None = None, key_id: str | None = None) -> float:
        """USD spent since a time by a team or a key (from the durable request log)."""
        query = sa.select(sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0)).where(requests.c.ts >= since)
        if team is not None:
            query = query.where(requests.c.team == team)
        if key_id is not None:
            query = query.where(requests.c.key_id == key_id)
        async with self.engine.connect() as conn:
            return float((await conn.execute(query)).scalar() or 0.0)

    async def spend_by(self, column: str, *, since: float) -> list[tuple[str | None, float, int]]:
        """(group, USD, requests) since a time, grouped by `team`, `key_id` or `model`."""
        col = {"team": requests.c.team, "key_id": requests.c.key_id, "model": requests.c.model}[column]
        query = (
            sa.select(col, sa.func.coalesce(sa.func.sum(requests.c.cost_usd), 0.0), sa.func.count())
            .where(requests.c.ts >= since)
            .group_by(col)
            .order_by(col)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(None if r[0] is None else str(r[0]), float(r[1]), int(r[2])) for r in rows]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=5000")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _use_wal(cursor: Any) -> None:
    """Switch the database file to WAL (persistent, so only its first opener really does it).

    The switch needs an exclusive lock and SQLite may refuse it at once instead of waiting for the busy
    timeout, which happens when several processes open a new database together: retry briefly. This
    blocks only then, since every later connection finds the file in WAL mode already.
    """
    deadline = time.monotonic() + 5.0
    while True:
        cursor.execute("PRAGMA journal_mode")
        row = cursor.fetchone()
        if row is not None and str(row[0]).lower() == "wal":
            return
        try:
            # Returns the mode in force; an in-memory database stays in "memory", which is fine.
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


async def open_store(url: str) -> Store:
    """Open (and migrate) the store at a SQLAlchemy async URL."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    elif url.startswith("postgresql+asyncpg"):
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "storage.url is PostgreSQL but asyncpg is not installed: pip install 'gengate[postgres]'"
            ) from None
        engine = create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    else:
        raise ConfigError(f"storage.url: unsupported database URL scheme in {url.split('://')[0]!r}")
    store = Store(engine)
    try:
        await store.migrate()
    except BaseException:
        # Do not leak the pool's connections when the database is unreachable or a migration fails.
        await store.close()
        raise
    return store
