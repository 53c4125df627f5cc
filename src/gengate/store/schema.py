"""Tables and migrations. The same schema runs on SQLite and PostgreSQL.

Owns: table definitions and the ordered migration list. Must not: hold connections or run queries itself.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # the visible prefix, e.g. "a1b2c3d4"
    sa.Column("hash", sa.String(128), nullable=False),  # sha256 of the whole key; the key itself is never stored
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("team", sa.String(200), nullable=False),
    sa.Column("user", sa.String(200), nullable=True),
    sa.Column("models", sa.Text, nullable=True),  # JSON list, or NULL for "whatever the team may use"
    sa.Column("rpm", sa.Integer, nullable=True),
    sa.Column("tpm", sa.Integer, nullable=True),
    sa.Column("budget_usd", sa.Float, nullable=True),
    sa.Column("budget_period", sa.String(16), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("deployment", sa.String(300), nullable=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("completion_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cached_tokens", sa.Integer, nullable=False, default=0),
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("latency_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("fallbacks", sa.Integer, nullable=False, default=0),
    sa.Column("client_disconnected", sa.Boolean, nullable=False, default=False),
)
sa.Index("ix_requests_ts", requests.c.ts)
sa.Index("ix_requests_team_ts", requests.c.team, requests.c.ts)
sa.Index("ix_requests_key_ts", requests.c.key_id, requests.c.ts)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.Float, nullable=False),
)


guard_findings = sa.Table(
    "guard_findings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("profile", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("detector_version", sa.String(64), nullable=False),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("span_start", sa.Integer, nullable=False),
    sa.Column("span_end", sa.Integer, nullable=False),
    sa.Column("value_hash", sa.String(32), nullable=True),  # keyed hash, never the value
)
sa.Index("ix_guard_findings_request", guard_findings.c.request_id)
sa.Index("ix_guard_findings_ts", guard_findings.c.ts)


# -- knowledge bases (v3) -----------------------------------------------------------------------------------

knowledge_bases = sa.Table(
    "knowledge_bases",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("chunking", sa.Text, nullable=False),  # JSON ChunkingSettings
    sa.Column("default_access", sa.Text, nullable=True),  # JSON AccessList, or NULL: documents must bring one
    sa.Column("embeddings", sa.String(64), nullable=False),  # the embedding model's name, or "none"
    sa.Column("sentence_vectors", sa.Boolean, nullable=False, default=False),  # a vector per title and sentence
    sa.Column("generation", sa.Integer, nullable=False, default=0),  # bumped on every change: indexes reload
    sa.Column("created_at", sa.Float, nullable=False),
)

kb_documents = sa.Table(
    "kb_documents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kb", sa.String(128), nullable=False),
    sa.Column("doc_id", sa.String(1024), nullable=False),  # path relative to the ingested folder
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("text", sa.Text, nullable=False),  # kept so `kb rechunk` needs no source files
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("access", sa.Text, nullable=False),  # JSON list of access tokens
    sa.Column("doc_metadata", sa.Text, nullable=False, default="{}"),
    sa.Column("source", sa.Text, nullable=False, default=""),
    sa.Column("suspicious", sa.Boolean, nullable=False, default=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("retired_at", sa.Float, nullable=True),
    sa.UniqueConstraint("kb", "doc_id", "version", name="uq_kb_documents_version"),
)
sa.Index("ix_kb_documents_kb_doc", kb_documents.c.kb, kb_documents.c.doc_id, kb_documents.c.active)

kb_chunks = sa.Table(
    "kb_chunks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kb", sa.String(128), nullable=False),
    sa.Column("document", sa.Integer, nullable=False),  # kb_documents.id
    sa.Column("ord", sa.Integer, nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("context", sa.Text, nullable=False, default=""),
    sa.Column("heading", sa.Text, nullable=False, default=""),
    sa.Column("span_start", sa.Integer, nullable=False),
    sa.Column("span_end", sa.Integer, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=True),  # float32 little-endian
    sa.Column("parts", sa.LargeBinary, nullable=True),  # sentence vectors, float32 [n, dim], when the KB keeps them
    sa.Column("suspicious", sa.Boolean, nullable=False, default=False),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
)
sa.Index("ix_kb_chunks_kb_active", kb_chunks.c.kb, kb_chunks.c.active)
sa.Index("ix_kb_chunks_document", kb_chunks.c.document)

kb_events = sa.Table(
    "kb_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kb", sa.String(128), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("doc_id", sa.String(1024), nullable=True),
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)
sa.Index("ix_kb_events_kb_ts", kb_events.c.kb, kb_events.c.ts)


# -- evaluation datasets (v4) -------------------------------------------------------------------------------

eval_datasets = sa.Table(
    "eval_datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),  # sha256 of the canonical cases: the version's identity
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("case_count", sa.Integer, nullable=False),
    sa.Column("source", sa.Text, nullable=False, default=""),  # the imported file's name, never its full path
    sa.UniqueConstraint("name", "version", name="uq_eval_datasets_version"),
)

eval_cases = sa.Table(
    "eval_cases",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dataset_pk", sa.Integer, nullable=False),  # eval_datasets.id
    sa.Column("case_id", sa.String(256), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # JSON: the case in canonical form
)
sa.Index("ix_eval_cases_dataset", eval_cases.c.dataset_pk)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[api_keys, requests])


# Append-only: never edit a migration that has shipped; add the next one.
def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[guard_findings])


def _v3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[knowledge_bases, kb_documents, kb_chunks, kb_events])


def _v4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[eval_datasets, eval_cases])


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [(1, _v1), (2, _v2), (3, _v3), (4, _v4)]
