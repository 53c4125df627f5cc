"""Mentions of competitors by name or alias: whole words, ignoring case, accents, compatibility forms (full-width
letters, ligatures) and invisible format characters.

Owns text folding with an offset map back to the original text, and the trie-shaped regex that keeps hundreds of
names to one pass. Must not decide what a mention means (policies map `competitor` findings to actions).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors._options import reject_unknown

_SEPARATOR = "\0"  # stands for "whitespace or hyphens" between the words of a folded name
_ASCII_LOWER = {c: chr(c + 32) for c in range(ord("A"), ord("Z") + 1)}


def fold(text: str) -> str:
    """`text` as the detector compares it: lowercase, no accents, compatibility forms and format characters gone."""
    return _Folded.of(text).text


@dataclass(frozen=True, slots=True)
class _Folded:
    """Folded text plus where each stretch of it came from in the original.

    `starts[i]`/`origins[i]`/`one_to_one[i]`: a stretch of the folded text starting at `starts[i]` came from the
    original at `origins[i]`, character for character (ASCII runs) or all from that one original character.
    """

    text: str
    starts: list[int]
    origins: list[int]
    one_to_one: list[bool]

    @classmethod
    def of(cls, text: str) -> _Folded:
        if text.isascii():
            return cls(text.lower(), [0], [0], [True])
        table: dict[int, str] = dict(_ASCII_LOWER)
        irregular = []
        for ch in set(text):
            if ord(ch) > 0x7F:
                table[ord(ch)] = piece = _fold_char(ch)
                if len(piece) != 1:
                    irregular.append(ch)
        folded = text.translate(table)
        starts, origins, one_to_one = [0], [0], [True]
        if irregular:
            # Only characters that do not fold to exactly one character (ligatures, 'ß', zero-width spaces,
            # decomposed accents) break the one-to-one stretches; accented prose stays a single stretch.
            shift = 0
            for m in re.finditer("[" + re.escape("".join(irregular)) + "]", text):
                i = m.start()
                width = len(table[ord(text[i])])
                starts += (i + shift, i + shift + width)
                origins += (i, i + 1)
                one_to_one += (False, True)
                shift += width - 1
        return cls(folded, starts, origins, one_to_one)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that folded into `[start, end)`."""
        return self._origin(start), self._origin(end - 1) + 1

    def _origin(self, pos: int) -> int:
        k = bisect_right(self.starts, pos) - 1
        return self.origins[k] + (pos - self.starts[k] if self.one_to_one[k] else 0)


def _fold_char(ch: str) -> str:
    if unicodedata.category(ch) == "Cf":  # zero-width space/joiners, soft hyphen, BOM
        return ""
    decomposed = unicodedata.normalize("NFKD", ch)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class _Trie:
    """Folded names as a trie, turned into one regex whose alternatives share their prefixes."""

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.terminal = False

    def add(self, word: str) -> None:
        node = self
        for ch in word:
            node = node.children.setdefault(ch, _Trie())
        node.terminal = True

    def pattern(self) -> str:
        branches = [_atom(ch) + child.pattern() for ch, child in sorted(self.children.items())]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # Longer names first: the optional group is greedy, and the regex backtracks to a shorter name only when
        # the longer one does not end on a word boundary.
        return f"(?:{body})?" if self.terminal else body


def _atom(ch: str) -> str:
    return r"[\s\-\u2010-\u2015]+" if ch == _SEPARATOR else re.escape(ch)


class CompetitorDetector:
    """Finds competitor names and aliases as whole words; label `competitor`, explanation names the competitor."""

    name = "competitors"
    version = "1"
    _OPTIONS = frozenset({"competitors", "max_findings"})

    def __init__(self, competitors: Mapping[str, Iterable[str]], *, max_findings: int = 100) -> None:
        if max_findings < 1:
            raise ValueError(f"max_findings must be at least 1, got {max_findings}")
        self.max_findings = max_findings
        self._canonical: dict[str, str] = {}  # folded term -> canonical name
        trie = _Trie()
        for canonical, aliases in competitors.items():
            for term in (canonical, *aliases):
                key = _fold_term(term)
                if not key:
                    raise ValueError(f"competitors: {term!r} (for {canonical!r}) has no letters or digits")
                other = self._canonical.setdefault(key, canonical)
                if other != canonical:
                    raise ValueError(f"competitors: {term!r} is listed for both {other!r} and {canonical!r}")
                trie.add(key)
        self._regex = re.compile(rf"(?<!\w)(?:{trie.pattern()})(?!\w)") if self._canonical else None
        self._separators = re.compile(r"[\s\-\u2010-\u2015]+")

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Self:
        """Build from options: `competitors` maps each name to its aliases (or is a plain list of names)."""
        reject_unknown("competitors", options, cls._OPTIONS)
        raw = options.get("competitors")
        if isinstance(raw, list | tuple) and all(isinstance(n, str) for n in raw):
            raw = {n: [] for n in raw}
        if not isinstance(raw, Mapping) or not raw:
            raise ValueError("competitors: option 'competitors' must be a non-empty mapping of name -> aliases")
        names: dict[str, Sequence[str]] = {}
        for canonical, aliases in raw.items():
            if not isinstance(canonical, str) or not canonical.strip():
                raise ValueError(f"competitors: option 'competitors' has an empty or non-string name {canonical!r}")
            aliases = [] if aliases is None else aliases
            if isinstance(aliases, str) or not isinstance(aliases, list | tuple):
                raise ValueError(f"competitors: option 'competitors': aliases of {canonical!r} must be a list")
            if not all(isinstance(a, str) for a in aliases):
                raise ValueError(f"competitors: option 'competitors': aliases of {canonical!r} must be strings")
            names[canonical] = aliases
        max_findings = options.get("max_findings", 100)
        if isinstance(max_findings, bool) or not isinstance(max_findings, int):
            raise ValueError("competitors: option 'max_findings' must be an integer")
        try:
            return cls(names, max_findings=max_findings)
        except ValueError as exc:
            raise ValueError(f"competitors: option {exc}") from None

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Each mention of a competitor, with its span in the original text."""
        if self._regex is None or not request.text:
            return []
        folded = _Folded.of(request.text)
        findings: list[Finding] = []
        for m in self._regex.finditer(folded.text):
            if m.start() == m.end():
                continue
            canonical = self._canonical[self._separators.sub(_SEPARATOR, m.group())]
            start, end = folded.original_span(m.start(), m.end())
            while end < len(request.text) and unicodedata.combining(request.text[end]):
                end += 1  # a decomposed accent on the last letter belongs to the name
            findings.append(Finding("competitor", start, end, 1.0, self.name, f"mentions competitor {canonical}"))
            if len(findings) >= self.max_findings:
                break
        return findings


def _fold_term(term: str) -> str:
    """A configured name folded like scanned text, with runs of spaces and hyphens as one separator."""
    words = re.split(r"[\s\-\u2010-\u2015]+", fold(term).strip())
    return _SEPARATOR.join(w for w in words if w) if any(c.isalnum() for c in term) else ""
