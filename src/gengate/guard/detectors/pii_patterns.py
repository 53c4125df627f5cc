"""Pattern recognizers for structured PII: what each entity looks like, how it is validated, which context
words make it more (or less) likely.

Each `PatternRecognizer` is class data (presidio's shape): a regex, a base score, an optional validator that
may reject a match or return a different score, and context words that add `boost` when found just before the
match (or subtract when a negative word is found). Regexes are compiled when a recognizer is built, never at
import time. This module does not decide overlaps or thresholds; `pii.PiiDetector` does.

Speed: a regex that opens with a lookbehind makes the engine attempt a match at every character. A spec may
name a `gate`, a regex that opens with a character set (which the engine skips to in C) and matches at least
everywhere the spec's regex can start; the full regex is then tried only there, with the same results. Gates that
open with letters still stop at most characters of prose, so a spec may also name `needs_pattern`, a short regex
opening with a rarer character set that matches somewhere inside every match of the spec's regex: a text where
it finds nothing is skipped (most texts hold no IBAN-shaped or IP-shaped run, for instance). And a spec may name
a `narrow` gate that opens with a rarer character set and is enough where a `needle` regex finds nothing in the
text (without a ":" no IPv6 address can start at a hex letter; without a year no textual date at a month name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gengate.guard.detectors import pii_checks as checks

# A validator gets the match and returns None to reject it, or the score to use (before context).
Validator = Callable[["re.Match[str]", float], float | None]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A possible entity: `pii.<type>` label, character span and score in [0, 1]."""

    label: str
    start: int
    end: int
    score: float


@dataclass(frozen=True, slots=True)
class PatternSpec:
    """Declarative description of a pattern recognizer."""

    entity: str
    pattern: str
    score: float
    context: tuple[str, ...] = ()
    negative_context: tuple[str, ...] = ()
    boost: float = 0.35
    validator: Validator | None = None
    flags: int = 0
    gate: str | None = None  # matches wherever `pattern` can start (a superset), opening with a character set
    needs: str = ""  # a substring every match contains: without it in the text there is nothing to find
    needs_pattern: str | None = None  # the same as a regex: one of its matches lies inside every match
    narrow: tuple[str, str] | None = None  # (needle, gate): the gate is enough in a text the needle is not in


def _word_alternation(words: tuple[str, ...]) -> re.Pattern[str]:
    body = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![^\W_])(?:{body})(?![^\W_])", re.IGNORECASE)


class PatternRecognizer:
    """A compiled `PatternSpec`."""

    __slots__ = ("_context", "_gate", "_narrow", "_needle", "_needs", "_negative", "_regex", "spec")

    def __init__(self, spec: PatternSpec) -> None:
        self.spec = spec
        self._regex = re.compile(spec.pattern, spec.flags)
        self._gate = re.compile(spec.gate, re.DOTALL) if spec.gate else None
        self._needle = re.compile(spec.narrow[0]) if spec.narrow else None
        self._narrow = re.compile(spec.narrow[1], re.DOTALL) if spec.narrow else None
        self._needs = re.compile(spec.needs_pattern) if spec.needs_pattern else None
        self._context = _word_alternation(spec.context) if spec.context else None
        self._negative = _word_alternation(spec.negative_context) if spec.negative_context else None

    def find(self, text: str, window: int = 48, rejected: list[tuple[int, int]] | None = None) -> Iterator[Candidate]:
        """Yield candidates in `text`, scored with validation and context; spans that had the shape but failed
        validation are appended to `rejected` when given (the detector keeps other recognizers off them)."""
        spec = self.spec
        if spec.needs not in text or (self._needs is not None and self._needs.search(text) is None):
            return
        for match in self._regex.finditer(text) if self._gate is None else self._gated(text):
            score = spec.score
            if spec.validator is not None:
                validated = spec.validator(match, spec.score)
                if validated is None:
                    if rejected is not None:
                        rejected.append(match.span("v") if "v" in self._regex.groupindex else match.span())
                    continue
                score = validated
            start, end = match.span("v") if "v" in self._regex.groupindex else match.span()
            before = text[max(0, start - window) : start]
            if self._context is not None and self._context.search(before):
                score = min(1.0, score + spec.boost)
            if self._negative is not None and self._negative.search(before):
                score = max(0.0, score - spec.boost)
            yield Candidate(f"pii.{spec.entity}", start, end, round(score, 3))

    def _gated(self, text: str) -> Iterator[re.Match[str]]:
        """The matches `finditer` would give, tried only where the gate says one can start."""
        assert self._gate is not None
        gate = self._gate
        if self._needle is not None and self._narrow is not None and self._needle.search(text) is None:
            gate = self._narrow
        done = 0
        for hit in gate.finditer(text):
            pos = hit.start()
            if pos >= done and (match := self._regex.match(text, pos)) is not None:
                done = match.end()
                yield match


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _card(match: re.Match[str], score: float) -> float | None:
    raw = match.group("v")
    seps = {ch for ch in raw if not ch.isdigit()}
    if len(seps) > 1:
        return None
    digits = _digits(raw)
    if not 12 <= len(digits) <= 19 or not checks.luhn_ok(digits) or not checks.card_iin_ok(digits):
        return None
    return score


def _iban(match: re.Match[str], score: float) -> float | None:
    compact = re.sub(r"[\s-]", "", match.group("v"))
    return score if checks.iban_ok(compact) else None


def _ssn(match: re.Match[str], score: float) -> float | None:
    if not checks.ssn_ok(match.group("a"), match.group("g"), match.group("s")):
        return None
    return score if match.group("sep") else score - 0.25


def _tfn(match: re.Match[str], score: float) -> float | None:
    return score if checks.tfn_ok(_digits(match.group("v"))) else None


def _abn(match: re.Match[str], score: float) -> float | None:
    return score if checks.abn_ok(_digits(match.group("v"))) else None


def _medicare(match: re.Match[str], score: float) -> float | None:
    return score if checks.medicare_ok(_digits(match.group("v"))) else None


def _ip(match: re.Match[str], score: float) -> float | None:
    return score if checks.ip_ok(match.group("v")) else None


def _phone(match: re.Match[str], score: float) -> float | None:
    raw = match.group("v")
    digits = _digits(raw.split("x")[0])
    if raw.startswith("+"):
        return score + 0.15 if 8 <= len(digits) <= 15 else None
    if not 8 <= len(digits) <= 12:
        return None
    # Looks like a date (2024-01-31, 31.01.2024) or a version/decimal: not a phone.
    if re.fullmatch(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}", raw):
        return None
    if len({ch for ch in raw if ch in " -."}) > 1 and "(" not in raw:
        return score - 0.1
    # Australian national formats: 04xx xxx xxx, (0x) xxxx xxxx, 1300/1800 numbers.
    if re.fullmatch(r"04\d{2}[ -]?\d{3}[ -]?\d{3}|\(0[2378]\)\s?\d{4}[ -]?\d{4}|1[38]00[ -]?\d{3}[ -]?\d{3}", raw):
        return score + 0.15
    return score


_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|"
    "oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)


def _date(match: re.Match[str], score: float) -> float | None:
    groups = match.groupdict()
    if groups.get("iy"):
        y, m, d = int(groups["iy"]), int(groups["im"]), int(groups["id"])
        return score if checks.date_ok(y, m, d) else None
    if groups.get("ny"):
        a, b, y = int(groups["na"]), int(groups["nb"]), int(groups["ny"])
        if y < 100:
            y += 1900 if y > 30 else 2000
        ok = checks.date_ok(y, b, a) or checks.date_ok(y, a, b)
        return score if ok else None
    return score  # textual month forms are validated by the regex shape


DEFAULT_SPECS: tuple[PatternSpec, ...] = (
    PatternSpec(
        "email",
        r"(?<![\w.+-])(?P<v>[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24})(?![\w@-])",
        0.95,
        context=("email", "e-mail", "mail"),
        boost=0.05,
        needs="@",
    ),
    PatternSpec(
        "credit_card",
        r"(?<![\w-])(?P<v>\d{4}(?:[ -]?\d{2,4}){2,4}\d{0,3}|\d{12,19})(?![\w-])",
        0.8,
        context=("card", "credit", "debit", "visa", "mastercard", "amex", "cc", "card no", "pan", "payment"),
        validator=_card,
        gate=r"\d(?<![\w-].)(?=\d{3}[ -]?\d\d)",
    ),
    PatternSpec(
        "iban",
        r"(?<![\w])(?P<v>[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,4})?)(?![\w])",
        0.95,
        context=("iban", "account", "bank", "transfer"),
        boost=0.05,
        validator=_iban,
        gate=r"[A-Za-z](?<!\w.)(?=[A-Za-z]\d\d)",
        needs_pattern=r"\d(?<=[A-Za-z]{2}\d)\d",  # its first four characters (found from the digits: rarer)
    ),
    PatternSpec(
        "us_ssn",
        r"(?<![\w-])(?P<v>(?P<a>\d{3})(?P<sep>[- ]?)(?P<g>\d{2})(?P=sep)(?P<s>\d{4}))(?![\w-])",
        0.5,
        context=("ssn", "ssns", "social security", "social sec", "ss#", "ssn#", "ssid"),
        negative_context=("phone", "tel", "order", "invoice", "ref", "tracking"),
        validator=_ssn,
        gate=r"\d(?<![\w-].)(?=\d\d[- ]?\d\d)",
    ),
    PatternSpec(
        "au_tfn",
        r"(?<![\w-])(?P<v>\d{3}[ -]?\d{3}[ -]?\d{2,3})(?![\w-])",
        0.3,
        context=("tfn", "tax file", "tax file number", "ato"),
        boost=0.6,
        validator=_tfn,
        gate=r"\d(?<![\w-].)(?=\d\d[ -]?\d{3})",
    ),
    PatternSpec(
        "au_abn",
        r"(?<![\w-])(?P<v>\d{2}[ ]?\d{3}[ ]?\d{3}[ ]?\d{3})(?![\w-])",
        0.45,
        context=("abn", "australian business number", "business number"),
        boost=0.5,
        validator=_abn,
        gate=r"\d(?<![\w-].)(?=\d[ ]?\d{3})",
    ),
    PatternSpec(
        "au_medicare",
        r"(?<![\w-])(?P<v>[2-6]\d{3}[ ]?\d{5}[ ]?\d(?:[ /-]?\d)?)(?![\w-])",
        0.3,
        context=("medicare", "medicare card", "medicare number"),
        boost=0.6,
        validator=_medicare,
        gate=r"[2-6](?<![\w-].)(?=\d{3}[ ]?\d{5})",
    ),
    PatternSpec(
        "ip_address",
        r"(?<![\w.:])(?P<v>(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?)(?![\w.:])",
        0.6,
        context=("ip", "address", "ipv4", "ipv6", "host", "server", "client_ip", "blocked"),
        negative_context=("version", "v.", "release", "build"),
        boost=0.3,
        validator=_ip,
        needs_pattern=r"\d\.\d|:[0-9A-Fa-f]*:",  # a dotted quad, or two colons
        gate=r"[\dA-Fa-f:](?<![\w.:].)(?=\d{0,2}\.|[0-9A-Fa-f]{0,4}:)",
        narrow=(":", r"\d(?<![\w.:].)(?=\d{0,2}\.)"),  # without a colon only the dotted quad
    ),
    PatternSpec(
        "phone_number",
        r"(?<![\w+(-])(?P<v>\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"
        r"|\(\d{2,4}\)[ .-]?\d{3,4}(?:[ .-]?\d{3,4}){1,2}(?:\s?x\d{1,5})?"
        r"|\d{2,4}[ .-]\d{2,4}(?:[ .-]\d{2,4}){1,3}(?:\s?x\d{1,5})?)(?![\w])",
        0.45,
        context=("phone", "tel", "telephone", "mobile", "cell", "call", "fax", "ph", "contact", "whatsapp", "sms",
                 "text me", "number", "registered", "reach me", "office", "desk", "answering", "messages"),
        negative_context=("order", "invoice", "ref", "reference", "tracking", "serial", "isbn"),
        validator=_phone,
        needs_pattern=r"\d[ .-]\d|[+(]\d",  # each branch holds one
        gate=r"[\d+(](?<![\w+(-].)(?:(?<=[+(])|(?=\d{1,3}[ .-]\d\d))",
    ),
    PatternSpec(
        "passport",
        r"(?<![\w-])(?P<v>[A-Za-z]{1,2}\d{6,8}|\d{9})(?![\w-])",
        0.1,
        context=("passport", "passport no", "passport number", "travel document"),
        boost=0.75,
        needs_pattern=r"\d{6}",  # six digits in each branch
        gate=r"[A-Za-z\d](?<![\w-].)(?=[A-Za-z]?\d{6})",
        narrow=(r"\d(?<=[A-Za-z]\d)\d{5}", r"\d(?<![\w-].)(?=\d{8})"),  # no letter before six digits: nine digits
    ),
    PatternSpec(
        "date_of_birth",
        r"(?<![\w/.-])(?P<v>(?P<iy>(?:19|20)\d{2})-(?P<im>\d{1,2})-(?P<id>\d{1,2})"
        r"|(?P<na>\d{1,2})[/.-](?P<nb>\d{1,2})[/.-](?P<ny>\d{4}|\d{2})"
        rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\.?,?\s+(?:19|20)\d{{2}}"
        rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}})(?![\w/])",
        0.15,
        context=("dob", "d.o.b", "date of birth", "birth date", "birthdate", "born", "birthday", "b.", "née",
                 "age", "geboren"),
        boost=0.7,
        validator=_date,
        needs_pattern=r"\d[/.-]\d|(?:19|20)\d\d",  # a numeric date, or else a year
        flags=re.IGNORECASE,
        # A digit, or the first letter of a month in any case the engine folds to it (ſ is an s).
        gate=r"[\dJjFfMmAaSsſOoNnDd](?<![\w/.-].)(?:(?<=\d)(?=\d{3}-|\d?[/.-]|\d?(?i:st|nd|rd|th)?\s)"
        r"|(?=(?i:an|eb|ar|pr|ay|un|ul|ug|ep|ct|ov|ec)))",
        # Every branch but the numeric one holds a year: without one, only digits start a match.
        narrow=(r"(?:19|20)\d\d", r"\d(?<![\w/.-].)(?=\d{3}-|\d?[/.-]|\d?(?i:st|nd|rd|th)?\s)"),
    ),
)  # fmt: skip
