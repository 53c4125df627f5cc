"""The offline PII detector: patterns with checksums and context words, plus gazetteer-based names and addresses.

`PiiDetector` implements the guard `Detector` protocol under the name "pii". Findings are labelled
`pii.<type>` with character offsets into the scanned text. Everything (regexes, gazetteers) is built in the
constructor, never at import time; `scan` is pure. Scores: the recognizer's base score (raised by validation
and context words), then overlapping candidates are resolved (highest score, then longest span wins) and
anything under `threshold` is dropped. Scoring rules and measured quality are in docs/guard-pii.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors.pii_names import AddressRecognizer, Gazetteer, NameRecognizer
from gengate.guard.detectors.pii_patterns import DEFAULT_SPECS, Candidate, PatternRecognizer

ENTITIES: tuple[str, ...] = (
    "email",
    "phone_number",
    "credit_card",
    "iban",
    "us_ssn",
    "au_tfn",
    "au_abn",
    "au_medicare",
    "ip_address",
    "passport",
    "date_of_birth",
    "street_address",
    "person",
)
# Validated entities win overlaps over shape-only ones at equal score (a Luhn-valid card is not a phone).
_PRIORITY = {e: i for i, e in enumerate(reversed(ENTITIES))} | {
    "credit_card": 100,
    "iban": 100,
    "email": 100,
    "au_abn": 90,
    "au_medicare": 90,
    "au_tfn": 90,
    "us_ssn": 80,
    "ip_address": 80,
    "date_of_birth": 70,
}
# Longer inputs are scanned in windows of this many characters so one pathological text cannot stall a request.
MAX_SCAN_CHARS = 1_000_000


class PiiDetector:
    """Finds personal data in text (see module docstring)."""

    name = "pii"
    version = "1"

    def __init__(
        self,
        entities: Iterable[str] | None = None,
        threshold: float = 0.5,
        gazetteer: Gazetteer | None = None,
        address_locality: bool = True,
    ) -> None:
        wanted = tuple(entities) if entities is not None else ENTITIES
        unknown = sorted(set(wanted) - set(ENTITIES))
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; known: {', '.join(ENTITIES)}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"PII threshold must be in [0, 1], got {threshold}")
        self.entities = frozenset(wanted)
        self.threshold = threshold
        self._patterns = [PatternRecognizer(s) for s in DEFAULT_SPECS if s.entity in self.entities]
        self._names = NameRecognizer(gazetteer or Gazetteer.shipped()) if "person" in self.entities else None
        self._addresses = AddressRecognizer(address_locality) if "street_address" in self.entities else None

    def candidates(self, text: str) -> list[Candidate]:
        """Every candidate before overlap resolution and threshold (for evaluation and debugging)."""
        text = text[:MAX_SCAN_CHARS]
        out: list[Candidate] = []
        for recognizer in self._patterns:
            out.extend(recognizer.find(text))
        if self._addresses is not None:
            out.extend(self._addresses.find(text))
        if self._names is not None:
            out.extend(self._names.find(text))
        return out

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Findings for PII in the request's text, sorted by start offset."""
        kept = resolve_overlaps(c for c in self.candidates(request.text) if c.score >= self.threshold)
        return [
            Finding(c.label, c.start, c.end, c.score, self.name, f"{c.label.removeprefix('pii.')} pattern")
            for c in kept
        ]


def resolve_overlaps(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Keep a non-overlapping subset: higher score first, then validated types, then longer spans."""

    def rank(c: Candidate) -> tuple[float, int, int]:
        return (c.score, _PRIORITY.get(c.label.removeprefix("pii."), 0), c.end - c.start)

    ranked = sorted(candidates, key=rank, reverse=True)
    if any(c.end <= c.start for c in ranked):  # empty spans break the ordering the fast path relies on
        kept: list[Candidate] = []
        for cand in ranked:
            if all(cand.end <= k.start or cand.start >= k.end for k in kept):
                kept.append(cand)
        return sorted(kept, key=lambda c: c.start)
    # Kept spans never overlap, so sorted by start they are sorted by end too: the only one a new span can
    # overlap first is the last kept span starting before it ends. (A linear scan here was quadratic.)
    starts: list[int] = []
    by_start: list[Candidate] = []
    for cand in ranked:
        i = bisect_left(starts, cand.end)
        if i and by_start[i - 1].end > cand.start:
            continue
        starts.insert(i, cand.start)
        by_start.insert(i, cand)
    return by_start
