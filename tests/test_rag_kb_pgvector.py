"""Knowledge bases with their vectors in PostgreSQL (pgvector): vectors follow every version, access change,
retirement and rechunk, so the dense half of retrieval never sees what the caller may not read."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import require
from gengate.errors import ConfigError
from gengate.rag.chunk import ChunkingSettings
from gengate.rag.kb import KnowledgeBases
from gengate.rag.pgvector import PgVectorUnavailable
from gengate.rag.sources import scan_source
from gengate.rag.types import access_tokens
from gengate.settings import RagSettings
from gengate.store.db import open_store
from gengate.store.knowledge import KnowledgeStore
from rag_corpus import write_corpus


async def _vector_rows(kbs: KnowledgeBases) -> dict[int, tuple[bool, list[str]]]:
    async with kbs.store.engine.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT chunk_id, active, access FROM kb_vectors"))).all()
    return {int(r[0]): (bool(r[1]), sorted(r[2])) for r in rows}


def test_vectors_follow_versions_access_and_retirement(pg_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        store = await open_store("postgresql+asyncpg://" + pg_url.split("://", 1)[1])
        try:
            kbs = KnowledgeBases(KnowledgeStore(store.engine), RagSettings(vector_backend="pgvector"))
            if not kbs.embedder.enabled:
                require("the MiniLM model", "pgvector retrieval needs embeddings")
            try:
                await kbs.create("h")
            except PgVectorUnavailable as exc:
                require("pgvector", str(exc))
            corpus = write_corpus(tmp_path / "c")
            await kbs.ingest("h", scan_source(corpus), source="c")
            active = {c.chunk_id for c in await kbs.store.active_chunks("h")}
            rows = await _vector_rows(kbs)
            assert {i for i, (on, _) in rows.items() if on} == active

            staff = access_tokens(groups=["staff"])
            hr = access_tokens(groups=["hr"])
            assert (await kbs.search(["h"], "CEO salary", hr, k=1))[0].chunk.doc_id == "hr/salaries.md"
            assert all(r.chunk.doc_id != "hr/salaries.md" for r in await kbs.search(["h"], "CEO salary", staff, k=10))

            salaries = corpus / "hr" / "salaries.md"
            salaries.write_text(salaries.read_text().replace("groups: [hr]", "groups: [board]"))
            await kbs.ingest("h", scan_source(corpus), source="c")
            rows = await _vector_rows(kbs)
            moved = [acc for on, acc in rows.values() if on and acc == ["group:board"]]
            assert moved and not [acc for on, acc in rows.values() if acc == ["group:hr"]]
            assert all(r.chunk.doc_id != "hr/salaries.md" for r in await kbs.search(["h"], "CEO salary", hr, k=10))

            (corpus / "handbook" / "leave.md").unlink()
            await kbs.ingest("h", scan_source(corpus), source="c")
            active = {c.chunk_id for c in await kbs.store.active_chunks("h")}
            rows = await _vector_rows(kbs)
            assert {i for i, (on, _) in rows.items() if on} == active

            await kbs.rechunk("h", ChunkingSettings(strategy="sentence_window", window=1))
            active = {c.chunk_id for c in await kbs.store.active_chunks("h")}
            rows = await _vector_rows(kbs)
            assert {i for i, (on, _) in rows.items() if on} == active and len(active) > 4

            await kbs.delete("h")
            assert await _vector_rows(kbs) == {}
        finally:
            await store.close()

    asyncio.run(run())


def test_pgvector_backend_needs_postgresql(tmp_path: Path) -> None:
    async def run() -> None:
        store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
        try:
            with pytest.raises(ConfigError, match="PostgreSQL"):
                KnowledgeBases(KnowledgeStore(store.engine), RagSettings(vector_backend="pgvector"))
        finally:
            await store.close()

    asyncio.run(run())
