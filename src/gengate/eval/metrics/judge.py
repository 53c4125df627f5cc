"""LLM-judge metrics: faithfulness and answer relevance scored by a configured model with versioned prompts.

A judge metric builds chat messages from a versioned prompt (the `*_PROMPT_VERSION` constant is the metric's
`version` and is recorded in every result's detail, so figures from different prompts are never compared), awaits
an injected `complete(messages) -> str` (the caller wires it to a gateway model; nothing here speaks HTTP) and
parses the reply's score robustly: a JSON object with a `score`, "Score: 4", "4/5" or a lone number, on the 1–5
scale (mapped to [0, 1]) or already in [0, 1]. An unparseable or out-of-range reply gives a None value with the
reason in the detail; errors raised by `complete` propagate to the runner.

Owns the prompt texts, message building and reply parsing. Must not: do I/O itself, retry, or cache.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gengate.eval.metrics.base import EvalCase, MetricKind, MetricResult, Observation
from gengate.eval.metrics.deterministic import is_refusal

__all__ = [
    "FAITHFULNESS_PROMPT_VERSION",
    "FAITHFULNESS_SYSTEM",
    "FAITHFULNESS_USER",
    "RELEVANCE_PROMPT_VERSION",
    "RELEVANCE_SYSTEM",
    "RELEVANCE_USER",
    "Complete",
    "JudgeFaithfulness",
    "JudgeRelevance",
    "Message",
    "ParsedScore",
    "parse_score",
]

Message = Mapping[str, str]  # {"role": ..., "content": ...}
Complete = Callable[[Sequence[Message]], Awaitable[str]]

FAITHFULNESS_PROMPT_VERSION = "faithfulness-v1"
FAITHFULNESS_SYSTEM = (
    "You are a strict evaluator of retrieval-augmented answers. You judge only whether the ANSWER is supported by "
    "the CONTEXT passages, not whether it is true in general or helpful. Every statement of fact in the answer "
    "(names, numbers, dates, steps, conditions) must be stated in or directly implied by the context. Saying that "
    "the context does not contain something is fine when that is accurate."
)
FAITHFULNESS_USER = """CONTEXT:
{context}

QUESTION:
{question}

ANSWER:
{answer}

Rate the answer's faithfulness to the context on a 1-5 scale:
5 = every claim is supported by the context
4 = supported except for a minor detail
3 = mostly supported, but at least one claim is not in the context
2 = several claims are unsupported or one contradicts the context
1 = mostly unsupported or contradicts the context

Reply with JSON only: {{"score": <1-5>, "reason": "<one sentence>"}}"""

RELEVANCE_PROMPT_VERSION = "relevance-v1"
RELEVANCE_SYSTEM = (
    "You are a strict evaluator of answers. You judge only whether the ANSWER addresses the QUESTION that was "
    "asked: directly, completely and without drifting to other topics. Do not judge whether it is correct."
)
RELEVANCE_USER = """QUESTION:
{question}

ANSWER:
{answer}

Rate how well the answer addresses the question on a 1-5 scale:
5 = answers exactly what was asked
4 = answers it, with minor gaps or digressions
3 = partly answers it
2 = mostly about something else
1 = does not address the question

Reply with JSON only: {{"score": <1-5>, "reason": "<one sentence>"}}"""

_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_LABELLED = re.compile(r"\b(?:score|rating)\b[\"'*\s]*[:=]?[\"'*\s]*(-?\d+(?:\.\d+)?)", re.IGNORECASE)
_OUT_OF = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out\s+of)\s*(\d+)", re.IGNORECASE)
_LONE_NUMBER = re.compile(r"^\W*(-?\d+(?:\.\d+)?)\W*$")


@dataclass(frozen=True, slots=True)
class ParsedScore:
    """A judge reply read as a score in [0, 1] (None when it could not be), the raw number and the reason."""

    value: float | None
    raw: float | None
    reason: str


def _normalise(raw: float, scale: float | None) -> float | None:
    if scale is not None:
        if scale == 5 and 1 <= raw <= 5:
            return (raw - 1) / 4
        if scale == 1 and 0 <= raw <= 1:
            return raw
        if scale not in (1, 5) and 0 <= raw <= scale:
            return raw / scale
        return None
    if 0 <= raw <= 1 and not float(raw).is_integer():
        return raw  # a fraction such as 0.8: already on [0, 1]
    if 1 <= raw <= 5:
        return (raw - 1) / 4
    if raw == 0:
        return 0.0
    return None


def parse_score(reply: str) -> ParsedScore:
    """A judge's reply as a score in [0, 1]: 1–5 maps linearly (1 → 0, 5 → 1), fractions in [0, 1] stay; anything
    else (no number, out of range, several bare numbers) gives a None value with the reason."""
    text = reply.strip()
    raw: float | None = None
    scale: float | None = None
    reason = ""
    for candidate in _JSON_OBJECT.findall(text):
        try:
            obj = json.loads(candidate)
        except ValueError:
            continue
        score = obj.get("score") if isinstance(obj, dict) else None
        if isinstance(score, str) and re.fullmatch(r"\s*-?\d+(?:\.\d+)?\s*", score):
            score = float(score)
        if isinstance(score, int | float) and not isinstance(score, bool):
            raw, reason = float(score), str(obj.get("reason", ""))
            break
    if raw is None and (m := _OUT_OF.search(text)):
        raw, scale = float(m[1]), float(m[2])
    if raw is None and (m := _LABELLED.search(text)):
        raw = float(m[1])
    if raw is None and (m := _LONE_NUMBER.match(text)):
        raw = float(m[1])
    if raw is None or not math.isfinite(raw):
        return ParsedScore(None, None, f"unparseable judge reply: {text[:80]!r}")
    value = _normalise(raw, scale)
    if value is None:
        return ParsedScore(None, raw, f"judge score {raw:g} is out of range")
    return ParsedScore(value, raw, reason or text[:200])


def _context(texts: Sequence[str], limit: int) -> str:
    parts: list[str] = []
    used = 0
    for i, text in enumerate(texts, 1):
        room = limit - used
        if room <= 0:
            break
        piece = text if len(text) <= room else text[:room] + " …"
        parts.append(f"[{i}] {piece}")
        used += len(piece)
    return "\n\n".join(parts) if parts else "(no context was retrieved)"


def _skip(obs: Observation) -> MetricResult | None:
    if obs.error:
        return MetricResult.not_applicable(f"run failed: {obs.error}")
    if obs.guard_outcome != "answered" or not obs.answer.strip() or is_refusal(obs.answer):
        return MetricResult.not_applicable("no answer to judge")
    return None


def _result(version: str, reply: str, threshold: float | None) -> MetricResult:
    parsed = parse_score(reply)
    if parsed.value is None:
        return MetricResult.not_applicable(f"{version}: {parsed.reason}")
    passed = None if threshold is None else parsed.value >= threshold
    return MetricResult(parsed.value, passed, f"{version}: score {parsed.raw:g}; {parsed.reason}")


def _check(complete: object, threshold: float | None) -> None:
    if not callable(complete):
        raise ValueError("the complete option is required: an async callable (messages) -> str")
    if threshold is not None and (isinstance(threshold, bool) or not 0 <= threshold <= 1):
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")


@dataclass(frozen=True, slots=True)
class JudgeFaithfulness:
    """An LLM judge's 1–5 rating of how far the answer is supported by the retrieved passages, mapped to [0, 1]
    (the passages, numbered, are cut to `max_context_chars` in total)."""

    complete: Complete
    threshold: float | None = None
    max_context_chars: int = 12_000
    name: str = field(default="judge_faithfulness", init=False)
    version: str = field(default=FAITHFULNESS_PROMPT_VERSION, init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check(self.complete, self.threshold)
        limit = self.max_context_chars
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 100:
            raise ValueError(f"max_context_chars must be an integer >= 100, got {limit!r}")

    def messages(self, case: EvalCase, obs: Observation) -> list[dict[str, str]]:
        """The chat messages sent to the judge."""
        user = FAITHFULNESS_USER.format(
            context=_context(obs.retrieved_texts, self.max_context_chars), question=case.question, answer=obs.answer
        )
        return [{"role": "system", "content": FAITHFULNESS_SYSTEM}, {"role": "user", "content": user}]

    async def ascore(self, case: EvalCase, obs: Observation) -> MetricResult:
        """The judge's faithfulness score (None for refusals and unparseable replies)."""
        if skipped := _skip(obs):
            return skipped
        return _result(self.version, await self.complete(self.messages(case, obs)), self.threshold)


@dataclass(frozen=True, slots=True)
class JudgeRelevance:
    """An LLM judge's 1–5 rating of how well the answer addresses the question, mapped to [0, 1]."""

    complete: Complete
    threshold: float | None = None
    name: str = field(default="judge_relevance", init=False)
    version: str = field(default=RELEVANCE_PROMPT_VERSION, init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check(self.complete, self.threshold)

    def messages(self, case: EvalCase, obs: Observation) -> list[dict[str, str]]:
        """The chat messages sent to the judge."""
        user = RELEVANCE_USER.format(question=case.question, answer=obs.answer)
        return [{"role": "system", "content": RELEVANCE_SYSTEM}, {"role": "user", "content": user}]

    async def ascore(self, case: EvalCase, obs: Observation) -> MetricResult:
        """The judge's relevance score (None for refusals and unparseable replies)."""
        if skipped := _skip(obs):
            return skipped
        return _result(self.version, await self.complete(self.messages(case, obs)), self.threshold)
