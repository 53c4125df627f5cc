"""Feedback capture: the event's wire format, whose answer it is, rate limits, and a group-commit writer.

Owns: parsing one event (`parse_event`, pure), the ownership rule (`owns`, pure), what is kept of a comment, the
per-caller rate limit, the writer that acknowledges an event only once the transaction holding it has
committed, and the hourly retention purge. Must not: speak HTTP (the routes do) or build SQL (`FeedbackStore`
does).

Durability: `submit` returns only after the batch containing the caller's events has committed, so every
acknowledged event survives a restart; events arriving while a batch commits wait for the next one, which is
how one commit serves many requests under load. A client that gets no answer retries with the same event id,
and the unique (request_id, event_id) constraint makes the retry a no-op reported as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from gengate.errors import Conflict, GengateError, NotFound, RateLimited, RequestError
from gengate.outer.payloads import PayloadMode, Redactor
from gengate.policy.counters import Counters
from gengate.settings import AppSettings, FeedbackSettings, Settings
from gengate.store.feedback import FeedbackStore, ForgetCounts, PurgeCounts, ResponseRef
from gengate.telemetry.traces import TraceRecord, TraceWriter
from gengate.types import Principal

log = logging.getLogger("gengate.feedback")

Kind = Literal["thumbs", "score", "copy", "regenerate", "share"]
KINDS: tuple[str, ...] = get_args(Kind)
IMPLICIT = frozenset({"copy", "regenerate", "share"})  # events that carry no value
FIELDS = frozenset({"response_id", "event_id", "kind", "value", "comment"})
MAX_EVENT_ID = 128
MAX_BATCH = 100
COMPLETION_PREFIX = "chatcmpl-"
DAY = 86_400.0
PURGE_SECONDS = 3600.0
_STRICTNESS: dict[str, int] = {"full": 0, "redacted": 1, "none": 2}
_THUMBS: dict[str, float] = {"up": 1.0, "down": 0.0}


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One validated event, as a client sent it."""

    response_id: str
    event_id: str
    kind: Kind
    value: float | None = None
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    """An event that is stored: now (`duplicate` False) or by an earlier request with the same event id."""

    response_id: str
    event_id: str
    duplicate: bool


def parse_event(raw: Any, settings: FeedbackSettings) -> FeedbackEvent:
    """One event from its JSON object, or a RequestError naming the field that is wrong."""
    if not isinstance(raw, dict):
        raise RequestError("a feedback event must be a JSON object")
    unknown = set(raw) - FIELDS
    if unknown:
        raise RequestError(f"unknown fields: {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    response_id = raw.get("response_id")
    if not isinstance(response_id, str) or not response_id:
        raise RequestError("response_id is required: the answer's id (chatcmpl-… or its request id)",
                           param="response_id")  # fmt: skip
    event_id = raw.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID:
        raise RequestError(
            f"event_id is required: a client-generated id of 1 to {MAX_EVENT_ID} characters (a retry reuses it)",
            param="event_id",
        )
    for name in ("response_id", "event_id", "comment"):
        # PostgreSQL cannot store NUL in text (SQLite can): refuse it here, the same on both.
        if isinstance(raw.get(name), str) and "\x00" in raw[name]:
            raise RequestError(f"{name} must not contain NUL characters", param=name)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RequestError(f"kind must be one of {', '.join(KINDS)}", param="kind")
    value = _value(kind, raw.get("value"), settings)
    comment = raw.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise RequestError("comment must be a string", param="comment")
    if comment is not None and len(comment) > settings.max_comment_chars:
        raise RequestError(
            f"comment is longer than {settings.max_comment_chars} characters", param="comment", code="comment_too_long"
        )
    return FeedbackEvent(response_id, event_id, kind, value, comment or None)


def _value(kind: str, value: Any, settings: FeedbackSettings) -> float | None:
    if kind in IMPLICIT:
        if value is not None:
            raise RequestError(f"a {kind} event carries no value", param="value")
        return None
    if kind == "thumbs":
        if isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value in _THUMBS:
            return _THUMBS[value]
        if isinstance(value, int | float) and value in (0, 1):
            return float(value)
        raise RequestError('a thumbs event\'s value must be "up" or "down" (or true/false, 1/0)', param="value")
    low, high = settings.score_min, settings.score_max
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(f"a score event's value must be a number from {low:g} to {high:g}", param="value")
    if not low <= value <= high:
        raise RequestError(f"score must be from {low:g} to {high:g}", param="value", code="score_out_of_range")
    return float(value)


def parse_events(body: dict[str, Any], settings: FeedbackSettings) -> tuple[bool, list[FeedbackEvent | RequestError]]:
    """The events of a request body: one event, or `{"events": [...]}`. → (is a batch, events or their errors)."""
    if "events" not in body:
        return False, [parse_event(body, settings)]
    if set(body) != {"events"}:
        raise RequestError('a batch is {"events": [...]} with nothing beside it', param="events")
    events = body["events"]
    if not isinstance(events, list) or not 0 < len(events) <= MAX_BATCH:
        raise RequestError(f"events must be an array of 1 to {MAX_BATCH} events", param="events")
    parsed: list[FeedbackEvent | RequestError] = []
    for item in events:
        try:
            parsed.append(parse_event(item, settings))
        except RequestError as exc:
            parsed.append(exc)
    return True, parsed


def request_ids(response_id: str) -> tuple[str, ...]:
    """The request ids a response id may name: `chatcmpl-<id>` is the completion's, a bare id the ask endpoint's."""
    if response_id.startswith(COMPLETION_PREFIX) and len(response_id) > len(COMPLETION_PREFIX):
        return response_id[len(COMPLETION_PREFIX) :], response_id
    return (response_id,)


def owns(principal: Principal, ref: ResponseRef) -> bool:
    """Did this caller receive this answer? The same key, or the same subject. Admins get no exception."""
    if principal.key_id is not None and ref.key_id == principal.key_id:
        return True
    if ref.subject is None or ref.subject != principal.subject:
        return False
    # `key:<id>` names a key that has no user: only that key (matched above) is its owner, never a token
    # whose subject happens to read the same.
    return not ref.subject.startswith("key:")


def stricter(a: str, b: str) -> PayloadMode:
    """The payload mode that keeps less of the two."""
    mode = a if _STRICTNESS.get(a, 2) >= _STRICTNESS.get(b, 2) else b
    return mode if mode in ("full", "redacted") else "none"  # type: ignore[return-value]


def purge_cutoffs(apps: Mapping[str, AppSettings], now: float) -> tuple[dict[str, float | None], float | None]:
    """Per app, the time before which answers and feedback expire (None: kept); and the cut-off for answers of
    apps no longer configured and of plain model calls, which get the default retention."""
    default_days = AppSettings.model_fields["retention_days"].default
    cutoffs = {
        name: None if app.retention_days is None else now - app.retention_days * DAY for name, app in apps.items()
    }
    return cutoffs, now - float(default_days) * DAY


def _ref_of(record: TraceRecord) -> ResponseRef:
    """The answer a trace record not yet written carries."""
    assert record.response is not None
    answer = record.response
    return ResponseRef(
        request_id=record.id, ts=record.ts, subject=record.subject, key_id=record.key_id, team=record.team,
        app=answer.get("app"), experiment=answer.get("experiment"), variant=answer.get("variant"),
        payload=str(answer.get("payload", "none")),
    )  # fmt: skip


Slot = tuple[dict[str, Any] | None, "asyncio.Future[bool]"]  # a row (None: a barrier) and who waits for it


class FeedbackWriter:
    """Group commit: callers queue rows and await the commit of the batch that holds them."""

    def __init__(self, store: FeedbackStore, *, max_batch: int = 2000, max_queue: int = 100_000) -> None:
        self._store = store
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._queue: list[Slot] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the background writer."""
        self._task = asyncio.create_task(self._run(), name="gengate-feedback-writer")

    def add(self, rows: Sequence[dict[str, Any]]) -> list[asyncio.Future[bool]]:
        """Queue rows; each future resolves True when its row was inserted, False when it was stored already."""
        if self._closing or self._task is None:
            raise RuntimeError("the feedback writer is not running")
        if len(self._queue) + len(rows) > self._max_queue:
            raise RateLimited("feedback is arriving faster than it can be stored; retry shortly",
                              retry_after=1.0, code="feedback_backlog")  # fmt: skip
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[bool]] = []
        for row in rows:
            future: asyncio.Future[bool] = loop.create_future()
            self._queue.append((row, future))
            futures.append(future)
        self._wake.set()
        return futures

    async def drain(self) -> None:
        """Wait until everything queued before this call is committed (or has failed)."""
        if self._task is None or self._task.done():
            return
        barrier: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((None, barrier))
        self._wake.set()
        await barrier

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._write(batch)
            if self._closing:
                return

    async def _write(self, batch: list[Slot]) -> None:
        rows: list[dict[str, Any]] = []
        first: dict[tuple[str, str], asyncio.Future[bool]] = {}
        for row, future in batch:
            if row is not None and (row["request_id"], row["event_id"]) not in first:
                first[(row["request_id"], row["event_id"])] = future
                rows.append(row)
        inserted: set[tuple[str, str]] | None = None
        failure: BaseException | None = None
        for attempt in range(3):
            try:
                inserted = await self._store.add_events(rows)
                break
            except Exception as exc:  # the database may be restarting or locked: retry, then fail the batch
                failure = exc
                log.warning("writing %d feedback events failed (attempt %d)", len(rows), attempt + 1)
                await asyncio.sleep(0.05 * 4**attempt)
        for row, future in batch:
            if future.done():  # its caller went away; the event is stored all the same
                continue
            if row is None:
                future.set_result(True)
            elif inserted is None:
                future.set_exception(failure or RuntimeError("feedback could not be stored"))
            else:
                key = (row["request_id"], row["event_id"])
                future.set_result(key in inserted and first[key] is future)

    async def close(self) -> None:
        """Write what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task


class FeedbackService:
    """Accepts feedback for one gateway: rate limits, ownership, comments, durable writes, hourly retention."""

    def __init__(
        self, store: FeedbackStore, settings: Settings, traces: TraceWriter, counters: Counters,
        redactor: Redactor, *, clock: Callable[[], float] = time.time, purge_seconds: float = PURGE_SECONDS,
        cache_size: int = 50_000, cache_seconds: float = 30.0,
    ) -> None:  # fmt: skip
        self.store = store
        self._settings = settings
        self._traces = traces
        self._counters = counters
        self._redactor = redactor
        self._clock = clock
        self._purge_seconds = purge_seconds
        self._writer = FeedbackWriter(store)
        # Answers never change once written; the cache only forgets them on purge and forget (and after a while,
        # so that a `gengate data forget` run by another process takes effect here too).
        self._cache: OrderedDict[str, tuple[float, ResponseRef]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_seconds = cache_seconds
        self._stop = asyncio.Event()
        self._retention: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer and the retention task (which purges once now, then every hour)."""
        self._writer.start()
        self._retention = asyncio.create_task(self._retention_loop(), name="gengate-retention")

    async def submit(
        self, principal: Principal, items: Sequence[FeedbackEvent | GengateError]
    ) -> list[Accepted | GengateError]:
        """Store a caller's events (already parsed; parse errors pass through to their place in the result)."""
        now = self._clock()
        admitted, retry_after = await self._admit(principal, len(items), now)
        results: list[Accepted | GengateError] = []
        rows: list[tuple[int, dict[str, Any]]] = []
        for index, item in enumerate(items):
            if index >= admitted:
                results.append(RateLimited(f"more than {self._settings.feedback.rate_per_minute} feedback events a "
                                           "minute", retry_after=retry_after))  # fmt: skip
                continue
            if isinstance(item, GengateError):
                results.append(item)
                continue
            try:
                rows.append((index, await self._row(principal, item, now)))
            except GengateError as exc:
                results.append(exc)
                continue
            results.append(Accepted(item.response_id, item.event_id, False))  # replaced once it is committed
        if rows:
            stored = await asyncio.gather(*self._writer.add([row for _, row in rows]))
            for (index, _), inserted in zip(rows, stored, strict=True):
                accepted = results[index]
                assert isinstance(accepted, Accepted)
                results[index] = Accepted(accepted.response_id, accepted.event_id, duplicate=not inserted)
        return results

    async def _admit(self, principal: Principal, count: int, now: float) -> tuple[int, float]:
        """How many of `count` events the caller may send now, and when to retry the rest."""
        who = f"key:{principal.key_id}" if principal.key_id is not None else f"sub:{principal.subject}"
        limit = [(f"feedback:{who}", self._settings.feedback.rate_per_minute)]
        for index in range(count):
            retry = await self._counters.hit(limit, now)
            if retry is not None:
                return index, retry
        return count, 0.0

    async def _row(self, principal: Principal, event: FeedbackEvent, now: float) -> dict[str, Any]:
        ref = await self.response(event.response_id)
        if ref is None or not owns(principal, ref):
            # The same answer for an unknown id and for someone else's: no one learns that an answer exists.
            raise NotFound("no answer with this response_id was given to you", param="response_id",
                           code="response_not_found")  # fmt: skip
        accept_days = self._settings.feedback.accept_days
        if now - ref.ts > accept_days * DAY:
            raise Conflict(f"feedback is accepted for {accept_days:g} days after an answer; this one is older",
                           param="response_id", code="feedback_window_closed")  # fmt: skip
        app = self._settings.apps.get(ref.app) if ref.app is not None else None
        mode = stricter(ref.payload, app.payloads if app is not None else ref.payload)
        return {
            "request_id": ref.request_id, "event_id": event.event_id, "ts": now, "subject": principal.subject,
            "team": ref.team, "app": ref.app, "experiment": ref.experiment, "variant": ref.variant,
            "kind": event.kind, "value": event.value, "comment": self._redactor.keep(event.comment, mode),
        }  # fmt: skip

    async def response(self, response_id: str) -> ResponseRef | None:
        """The answer a response id names: cached, still in the trace writer's queue, or stored."""
        now = time.monotonic()
        for request_id in request_ids(response_id):
            cached = self._cache.get(request_id)
            if cached is not None and cached[0] > now:
                return cached[1]
            record = self._traces.pending(request_id)
            ref = _ref_of(record) if record is not None and record.response is not None else None
            if ref is None:
                ref = await self.store.get_response(request_id)
            if ref is not None:
                self._cache[request_id] = (now + self._cache_seconds, ref)
                self._cache.move_to_end(request_id)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
                return ref
        return None

    async def purge(self) -> PurgeCounts:
        """Delete answers and feedback older than each app's retention."""
        cutoffs, others = purge_cutoffs(self._settings.apps, self._clock())
        counts = await self.store.purge(cutoffs, others)
        self._cache.clear()
        return counts

    async def forget(self, subject: str) -> ForgetCounts:
        """Delete one person's answers, feedback and findings; anonymise their request log. Everything this
        gateway has queued for them is written first, so nothing of theirs lands after the deletion."""
        self._cache.clear()
        await self._traces.flush()
        await self._writer.drain()
        counts = await self.store.forget(subject)
        self._cache.clear()
        return counts

    async def _retention_loop(self) -> None:
        while not self._stop.is_set():
            wait = self._purge_seconds
            try:
                counts = await self.purge()
                if counts.responses or counts.feedback:
                    log.info("retention: deleted %d answers and %d feedback events", counts.responses, counts.feedback)
            except Exception:
                log.exception("retention: purging expired answers failed; will retry")
                wait = min(wait, 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    async def close(self) -> None:
        """Stop the retention task (after a purge in progress) and write every queued event."""
        self._stop.set()
        if self._retention is not None:
            await self._retention
        await self._writer.close()
