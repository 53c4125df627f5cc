"""Knowledge-base storage: knowledge bases, document versions, chunks and their history.

Owns: every query on the knowledge-base tables, and the transactions that keep them consistent — a document
version and its chunks appear together or not at all, and every change bumps the knowledge base's generation
so indexes know to reload. Must not: chunk, embed, rank or decide access.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gengate.errors import Conflict, NotFound
from gengate.store.schema import kb_chunks, kb_documents, kb_events, knowledge_bases


@dataclass(frozen=True, slots=True)
class KbRecord:
    """A knowledge base's settings as stored."""

    name: str
    description: str
    chunking: dict[str, Any]
    default_access: dict[str, list[str]] | None
    embeddings: str
    generation: int
    created_at: float
    sentence_vectors: bool = False


@dataclass(frozen=True, slots=True)
class DocRecord:
    """The active version of a document."""

    pk: int
    doc_id: str
    version: int
    title: str
    content_hash: str
    access: frozenset[str]
    source: str
    suspicious: bool


@dataclass(frozen=True, slots=True)
class NewDocument:
    """A document version about to be stored."""

    doc_id: str
    title: str
    content_hash: str
    text: str
    format: str
    access: frozenset[str]
    metadata: dict[str, str]
    source: str
    suspicious: bool


@dataclass(frozen=True, slots=True)
class NewChunk:
    """A chunk about to be stored (embedding as float32 bytes, or None)."""

    ord: int
    text: str
    context: str
    heading: str
    start: int
    end: int
    embedding: bytes | None
    suspicious: bool = False
    parts: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """An active chunk with what retrieval, citations and indexes need."""

    chunk_id: int
    doc_id: str
    version: int
    title: str
    text: str
    context: str
    heading: str
    access: frozenset[str]
    metadata: dict[str, str]
    embedding: bytes | None
    suspicious: bool
    parts: bytes | None = None


@dataclass
class KbSummary:
    """A knowledge base with its counts."""

    record: KbRecord
    documents: int = 0
    chunks: int = 0
    suspicious: int = 0
    sources: list[str] = field(default_factory=list)


def _kb_from(row: sa.Row[Any]) -> KbRecord:
    m = row._mapping
    return KbRecord(
        name=m["name"],
        description=m["description"],
        chunking=json.loads(m["chunking"]),
        default_access=json.loads(m["default_access"]) if m["default_access"] else None,
        embeddings=m["embeddings"],
        generation=int(m["generation"]),
        created_at=float(m["created_at"]),
        sentence_vectors=bool(m["sentence_vectors"]),
    )


def _tokens(raw: str) -> frozenset[str]:
    return frozenset(json.loads(raw))


class KnowledgeStore:
    """Repository over the knowledge-base tables (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- knowledge bases --------------------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        description: str,
        chunking: dict[str, Any],
        default_access: dict[str, list[str]] | None,
        embeddings: str,
        sentence_vectors: bool = False,
    ) -> KbRecord:
        """Create a knowledge base; Conflict if the name is taken."""
        now = time.time()
        async with self.engine.begin() as conn:
            found = await conn.execute(sa.select(knowledge_bases.c.name).where(knowledge_bases.c.name == name))
            if found.first() is not None:
                raise Conflict(f"knowledge base {name!r} already exists")
            await conn.execute(
                knowledge_bases.insert().values(
                    name=name, description=description, chunking=json.dumps(chunking),
                    default_access=json.dumps(default_access) if default_access else None,
                    embeddings=embeddings, sentence_vectors=sentence_vectors, generation=0, created_at=now,
                )
            )  # fmt: skip
            await _event(conn, name, "created", detail=json.dumps({"chunking": chunking, "embeddings": embeddings}))
        record = await self.get(name)
        assert record is not None
        return record

    async def get(self, name: str) -> KbRecord | None:
        """A knowledge base by name."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(knowledge_bases).where(knowledge_bases.c.name == name))).first()
        return _kb_from(row) if row is not None else None

    async def require(self, name: str) -> KbRecord:
        """A knowledge base by name; NotFound when there is none."""
        record = await self.get(name)
        if record is None:
            raise NotFound(f"knowledge base {name!r} does not exist")
        return record

    async def generation(self, name: str) -> int | None:
        """The change counter of a knowledge base (None when it does not exist)."""
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(sa.select(knowledge_bases.c.generation).where(knowledge_bases.c.name == name))
            ).scalar()
        return None if value is None else int(value)

    async def summaries(self) -> list[KbSummary]:
        """Every knowledge base with its active document and chunk counts."""
        async with self.engine.connect() as conn:
            kbs = [_kb_from(r) for r in (await conn.execute(sa.select(knowledge_bases).order_by("name"))).all()]
            docs: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(kb_documents.c.kb, sa.func.count())
                        .where(kb_documents.c.active.is_(True))
                        .group_by(kb_documents.c.kb)
                    )
                ).all()
            )
            suspicious: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(kb_documents.c.kb, sa.func.count())
                        .where(kb_documents.c.active.is_(True), kb_documents.c.suspicious.is_(True))
                        .group_by(kb_documents.c.kb)
                    )
                ).all()
            )
            chunks: dict[str, int] = dict(
                (
                    await conn.execute(
                        sa.select(kb_chunks.c.kb, sa.func.count())
                        .where(kb_chunks.c.active.is_(True))
                        .group_by(kb_chunks.c.kb)
                    )
                ).all()
            )
        return [
            KbSummary(kb, int(docs.get(kb.name, 0)), int(chunks.get(kb.name, 0)), int(suspicious.get(kb.name, 0)))
            for kb in kbs
        ]

    async def delete(self, name: str) -> None:
        """Remove a knowledge base with all its documents, chunks and history."""
        async with self.engine.begin() as conn:
            result = await conn.execute(knowledge_bases.delete().where(knowledge_bases.c.name == name))
            if not result.rowcount:
                raise NotFound(f"knowledge base {name!r} does not exist")
            for table in (kb_chunks, kb_documents, kb_events):
                await conn.execute(table.delete().where(table.c.kb == name))

    # -- documents --------------------------------------------------------------------------------------------

    async def active_documents(self, kb: str) -> dict[str, DocRecord]:
        """The active version of every document, by document id."""
        query = sa.select(
            kb_documents.c.id, kb_documents.c.doc_id, kb_documents.c.version, kb_documents.c.title,
            kb_documents.c.content_hash, kb_documents.c.access, kb_documents.c.source, kb_documents.c.suspicious,
        ).where(kb_documents.c.kb == kb, kb_documents.c.active.is_(True))  # fmt: skip
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {
            r.doc_id: DocRecord(
                r.id, r.doc_id, r.version, r.title, r.content_hash, _tokens(r.access), r.source, bool(r.suspicious)
            )
            for r in rows
        }

    async def latest_version(self, kb: str, doc_id: str) -> int:
        """The highest version ever stored for a document (0 when none)."""
        query = sa.select(sa.func.max(kb_documents.c.version)).where(
            kb_documents.c.kb == kb, kb_documents.c.doc_id == doc_id
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def put_document(
        self, kb: str, doc: NewDocument, chunks: Sequence[NewChunk], previous: DocRecord | None
    ) -> tuple[int, int]:
        """Store a new document version with its chunks and retire the previous version, atomically.

        Returns (the new version number, the new document row's key)."""
        now = time.time()
        async with self.engine.begin() as conn:
            await _lock(conn, kb)
            version = (
                int(
                    (
                        await conn.execute(
                            sa.select(sa.func.max(kb_documents.c.version)).where(
                                kb_documents.c.kb == kb, kb_documents.c.doc_id == doc.doc_id
                            )
                        )
                    ).scalar()
                    or 0
                )
                + 1
            )
            # Every active version, not only the one the caller saw: a concurrent ingest may have stored one since.
            active = sa.select(kb_documents.c.id).where(
                kb_documents.c.kb == kb, kb_documents.c.doc_id == doc.doc_id, kb_documents.c.active.is_(True)
            )
            replaced = [int(r[0]) for r in (await conn.execute(active)).all()]
            if previous is not None and previous.pk not in replaced:
                replaced.append(previous.pk)
            if replaced:
                await _retire(conn, replaced, now)
            result = await conn.execute(
                kb_documents.insert().values(
                    kb=kb, doc_id=doc.doc_id, version=version, title=doc.title, content_hash=doc.content_hash,
                    text=doc.text, format=doc.format, access=json.dumps(sorted(doc.access)),
                    doc_metadata=json.dumps(doc.metadata), source=doc.source, suspicious=doc.suspicious,
                    active=True, created_at=now,
                )
            )  # fmt: skip
            inserted = result.inserted_primary_key
            assert inserted is not None
            pk = int(inserted[0])
            await _insert_chunks(conn, kb, pk, chunks)
            detail: dict[str, Any] = {"hash": doc.content_hash[:12], "chunks": len(chunks)}
            if doc.suspicious:
                detail["suspicious"] = True
            await _event(conn, kb, "changed" if replaced else "added", doc.doc_id, version, json.dumps(detail))
            await _bump(conn, kb)
        return version, pk

    async def set_access(self, kb: str, doc: DocRecord, access: frozenset[str]) -> None:
        """Change who may read a document's active version (recorded in the history)."""
        async with self.engine.begin() as conn:
            await _lock(conn, kb)
            await conn.execute(
                kb_documents.update().where(kb_documents.c.id == doc.pk).values(access=json.dumps(sorted(access)))
            )
            detail = json.dumps({"from": sorted(doc.access), "to": sorted(access)})
            await _event(conn, kb, "access_changed", doc.doc_id, doc.version, detail)
            await _bump(conn, kb)

    async def retire(self, kb: str, docs: Sequence[DocRecord], reason: str) -> None:
        """Retire documents (their chunks leave the index)."""
        if not docs:
            return
        now = time.time()
        async with self.engine.begin() as conn:
            await _lock(conn, kb)
            await _retire(conn, [d.pk for d in docs], now)
            for doc in docs:
                await _event(conn, kb, "retired", doc.doc_id, doc.version, json.dumps({"reason": reason}))
            await _bump(conn, kb)

    async def note(self, kb: str, action: str, doc_id: str | None, detail: dict[str, Any]) -> None:
        """Record an event without changing content (e.g. a file refused at ingestion)."""
        async with self.engine.begin() as conn:
            await _lock(conn, kb)
            await _event(conn, kb, action, doc_id, None, json.dumps(detail))

    async def document_texts(self, kb: str) -> list[tuple[int, str, str, str]]:
        """(pk, doc_id, title, text) of every active document, for rechunking."""
        query = sa.select(kb_documents.c.id, kb_documents.c.doc_id, kb_documents.c.title, kb_documents.c.text).where(
            kb_documents.c.kb == kb, kb_documents.c.active.is_(True)
        )
        async with self.engine.connect() as conn:
            return [(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in (await conn.execute(query)).all()]

    async def replace_chunks(
        self, kb: str, chunking: dict[str, Any], new: Sequence[tuple[int, Sequence[NewChunk]]]
    ) -> None:
        """Swap every active chunk for new ones under a new chunking strategy, in one transaction."""
        async with self.engine.begin() as conn:
            await _lock(conn, kb)
            await conn.execute(
                kb_chunks.update().where(kb_chunks.c.kb == kb, kb_chunks.c.active.is_(True)).values(active=False)
            )
            for pk, chunks in new:
                await _insert_chunks(conn, kb, pk, chunks)
            await conn.execute(
                knowledge_bases.update().where(knowledge_bases.c.name == kb).values(chunking=json.dumps(chunking))
            )
            total = sum(len(c) for _, c in new)
            await _event(conn, kb, "rechunked", None, None, json.dumps({"chunking": chunking, "chunks": total}))
            await _bump(conn, kb)

    async def history(self, kb: str, *, limit: int = 200, doc_id: str | None = None) -> list[dict[str, Any]]:
        """Events, newest first."""
        query = sa.select(kb_events).where(kb_events.c.kb == kb).order_by(kb_events.c.id.desc()).limit(limit)
        if doc_id is not None:
            query = query.where(kb_events.c.doc_id == doc_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [{str(k): v for k, v in r._mapping.items()} for r in rows]

    # -- chunks -----------------------------------------------------------------------------------------------

    async def active_chunks(self, kb: str, *, include_suspicious: bool = False) -> list[StoredChunk]:
        """Every active chunk of a knowledge base with its document's title and access list."""
        query = (
            sa.select(
                kb_chunks.c.id,
                kb_documents.c.doc_id,
                kb_documents.c.version,
                kb_documents.c.title,
                kb_chunks.c.text,
                kb_chunks.c.context,
                kb_chunks.c.heading,
                kb_documents.c.access,
                kb_documents.c.doc_metadata,
                kb_chunks.c.embedding,
                kb_chunks.c.suspicious,
                kb_chunks.c.parts,
            )
            .join(kb_documents, kb_documents.c.id == kb_chunks.c.document)
            .where(kb_chunks.c.kb == kb, kb_chunks.c.active.is_(True), kb_documents.c.active.is_(True))
            .order_by(kb_chunks.c.id)
        )
        if not include_suspicious:
            query = query.where(kb_chunks.c.suspicious.is_(False))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            StoredChunk(
                chunk_id=int(r[0]),
                doc_id=r[1],
                version=int(r[2]),
                title=r[3],
                text=r[4],
                context=r[5] or "",
                heading=r[6] or "",
                access=_tokens(r[7]),
                metadata=json.loads(r[8] or "{}"),
                embedding=r[9],
                suspicious=bool(r[10]),
                parts=r[11],
            )
            for r in rows
        ]

    async def chunk_ids(self, document_pks: Sequence[int], *, active: bool = True) -> list[int]:
        """Ids of the chunks of some document rows (active ones only by default)."""
        if not document_pks:
            return []
        query = sa.select(kb_chunks.c.id).where(kb_chunks.c.document.in_(list(document_pks))).order_by(kb_chunks.c.id)
        if active:
            query = query.where(kb_chunks.c.active.is_(True))
        async with self.engine.connect() as conn:
            return [int(r[0]) for r in (await conn.execute(query)).all()]

    async def active_chunk_ids(self, kb: str) -> list[int]:
        """Ids of every active chunk of a knowledge base."""
        query = sa.select(kb_chunks.c.id).where(kb_chunks.c.kb == kb, kb_chunks.c.active.is_(True))
        async with self.engine.connect() as conn:
            return [int(r[0]) for r in (await conn.execute(query)).all()]

    async def suspicious_documents(self, kb: str) -> list[tuple[str, int]]:
        """(doc id, version) of active documents marked suspicious at ingestion."""
        query = sa.select(kb_documents.c.doc_id, kb_documents.c.version).where(
            kb_documents.c.kb == kb, kb_documents.c.active.is_(True), kb_documents.c.suspicious.is_(True)
        )
        async with self.engine.connect() as conn:
            return [(str(r[0]), int(r[1])) for r in (await conn.execute(query)).all()]


async def _event(
    conn: AsyncConnection, kb: str, action: str, doc_id: str | None = None, version: int | None = None,
    detail: str = "",
) -> None:  # fmt: skip
    await conn.execute(
        kb_events.insert().values(kb=kb, ts=time.time(), action=action, doc_id=doc_id, version=version, detail=detail)
    )


async def _lock(conn: AsyncConnection, kb: str) -> None:
    """Take the knowledge base's write lock, as the first statement of a transaction that changes it.

    Changes to one knowledge base then commit one after another, so its `kb_events` ids grow in commit order
    (knowledge drift reads "events after id N" and would otherwise miss an event whose transaction took a smaller
    id but committed after N was read), and what a change reads first (the next version number, the active
    version) is current. PostgreSQL: the knowledge base's row lock. SQLite: the database's write lock (the driver
    would otherwise run the first reads outside any transaction)."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        await conn.execute(sa.select(knowledge_bases.c.name).where(knowledge_bases.c.name == kb).with_for_update())


async def _bump(conn: AsyncConnection, kb: str) -> None:
    await conn.execute(
        knowledge_bases.update().where(knowledge_bases.c.name == kb).values(generation=knowledge_bases.c.generation + 1)
    )


async def _retire(conn: AsyncConnection, pks: Sequence[int], now: float) -> None:
    await conn.execute(kb_documents.update().where(kb_documents.c.id.in_(pks)).values(active=False, retired_at=now))
    await conn.execute(kb_chunks.update().where(kb_chunks.c.document.in_(pks)).values(active=False))


async def _insert_chunks(conn: AsyncConnection, kb: str, pk: int, chunks: Sequence[NewChunk]) -> None:
    if not chunks:
        return
    await conn.execute(
        kb_chunks.insert(),
        [
            {
                "kb": kb,
                "document": pk,
                "ord": c.ord,
                "text": c.text,
                "context": c.context,
                "heading": c.heading,
                "span_start": c.start,
                "span_end": c.end,
                "embedding": c.embedding,
                "suspicious": c.suspicious,
                "parts": c.parts,
                "active": True,
            }
            for c in chunks
        ],
    )
