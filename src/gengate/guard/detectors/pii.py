"""The offline PII detector: patterns with checksums and context words, plus a learned tagger for names,
addresses, places and the other entities that have no fixed shape.

`PiiDetector` implements the guard `Detector` protocol under the name "pii". Findings are labelled
`pii.<type>` with character offsets into the scanned text. Everything (regexes, gazetteers, the tagger's
artifact) is loaded in the constructor, never at import time; `scan` is pure. Pattern candidates are scored
(base score, validation, context words), overlaps among them resolved (highest score, then validated types, then
the longest span) and anything under `threshold` dropped; the tagger's spans (`pii_tagger.py`) then fill in
wherever no kept pattern span lies, so a Luhn-valid card or an IBAN always wins over what the tagger thinks.
With `tagger=False` the rule-based name and address recognizers of `pii_names.py` are used instead (and the
tagger-only entities are unavailable). Scoring rules and measured quality are in docs/guard-pii.md.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_left
from collections.abc import Iterable

from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors.pii_features import names_a_street
from gengate.guard.detectors.pii_names import AddressRecognizer, Gazetteer, NameRecognizer
from gengate.guard.detectors.pii_patterns import DEFAULT_SPECS, Candidate, PatternRecognizer
from gengate.guard.detectors.pii_tagger import PiiTagger, TaggerModel

# Entities the patterns (and, without the tagger, the rule-based name/address recognizers) find.
RULE_ENTITIES: tuple[str, ...] = (
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
# Entities only the tagger finds (labels follow the tagger's classes; GPE is `location`, NRP is `nrp`).
TAGGER_ENTITIES: tuple[str, ...] = (
    "age",
    "driver_license",
    "location",
    "zip_code",
    "organization",
    "date_time",
    "title",
    "nrp",
    "domain_name",
)
ENTITIES: tuple[str, ...] = RULE_ENTITIES + TAGGER_ENTITIES
# Off unless asked for: on their own they rarely identify anyone, and redacting them mangles ordinary text
# ("flying to Paris", "Monday", "Mr.", "Allianz", "German", a link, a five-digit number). The bench measures
# both configurations.
OPT_IN_ENTITIES = frozenset({"location", "zip_code", "organization", "date_time", "title", "nrp", "domain_name"})
DEFAULT_ENTITIES: tuple[str, ...] = tuple(e for e in ENTITIES if e not in OPT_IN_ENTITIES)
# Entities whose patterns validate a checksum or registry rule: a match that fails keeps the tagger off its span.
_CHECKSUMMED = frozenset({"credit_card", "iban", "us_ssn", "au_tfn", "au_abn", "au_medicare"})
# Entities the tagger proposes spans for (phone numbers too: it finds national formats the patterns reject).
_TAGGED = frozenset({"person", "street_address", "phone_number", *TAGGER_ENTITIES})
# Validated entities win overlaps over shape-only ones at equal score (a Luhn-valid card is not a phone).
_PRIORITY = {e: i for i, e in enumerate(reversed(RULE_ENTITIES))} | {
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
# Longer inputs are cut here so one pathological text cannot stall a request.
MAX_SCAN_CHARS = 1_000_000


@functools.cache
def shipped_tagger() -> PiiTagger:
    """The tagger of the shipped model and gazetteer, one per process and warmed: every profile's `pii` rule
    shares it (its caches are guarded by a lock), so the vocabulary is computed once, when the first detector is
    built, not on a user's first request."""
    tagger = PiiTagger(TaggerModel.shipped(), Gazetteer.shipped())
    tagger.warm()
    return tagger


class PiiDetector:
    """Finds personal data in text (see module docstring).

    `entities` defaults to `DEFAULT_ENTITIES` (`RULE_ENTITIES` without the tagger); `tagger` is True (the
    shipped tagger), False (rules only) or a `PiiTagger` to use as it is (evaluation). `gazetteer` replaces the
    shipped word lists.
    """

    name = "pii"

    def __init__(
        self,
        entities: Iterable[str] | None = None,
        threshold: float = 0.5,
        gazetteer: Gazetteer | None = None,
        address_locality: bool = True,
        tagger: bool | PiiTagger = True,
    ) -> None:
        default = DEFAULT_ENTITIES if tagger is not False else RULE_ENTITIES
        wanted = tuple(entities) if entities is not None else default
        unknown = sorted(set(wanted) - set(ENTITIES))
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; known: {', '.join(ENTITIES)}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"PII threshold must be in [0, 1], got {threshold}")
        if tagger is False and set(wanted) & set(TAGGER_ENTITIES):
            needs = sorted(set(wanted) & set(TAGGER_ENTITIES))
            raise ValueError(f"PII entities {needs} need the tagger (tagger: true)")
        self.entities = frozenset(wanted)
        self.threshold = threshold
        self._patterns = [PatternRecognizer(s) for s in DEFAULT_SPECS if s.entity in self.entities]
        self._tagger: PiiTagger | None = None
        self._names: NameRecognizer | None = None
        self._addresses: AddressRecognizer | None = None
        if isinstance(tagger, PiiTagger):
            self._tagger = tagger
        elif tagger and self.entities & _TAGGED:
            self._tagger = shipped_tagger() if gazetteer is None else PiiTagger(TaggerModel.shipped(), gazetteer)
        if self._tagger is None:
            names = Gazetteer.shipped() if gazetteer is None and "person" in self.entities else gazetteer
            self._names = NameRecognizer(names) if names is not None and "person" in self.entities else None
            self._addresses = AddressRecognizer(address_locality) if "street_address" in self.entities else None
        # The artifact's hash is part of the version, so recorded findings say which model produced them.
        self.version = "3" if self._tagger is None else f"3+tagger.{self._tagger.model.version}"

    def _rule_candidates(self, text: str, rejected: list[tuple[int, int]] | None = None) -> list[Candidate]:
        out: list[Candidate] = []
        for recognizer in self._patterns:
            vetoes = rejected if recognizer.spec.entity in _CHECKSUMMED else None
            out.extend(recognizer.find(text, rejected=vetoes))
        if self._addresses is not None:
            out.extend(self._addresses.find(text))
        if self._names is not None:
            out.extend(self._names.find(text))
        return out

    def _tagged_candidates(self, text: str) -> list[Candidate]:
        if self._tagger is None:
            return []
        cased = text != text.lower()
        out = []
        for span in self._tagger.find(text):
            if span.entity not in self.entities:
                continue
            start, end = span.start, span.end
            if span.entity == "person" and cased:
                start, end = trim_name(text, start, end)
            if end > start and plausible(span.entity, text[start:end], cased):
                out.append(Candidate(f"pii.{span.entity}", start, end, span.score))
        return out

    def candidates(self, text: str) -> list[Candidate]:
        """Every candidate before overlap resolution and threshold (for evaluation and debugging)."""
        text = text[:MAX_SCAN_CHARS]
        return self._rule_candidates(text) + self._tagged_candidates(text)

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Findings for PII in the request's text, sorted by start offset."""
        text = request.text[:MAX_SCAN_CHARS]
        rejected: list[tuple[int, int]] = []
        kept = resolve_overlaps(c for c in self._rule_candidates(text, rejected) if c.score >= self.threshold)
        tagged = {c for c in self._tagged_candidates(text) if c.score >= self.threshold}
        if tagged:
            # A number shaped like a card, IBAN or SSN that fails its checksum is not reported as anything else.
            closed = resolve_overlaps(Candidate("", a, b, 1.0) for a, b in rejected)
            kept = _fill_in(kept, sorted(tagged, key=lambda c: c.start), closed)
        return [
            Finding(c.label, c.start, c.end, c.score, self.name, f"{c.label.removeprefix('pii.')} {how}")
            for c in kept
            for how in ("(tagger)" if c in tagged else "pattern",)
        ]


def _fill_in(kept: list[Candidate], extra: list[Candidate], closed: list[Candidate]) -> list[Candidate]:
    """`kept` plus every span of `extra` that overlaps neither `kept` nor `closed` (each sorted, non-overlapping)."""
    out = list(kept)
    kept_starts = [c.start for c in kept]
    closed_starts = [c.start for c in closed]
    for cand in extra:
        if not _overlaps(kept, kept_starts, cand) and not _overlaps(closed, closed_starts, cand):
            out.append(cand)
    return sorted(out, key=lambda c: c.start)


def _overlaps(spans: list[Candidate], starts: list[int], cand: Candidate) -> bool:
    """Whether `cand` overlaps one of `spans`, which do not overlap each other (so sorted by start and by end):
    only the last span starting before `cand` ends can."""
    i = bisect_left(starts, cand.end)
    return i > 0 and spans[i - 1].end > cand.start


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


_NOT_IN_ADDRESSES = frozenset("=|<>≤≥*+{}[]^~$%")


def plausible(entity: str, value: str, cased: bool = True) -> bool:
    """Whether a tagger span can be what it is labelled: the checks a value of that kind always passes (the
    tagger learned from PII-dense templates and, on ordinary text, sometimes calls a year "(2017)" a phone number,
    a list of words an address or a letter a licence). Every gold value of the training templates passes them.
    `cased`: the text has upper-case letters (in an all-lower-case text a name is lower-case too)."""
    digits = sum(ch.isdigit() for ch in value)
    if entity == "phone_number":
        return digits >= 7  # the shortest national numbers have 7 digits
    if entity == "driver_license":
        return digits >= 5 and len(value) >= 6
    if entity == "street_address":
        if not (value[:1].isalnum() and (value[-1:].isalnum() or value.endswith("."))):
            return False  # an address part starts with a word or number and ends with one (or "Apt.")
        if any(ch in _NOT_IN_ADDRESSES for ch in value):
            return False
        if not any(ch.isalpha() for ch in value):
            return value.isdigit()  # a bare house number or postcode, as some address conventions split them
        return digits > 0 or names_a_street(value)
    if entity == "person":
        # Names in Latin script only: the training data has no other, and on other scripts the tagger calls any
        # capitalised word a name (a Russian "Пожалуйста" at the start of a sentence).
        if cased and value == value.lower():
            return False  # "rice", "else": in a text with capitals, a name has one
        return all(_latin(ch) for ch in value if ch.isalpha())
    if entity == "age":
        return 0 < digits <= 3
    return True


@functools.cache
def _latin(ch: str) -> bool:
    return ch.isascii() or unicodedata.name(ch, "").startswith("LATIN")


# Lower-case words that may begin a name ("van Gogh", "de Gaulle", "al-Khwarizmi" is one word anyway).
_NAME_PARTICLES_TEXT = "van von de da di du del della der den le la bin ibn al el dos das ter ten"
_NAME_PARTICLES = frozenset(_NAME_PARTICLES_TEXT.split())
_WORD = re.compile(r"\S+")


def trim_name(text: str, start: int, end: int) -> tuple[int, int]:
    """A person span without the lower-case words at its edges, in a text that has capitals: "M. C. Escher made"
    becomes "M. C. Escher", "Tracey said" "Tracey" (a leading particle such as "van" stays). Empty when nothing
    is left."""
    words = [(m.start() + start, m.end() + start) for m in _WORD.finditer(text[start:end])]

    def lower(word: tuple[int, int], particles: frozenset[str] = frozenset()) -> bool:
        value = text[word[0] : word[1]]
        return value.isalpha() and value.islower() and value not in particles

    while words and lower(words[-1]):
        words.pop()
    while words and lower(words[0], _NAME_PARTICLES):
        words.pop(0)
    return (words[0][0], words[-1][1]) if words else (start, start)
