"""Knowledge bases as a service: create, ingest with versions, rechunk, search with the caller's access.

Owns: turning scanned source documents into stored versions (unchanged files are skipped, changed ones get a new
version and retire the old chunks, removed ones are retired), the injection scan at ingestion, and one search
index per knowledge base, reloaded when the knowledge base's generation changes. Must not: parse files (see
`sources`), rank (see `index`) or decide what a caller may read (the index does, from access tokens).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gengate.errors import ConfigError, RequestError
from gengate.guard.base import ScanRequest, Stage
from gengate.guard.detectors.injection import InjectionDetector
from gengate.rag.chunk import ChunkingSettings, chunk_text, split_sentences
from gengate.rag.embedder import Embedder
from gengate.rag.index import MemoryIndex, PartVectors, RetrievalSettings
from gengate.rag.pgvector import PgVectorIndex
from gengate.rag.sources import ScanResult, SourceDoc
from gengate.rag.types import AccessList, Hit, IndexRow, Piece
from gengate.settings import RagSettings
from gengate.store.knowledge import DocRecord, KbRecord, KnowledgeStore, NewChunk, NewDocument, StoredChunk

log = logging.getLogger("gengate.rag")

Progress = Callable[[int, int, str], None]


def embedding_text(title: str, heading: str, text: str) -> str:
    """What a chunk's dense vector is computed from: its document title and section give it context."""
    return "\n".join(part for part in (title, heading, text) if part)


@dataclass
class IngestReport:
    """What one ingestion did, document by document."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    access_changed: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    suspicious: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "added": self.added, "changed": self.changed, "unchanged": len(self.unchanged),
            "access_changed": self.access_changed, "retired": self.retired, "suspicious": self.suspicious,
            "problems": [{"document": d, "error": e} for d, e in self.problems], "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A chunk the caller may read, with its knowledge base and score."""

    kb: str
    chunk: StoredChunk
    score: float


@dataclass
class _Loaded:
    generation: int
    index: MemoryIndex
    chunks: dict[int, StoredChunk]


class KnowledgeBases:
    """Every knowledge base of one gateway (or one CLI run)."""

    def __init__(self, store: KnowledgeStore, settings: RagSettings, embedder: Embedder | None = None) -> None:
        self.store = store
        self.settings = settings
        self.embedder = embedder or Embedder(settings.embeddings)
        self._scanner = InjectionDetector()
        self._loaded: dict[tuple[str, str], _Loaded] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._pg: PgVectorIndex | None = None
        self._pg_ready = False
        if settings.vector_backend == "pgvector":
            if store.engine.dialect.name != "postgresql":
                raise ConfigError("rag.vector_backend 'pgvector' needs storage.url to point at PostgreSQL")
            self._pg = PgVectorIndex(store.engine, dim=self.embedder.dimension)

    async def _vectors(self) -> PgVectorIndex | None:
        """The pgvector index when vectors live in PostgreSQL (created on first use), else None."""
        if self._pg is not None and not self._pg_ready:
            await self._pg.ensure()
            self._pg_ready = True
        return self._pg

    # -- management -------------------------------------------------------------------------------------------

    async def create(
        self, name: str, *, description: str = "", chunking: ChunkingSettings | None = None,
        default_access: AccessList | None = None, sentence_vectors: bool = False,
    ) -> KbRecord:  # fmt: skip
        """Create an empty knowledge base."""
        if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
            raise RequestError("knowledge base names are letters, digits, '-', '_' and '.' (at most 128)")
        chunking = chunking or self.settings.chunking
        default = None
        if default_access is not None and not default_access.empty:
            default = {"users": list(default_access.users), "groups": list(default_access.groups),
                       "teams": list(default_access.teams)}  # fmt: skip
        return await self.store.create(
            name, description=description, chunking=chunking.model_dump(), default_access=default,
            embeddings=self.embedder.name, sentence_vectors=sentence_vectors and self.embedder.enabled,
        )  # fmt: skip

    @staticmethod
    def default_access(record: KbRecord) -> AccessList | None:
        """The access list given to documents that bring none (None: such documents are refused)."""
        if not record.default_access:
            return None
        d = record.default_access
        return AccessList(tuple(d.get("users", ())), tuple(d.get("groups", ())), tuple(d.get("teams", ())))

    def _embeds(self, record: KbRecord) -> bool:
        if record.embeddings == "none":
            return False
        if not self.embedder.enabled or record.embeddings != self.embedder.name:
            log.warning(
                "knowledge base %r was built with embeddings %r, which this process does not have: "
                "lexical retrieval only",
                record.name,
                record.embeddings,
            )
            return False
        return True

    async def _pieces(
        self, record: KbRecord, chunking: ChunkingSettings, title: str, text: str
    ) -> tuple[list[Piece], list[NewChunk]]:
        pieces = chunk_text(text, chunking)
        flags = [bool(self._scanner.scan(ScanRequest(p.text, stage=Stage.CONTEXT))) for p in pieces]
        vectors: np.ndarray | None = None
        parts: list[bytes | None] = [None] * len(pieces)
        if pieces and self._embeds(record):
            vectors = await self.embedder.aencode([embedding_text(title, p.heading, p.text) for p in pieces])
            if record.sentence_vectors:
                parts = await self._sentence_vectors(title, pieces)
        chunks = [
            NewChunk(
                ord=i,
                text=p.text,
                context=p.context if p.context != p.text else "",
                heading=p.heading,
                start=p.start,
                end=p.end,
                embedding=vectors[i].astype("<f4").tobytes() if vectors is not None else None,
                suspicious=flags[i],
                parts=parts[i],
            )
            for i, p in enumerate(pieces)
        ]
        return pieces, chunks

    async def _sentence_vectors(self, title: str, pieces: Sequence[Piece]) -> list[bytes | None]:
        """One vector for the title and one per sentence of each chunk: retrieval scores a chunk by its best
        sentence too (bench/retrieval_eval.py measures what that adds)."""
        owners: list[int] = []
        texts: list[str] = []
        for i, piece in enumerate(pieces):
            units = ([title.strip()] if title.strip() else []) + [
                piece.text[a:b] for a, b in split_sentences(piece.text)
            ]
            owners += [i] * len(units)
            texts += units
        vectors = await self.embedder.aencode(texts)
        owner = np.asarray(owners, dtype=np.int64)
        out: list[bytes | None] = []
        for i in range(len(pieces)):
            mine = vectors[np.flatnonzero(owner == i)]
            out.append(mine.astype("<f4").tobytes() if len(mine) else None)
        return out

    async def ingest(
        self, name: str, scan: ScanResult, *, source: str, prune: bool = True, progress: Progress | None = None
    ) -> IngestReport:
        """Store what a scan found. Each document lands atomically with its chunks; problems are reported."""
        started = time.perf_counter()
        record = await self.store.require(name)
        chunking = ChunkingSettings.model_validate(record.chunking)
        active = await self.store.active_documents(name)
        report = IngestReport(problems=[(p.doc_id, p.message) for p in scan.problems])
        for doc_id, message in report.problems:
            await self.store.note(name, "refused", doc_id, {"error": message})
        total = len(scan.documents)
        for i, doc in enumerate(scan.documents):
            try:
                await self._ingest_one(name, record, chunking, doc, active.get(doc.doc_id), source, report)
            except (ValueError, OSError) as exc:
                report.problems.append((doc.doc_id, str(exc)))
                await self.store.note(name, "refused", doc.doc_id, {"error": str(exc)})
            if progress is not None:
                progress(i + 1, total, doc.doc_id)
        if prune:
            seen = {d.doc_id for d in scan.documents} | {p.doc_id for p in scan.problems}
            gone = [d for d in active.values() if d.source == source and d.doc_id not in seen]
            vectors = await self._vectors()
            if vectors is not None:
                await vectors.retire(await self.store.chunk_ids([d.pk for d in gone]))
            await self.store.retire(name, gone, reason="removed from the source")
            report.retired = sorted(d.doc_id for d in gone)
        report.seconds = time.perf_counter() - started
        return report

    async def _ingest_one(
        self, name: str, record: KbRecord, chunking: ChunkingSettings, doc: SourceDoc, previous: DocRecord | None,
        source: str, report: IngestReport,
    ) -> None:  # fmt: skip
        tokens = doc.access.tokens()
        if not tokens:
            report.problems.append((doc.doc_id, "no access list"))
            return
        if previous is not None and previous.content_hash == doc.content_hash:
            if previous.access != tokens:
                await self.store.set_access(name, previous, tokens)
                vectors = await self._vectors()
                if vectors is not None:
                    await vectors.set_access(await self.store.chunk_ids([previous.pk]), tokens)
                report.access_changed.append(doc.doc_id)
            else:
                report.unchanged.append(doc.doc_id)
            return
        _, chunks = await self._pieces(record, chunking, doc.title, doc.text)
        if not chunks:
            report.problems.append((doc.doc_id, "no text to index"))
            await self.store.note(name, "refused", doc.doc_id, {"error": "no text to index"})
            return
        suspicious = any(c.suspicious for c in chunks)
        if suspicious:
            report.suspicious.append(doc.doc_id)
        new = NewDocument(
            doc_id=doc.doc_id, title=doc.title, content_hash=doc.content_hash, text=doc.text, format=doc.format,
            access=tokens, metadata=dict(doc.metadata), source=source, suspicious=suspicious,
        )  # fmt: skip
        old = await self.store.chunk_ids([previous.pk]) if previous is not None else []
        _, pk = await self.store.put_document(name, new, chunks, previous)
        vectors = await self._vectors()
        if vectors is not None:
            await vectors.retire(old)
            await self._upsert_vectors(name, vectors, await self.store.chunk_ids([pk]), chunks, tokens, doc.metadata)
        (report.changed if previous is not None else report.added).append(doc.doc_id)
        report.chunks += len(chunks)

    async def _upsert_vectors(
        self, name: str, vectors: PgVectorIndex, ids: Sequence[int], chunks: Sequence[NewChunk],
        access: frozenset[str], metadata: Mapping[str, str],
    ) -> None:  # fmt: skip
        quarantine = self.settings.on_suspicious == "quarantine"
        rows = [
            (chunk_id, access, metadata, np.frombuffer(c.embedding, dtype="<f4"))
            for chunk_id, c in zip(ids, chunks, strict=True)
            if c.embedding is not None and not (quarantine and c.suspicious)
        ]
        await vectors.upsert(name, rows)

    async def rechunk(
        self, name: str, chunking: ChunkingSettings, *, progress: Progress | None = None
    ) -> tuple[int, int]:
        """Rebuild every chunk from stored document text under a new strategy; (documents, chunks)."""
        record = await self.store.require(name)
        docs = await self.store.document_texts(name)
        new: list[tuple[int, Sequence[NewChunk]]] = []
        for i, (pk, doc_id, title, text) in enumerate(docs):
            _, chunks = await self._pieces(record, chunking, title, text)
            new.append((pk, chunks))
            if progress is not None:
                progress(i + 1, len(docs), doc_id)
        vectors = await self._vectors()
        old = await self.store.active_chunk_ids(name) if vectors is not None else []
        await self.store.replace_chunks(name, chunking.model_dump(), new)
        if vectors is not None:
            await vectors.retire(old)
            fresh = await self.store.active_chunks(name, include_suspicious=self.settings.on_suspicious == "mark")
            await vectors.upsert(
                name,
                [(c.chunk_id, c.access, c.metadata, np.frombuffer(c.embedding, dtype="<f4"))
                 for c in fresh if c.embedding is not None],
            )  # fmt: skip
        return len(docs), sum(len(c) for _, c in new)

    async def delete(self, name: str) -> None:
        """Delete a knowledge base and everything in it."""
        await self.store.delete(name)
        vectors = await self._vectors()
        if vectors is not None:
            await vectors.delete_kb(name)
        for key in [k for k in self._loaded if k[0] == name]:
            del self._loaded[key]

    # -- retrieval --------------------------------------------------------------------------------------------

    async def _index(self, name: str, retrieval: RetrievalSettings) -> _Loaded | None:
        """The knowledge base's index under these retrieval settings, rebuilt when its generation moved on."""
        generation = await self.store.generation(name)
        if generation is None:
            return None
        key = (name, retrieval.model_dump_json())
        loaded = self._loaded.get(key)
        if loaded is not None and loaded.generation == generation:
            return loaded
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            loaded = self._loaded.get(key)
            if loaded is not None and loaded.generation == generation:
                return loaded
            record = await self.store.require(name)
            chunks = await self.store.active_chunks(name, include_suspicious=self.settings.on_suspicious == "mark")
            dense = (
                self._pg is None
                and self._embeds(record)
                and bool(chunks)
                and all(c.embedding is not None for c in chunks)
            )
            loaded = await asyncio.to_thread(self._build, record.generation, chunks, dense, retrieval)
            self._loaded[key] = loaded
            return loaded

    def _build(self, generation: int, chunks: list[StoredChunk], dense: bool, retrieval: RetrievalSettings) -> _Loaded:
        rows = [
            IndexRow(
                chunk_id=c.chunk_id,
                doc_id=c.doc_id,
                title=embedding_text(c.title, c.heading, ""),
                text=c.text,
                access=c.access,
                metadata=c.metadata,
            )
            for c in chunks
        ]
        matrix = None
        parts = None
        if dense:
            dim = self.embedder.dimension
            matrix = np.frombuffer(b"".join(c.embedding or b"" for c in chunks), dtype="<f4").reshape(len(chunks), dim)
            if any(c.parts for c in chunks):
                blocks = [np.frombuffer(c.parts, dtype="<f4").reshape(-1, dim) for c in chunks if c.parts]
                owners = np.concatenate(
                    [np.full(len(c.parts) // (4 * dim), i, dtype=np.int64) for i, c in enumerate(chunks) if c.parts]
                )
                parts = PartVectors(owners, np.concatenate(blocks))
        index = MemoryIndex(rows, matrix, settings=retrieval, parts=parts)
        return _Loaded(generation, index, {c.chunk_id: c for c in chunks})

    async def search(
        self, names: Sequence[str], query: str, allowed: frozenset[str], *, k: int = 5,
        where: Mapping[str, str] | None = None, retrieval: RetrievalSettings | None = None,
    ) -> list[Retrieved]:  # fmt: skip
        """The best `k` chunks across knowledge bases that the holder of `allowed` may read."""
        if not allowed or not query.strip():
            return []
        settings = retrieval or self.settings.retrieval
        loaded = {n: x for n in names if (x := await self._index(n, settings)) is not None}
        if not loaded:
            return []
        vector = None
        vectors = await self._vectors()
        if self.embedder.enabled and (vectors is not None or any(x.index.has_vectors for x in loaded.values())):
            vector = (await self.embedder.aencode([query]))[0]
        found: list[Retrieved] = []
        for name, x in loaded.items():
            hits: list[Hit]
            if vectors is not None and vector is not None:
                hits = await self._with_pgvector(name, x, vectors, query, vector, allowed, k, where, settings)
            else:
                hits = await asyncio.to_thread(x.index.search, query, vector, allowed, k=k, where=where)
            found.extend(Retrieved(name, x.chunks[h.chunk_id], h.score) for h in hits)
        found.sort(key=lambda r: -r.score)
        return found[:k]

    async def _with_pgvector(
        self, name: str, loaded: _Loaded, vectors: PgVectorIndex, query: str, vector: np.ndarray,
        allowed: frozenset[str], k: int, where: Mapping[str, str] | None, settings: RetrievalSettings,
    ) -> list[Hit]:  # fmt: skip
        """Hybrid search with the dense half in PostgreSQL: both candidate lists are access-filtered at the
        source, then fused by min-max scaling (over these candidates only, so nothing unreadable shapes it)."""
        n = settings.candidates
        lexical = await asyncio.to_thread(loaded.index.search, query, None, allowed, k=n, where=where, mode="lexical")
        dense = [(i, s) for i, s in await vectors.search(name, vector, allowed, k=n, where=where) if i in loaded.chunks]
        return fuse_minmax(
            [(h.chunk_id, h.score) for h in lexical], dense, settings.lexical_weight, settings.dense_weight, k
        )


def fuse_minmax(
    lexical: Sequence[tuple[int, float]], dense: Sequence[tuple[int, float]], w_lexical: float, w_dense: float, k: int
) -> list[Hit]:
    """Linear fusion of two scored candidate lists after min-max scaling; a row missing from one list counts as
    that list's minimum."""

    def scaled(items: Sequence[tuple[int, float]]) -> dict[int, float]:
        if not items:
            return {}
        lo, hi = min(s for _, s in items), max(s for _, s in items)
        span = hi - lo
        return {i: ((s - lo) / span if span > 0 else 1.0) for i, s in items}

    lex, den = scaled(lexical), scaled(dense)
    lex_rank = {i: r + 1 for r, (i, _) in enumerate(lexical)}
    dense_rank = {i: r + 1 for r, (i, _) in enumerate(dense)}
    fused = {i: w_lexical * lex.get(i, 0.0) + w_dense * den.get(i, 0.0) for i in lex.keys() | den.keys()}
    best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
    return [Hit(i, fused[i], lexical_rank=lex_rank.get(i), dense_rank=dense_rank.get(i)) for i in best]
