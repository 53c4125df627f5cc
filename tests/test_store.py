"""The Store against both databases it supports: SQLite in a temporary directory and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gengate.errors import ConfigError
from gengate.settings import Settings
from gengate.store.db import KeyRecord, Store, open_store
from gengate.store.schema import MIGRATIONS, schema_version

LATEST = MIGRATIONS[-1][0]
T0 = 1_700_000_000.0  # a fixed clock for request timestamps


def database_url(storage_url: str) -> str:
    """The SQLAlchemy URL the gateway itself would derive from `storage.url`."""
    return Settings.model_validate({"storage": {"url": storage_url}}).database_url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return database_url(f"sqlite:///{tmp_path / 'nested' / 'gengate.db'}")
    return database_url(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()


def key_record(key_id: str, team: str = "team-a", created_at: float = T0, **fields: Any) -> KeyRecord:
    values: dict[str, Any] = {
        "id": key_id,
        "hash": f"hash-of-{key_id}",
        "name": f"name-{key_id}",
        "team": team,
        "user": None,
        "models": None,
        "rpm": None,
        "tpm": None,
        "budget_usd": None,
        "budget_period": None,
        "created_at": created_at,
        "expires_at": None,
        "revoked_at": None,
    }
    values.update(fields)
    return KeyRecord(**values)


def request_row(ts: float, team: str | None, key_id: str | None, cost: float, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "ts": ts,
        "subject": f"key:{key_id}" if key_id else None,
        "team": team,
        "key_id": key_id,
        "endpoint": "chat.completions",
        "model": "gpt-test",
        "deployment": "fake/fake-model",
        "status": 200,
        "error_code": None,
        "stream": False,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "cost_usd": cost,
        "latency_ms": 12.5,
        "ttft_ms": None,
        "attempts": 1,
        "fallbacks": 0,
        "client_disconnected": False,
    }
    row.update(fields)
    return row


async def versions_recorded(store: Store) -> list[int]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(schema_version.c.version).order_by(schema_version.c.version))).all()
    return [int(r[0]) for r in rows]


async def test_migrations_apply_once_and_reopening_keeps_the_version(store_url: str) -> None:
    first = await open_store(store_url)
    try:
        assert await versions_recorded(first) == [v for v, _ in MIGRATIONS]
        assert await first.migrate() == LATEST
    finally:
        await first.close()
    second = await open_store(store_url)
    try:
        assert await second.migrate() == LATEST
        assert await versions_recorded(second) == [v for v, _ in MIGRATIONS]
    finally:
        await second.close()


async def test_a_v7_database_gains_the_callers_groups_column_and_keeps_its_answers(store_url: str) -> None:
    # Make the database as v7 left it: answers without `caller_groups`, schema version 7.
    old = await open_store(store_url)
    try:
        async with old.engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE responses DROP COLUMN caller_groups"))
            await conn.execute(sa.delete(schema_version).where(schema_version.c.version == 8))
            await conn.execute(sa.text(
                "INSERT INTO responses (request_id, ts, outcome, payload, cost_usd, latency_ms, findings, sources) "
                "VALUES ('before-v8', 1.0, 'answered', 'none', 0, 0, 0, '[]')"
            ))  # fmt: skip
    finally:
        await old.close()
    upgraded = await open_store(store_url)
    try:
        assert await versions_recorded(upgraded) == [v for v, _ in MIGRATIONS]
        async with upgraded.engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT request_id, caller_groups FROM responses"))).all()
        assert [tuple(r) for r in rows] == [("before-v8", None)]
    finally:
        await upgraded.close()


async def test_key_round_trips_with_every_field(store: Store) -> None:
    record = key_record(
        "a1b2c3d4", team="research", user="ada", models=("gpt-*", "offline"), rpm=60, tpm=10_000,
        budget_usd=12.5, budget_period="day", expires_at=T0 + 3600,
    )  # fmt: skip
    await store.insert_key(record)
    assert await store.get_key("a1b2c3d4") == record
    assert await store.get_key("ffffffff") is None


async def test_list_keys_is_newest_first_filters_by_team_and_hides_revoked(store: Store) -> None:
    await store.insert_key(key_record("00000001", team="a", created_at=T0))
    await store.insert_key(key_record("00000002", team="b", created_at=T0 + 1))
    await store.insert_key(key_record("00000003", team="a", created_at=T0 + 2))
    assert [k.id for k in await store.list_keys()] == ["00000003", "00000002", "00000001"]
    assert [k.id for k in await store.list_keys(team="a")] == ["00000003", "00000001"]

    assert await store.revoke_key("00000003", now=T0 + 10) is True
    assert [k.id for k in await store.list_keys(team="a")] == ["00000001"]
    revoked = [k for k in await store.list_keys(team="a", include_revoked=True) if k.id == "00000003"]
    assert revoked and revoked[0].revoked_at == T0 + 10
    assert not revoked[0].active(T0 + 20)


async def test_revoking_twice_or_an_unknown_key_reports_false(store: Store) -> None:
    await store.insert_key(key_record("0000000a"))
    assert await store.revoke_key("0000000a") is True
    assert await store.revoke_key("0000000a") is False
    assert await store.revoke_key("0000000b") is False
    stored = await store.get_key("0000000a")
    assert stored is not None and stored.revoked_at is not None


async def test_request_log_batch_is_written_and_read_back_newest_first(store: Store) -> None:
    rows = [request_row(T0 + i, "a" if i % 2 == 0 else "b", f"k{i % 3}", 0.001 * i) for i in range(10)]
    await store.write_requests(rows)
    await store.write_requests([])  # an empty batch is a no-op, not an error

    recent = await store.recent_requests(limit=3)
    assert [r["ts"] for r in recent] == [T0 + 9, T0 + 8, T0 + 7]
    assert recent[0] == rows[9]

    assert [r["ts"] for r in await store.recent_requests(team="a")] == [T0 + 8, T0 + 6, T0 + 4, T0 + 2, T0]
    assert [r["ts"] for r in await store.recent_requests(since=T0 + 7)] == [T0 + 9, T0 + 8, T0 + 7]
    assert await store.get_request(rows[4]["id"]) == rows[4]
    assert await store.get_request("missing") is None


async def test_spend_since_filters_by_team_key_and_time(store: Store) -> None:
    await store.write_requests(
        [
            request_row(T0 - 100, "a", "k1", 5.0),  # before the period
            request_row(T0, "a", "k1", 0.25),
            request_row(T0 + 1, "a", "k2", 0.5),
            request_row(T0 + 2, "b", "k3", 1.0),
            request_row(T0 + 3, "a", "k1", 0.125, status=429, error_code="insufficient_quota"),
        ]
    )
    assert await store.spend_since(since=T0, team="a") == pytest.approx(0.875)
    assert await store.spend_since(since=T0, key_id="k1") == pytest.approx(0.375)
    assert await store.spend_since(since=T0, team="a", key_id="k2") == pytest.approx(0.5)
    assert await store.spend_since(since=T0 - 1000, team="a") == pytest.approx(5.875)
    assert await store.spend_since(since=T0) == pytest.approx(1.875)
    assert await store.spend_since(since=T0 + 10, team="a") == 0.0
    assert await store.spend_since(since=T0, team="nobody") == 0.0


async def test_spend_by_groups_cost_and_request_counts(store: Store) -> None:
    await store.write_requests(
        [
            request_row(T0 - 100, "a", "k1", 5.0),
            request_row(T0, "a", "k1", 0.25),
            request_row(T0 + 1, "a", "k2", 0.5, model="other"),
            request_row(T0 + 2, "b", "k3", 1.0),
        ]
    )
    by_team = await store.spend_by("team", since=T0)
    assert [(g, n) for g, _, n in by_team] == [("a", 2), ("b", 1)]
    assert [usd for _, usd, _ in by_team] == pytest.approx([0.75, 1.0])
    assert [(g, n) for g, _, n in await store.spend_by("key_id", since=T0)] == [("k1", 1), ("k2", 1), ("k3", 1)]
    by_model = await store.spend_by("model", since=T0 - 1000)
    assert [(g, n) for g, _, n in by_model] == [("gpt-test", 3), ("other", 1)]
    assert [usd for _, usd, _ in by_model] == pytest.approx([6.25, 0.5])
    assert await store.spend_by("team", since=T0 + 100) == []


async def test_concurrent_opens_of_a_fresh_database_all_succeed(
    store_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Several gateway processes (or workers) starting together: exactly one migrates, the others wait. The race
    # is timing-dependent, so SQLite (cheap to create) gets several fresh databases.
    urls = [store_url]
    if store_url.startswith("sqlite"):
        urls = [database_url(f"sqlite:///{tmp_path / f'fresh-{n}' / 'gengate.db'}") for n in range(10)]
    for url in urls:
        results = await asyncio.gather(*(open_store(url) for _ in range(8)), return_exceptions=True)
        stores = [r for r in results if isinstance(r, Store)]
        try:
            assert [r for r in results if not isinstance(r, Store)] == []
            assert [await s.migrate() for s in stores] == [LATEST] * 8
            assert await versions_recorded(stores[0]) == [v for v, _ in MIGRATIONS]
        finally:
            for s in stores:
                await s.close()


async def test_open_store_rejects_an_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported database URL scheme"):
        await open_store("mysql+aiomysql://localhost/db")


@pytest.mark.postgres
async def test_failed_migration_raises_and_closes_its_connections(pg_url: str) -> None:
    # Another application's `schema_version` table: recording our version violates its NOT NULL column.
    import asyncpg

    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION, "
            "owner TEXT NOT NULL)"
        )
        with pytest.raises(sa.exc.IntegrityError):
            await open_store(database_url(pg_url))
        others = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert others == 0
    finally:
        await admin.close()
