"""Dense retrieval on PostgreSQL with pgvector: the scale-out path for knowledge-base vectors.

Owns: the `kb_vectors` table (one row per chunk: knowledge base, active flag, access tokens, metadata, embedding),
its indexes, and permission-aware nearest-neighbour search by cosine similarity. Must not: embed text, chunk
documents or fuse rankings; it stores and searches vectors it is given.

The access check is part of the SQL (`access && :allowed`), so rows a caller may not read never leave the database.
Every value is a bound parameter; only the vector dimension (an `int` checked at construction) appears in DDL.

How filtered search stays complete. An HNSW index scan yields the `hnsw.ef_search` nearest rows and PostgreSQL
filters them afterwards, so a selective filter (a caller who can read 5 of 2,000 rows) can leave fewer than `k`
rows, or none. `search` therefore:

1. Counts the readable rows, stopping at `exact_threshold + 1`. When there are at most `exact_threshold` of them
   it ranks them exactly (a materialised CTE, so the HNSW index cannot be used): cheap for few rows, and exact.
2. Otherwise it uses the HNSW index with `ef_search` raised to at least `k`, and on pgvector >= 0.8 with
   `hnsw.iterative_scan = relaxed_order`, which keeps walking the graph until `k` rows pass the filter (up to
   `hnsw.max_scan_tuples`); relaxed order is re-sorted by distance in an outer query. Older pgvector has no
   iterative scan (and rejects the setting), so it is set only when the installed version supports it.
3. If the index scan still returns fewer than `k` rows, it falls back to the exact ranking of step 1, so a caller
   always gets `min(k, readable rows)` results. Above the threshold the ranking is approximate (HNSW recall).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gengate.errors import ConfigError, GengateError

Vector = NDArray[np.floating[Any]]
VectorRow = tuple[int, frozenset[str], Mapping[str, str], Vector]
"""(chunk_id, access tokens, metadata, embedding) as given to `PgVectorIndex.upsert`."""

INSTALL_HINT = "run scripts/install-pgvector.sh as root on the database host (or install pgvector for your PostgreSQL)"
_LOCK_KEY = "gengate.kb_vectors"  # serialises `ensure` across replicas starting at once
_MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search

# The readable rows of one knowledge base for one caller; shared by the count, the exact and the index queries.
_READABLE = "kb = :kb AND active AND access && CAST(:allowed AS TEXT[]) AND metadata @> CAST(:where AS JSONB)"

_COUNT = sa.text(f"SELECT count(*) FROM (SELECT 1 FROM kb_vectors WHERE {_READABLE} LIMIT :cap) AS readable")  # noqa: S608
_EXACT = sa.text(
    f"""
    WITH readable AS MATERIALIZED (SELECT chunk_id, embedding FROM kb_vectors WHERE {_READABLE})
    SELECT chunk_id, embedding <=> CAST(:q AS vector) AS distance
    FROM readable ORDER BY distance, chunk_id LIMIT :k
    """  # noqa: S608
)
_INDEXED = sa.text(
    f"""
    WITH nearest AS MATERIALIZED (
        SELECT chunk_id, embedding <=> CAST(:q AS vector) AS distance
        FROM kb_vectors WHERE {_READABLE}
        ORDER BY embedding <=> CAST(:q AS vector) LIMIT :k
    )
    SELECT chunk_id, distance FROM nearest ORDER BY distance, chunk_id
    """  # noqa: S608
)
_UPSERT = sa.text(
    """
    INSERT INTO kb_vectors (chunk_id, kb, active, access, metadata, embedding)
    VALUES (:chunk_id, :kb, TRUE, CAST(:access AS TEXT[]), CAST(:metadata AS JSONB), CAST(:embedding AS vector))
    ON CONFLICT (chunk_id) DO UPDATE SET
        kb = EXCLUDED.kb, active = TRUE, access = EXCLUDED.access,
        metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding
    """
)


class PgVectorUnavailable(GengateError):
    """The PostgreSQL server has no pgvector extension (or it cannot be created in this database)."""

    status = 503
    code = "pgvector_unavailable"


class PgVectorIndex:
    """Permission-aware cosine nearest-neighbour search over `kb_vectors`, on a `postgresql+asyncpg` engine.

    `exact_threshold`: up to this many readable rows are ranked exactly instead of through the HNSW index.
    `ef_search`: the HNSW candidate list size for index scans (raised to `k` when `k` is larger).
    `iterative_scan`: use `hnsw.iterative_scan` when the installed pgvector has it (>= 0.8); when False, a filter
    that leaves fewer than `k` of the index's candidates falls back to the exact ranking straight away.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        dim: int = 384,
        *,
        exact_threshold: int = 10_000,
        ef_search: int = 100,
        iterative_scan: bool = True,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 16_000:
            raise ValueError(f"dim must be an int between 1 and 16000 (pgvector's limit), got {dim!r}")
        if exact_threshold < 0:
            raise ValueError("exact_threshold must be >= 0")
        if not 1 <= ef_search <= _MAX_EF_SEARCH:
            raise ValueError(f"ef_search must be between 1 and {_MAX_EF_SEARCH}")
        self.engine = engine
        self.dim = dim
        self.exact_threshold = exact_threshold
        self.ef_search = ef_search
        self.iterative_scan = iterative_scan
        self._has_iterative_scan: bool | None = None  # learnt from the installed pgvector version

    async def ensure(self) -> None:
        """Create the extension, the table and its indexes if missing; check the table's dimension."""
        async with self.engine.begin() as conn:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": _LOCK_KEY})
            available = await conn.scalar(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))
            if available is None:
                raise PgVectorUnavailable(f"the PostgreSQL server has no pgvector extension: {INSTALL_HINT}")
            try:
                await conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
            except DBAPIError as exc:
                raise PgVectorUnavailable(
                    f"could not create the vector extension ({exc.orig}): {INSTALL_HINT}"
                ) from exc
            for statement in self._ddl():
                await conn.execute(sa.text(statement))
            stored = await conn.scalar(
                sa.text(
                    "SELECT atttypmod FROM pg_attribute "
                    "WHERE attrelid = CAST('kb_vectors' AS regclass) AND attname = 'embedding'"
                )
            )
            if stored != self.dim:
                raise ConfigError(
                    f"kb_vectors.embedding holds {stored}-dimensional vectors but this index uses dim={self.dim}"
                )
            self._has_iterative_scan = await _supports_iterative_scan(conn)

    def _ddl(self) -> list[str]:
        return [
            f"""CREATE TABLE IF NOT EXISTS kb_vectors (
                chunk_id BIGINT PRIMARY KEY,
                kb TEXT NOT NULL,
                active BOOLEAN NOT NULL DEFAULT TRUE,
                access TEXT[] NOT NULL,
                metadata JSONB NOT NULL DEFAULT '{{}}',
                embedding vector({int(self.dim)}) NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS kb_vectors_access_gin ON kb_vectors USING gin (access)",
            "CREATE INDEX IF NOT EXISTS kb_vectors_kb ON kb_vectors (kb)",
            "CREATE INDEX IF NOT EXISTS kb_vectors_embedding_hnsw ON kb_vectors "
            "USING hnsw (embedding vector_cosine_ops)",
        ]

    async def upsert(self, kb: str, rows: Sequence[VectorRow]) -> None:
        """Insert or replace chunks of `kb`; a replaced chunk becomes active again."""
        params = [
            {
                "chunk_id": int(chunk_id),
                "kb": kb,
                "access": sorted(access),
                "metadata": json.dumps(dict(metadata), sort_keys=True),
                "embedding": self._literal(vector),
            }
            for chunk_id, access, metadata, vector in rows
        ]
        if not params:
            return
        async with self.engine.begin() as conn:
            await conn.execute(_UPSERT, params)

    async def retire(self, chunk_ids: Sequence[int]) -> int:
        """Mark chunks inactive (a superseded document version); returns how many rows changed."""
        if not chunk_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.text("UPDATE kb_vectors SET active = FALSE WHERE chunk_id = ANY(CAST(:ids AS BIGINT[])) AND active"),
                {"ids": [int(c) for c in chunk_ids]},
            )
        return int(result.rowcount)

    async def set_access(self, chunk_ids: Sequence[int], access: frozenset[str]) -> int:
        """Change who may read chunks (a document's access list changed); returns how many rows changed."""
        if not chunk_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
                sa.text(
                    "UPDATE kb_vectors SET access = CAST(:access AS TEXT[]) "
                    "WHERE chunk_id = ANY(CAST(:ids AS BIGINT[]))"
                ),
                {"access": sorted(access), "ids": [int(c) for c in chunk_ids]},
            )
        return int(result.rowcount)

    async def delete_kb(self, kb: str) -> int:
        """Delete every row of a knowledge base; returns how many were deleted."""
        async with self.engine.begin() as conn:
            result = await conn.execute(sa.text("DELETE FROM kb_vectors WHERE kb = :kb"), {"kb": kb})
        return int(result.rowcount)

    async def search(
        self,
        kb: str,
        query_vec: Vector,
        allowed: frozenset[str],
        *,
        k: int,
        where: Mapping[str, str] | None = None,
    ) -> list[tuple[int, float]]:
        """The `k` active chunks of `kb` nearest to `query_vec` that the caller may read (their access tokens meet
        `allowed`) and whose metadata contains `where`, as (chunk_id, cosine similarity), best first."""
        if k < 1:
            raise ValueError("k must be >= 1")
        if not allowed:
            return []
        params: dict[str, Any] = {
            "kb": kb,
            "allowed": sorted(allowed),
            "where": json.dumps(dict(where or {}), sort_keys=True),
            "q": self._literal(query_vec),
            "k": k,
        }
        async with self.engine.begin() as conn:
            if self.exact_threshold > 0:
                readable = await conn.scalar(_COUNT, {**params, "cap": self.exact_threshold + 1})
                if int(readable or 0) <= self.exact_threshold:
                    return _scored(await conn.execute(_EXACT, params))
            await self._tune_index_scan(conn, k)
            hits = _scored(await conn.execute(_INDEXED, params))
            if len(hits) < k:  # the index scan ran out before `k` rows passed the filter
                hits = _scored(await conn.execute(_EXACT, params))
            return hits

    async def _tune_index_scan(self, conn: AsyncConnection, k: int) -> None:
        """Transaction-local HNSW settings for one filtered index scan."""
        ef = str(min(_MAX_EF_SEARCH, max(self.ef_search, k)))
        await conn.execute(sa.text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": ef})
        if not self.iterative_scan:
            return
        if self._has_iterative_scan is None:
            self._has_iterative_scan = await _supports_iterative_scan(conn)
        if self._has_iterative_scan:
            await conn.execute(sa.text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))

    def _literal(self, vector: Vector) -> str:
        """A vector as pgvector's text form `[x,y,...]`, after checking its shape and values."""
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (self.dim,):
            raise ValueError(f"expected a vector of shape ({self.dim},), got {array.shape}")
        if not np.all(np.isfinite(array)):
            raise ValueError("vector contains NaN or infinity")
        if not np.any(array):
            raise ValueError("the zero vector has no cosine similarity")
        # repr of the float32 value (held as a Python float) reads back as exactly the same float32.
        return "[" + ",".join(repr(x) for x in array.tolist()) + "]"


async def _supports_iterative_scan(conn: AsyncConnection) -> bool:
    """Whether the installed pgvector has `hnsw.iterative_scan` (0.8.0 and later)."""
    version = await conn.scalar(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    if version is None:
        raise PgVectorUnavailable(f"the vector extension is not created in this database: {INSTALL_HINT}")
    parts = [int(p) if p.isdigit() else 0 for p in str(version).split(".")[:3]]
    return tuple(parts) >= (0, 8)


def _scored(rows: Iterable[Any]) -> list[tuple[int, float]]:
    """(chunk_id, cosine similarity) from rows of (chunk_id, cosine distance)."""
    return [(int(chunk_id), 1.0 - float(distance)) for chunk_id, distance in rows]
