"""Running the guard pipeline on OpenAI requests and answers: input and context stages on messages, the output
stage on answers (whole, or streamed with a hold-back window), templated answers when a check blocks.

Owns: where text lives in OpenAI payloads, the blocked-answer shape (with its machine-readable reason in the
`gengate` extension field), turning findings into trace records without raw values.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gengate.errors import GengateError
from gengate.guard.base import Finding, Stage
from gengate.guard.pipeline import Guard, GuardPipeline, Pseudonyms, RuleFinding, StageResult
from gengate.policy.pricing import usd
from gengate.settings import GuardSettings
from gengate.telemetry.traces import TraceRecord

# Which stage a message's text belongs to: users speak at input; tool results are retrieved context.
_STAGE_OF_ROLE = {"user": Stage.INPUT, "tool": Stage.CONTEXT, "function": Stage.CONTEXT}
CONTEXT_REMOVED = "[content removed by gengate: it failed a guard check]"


JUDGE_PROMPT_VERSION = "judge-v1"
JUDGE_PROMPT = (
    "You review text for an organisation's AI assistant. Automated checks flagged it for: {concerns}. "
    "Decide whether the text really does this (a mention, a refusal or a neutral fact does not count). "
    "Answer with exactly one word: VIOLATION or OK."
)


class Judge(Protocol):
    """Calls the judge model: (model alias, request body) → (answer text, cost in nano-dollars)."""

    async def __call__(self, model: str, payload: dict[str, Any]) -> tuple[str, int]: ...


@dataclass
class GuardRun:
    """Guard state for one request."""

    guard: Guard
    pipeline: GuardPipeline
    trace: TraceRecord
    judge: Judge | None = None
    pseudonyms: Pseudonyms = field(default_factory=Pseudonyms)
    system_prompt: str = ""
    blocked: StageResult | None = None

    def record(self, result: StageResult, text: str) -> None:
        """Note a stage's findings on the trace (type, span, score and a keyed hash — never the value).

        Failures are findings too: a detector that raised, a judge without a verdict or a scan that timed out is
        recorded with action `error`, and a fail-closed block caused by one with action `block`.
        """
        items = list(result.findings)
        if result.blocked_by is not None and result.blocked_by not in items:
            items.append(result.blocked_by)  # a fail-closed block: no detector finding stands for it
        now = time.time()
        for item in items:
            f = item.finding
            value = text[f.start : f.end] if not f.whole_text else ""
            self.trace.findings.append(
                {
                    "request_id": self.trace.id, "ts": now, "team": self.trace.team,
                    "profile": self.pipeline.name, "stage": result.stage.value, "detector": f.detector,
                    "detector_version": self._version(f.detector), "label": f.label, "action": item.action,
                    "score": round(float(f.score), 4), "span_start": f.start, "span_end": f.end,
                    "value_hash": self.pipeline.fingerprint(value) if value else None,
                }
            )  # fmt: skip
        for error in result.errors:
            detector = error.split(":", 1)[0].strip()[:64] or "guard"
            self.trace.findings.append(
                {
                    "request_id": self.trace.id, "ts": now, "team": self.trace.team, "profile": self.pipeline.name,
                    "stage": result.stage.value, "detector": detector, "detector_version": self._version(detector),
                    "label": f"error.{detector}"[:128], "action": "error", "score": 1.0, "span_start": 0,
                    "span_end": 0, "value_hash": None,
                }
            )  # fmt: skip

    def _version(self, detector: str) -> str:
        return self.pipeline.detector_versions.get(detector, "")

    def block_text(self) -> str:
        """The approved response for the block that happened."""
        assert self.blocked is not None
        return self.guard.block_text(self.pipeline, self.blocked, self.trace.id)

    def extension(self) -> dict[str, Any]:
        """The `gengate` extension field of an answer."""
        findings = [
            {"stage": f["stage"], "label": f["label"], "action": f["action"], "score": f["score"]}
            for f in self.trace.findings
        ]
        guard: dict[str, Any] = {"profile": self.pipeline.name, "findings": findings}
        if self.blocked is not None:
            guard["action"] = "blocked"
            guard["reason"] = self.blocked.reason
        return {"guard": guard}


def _verdict(answer: str) -> bool | None:
    words = answer.strip().upper().split()
    if not words:
        return None
    first = words[0].strip(".:!*\"'")
    return True if first.startswith("VIOLATION") else False if first == "OK" else None


async def escalate(run: GuardRun, result: StageResult, text: str) -> None:
    """Ask the profile's judge about escalated findings; a VIOLATION blocks, OK lets the text through.

    A judge that fails, times out or answers out of format follows the profile's fail-open/closed policy.
    """
    judge_settings = run.pipeline.profile.judge
    if not result.escalations or result.blocked or judge_settings is None or run.judge is None:
        return
    concerns = ", ".join(sorted({f.finding.label for f in result.escalations}))
    payload = {
        "messages": [
            {"role": "system", "content": JUDGE_PROMPT.format(concerns=concerns)},
            {"role": "user", "content": text[:8000]},
        ],
        "max_tokens": judge_settings.max_tokens,
        "temperature": 0,
    }
    verdict: bool | None
    try:
        answer, cost = await asyncio.wait_for(run.judge(judge_settings.model, payload), judge_settings.timeout)
        run.trace.cost_usd += usd(cost)
        verdict = _verdict(answer)
    except (TimeoutError, GengateError) as exc:
        result.errors.append(f"judge: {type(exc).__name__}")
        verdict = None
    if verdict is None:
        verdict = run.pipeline.profile.on_error == "closed"
        result.errors.append("judge: no usable verdict")
    label = f"judge.{'violation' if verdict else 'ok'}"
    first = result.escalations[0]
    judged = RuleFinding(
        Finding(label, 0, 0, 1.0 if verdict else 0.0, "judge", f"{JUDGE_PROMPT_VERSION} on {concerns}"),
        first.rule, first.index,
    )  # fmt: skip
    result.findings.append(judged)
    if verdict:
        result.blocked_by = RuleFinding(
            Finding(first.finding.label, 0, 0, first.finding.score, "judge", "confirmed by the judge"),
            first.rule.model_copy(update={"action": "block"}), first.index,
        )  # fmt: skip


async def scan_text(
    pipeline: GuardPipeline, settings: GuardSettings, stage: Stage, text: str, *, system_prompt: str = "",
    pseudonyms: Pseudonyms | None = None,
) -> StageResult:  # fmt: skip
    """One stage over one text. Long texts are scanned in a worker thread so the event loop keeps serving other
    requests meanwhile; such a scan past the profile's `scan_timeout` follows its fail-open/closed policy."""
    if len(text) < settings.offload_chars:
        return pipeline.scan(stage, text, system_prompt=system_prompt, pseudonyms=pseudonyms)
    work = functools.partial(pipeline.scan, stage, text, system_prompt=system_prompt, pseudonyms=pseudonyms)
    try:
        return await asyncio.wait_for(asyncio.to_thread(work), pipeline.profile.scan_timeout)
    except TimeoutError:
        return pipeline.timed_out(stage, text)


async def scan(run: GuardRun, stage: Stage, text: str, *, system_prompt: str = "") -> StageResult:
    """`scan_text` with the request's pipeline and pseudonyms."""
    return await scan_text(
        run.pipeline, run.guard.settings, stage, text, system_prompt=system_prompt, pseudonyms=run.pseudonyms
    )


def _text_parts(message: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """(container, key) pairs whose value is a text to check inside one message."""
    content = message.get("content")
    if isinstance(content, str):
        yield message, "content"
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part, "text"


async def check_messages(run: GuardRun, messages: list[dict[str, Any]]) -> None:
    """Input stage on user messages, context stage on tool results; redacts in place; sets `run.blocked`."""
    run.system_prompt = "\n".join(
        str(m.get("content"))
        for m in messages
        if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str)
    )
    for message in messages:
        stage = _STAGE_OF_ROLE.get(str(message.get("role")))
        if stage is None or not run.pipeline.has(stage):
            continue
        for container, key in _text_parts(message):
            text = container[key]
            result = await scan(run, stage, text)
            await escalate(run, result, text)
            run.record(result, text)
            if result.blocked and stage is Stage.CONTEXT:
                container[key] = CONTEXT_REMOVED  # indirect injection: drop the document, keep the conversation
            elif result.blocked:
                run.blocked = result
                return
            else:
                container[key] = result.text


async def check_answer(run: GuardRun, text: str) -> str:
    """Output stage on a whole answer: the text to send (template if blocked, redacted, pseudonyms restored)."""
    result = await scan(run, Stage.OUTPUT, text, system_prompt=run.system_prompt)
    await escalate(run, result, text)
    run.record(result, text)
    if result.blocked:
        run.blocked = result
        return run.block_text()
    return run.pseudonyms.restore(result.text) if run.pipeline.profile.restore_pseudonyms else result.text


def blocked_completion(run: GuardRun, model: str) -> dict[str, Any]:
    """A complete chat.completion answering with the approved template."""
    return {
        "id": f"chatcmpl-{run.trace.id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": run.block_text()}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "gengate": run.extension(),
    }


class StreamGuard:
    """Output stage for streams: holds back a window of text and releases only what passed.

    Each time new text arrives the whole answer so far is checked; everything but the last `hold_back`
    characters is released. A block ends the stream with the template: nothing unchecked was sent, and text
    already released had passed every check with at least `hold_back` characters of look-ahead. Escalated
    findings go to the judge before the text around them is released; each finding (label and position) is
    judged once per stream, so a long answer costs one judge call per new concern, not one per chunk.
    """

    def __init__(self, run: GuardRun, hold_back: int) -> None:
        self.run = run
        self.hold_back = hold_back
        self._text = ""
        self._released = 0
        self._clean = ""  # redacted view of the whole answer at the last check
        self._finished = False
        self._judged: set[tuple[str, int]] = set()

    async def _check(self) -> bool:
        result = await scan(self.run, Stage.OUTPUT, self._text, system_prompt=self.run.system_prompt)
        fresh = {(f.finding.label, f.finding.start) for f in result.escalations} - self._judged
        if fresh and not result.blocked:
            await escalate(self.run, result, self._text)
            self._judged |= fresh
            if not result.blocked:  # the judge cleared it: keep its verdict on the record now
                verdicts = [f for f in result.findings if f.finding.detector == "judge"]
                self.run.record(StageResult(Stage.OUTPUT, self._text, findings=verdicts), self._text)
        else:
            # Concerns the judge already cleared in this stream are not re-asked.
            result.escalations = [f for f in result.escalations if (f.finding.label, f.finding.start) in fresh]
        if result.blocked:
            self.run.record(result, self._text)
            self.run.blocked = result
            return False
        self._clean = result.text
        self._last = result
        return True

    _last: StageResult

    async def feed(self, piece: str) -> str | None:
        """Add streamed text; return what may be released now ('' for nothing), or None if blocked."""
        self._text += piece
        if len(self._text) - self._released <= self.hold_back:
            return ""
        if not await self._check():
            return None
        return self._release(len(self._clean) - self.hold_back)

    async def finish(self) -> str | None:
        """The stream ended: check everything and release the rest (None if blocked)."""
        if self._finished or not self._text:
            return ""
        self._finished = True
        if not await self._check():
            return None
        self.run.record(self._last, self._text)
        return self._release(len(self._clean))

    def _release(self, upto: int) -> str:
        if upto < len(self._clean):
            # Never cut through a pseudonym placeholder such as <EMAIL_1>: it could not be restored.
            opening = self._clean.rfind("<", self._released, upto)
            if opening != -1 and self._clean.find(">", opening, upto) == -1:
                upto = opening
        if upto <= self._released:
            return ""
        out = self._clean[self._released : upto]
        self._released = upto
        if self.run.pipeline.profile.restore_pseudonyms:
            out = self.run.pseudonyms.restore(out)
        return out
