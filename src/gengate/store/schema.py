"""Tables and migrations. The same schema runs on SQLite and PostgreSQL.

Owns: table definitions, the ordered migration list, and fitting values to the columns (`fit`). Must not: hold
connections or run queries itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

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


# -- the outer loop (v5): answers people received, their feedback, A/B experiments, evaluation runs -------------

responses = sa.Table(
    "responses",
    metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),  # the completion id is `chatcmpl-<request_id>`
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("app", sa.String(128), nullable=True),  # NULL for plain model calls
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("experiment", sa.String(128), nullable=True),
    sa.Column("variant", sa.String(128), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),  # answered | no_answer | blocked | error
    sa.Column("question", sa.Text, nullable=True),  # per the app's payload setting: full, redacted or NULL
    sa.Column("answer", sa.Text, nullable=True),
    sa.Column("payload", sa.String(16), nullable=False),  # full | redacted | none
    sa.Column("cost_usd", sa.Float, nullable=False, default=0.0),
    sa.Column("latency_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("findings", sa.Integer, nullable=False, default=0),
    sa.Column("sources", sa.Text, nullable=False, default="[]"),  # JSON [{kb, doc_id, version}] the answer cited
    # JSON list of the caller's groups when it asked (v8; NULL on older rows): traces become cases that run as
    # the same caller, group-readable documents included.
    sa.Column("caller_groups", sa.Text, nullable=True),
)
sa.Index("ix_responses_app_ts", responses.c.app, responses.c.ts)
sa.Index("ix_responses_subject", responses.c.subject)
sa.Index("ix_responses_experiment", responses.c.experiment, responses.c.variant)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.String(128), nullable=False),  # the client's id: a retry is recognised, not re-counted
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("app", sa.String(128), nullable=True),
    sa.Column("experiment", sa.String(128), nullable=True),
    sa.Column("variant", sa.String(128), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),  # thumbs | score | copy | regenerate | share
    sa.Column("value", sa.Float, nullable=True),  # thumbs: 1 up / 0 down; score: the score
    sa.Column("comment", sa.Text, nullable=True),
    sa.UniqueConstraint("request_id", "event_id", name="uq_feedback_event"),
)
sa.Index("ix_feedback_app_ts", feedback.c.app, feedback.c.ts)
sa.Index("ix_feedback_experiment", feedback.c.experiment, feedback.c.variant)
sa.Index("ix_feedback_subject", feedback.c.subject)

experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("app", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # draft | running | paused | stopped | shipped
    sa.Column("spec", sa.Text, nullable=False),  # JSON: variants (name, weight, overrides), metric, alpha, guardrails
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("stopped_at", sa.Float, nullable=True),
    sa.Column("winner", sa.String(128), nullable=True),
    sa.Column("note", sa.Text, nullable=False, default=""),  # why it stopped (a guardrail breach, a decision)
)
sa.Index("ix_experiments_app_status", experiments.c.app, experiments.c.status)

eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("run_id", sa.String(128), primary_key=True),
    sa.Column("target", sa.String(200), nullable=False),  # app/<name> or a model alias
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("dataset_version", sa.String(32), nullable=False),
    sa.Column("variant", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("knowledge", sa.Text, nullable=False, default="{}"),  # JSON {kb: last kb_events id seen}
)
sa.Index("ix_eval_runs_target", eval_runs.c.target, eval_runs.c.started_at)


# -- the dashboard (v6): browser sessions, and indexes its pages page and aggregate by -------------------------

ui_sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # sha256 of the session id; the id lives only in the cookie
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("team", sa.String(200), nullable=False),
    sa.Column("groups", sa.Text, nullable=False, default="[]"),  # JSON: the JWT's groups (knowledge-base access)
    sa.Column("admin", sa.Boolean, nullable=False, default=False),
    sa.Column("auth", sa.String(16), nullable=False),  # key | jwt | admin
    sa.Column("key_id", sa.String(32), nullable=True),  # a virtual key's id: revoking the key ends the session
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
sa.Index("ix_ui_sessions_expires", ui_sessions.c.expires_at)

# Hourly roll-ups of the request log, so charts over days and spend against budgets read thousands of rows, not
# millions. Filled lazily by the dashboard (gengate.store.ui_rollups) up to `ui_rollup_state.rolled_until`.
LATENCY_EDGES_MS = (5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10_000, 30_000, 60_000)

ui_rollup_requests = sa.Table(
    "ui_rollup_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hour", sa.Float, nullable=False),  # the hour's start (epoch seconds, UTC)
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("client_errors", sa.Integer, nullable=False),
    sa.Column("server_errors", sa.Integer, nullable=False),
    sa.Column("blocked", sa.Integer, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    # le_<i>: requests with latency at or below LATENCY_EDGES_MS[i] (a cumulative histogram).
    *(sa.Column(f"le_{i}", sa.Integer, nullable=False) for i in range(len(LATENCY_EDGES_MS))),
)
sa.Index("ix_ui_rollup_requests_hour", ui_rollup_requests.c.hour)

ui_rollup_keys = sa.Table(
    "ui_rollup_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hour", sa.Float, nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),
    sa.Column("requests", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
)
sa.Index("ix_ui_rollup_keys_key_hour", ui_rollup_keys.c.key_id, ui_rollup_keys.c.hour)

ui_rollup_apps = sa.Table(
    "ui_rollup_apps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("hour", sa.Float, nullable=False),
    sa.Column("team", sa.String(200), nullable=True),
    sa.Column("app", sa.String(128), nullable=True),
    sa.Column("responses", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
)
sa.Index("ix_ui_rollup_apps_hour", ui_rollup_apps.c.hour)

ui_rollup_state = sa.Table(
    "ui_rollup_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1
    sa.Column("rolled_until", sa.Float, nullable=False),  # hours before this are in the roll-ups
)

# The request log pages newest first by (ts, id) through ix_requests_ts / ix_requests_team_ts; these serve the
# dashboard's filters (a subject, blocked requests) and its team-scoped findings and comments without a scan.
_ui_indexes = (
    sa.Index("ix_requests_subject_ts", requests.c.subject, requests.c.ts),
    sa.Index("ix_requests_error_ts", requests.c.error_code, requests.c.ts),
    sa.Index("ix_guard_findings_team_ts", guard_findings.c.team, guard_findings.c.ts),
    sa.Index("ix_feedback_team_id", feedback.c.team, feedback.c.id),
)


# -- trace steps (v7): each routing attempt, retrieved chunk and tool call of a request, for its trace ------------

trace_steps = sa.Table(
    "trace_steps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),  # the step's place in the request (0, 1, …)
    sa.Column("kind", sa.String(16), nullable=False),  # attempt | retrieval | tool
    # JSON (gengate.telemetry.trace_steps): names, statuses, scores, access lists; never a payload or a value.
    sa.Column("detail", sa.Text, nullable=False, default="{}"),
)
sa.Index("ix_trace_steps_request", trace_steps.c.request_id, trace_steps.c.seq)


def fit(table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows with their text made storable on both databases: NUL replaced by U+FFFD, strings cut to the column's
    length. SQLite stores either as given; PostgreSQL refuses both, and one such row (a client's 300-character
    model name, a question with a NUL) would fail the whole batch it is written in, again at every retry."""
    limits = [(c.name, c.type.length) for c in table.columns if isinstance(c.type, sa.String)]
    out: list[Mapping[str, Any]] = []
    for row in rows:
        fixed: dict[str, Any] | None = None
        for name, length in limits:
            value = row.get(name)
            if isinstance(value, str) and ("\x00" in value or (length is not None and len(value) > length)):
                fixed = dict(row) if fixed is None else fixed
                fixed[name] = value.replace("\x00", "\ufffd")[:length]
        out.append(row if fixed is None else fixed)
    return out


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[api_keys, requests])


# Append-only: never edit a migration that has shipped; add the next one.
def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[guard_findings])


def _v3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[knowledge_bases, kb_documents, kb_chunks, kb_events])


def _v4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[eval_datasets, eval_cases])


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[responses, feedback, experiments, eval_runs])


def _v6(conn: Connection) -> None:
    metadata.create_all(conn, tables=[ui_sessions, ui_rollup_requests, ui_rollup_keys, ui_rollup_apps, ui_rollup_state])
    for index in _ui_indexes:
        index.create(conn, checkfirst=True)


def _v7(conn: Connection) -> None:
    metadata.create_all(conn, tables=[trace_steps])


def _v8(conn: Connection) -> None:
    # A database created at v5 or later by this code already has the column (create_all uses today's table).
    if "caller_groups" not in {c["name"] for c in sa.inspect(conn).get_columns("responses")}:
        conn.execute(sa.text("ALTER TABLE responses ADD COLUMN caller_groups TEXT"))


MIGRATIONS: list[tuple[int, Callable[[Connection], None]]] = [
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5), (6, _v6), (7, _v7), (8, _v8)
]  # fmt: skip
