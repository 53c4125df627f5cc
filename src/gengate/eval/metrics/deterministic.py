"""Deterministic metrics: matches against a reference, required facts, patterns, JSON validity, refusals,
templates, guard outcomes, latency and cost.

Owns these metrics, SQuAD-style answer normalisation (`normalize_answer`, `token_f1`) and refusal detection
(`is_refusal`, `non_claim_kind`), which the grounding metrics reuse to tell claims from hedges and pleasantries.
Must not: call models, read files, or depend on anything outside the standard library and gengate.

Conventions: a metric that has nothing to judge against (no reference, no expectation) returns a `None` value; a
trial whose run failed (`obs.error`) fails answer checks with value 0 (a failed trial is a failed trial).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gengate.apps.tools import validate
from gengate.eval.metrics.base import GUARD_OUTCOMES, EvalCase, MetricKind, MetricResult, Observation
from gengate.rag.answer import split_sentences

__all__ = [
    "DEFAULT_REFUSAL_PHRASES",
    "Contains",
    "Cost",
    "ExactMatch",
    "GuardOutcomeMatch",
    "JsonValid",
    "Latency",
    "NormalizedMatch",
    "Refusal",
    "RegexMatch",
    "TemplateUsed",
    "TokenF1",
    "is_refusal",
    "non_claim_kind",
    "normalize_answer",
    "strip_citations",
    "text_units",
    "token_f1",
]

# gengate's own texts first: the apps' default no-answer text and the guard's default block template.
DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "I could not find anything about that in the documents you have access to.",
    "I'm sorry, but I can't help with that request.",
)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))
_CITATION = re.compile(r"\s*(?:\[(?:\d+|[A-Za-z]{0,8}\d+)(?:\s*[,;–-]\s*\d+)*\]|【[^】]{0,20}】|\[\^\d+\])")
_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)
_LIST_MARKER = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")
_MARKUP = re.compile(r"\*\*|__|`|^#+\s*")
_CONTRAST = re.compile(r"[,;]\s+(?:but|however|although|though|yet)\b,?\s*", re.IGNORECASE)
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})

# An apology opening a sentence; what follows decides whether the sentence declines ("Unfortunately, the tower
# collapsed" is a claim, "Unfortunately, I cannot say" is not).
_APOLOGY = re.compile(
    r"^(?:(?:i'm|i am)\s+(?:so\s+|very\s+|really\s+)?sorry|sorry|unfortunately|regrettably)\b[,.!]?\s*"
)
_SOURCES = r"(?:documents?|context|texts?|passages?|sources?|information|articles?|excerpts?|search\s+results|results)"
_NEGATED = r"(?:(?:do|does|did)\s+not|don't|doesn't|didn't)"
# A sentence that declines, or says the sources do not cover something (matched after `_APOLOGY` is removed).
_REFUSAL = re.compile(
    "^(?:"
    + "|".join(
        (
            r"(?:but\s+)?i(?:\s+am|'m|\s+was)?\s+(?:can(?:no|')t|cannot|could\s*n[o']t|couldn't|do\s+not|don't|did\s+not"
            r"|didn't|not\s+able\s+to|unable\s+to|wasn't\s+able\s+to|have\s+no|haven't|have\s+not|had\s+no)\s+"
            r"(?:\w+\s+){0,2}?(?:help|assist|answer|provide|find|know|have|locate|see|determine|say|comment|share"
            r"|discuss|access|confirm|information|knowledge|details|data)\b",
            r"(?:but\s+)?i\s+(?:couldn't|could\s+not)\b",
            r"no\s+(?:relevant\s+|specific\s+|further\s+|additional\s+|such\s+)?information\b",
            r"there\s+(?:is|are|was|were)\s+no\s+(?:\w+\s+){0,3}(?:information|mention|details?|data|answer|reference"
            r"|evidence)\b",
            rf"(?:the|these|this|those|provided|given|available|your)\s+(?:\w+\s+){{0,2}}{_SOURCES}\s+{_NEGATED}\s+"
            r"(?:\w+\s+)?(?:contain|provide|mention|include|specify|say|state|discuss|cover|address|offer|give|explain"
            r"|detail|indicate|list|describe|have)\b",
            r"(?:it\s+is|it's)\s+not\s+(?:\w+\s+)?(?:mentioned|specified|stated|provided|clear|possible\s+to"
            r"\s+(?:say|determine))\b",
        )
    )
    + ")"
)
_REFUSAL_ANYWHERE = re.compile(
    r"\b(?:not|n't)\s+(?:\w+\s+)?(?:mentioned|specified|stated|provided|covered|included|discussed)\s+in\s+"
    r"(?:the|these|this|any\s+of\s+the)\s+(?:\w+\s+)?(?:documents?|context|texts?|passages?|sources?)\b"
)
# Conversational filler that makes no claim about the world.
_PLEASANTRY = re.compile(
    r"^(?:i\s+hope\s+(?:this|that|it|the)"
    r"|(?:please\s+)?(?:let\s+me\s+know|feel\s+free)\b"
    r"|(?:you'?re|you\s+are)\s+(?:very\s+|most\s+)?welcome"
    r"|(?:is\s+there\s+)?anything\s+else"
    r"|(?:i'?m|i\s+am)\s+(?:so\s+)?glad"
    r"|if\s+you\s+have\s+(?:any\s+)?(?:more|other|further|additional)?\s*questions"
    r"|(?:thank\s+you|thanks)\b"
    r"|(?:good\s+luck|have\s+a\s+(?:great|nice|good))\b"
    r"|(?:great|good)\s+question\b"
    r"|(?:i'm|i\s+am)\s+(?:so\s+|very\s+)?sorry\s+to\s+hear"
    r"|(?:sure|certainly|of\s+course|absolutely)[!.,]?$"
    r")",
)


def strip_citations(text: str) -> str:
    """The text without citation markers such as `[1]`, `[2, 3]`, `[doc4]` or `【5】`."""
    return _CITATION.sub("", text)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, punctuation and the articles a/an/the removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between the normalised prediction and reference (1.0 when both normalise to nothing)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def _plain(text: str) -> str:
    text = strip_citations(text).translate(_APOSTROPHES).lower()
    text = re.sub(r"[*_#>]+", " ", text)  # Markdown emphasis and headings
    text = re.sub(r"^\s*(?:[-•]|\d{1,3}[.)])\s+", "", text)  # a list marker
    return " ".join(text.split())


def non_claim_kind(sentence: str) -> Literal["refusal", "pleasantry"] | None:
    """Whether a sentence declines or says the sources lack something ("refusal"), is conversational filler
    ("pleasantry"), or is neither (None: it may make a claim)."""
    plain = _plain(sentence)
    if not plain:
        return "pleasantry"
    if _PLEASANTRY.match(plain):
        return "pleasantry"
    rest = _APOLOGY.sub("", plain)
    if not rest or _REFUSAL.match(rest) or _REFUSAL_ANYWHERE.search(plain):
        return "refusal"
    return None


def text_units(text: str) -> list[str]:
    """The sentences of a text, in order: lines split into sentences, without citation markers, list markers or
    Markdown emphasis, and a sentence split again before a contrasting clause (", but …", "; however, …"), so that
    "The documents do not say, but X" yields a hedge and a claim."""
    out: list[str] = []
    for line in strip_citations(text).splitlines():
        line = _MARKUP.sub("", _LIST_MARKER.sub("", line)).strip()
        for sentence in split_sentences(" ".join(line.split())):
            out.extend(p.strip() for p in _CONTRAST.split(sentence) if p.strip())
    return out


def is_refusal(text: str, phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES) -> bool:
    """True when the text declines to answer: it contains one of `phrases` (case-insensitive), or every sentence
    in it declines, says the sources lack the answer or is filler (and at least one declines)."""
    plain = _plain(text)
    if not plain:
        return False
    if any(_plain(p) and _plain(p) in plain for p in phrases):
        return True
    kinds = [non_claim_kind(s) for s in text_units(text)]
    return bool(kinds) and None not in kinds and "refusal" in kinds


def _failed(obs: Observation) -> MetricResult | None:
    return MetricResult.verdict(False, f"run failed: {obs.error}") if obs.error else None


# --- matches against the reference -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExactMatch:
    """The answer equals the case's reference, after trimming surrounding whitespace."""

    name: str = field(default="exact_match", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when the trimmed answer and reference are equal."""
        if case.reference is None:
            return MetricResult.not_applicable("no reference")
        return _failed(obs) or MetricResult.verdict(obs.answer.strip() == case.reference.strip())


@dataclass(frozen=True, slots=True)
class NormalizedMatch:
    """The answer equals the reference after SQuAD normalisation (case, punctuation, articles, whitespace)."""

    name: str = field(default="normalized_match", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when the normalised answer and reference are equal."""
        if case.reference is None:
            return MetricResult.not_applicable("no reference")
        return _failed(obs) or MetricResult.verdict(normalize_answer(obs.answer) == normalize_answer(case.reference))


@dataclass(frozen=True, slots=True)
class TokenF1:
    """SQuAD token F1 between the answer and the reference; passes at `threshold` when one is given."""

    threshold: float | None = None
    name: str = field(default="token_f1", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_unit("threshold", self.threshold)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """Harmonic mean of token precision and recall against the reference."""
        if case.reference is None:
            return MetricResult.not_applicable("no reference")
        if obs.error:
            return MetricResult(0.0, False if self.threshold is not None else None, f"run failed: {obs.error}")
        value = token_f1(obs.answer, case.reference)
        return MetricResult(value, None if self.threshold is None else value >= self.threshold)


def _check_unit(option: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1):
        raise ValueError(f"{option} must be a number in [0, 1], got {value!r}")


# --- content checks ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contains:
    """Share of the required strings found in the answer (case- and whitespace-insensitive).

    The strings are the `strings` option when given, else the case's `required_facts`; passes when all are found.
    """

    strings: tuple[str, ...] | None = None
    name: str = field(default="contains", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        if self.strings is not None:
            if isinstance(self.strings, str) or not all(isinstance(s, str) and s.strip() for s in self.strings):
                raise ValueError("strings must be a list of non-empty strings")
            object.__setattr__(self, "strings", tuple(self.strings))

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """Fraction of the required strings present in the answer."""
        wanted = self.strings if self.strings is not None else case.required_facts
        if not wanted:
            return MetricResult.not_applicable("nothing required")
        if obs.error:
            return MetricResult(0.0, False, f"run failed: {obs.error}")
        answer = " ".join(obs.answer.lower().split())
        missing = [s for s in wanted if " ".join(s.lower().split()) not in answer]
        value = 1 - len(missing) / len(wanted)
        detail = f"missing: {'; '.join(missing)}" if missing else ""
        return MetricResult(value, not missing, detail)


@dataclass(frozen=True, slots=True)
class RegexMatch:
    """The answer matches `pattern` somewhere (Python `re.search`; case-insensitive unless `ignore_case` is false)."""

    pattern: str = ""
    ignore_case: bool = True
    name: str = field(default="regex", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError("the pattern option is required")
        try:
            compiled = re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)
        except re.error as exc:
            raise ValueError(f"invalid pattern {self.pattern!r}: {exc}") from None
        object.__setattr__(self, "_compiled", compiled)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when the pattern is found in the answer."""
        return _failed(obs) or MetricResult.verdict(self._compiled.search(obs.answer) is not None)


@dataclass(frozen=True, slots=True)
class JsonValid:
    """The answer parses as JSON (a Markdown code fence around it is allowed unless `allow_fence` is false) and,
    when a `schema` is given, satisfies it (the JSON-schema subset of tool arguments)."""

    schema: dict[str, Any] | None = None
    allow_fence: bool = True
    name: str = field(default="json_valid", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def __post_init__(self) -> None:
        if self.schema is not None and not isinstance(self.schema, dict):
            raise ValueError("schema must be a JSON-schema object")

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when the answer is valid JSON (matching the schema, if any)."""
        if failed := _failed(obs):
            return failed
        text = obs.answer
        fenced = _FENCE.match(text) if self.allow_fence else None
        if fenced:
            text = fenced["body"]
        try:
            value = json.loads(text)
        except ValueError as exc:
            return MetricResult.verdict(False, f"not JSON: {exc}")
        if self.schema is None:
            return MetricResult.verdict(True)
        problems = validate(value, self.schema, "answer")
        return MetricResult.verdict(not problems, "; ".join(problems))


# --- behaviour -----------------------------------------------------------------------------------------------------


def _expectation(option: object, case: EvalCase, key: str) -> object:
    return option if option is not None else case.metadata.get(key)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Whether the answer refuses (value 1 when it does), and whether that was expected.

    A refusal is a guard block or no-answer outcome, or an answer `is_refusal` recognises (gengate's default
    no-answer and block texts, the extra `phrases` given, or an answer whose every sentence declines). The
    expectation is the `expected` option, else the case's `expect_refusal` metadata; without either, `passed` is
    None and the mean value is the refusal rate.
    """

    expected: bool | None = None
    phrases: tuple[str, ...] = ()
    name: str = field(default="refusal", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def __post_init__(self) -> None:
        if self.expected is not None and not isinstance(self.expected, bool):
            raise ValueError(f"expected must be true or false, got {self.expected!r}")
        if isinstance(self.phrases, str) or not all(isinstance(p, str) and p.strip() for p in self.phrases):
            raise ValueError("phrases must be a list of non-empty strings")
        object.__setattr__(self, "phrases", tuple(self.phrases))

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when the trial refused; passed when that matches the expectation."""
        if obs.error:
            return MetricResult(0.0, False, f"run failed: {obs.error}")
        refused = obs.guard_outcome != "answered" or is_refusal(obs.answer, DEFAULT_REFUSAL_PHRASES + self.phrases)
        expected = _expectation(self.expected, case, "expect_refusal")
        passed = None if expected is None else refused == bool(expected)
        what = "refused" if refused else "answered"
        detail = what if expected is None else f"{what} (expected {'a refusal' if expected else 'an answer'})"
        return MetricResult(1.0 if refused else 0.0, passed, detail)


@dataclass(frozen=True, slots=True)
class TemplateUsed:
    """Whether the answer came from an approved response template (value 1 when it did).

    The expectation is the `expected` option, else the case's `expected_template` metadata: true / false, or a
    template name that must be the one used. Without an expectation `passed` is None.
    """

    expected: bool | str | None = None
    name: str = field(default="template_used", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def __post_init__(self) -> None:
        if self.expected is not None and not isinstance(self.expected, bool | str):
            raise ValueError(f"expected must be true, false or a template name, got {self.expected!r}")

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when a template was used; passed when that matches the expectation."""
        used = obs.template is not None
        expected = _expectation(self.expected, case, "expected_template")
        detail = f"template {obs.template!r}" if used else "free text"
        if expected is None:
            return MetricResult(float(used), None, detail)
        passed = obs.template == expected if isinstance(expected, str) else used == bool(expected)
        return MetricResult(float(used), passed, f"{detail} (expected {expected!r})")


@dataclass(frozen=True, slots=True)
class GuardOutcomeMatch:
    """The trial's guard outcome ("answered", "no_answer", "blocked") equals the expected one: the `expected`
    option, else the case's `expected_outcome` metadata (not applicable without either)."""

    expected: str | None = None
    name: str = field(default="guard_outcome", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="pass", init=False)

    def __post_init__(self) -> None:
        if self.expected is not None and self.expected not in GUARD_OUTCOMES:
            raise ValueError(f"expected must be one of {', '.join(GUARD_OUTCOMES)}, got {self.expected!r}")

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1 when the outcome is the expected one."""
        expected = _expectation(self.expected, case, "expected_outcome")
        if expected is None:
            return MetricResult.not_applicable("no expected outcome")
        if expected not in GUARD_OUTCOMES:
            raise ValueError(f"case {case.case_id}: expected_outcome must be one of {', '.join(GUARD_OUTCOMES)}")
        if failed := _failed(obs):
            return failed
        return MetricResult.verdict(obs.guard_outcome == expected, f"{obs.guard_outcome} (expected {expected})")


# --- cost of a trial ---------------------------------------------------------------------------------------------


def _check_limit(option: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
        raise ValueError(f"{option} must be a non-negative number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Latency:
    """End-to-end latency of the trial in milliseconds (an unbounded value; lower is better); passes when at most
    `max_ms` if that is given."""

    max_ms: float | None = None
    name: str = field(default="latency", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_limit("max_ms", self.max_ms)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """The observed latency."""
        if obs.latency_ms is None:
            return MetricResult.not_applicable("latency not recorded")
        passed = None if self.max_ms is None else obs.latency_ms <= self.max_ms
        return MetricResult(obs.latency_ms, passed, f"{obs.latency_ms:.0f} ms", bounded=False)


@dataclass(frozen=True, slots=True)
class Cost:
    """Cost of the trial in USD (an unbounded value; lower is better); passes when at most `max_usd` if given."""

    max_usd: float | None = None
    name: str = field(default="cost", init=False)
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_limit("max_usd", self.max_usd)

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """The observed cost."""
        if obs.cost_usd is None:
            return MetricResult.not_applicable("cost not recorded")
        passed = None if self.max_usd is None else obs.cost_usd <= self.max_usd
        return MetricResult(obs.cost_usd, passed, f"${obs.cost_usd:.6f}", bounded=False)
