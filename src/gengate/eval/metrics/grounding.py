"""Offline answer-grounding metrics: faithfulness to the retrieved context and relevance to the question.

`faithfulness` splits the answer into claims (sentences and list items, citation markers dropped; refusals,
"the documents do not say …" hedges and pleasantries are not claims) and scores each claim's support by the
retrieved passages: the weighted share of the claim's content words found in the best-matching stretch of a
passage (numbers weigh most and a number found nowhere in the context caps the claim's support: a wrong figure
is unsupported), blended with the best MiniLM cosine between the claim and a passage unit when an encoder is
given. The value is the mean support over claims, each weighted by its number of content words.
`answer_relevance` blends the cosine between question and answer with the share of the question's content words
the answer covers. Both are None (not applicable) for refusals and empty answers.

The defaults were chosen on the train split of mtrag-human-evals (Spearman with the human faithfulness mean) and
reported on its held-out split; see bench/judge_calibration.py.

Owns claim extraction, claim support and the two metric objects. Must not: call a model other than the encoder it
is given, load models, or do I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from gengate.eval.metrics.base import EvalCase, MetricKind, MetricResult, Observation
from gengate.eval.metrics.deterministic import is_refusal, non_claim_kind, strip_citations, text_units
from gengate.rag.answer import SentenceEncoder, segment
from gengate.rag.lexical import STOPWORDS, light_stem

__all__ = [
    "AnswerRelevance",
    "ClaimSupport",
    "Faithfulness",
    "SentenceEncoder",
    "claim_supports",
    "extract_claims",
]

_TOKEN = re.compile(r"\d+(?:[.,:/]\d+)*|[^\W_]+")
NEAR_PREFIX = 6  # words sharing this many leading letters are near matches ("regulation" ~ "regulatory")
NEAR_CREDIT = 0.6  # ...and count this much of a match
MIN_CLAIM_TERMS = 2  # a unit with fewer content words ("Yes.", "Forms:") makes no checkable claim


# --- text ----------------------------------------------------------------------------------------------------------


def _terms(text: str) -> list[str]:
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if token[0].isdigit():
            out.append(token.replace(",", ""))  # "1,000" and "1000" are one number
        elif token not in STOPWORDS and len(token) > 1:
            out.append(light_stem(token))
    return out


def _is_number(term: str) -> bool:
    return any(c.isdigit() for c in term)


def extract_claims(answer: str) -> list[str]:
    """The checkable claims of an answer, in order: its sentences and list items without citation markers and
    Markdown, leaving out refusals, hedges about the sources, pleasantries, questions, lead-ins ending with a colon
    and units with fewer than two content words."""
    return [
        unit
        for unit in text_units(answer)
        if not unit.endswith(("?", ":")) and non_claim_kind(unit) is None and len(_terms(unit)) >= MIN_CLAIM_TERMS
    ]


def _units(passage: str) -> list[str]:
    units = [s.text for s in segment(passage)]
    return units or [" ".join(passage.split())]


# --- support -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimSupport:
    """How well the context supports one claim: `lexical` and `semantic` parts (semantic None without an
    encoder), the blended `support` and the claim's numbers that appear nowhere in the context."""

    claim: str
    lexical: float
    semantic: float | None
    support: float
    missing_numbers: tuple[str, ...] = ()


def _match(term: str, present: set[str], prefixes: set[str]) -> float:
    if term in present:
        return 1.0
    if not _is_number(term) and len(term) >= NEAR_PREFIX and term[:NEAR_PREFIX] in prefixes:
        return NEAR_CREDIT
    return 0.0


def _containment(claim: list[str], weights: list[float], present: set[str], prefixes: set[str]) -> float:
    total = sum(weights)
    return sum(w * _match(t, present, prefixes) for t, w in zip(claim, weights, strict=True)) / total


def _bag(unit_terms: Sequence[list[str]]) -> tuple[set[str], set[str]]:
    present = {t for terms in unit_terms for t in terms}
    return present, {t[:NEAR_PREFIX] for t in present if len(t) >= NEAR_PREFIX and not _is_number(t)}


def claim_supports(
    claims: Sequence[str],
    passages: Sequence[str],
    *,
    encoder: SentenceEncoder | None = None,
    window: int = 1,
    number_weight: float = 3.0,
    missing_number_cap: float = 0.25,
    lexical_weight: float = 0.5,
    cosine_floor: float = 0.3,
    cosine_ceiling: float = 0.8,
    semantic_candidates: int = 8,
) -> list[ClaimSupport]:
    """Support of each claim by the passages.

    Lexical: the weighted share of the claim's distinct content words (numbers weigh `number_weight`, near matches
    count `NEAR_CREDIT`) found in the best stretch of `2 * window + 1` consecutive units of one passage (`window`
    -1 means the whole passage); a claim holding a number found nowhere in the context has its support capped at
    `missing_number_cap`. Semantic (with an encoder): the best cosine between the claim and a passage unit,
    mapped linearly from [`cosine_floor`, `cosine_ceiling`] onto [0, 1]; with `semantic_candidates` > 0 only that
    many units per claim, those sharing most of its words, are embedded (bounding the encoder's work). Support =
    `lexical_weight` · lexical + (1 − `lexical_weight`) · semantic.
    """
    units = [_units(p) for p in passages if p.strip()]
    unit_terms = [[_terms(u) for u in passage] for passage in units]
    stretches: list[tuple[set[str], set[str]]] = []
    for passage_terms in unit_terms:
        if window < 0:
            stretches.append(_bag(passage_terms))
            continue
        for i in range(len(passage_terms)):
            stretches.append(_bag(passage_terms[max(0, i - window) : i + window + 1]))
    flat_units = [u for passage in units for u in passage]
    unit_bags = [_bag([terms]) for passage_terms in unit_terms for terms in passage_terms]
    everything = set().union(*(present for present, _ in unit_bags))

    lexical: list[float] = []
    missing: list[tuple[str, ...]] = []
    candidates: set[int] = set()
    for claim in claims:
        terms = list(dict.fromkeys(_terms(claim)))
        weights = [number_weight if _is_number(t) else 1.0 for t in terms]
        missing.append(tuple(t for t in terms if _is_number(t) and t not in everything))
        lexical.append(max((_containment(terms, weights, p, q) for p, q in stretches), default=0.0) if terms else 0.0)
        if encoder is not None and semantic_candidates > 0 and terms:
            overlap = [_containment(terms, weights, p, q) for p, q in unit_bags]
            candidates.update(sorted(range(len(overlap)), key=lambda i: -overlap[i])[:semantic_candidates])

    semantic: list[float | None] = [None] * len(claims)
    if encoder is not None and claims:
        chosen = sorted(candidates) if semantic_candidates > 0 else list(range(len(flat_units)))
        if chosen:
            vectors = np.asarray(encoder.encode([*claims, *(flat_units[i] for i in chosen)]), dtype=np.float32)
            best = (vectors[: len(claims)] @ vectors[len(claims) :].T).max(axis=1)
            span = cosine_ceiling - cosine_floor
            semantic = [min(1.0, max(0.0, (float(c) - cosine_floor) / span)) for c in best]
        else:
            semantic = [0.0] * len(claims)

    out: list[ClaimSupport] = []
    for claim, lex, sem, absent in zip(claims, lexical, semantic, missing, strict=True):
        support = lex if sem is None else lexical_weight * lex + (1 - lexical_weight) * sem
        if absent:
            support = min(support, missing_number_cap)
        out.append(ClaimSupport(claim, lex, sem, support, absent))
    return out


def _check_range(option: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{option} must be a number in [{low}, {high}], got {value!r}")


def _not_applicable(obs: Observation) -> MetricResult | None:
    if obs.error:
        return MetricResult.not_applicable(f"run failed: {obs.error}")
    if obs.guard_outcome != "answered":
        return MetricResult.not_applicable(f"no answer ({obs.guard_outcome})")
    if not obs.answer.strip():
        return MetricResult.not_applicable("empty answer")
    if is_refusal(obs.answer):
        return MetricResult.not_applicable("refusal")
    return None


@dataclass(frozen=True, slots=True)
class Faithfulness:
    """Share of the answer's claims supported by the retrieved passages (offline: no model beyond the encoder).

    Options: `encoder` (adds MiniLM cosine to lexical support), `aggregate` ("weighted": mean support with each
    claim weighted by its number of content words; "mean": every claim alike; "share" of claims whose support
    reaches `support_threshold`; or "min"), the `claim_supports` knobs, and `threshold` (passes when the value
    reaches it). An answer without checkable claims (a refusal, pure hedging) is not
    applicable; an answer with claims but no context scores 0.
    """

    encoder: SentenceEncoder | None = None
    aggregate: Literal["weighted", "mean", "share", "min"] = "weighted"
    support_threshold: float = 0.5
    window: int = 1
    number_weight: float = 3.0
    missing_number_cap: float = 0.25
    lexical_weight: float = 0.5
    cosine_floor: float = 0.3
    cosine_ceiling: float = 0.8
    semantic_candidates: int = 8  # on mtrag train, as good as embedding every unit (0.680) at half the encoder work
    threshold: float | None = None
    name: str = field(default="faithfulness", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        if self.aggregate not in ("weighted", "mean", "share", "min"):
            raise ValueError(f"aggregate must be weighted, mean, share or min, got {self.aggregate!r}")
        if self.encoder is not None and not callable(getattr(self.encoder, "encode", None)):
            raise ValueError("encoder must have an encode(texts) method")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < -1:
            raise ValueError(f"window must be an integer >= -1, got {self.window!r}")
        k = self.semantic_candidates
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"semantic_candidates must be an integer >= 0 (0: every unit), got {k!r}")
        _check_range("support_threshold", self.support_threshold, 0, 1)
        _check_range("number_weight", self.number_weight, 0, 100)
        _check_range("missing_number_cap", self.missing_number_cap, 0, 1)
        _check_range("lexical_weight", self.lexical_weight, 0, 1)
        _check_range("cosine_floor", self.cosine_floor, -1, 1)
        _check_range("cosine_ceiling", self.cosine_ceiling, -1, 1)
        if self.cosine_ceiling <= self.cosine_floor:
            raise ValueError("cosine_ceiling must be above cosine_floor")
        if self.threshold is not None:
            _check_range("threshold", self.threshold, 0, 1)

    @property
    def version(self) -> str:
        """`1-lexical` or `1-minilm`: figures with and without the encoder are not comparable."""
        return "1-minilm" if self.encoder is not None else "1-lexical"

    def supports(self, answer: str, passages: Sequence[str]) -> list[ClaimSupport]:
        """Each claim of `answer` with its support by `passages`."""
        return claim_supports(
            extract_claims(answer),
            passages,
            encoder=self.encoder,
            window=self.window,
            number_weight=self.number_weight,
            missing_number_cap=self.missing_number_cap,
            lexical_weight=self.lexical_weight,
            cosine_floor=self.cosine_floor,
            cosine_ceiling=self.cosine_ceiling,
            semantic_candidates=self.semantic_candidates,
        )

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """How far the answer's claims are supported by `obs.retrieved_texts`."""
        if skipped := _not_applicable(obs):
            return skipped
        supports = self.supports(obs.answer, obs.retrieved_texts)
        if not supports:
            return MetricResult.not_applicable("no checkable claims")
        values = [s.support for s in supports]
        if self.aggregate == "share":
            value = sum(v >= self.support_threshold for v in values) / len(values)
        elif self.aggregate == "min":
            value = min(values)
        elif self.aggregate == "mean":
            value = sum(values) / len(values)
        else:
            weights = [len(set(_terms(s.claim))) for s in supports]
            value = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
        weakest = min(supports, key=lambda s: s.support)
        detail = f"{len(supports)} claims; weakest {weakest.support:.2f}: {weakest.claim[:120]!r}"
        if weakest.missing_numbers:
            detail += f" (numbers not in context: {', '.join(weakest.missing_numbers)})"
        if not obs.retrieved_texts:
            detail = f"no context; {detail}"
        passed = None if self.threshold is None else value >= self.threshold
        return MetricResult(value, passed, detail)


@dataclass(frozen=True, slots=True)
class AnswerRelevance:
    """How well the answer addresses the question: the share of the question's content words the answer covers,
    blended (with an encoder) with the question–answer cosine mapped from [`cosine_floor`, `cosine_ceiling`].
    Not applicable to refusals and empty answers."""

    encoder: SentenceEncoder | None = None
    lexical_weight: float = 0.5
    cosine_floor: float = 0.1
    cosine_ceiling: float = 0.7
    threshold: float | None = None
    name: str = field(default="answer_relevance", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        if self.encoder is not None and not callable(getattr(self.encoder, "encode", None)):
            raise ValueError("encoder must have an encode(texts) method")
        _check_range("lexical_weight", self.lexical_weight, 0, 1)
        _check_range("cosine_floor", self.cosine_floor, -1, 1)
        _check_range("cosine_ceiling", self.cosine_ceiling, -1, 1)
        if self.cosine_ceiling <= self.cosine_floor:
            raise ValueError("cosine_ceiling must be above cosine_floor")
        if self.threshold is not None:
            _check_range("threshold", self.threshold, 0, 1)

    @property
    def version(self) -> str:
        """`1-lexical` or `1-minilm`."""
        return "1-minilm" if self.encoder is not None else "1-lexical"

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """Relevance of `obs.answer` to `case.question`."""
        if skipped := _not_applicable(obs):
            return skipped
        question = list(dict.fromkeys(_terms(case.question)))
        if not question:
            return MetricResult.not_applicable("question has no content words")
        answer = strip_citations(obs.answer)
        present, prefixes = _bag([_terms(answer)])
        coverage = sum(_match(t, present, prefixes) for t in question) / len(question)
        value, detail = coverage, f"covers {coverage:.2f} of the question's terms"
        if self.encoder is not None:
            vectors = np.asarray(self.encoder.encode([case.question, answer]), dtype=np.float32)
            cosine = float(vectors[0] @ vectors[1])
            semantic = min(1.0, max(0.0, (cosine - self.cosine_floor) / (self.cosine_ceiling - self.cosine_floor)))
            value = self.lexical_weight * coverage + (1 - self.lexical_weight) * semantic
            detail += f"; cosine {cosine:.2f}"
        value = min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0
        passed = None if self.threshold is None else value >= self.threshold
        return MetricResult(value, passed, detail)
