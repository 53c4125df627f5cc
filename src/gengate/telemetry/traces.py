"""Trace records: one per request, written to the store in batches off the request path.

Owns: the record's shape and the batching writer (flushed on an interval, on size, and at shutdown). Must not:
block a request on the database; a failing database is retried and, if the queue overflows, counted as
dropped in metrics — never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any

import sqlalchemy as sa

from gengate.store.db import Store
from gengate.telemetry.metrics import Metrics
from gengate.telemetry.trace_steps import step_rows

log = logging.getLogger("gengate.traces")


@dataclass(slots=True)
class TraceRecord:
    """What is kept about one request (never payloads or credentials)."""

    id: str
    ts: float
    endpoint: str
    status: int
    subject: str | None = None
    team: str | None = None
    key_id: str | None = None
    model: str | None = None
    deployment: str | None = None
    error_code: str | None = None
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    fallbacks: int = 0
    client_disconnected: bool = False
    # Guard findings (already free of raw values); written to their own table, not a column.
    findings: list[dict[str, Any]] = field(default_factory=list)
    # What an app (or model) answered, for the outer loop: written to `responses` with the record's identity,
    # cost and latency. Payload fields are already reduced to the app's payload setting (full/redacted/none).
    response: dict[str, Any] | None = None
    # What the request did on its way (gengate.telemetry.trace_steps): routing attempts, retrieved chunks, tool
    # calls. Written to `trace_steps`, in order.
    steps: list[dict[str, Any]] = field(default_factory=list)


_FIELDS = tuple(f.name for f in fields(TraceRecord) if f.name not in ("findings", "response", "steps"))


def _transient(exc: BaseException) -> bool:
    """A failure worth retrying (the database is unreachable or restarting), not one about a record's content."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, TimeoutError))


def reused_id(request_id: str) -> str:
    """A fresh id for a request whose client-chosen id is already in the log: the id (cut to fit 64 characters),
    `~` (which a client's id cannot contain) and 16 random hex digits."""
    return f"{request_id[:47]}~{os.urandom(8).hex()}"


def _row(record: TraceRecord) -> dict[str, Any]:
    # Shallow and flat: `dataclasses.asdict` deep-copies and cost ~35 µs a record on the hot path.
    return {name: getattr(record, name) for name in _FIELDS}


def response_row(record: TraceRecord) -> dict[str, Any]:
    """The `responses` row of a record that carries a response."""
    assert record.response is not None
    return {
        **record.response, "request_id": record.id, "ts": record.ts, "subject": record.subject, "team": record.team,
        "key_id": record.key_id, "model": record.model, "cost_usd": record.cost_usd, "latency_ms": record.latency_ms,
        "findings": len(record.findings),
    }  # fmt: skip


class TraceWriter:
    """Queues records and writes them in batches from one background task."""

    def __init__(
        self, store: Store, metrics: Metrics, *, batch_size: int = 200, flush_seconds: float = 0.5,
        max_queue: int = 100_000,
    ) -> None:  # fmt: skip
        self._store = store
        self._metrics = metrics
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._max_queue = max_queue
        self._pending: list[TraceRecord] = []
        self._writing: list[TraceRecord] = []  # the batch being written: not pending, not yet readable either
        self._flushing = asyncio.Lock()  # so that `flush()` returns only once earlier records are written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name="gengate-trace-writer")

    def submit(self, record: TraceRecord) -> None:
        """Queue a record (never blocks)."""
        if len(self._pending) >= self._max_queue:
            self._metrics.log_dropped.inc()
            return
        self._pending.append(record)
        if len(self._pending) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Write everything queued so far (waiting for a batch another flush is writing)."""
        async with self._flushing:
            while self._pending:
                batch, self._pending = (
                    self._pending[: self._batch_size * 10],
                    self._pending[self._batch_size * 10 :],
                )
                self._writing = batch
                try:
                    await self._write(batch)
                except Exception as exc:
                    retry = batch if _transient(exc) else await self._write_one_by_one(batch)
                    if retry:
                        # Put the batch back and let the next round retry; the database may be restarting.
                        log.warning("writing %d trace records failed (%s); will retry", len(retry), type(exc).__name__)
                        self._pending[:0] = retry
                        raise
                finally:
                    self._writing = []

    async def _write(self, batch: list[TraceRecord]) -> None:
        await self._store.write_requests(
            [_row(r) for r in batch], [f for r in batch for f in r.findings],
            [response_row(r) for r in batch if r.response is not None],
            [row for r in batch if r.steps for row in step_rows(r.id, r.steps)],
        )  # fmt: skip

    async def _write_one_by_one(self, batch: list[TraceRecord]) -> list[TraceRecord]:
        """After the database refused a batch for its content: write each record alone, so one bad record never
        stops the log. A record whose request id is taken (a client sent the same `x-request-id` twice) is kept
        under a new id (`reused_id`); one the database refuses otherwise is dropped and counted. Returns the records
        to retry (those that met a transient failure)."""
        retry: list[TraceRecord] = []
        for record in batch:
            try:
                await self._write([record])
            except Exception as exc:
                if _transient(exc):
                    retry.append(record)
                    continue
                if isinstance(exc, sa.exc.IntegrityError):
                    try:
                        kept = await self._keep_under_new_id(record)
                    except Exception as again:
                        if _transient(again):
                            retry.append(record)  # under its new id, which stays free
                            continue
                        kept = False
                    if kept:
                        continue
                self._metrics.log_dropped.inc()
                log.error("trace record %s refused by the database (%s); dropped", record.id, type(exc).__name__)
        return retry

    async def _keep_under_new_id(self, record: TraceRecord) -> bool:
        """Write a record whose id is already stored under a fresh one (True when that worked). Otherwise a client
        could hide a request from the log, and from the spend it records, by reusing an earlier request's id."""
        if await self._store.get_request(record.id) is None:
            return False
        original, record.id = record.id, reused_id(record.id)
        for finding in record.findings:
            if "request_id" in finding:
                finding["request_id"] = record.id
        try:
            await self._write([record])
        except sa.exc.IntegrityError:
            return False
        self._metrics.log_reused_ids.inc()
        log.warning("request id %s was already in the log; this request's record is %s", original, record.id)
        return True

    def pending(self, request_id: str) -> TraceRecord | None:
        """A record still waiting to be written (a caller may ask about a request the writer holds)."""
        for queue in (self._pending, self._writing):
            for record in reversed(queue):
                if record.id == request_id:
                    return record
        return None

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                await asyncio.sleep(min(5.0, self._flush_seconds * 4))

    async def close(self) -> None:
        """Stop the writer and flush what is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        try:
            await self.flush()
        except Exception:
            self._metrics.log_dropped.inc(len(self._pending))
            log.error("%d trace records could not be written at shutdown", len(self._pending))
