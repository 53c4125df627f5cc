"""PgVectorIndex against a real PostgreSQL with pgvector: rankings checked against NumPy brute force."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conftest import free_port, require
from gengate.errors import ConfigError
from gengate.rag.pgvector import PgVectorIndex, PgVectorUnavailable, VectorRow

pytestmark = pytest.mark.postgres

DIM = 64  # small vectors keep HNSW inserts quick; the ranking test uses the default dimension
HOSTILE = "x'); DROP TABLE kb_vectors; --"

# How `search` reaches its answer: exactly for few readable rows (the default), always through the HNSW index with
# pgvector's iterative scan, or through the index without it (so a selective filter takes the exact fallback).
MODES: dict[str, dict[str, Any]] = {
    "exact": {},
    "hnsw-iterative": {"exact_threshold": 0},
    "hnsw-fallback": {"exact_threshold": 0, "iterative_scan": False, "ef_search": 1},
}

Vec = NDArray[np.float32]
OpenIndex = Callable[..., Awaitable[PgVectorIndex]]


def asyncpg_url(pg_url: str) -> str:
    return "postgresql+asyncpg://" + pg_url.split("://", 1)[1]


@pytest.fixture
async def open_index(pg_url: str) -> AsyncIterator[OpenIndex]:
    """Open a PgVectorIndex on the test database in one of MODES (needs the vector extension)."""
    engines: list[AsyncEngine] = []

    async def open_(mode: str = "exact", dim: int = DIM) -> PgVectorIndex:
        settings = {"jit": "off"}
        if mode != "exact":
            # On a table this small the planner would rather sort every row than walk the HNSW index; forbidding
            # sorts makes it take the index path that large tables take.
            settings["enable_sort"] = "off"
        engine = create_async_engine(asyncpg_url(pg_url), connect_args={"server_settings": settings})
        engines.append(engine)
        index = PgVectorIndex(engine, dim, **MODES[mode])
        try:
            await index.ensure()
        except PgVectorUnavailable as exc:
            require("pgvector", str(exc))
        return index

    yield open_
    for engine in engines:
        await engine.dispose()


@pytest.fixture(params=list(MODES))
async def index(request: pytest.FixtureRequest, open_index: OpenIndex) -> PgVectorIndex:
    return await open_index(request.param)


def random_vectors(n: int, dim: int = DIM, seed: int = 0) -> Vec:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def cosine(vectors: Mapping[int, Vec], query: Vec) -> dict[int, float]:
    """Brute-force cosine similarity of each vector to the query, in float64."""
    q = query.astype(np.float64)
    q /= np.linalg.norm(q)
    return {cid: float(v.astype(np.float64) @ q / np.linalg.norm(v.astype(np.float64))) for cid, v in vectors.items()}


def assert_top_k(got: list[tuple[int, float]], readable: Mapping[int, float], k: int) -> None:
    """`got` is the brute-force top-k of the readable rows, best first.

    pgvector accumulates in float32, so scores are compared to 1e-5, and two rows whose scores differ by less than
    that may come back in either order; everything else must match exactly.
    """
    ids = [cid for cid, _ in got]
    assert len(got) == min(k, len(readable))
    assert len(set(ids)) == len(ids)
    assert set(ids) <= set(readable), "a row the caller may not read came back"
    for cid, score in got:
        assert score == pytest.approx(readable[cid], abs=1e-5)
    scores = [score for _, score in got]
    assert all(a >= b - 1e-5 for a, b in pairwise(scores)), "not best first"
    best = sorted(readable.values(), reverse=True)[: len(got)]
    assert [readable[cid] for cid in ids] == pytest.approx(best, abs=1e-5), "not the best-scoring readable rows"


async def test_search_matches_brute_force_cosine_ranking_of_readable_rows(open_index: OpenIndex) -> None:
    index = await open_index("exact", dim=384)
    rng = np.random.default_rng(7)
    pool = ["team:a", "team:b", "group:hr", "group:eng", *(f"user:u{i}" for i in range(5))]
    vectors = random_vectors(400, dim=384, seed=7)
    access: dict[int, frozenset[str]] = {}
    for cid in range(400):
        # Every tenth row grants nobody (deny by default); the rest grant one to three random tokens.
        size = 0 if cid % 10 == 0 else int(rng.integers(1, 4))
        access[cid] = frozenset(rng.choice(pool, size=size, replace=False).tolist())
    await index.upsert("handbook", [(cid, access[cid], {}, vectors[cid]) for cid in range(400)])

    callers = [
        frozenset({"team:a"}),
        frozenset({"group:hr", "user:u3"}),
        frozenset({"user:u1"}),
        frozenset(pool),
        frozenset({"team:nobody"}),
    ]
    for caller in callers:
        readable_ids = [cid for cid in range(400) if access[cid] & caller]
        for seed in range(3):
            query = random_vectors(1, dim=384, seed=100 + seed)[0]
            scores = cosine({cid: vectors[cid] for cid in readable_ids}, query)
            for k in (1, 10, len(readable_ids) + 50):
                got = await index.search("handbook", query, caller, k=k)
                assert_top_k(got, scores, k)


async def test_index_scan_returns_k_readable_rows_with_true_scores(open_index: OpenIndex) -> None:
    index = await open_index("hnsw-iterative")
    vectors = random_vectors(600, seed=3)
    await index.upsert("kb", [(cid, frozenset({"team:a"}), {}, vectors[cid]) for cid in range(600)])
    query = random_vectors(1, seed=4)[0]
    scores = cosine(dict(enumerate(vectors)), query)

    got = await index.search("kb", query, frozenset({"team:a"}), k=20)

    # HNSW is approximate: the rows may differ from brute force, but there are k of them, scored truly, best first.
    assert len(got) == 20
    assert len({cid for cid, _ in got}) == 20
    for cid, score in got:
        assert score == pytest.approx(scores[cid], abs=1e-5)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)


async def test_selective_filter_still_returns_every_readable_row(open_index: OpenIndex) -> None:
    vectors = random_vectors(2000, seed=11)
    few = {3, 499, 1000, 1501, 1998}
    rows: list[VectorRow] = [
        (cid, frozenset({"user:few"} if cid in few else {"team:all"}), {}, vectors[cid]) for cid in range(2000)
    ]
    await (await open_index()).upsert("kb", rows)  # once: 2,000 HNSW inserts are the slow part of this test
    query = random_vectors(1, seed=12)[0]
    expected = cosine({cid: vectors[cid] for cid in few}, query)

    for mode in MODES:
        got = await (await open_index(mode)).search("kb", query, frozenset({"user:few"}), k=10)
        assert {cid for cid, _ in got} == few, mode
        assert_top_k(got, expected, 10)


async def test_other_knowledge_bases_and_retired_rows_never_come_back(index: PgVectorIndex) -> None:
    vectors = random_vectors(60, seed=21)
    query = random_vectors(1, seed=22)[0]
    caller = frozenset({"team:a"})
    await index.upsert("kb", [(cid, caller, {}, vectors[cid]) for cid in range(40)])
    # Exact copies of the query: they would rank first if either filter leaked.
    await index.upsert("other-kb", [(cid, caller, {}, query) for cid in range(40, 50)])
    await index.upsert("kb", [(cid, caller, {}, query) for cid in range(50, 60)])
    assert await index.retire(list(range(50, 60))) == 10
    assert await index.retire([50, 9999]) == 0

    got = await index.search("kb", query, caller, k=100)

    assert_top_k(got, cosine({cid: vectors[cid] for cid in range(40)}, query), 100)
    assert {cid for cid, _ in await index.search("other-kb", query, caller, k=100)} == set(range(40, 50))


async def test_upserting_a_retired_chunk_replaces_and_reactivates_it(index: PgVectorIndex) -> None:
    first, second = random_vectors(2, seed=31)
    await index.upsert("kb", [(1, frozenset({"team:a"}), {"v": "1"}, first)])
    await index.retire([1])
    assert await index.search("kb", first, frozenset({"team:a"}), k=5) == []

    await index.upsert("kb", [(1, frozenset({"team:b"}), {"v": "2"}, second)])

    assert await index.search("kb", second, frozenset({"team:a"}), k=5) == []
    [(cid, score)] = await index.search("kb", second, frozenset({"team:b"}), k=5, where={"v": "2"})
    assert cid == 1
    assert score == pytest.approx(1.0, abs=1e-6)


async def test_delete_kb_removes_only_that_knowledge_base(index: PgVectorIndex) -> None:
    vectors = random_vectors(10, seed=41)
    await index.upsert("a", [(cid, frozenset({"team:a"}), {}, vectors[cid]) for cid in range(6)])
    await index.upsert("b", [(cid, frozenset({"team:a"}), {}, vectors[cid]) for cid in range(6, 10)])

    assert await index.delete_kb("a") == 6

    assert await index.search("a", vectors[0], frozenset({"team:a"}), k=10) == []
    assert len(await index.search("b", vectors[0], frozenset({"team:a"}), k=10)) == 4


async def test_metadata_filter_keeps_only_rows_containing_every_pair(index: PgVectorIndex) -> None:
    vectors = random_vectors(90, seed=51)
    meta = {cid: {"lang": ("en", "de", "fr")[cid % 3], "year": str(2020 + cid % 5)} for cid in range(90)}
    await index.upsert("kb", [(cid, frozenset({"team:a"}), meta[cid], vectors[cid]) for cid in range(90)])
    query = random_vectors(1, seed=52)[0]
    caller = frozenset({"team:a"})

    for where in ({"lang": "de"}, {"lang": "de", "year": "2021"}, {"year": "2024"}):
        matching = {cid: vectors[cid] for cid in range(90) if where.items() <= meta[cid].items()}
        got = await index.search("kb", query, caller, k=100, where=where)
        assert_top_k(got, cosine(matching, query), 100)
    assert await index.search("kb", query, caller, k=10, where={"lang": "xx"}) == []
    assert await index.search("kb", query, caller, k=10, where={"missing-key": "en"}) == []


@pytest.fixture
async def unreachable_index() -> AsyncIterator[PgVectorIndex]:
    """An index whose engine points at a port nothing listens on: any query would raise."""
    engine = create_async_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/none")
    yield PgVectorIndex(engine, DIM)
    await engine.dispose()


async def test_empty_allowed_returns_nothing_without_querying(unreachable_index: PgVectorIndex) -> None:
    assert await unreachable_index.search("kb", random_vectors(1)[0], frozenset(), k=5) == []


async def test_hostile_strings_are_only_values(index: PgVectorIndex) -> None:
    vectors = random_vectors(3, seed=61)
    await index.upsert(HOSTILE, [(1, frozenset({HOSTILE}), {HOSTILE: HOSTILE}, vectors[0])])
    await index.upsert(HOSTILE, [(2, frozenset({"team:a"}), {}, vectors[1])])

    assert [cid for cid, _ in await index.search(HOSTILE, vectors[0], frozenset({HOSTILE}), k=5)] == [1]
    assert [cid for cid, _ in await index.search(HOSTILE, vectors[0], frozenset({"x"}), k=5)] == []
    hits = await index.search(HOSTILE, vectors[0], frozenset({HOSTILE, "team:a"}), k=5, where={HOSTILE: HOSTILE})
    assert [cid for cid, _ in hits] == [1]
    async with index.engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT count(*) FROM kb_vectors")) == 2


async def test_ensure_is_idempotent_and_rejects_a_different_dimension(open_index: OpenIndex) -> None:
    index = await open_index()
    await index.upsert("kb", [(1, frozenset({"team:a"}), {}, random_vectors(1)[0])])
    await index.ensure()
    assert len(await index.search("kb", random_vectors(1)[0], frozenset({"team:a"}), k=5)) == 1

    other = PgVectorIndex(index.engine, DIM * 2)
    with pytest.raises(ConfigError, match=f"{DIM}-dimensional"):
        await other.ensure()


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.ones(DIM + 1, dtype=np.float32), "shape"),
        (np.zeros(DIM, dtype=np.float32), "zero vector"),
        (np.full(DIM, np.nan, dtype=np.float32), "NaN"),
    ],
    ids=["wrong-dimension", "zero", "nan"],
)
async def test_rejects_vectors_pgvector_cannot_rank(
    unreachable_index: PgVectorIndex, vector: Vec, message: str
) -> None:
    index = unreachable_index
    with pytest.raises(ValueError, match=message):
        await index.upsert("kb", [(1, frozenset({"team:a"}), {}, vector)])
    with pytest.raises(ValueError, match=message):
        await index.search("kb", vector, frozenset({"team:a"}), k=1)
