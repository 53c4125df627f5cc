"""System-prompt leaks in model output: canary tokens planted in the system prompt, and long verbatim or
near-verbatim runs of the system prompt's own words.

Owns `make_canary` and the overlap measure. Must not see or keep secrets beyond the request it scans: the canary
secret stays with whoever builds system prompts; this module only receives the derived tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any, Self

from gengate.guard.base import Finding, ScanRequest
from gengate.guard.detectors._options import reject_unknown

CANARY_PREFIX = "gg-canary-"
_CANARY_BODY = 16  # base32 characters: 80 bits, so a chance match is out of the question
_MIN_CANARY = 8  # shorter tokens (after squeezing) would match ordinary words


def make_canary(secret: bytes, app: str) -> str:
    """A distinctive token (`gg-canary-` and 16 base32 characters) to embed in `app`'s system prompt.

    Derived with HMAC-SHA256 from `secret`, so the same app always gets the same canary and nobody without the
    secret can forge or predict one.
    """
    if not secret:
        raise ValueError("make_canary: secret must not be empty")
    if not app:
        raise ValueError("make_canary: app must not be empty")
    digest = hmac.new(secret, b"gengate-canary\0" + app.encode(), hashlib.sha256).digest()
    return CANARY_PREFIX + base64.b32encode(digest[:10]).decode().lower()


# Words that carry no meaning of their own: a shingle made mostly of them ("let me know if you have any") is a
# common phrase, not evidence of a leak.
STOPWORDS = frozenset(
    {
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "don",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "let",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "please",
    }
)
_WORD = re.compile(r"\w+")
_ALNUM_RUN = re.compile(r"[^\W_]+")
_NOT_ALNUM = re.compile(r"[\W_]+")


def _fold_word(word: str) -> str:
    if word.isascii():
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _words(text: str) -> list[str]:
    """Folded words of `text` (the n-th is the n-th match of `_WORD` in `text`)."""
    if text.isascii():
        return _WORD.findall(text.lower())
    return [_fold_word(w) for w in _WORD.findall(text)]


class _PromptIndex:
    """A system prompt's word shingles (minus common phrases) and where each one starts."""

    def __init__(self, prompt: str, n: int, ignored: frozenset[tuple[str, ...]]) -> None:
        self.words = _words(prompt)
        self.starts: dict[tuple[str, ...], int] = {}
        min_content = n // 3 + 1
        for i in range(len(self.words) - n + 1):
            shingle = tuple(self.words[i : i + n])
            if shingle in ignored or sum(w not in STOPWORDS for w in shingle) < min_content:
                continue
            self.starts.setdefault(shingle, i)


class LeakDetector:
    """Finds canary tokens (`leak.canary`) and system-prompt passages (`leak.system_prompt`) in model output.

    Canaries match despite inserted spaces, punctuation or zero-width characters and changed case. A passage
    counts when it repeats at least `ngram` consecutive words of the system prompt (case, accents and
    punctuation ignored); passages a few words apart are merged, so a changed word does not split a leak. The
    passages are reported when together they cover at least `min_overlap` of the system prompt or at least
    `min_words` of its words; each finding's score is that covered fraction.
    """

    name = "leak"
    version = "1"
    DEFAULT_IGNORED_PHRASES: tuple[str, ...] = (
        "if you have any other questions feel free to ask",
        "let me know if you have any other questions",
        "i'm sorry, but i can't help with that",
    )
    _OPTIONS = frozenset({"ngram", "min_overlap", "min_words", "max_gap", "ignored_phrases", "max_findings"})

    def __init__(
        self,
        *,
        ngram: int = 8,
        min_overlap: float = 0.1,
        min_words: int = 24,
        max_gap: int = 3,
        ignored_phrases: Sequence[str] = DEFAULT_IGNORED_PHRASES,
        max_findings: int = 20,
    ) -> None:
        if not 3 <= ngram <= 50:
            raise ValueError(f"ngram must be between 3 and 50 words, got {ngram}")
        if not 0 < min_overlap <= 1:
            raise ValueError(f"min_overlap must be a fraction in (0, 1], got {min_overlap}")
        if min_words < ngram:
            raise ValueError(f"min_words must be at least ngram ({ngram}), got {min_words}")
        if not 0 <= max_gap <= 20:
            raise ValueError(f"max_gap must be between 0 and 20 words, got {max_gap}")
        if max_findings < 1:
            raise ValueError(f"max_findings must be at least 1, got {max_findings}")
        self.ngram = ngram
        self.min_overlap = min_overlap
        self.min_words = min_words
        self.max_gap = max_gap
        self.max_findings = max_findings
        ignored: set[tuple[str, ...]] = set()
        for phrase in ignored_phrases:
            words = _words(phrase)
            ignored.update(tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1))
        self._ignored = frozenset(ignored)
        # System prompts repeat across requests; index each once. (Bounded, thread-safe, and invisible to callers.)
        self._index = lru_cache(maxsize=64)(self._build_index)

    @classmethod
    def from_config(cls, options: Mapping[str, Any]) -> Self:
        """Build from the `leak` options of a guard profile, rejecting unknown or mistyped options."""
        reject_unknown("leak", options, cls._OPTIONS)
        ints = {}
        for key, default in (("ngram", 8), ("min_words", 24), ("max_gap", 3), ("max_findings", 20)):
            ints[key] = value = options.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"leak: option '{key}' must be an integer")
        min_overlap = options.get("min_overlap", 0.1)
        if isinstance(min_overlap, bool) or not isinstance(min_overlap, int | float):
            raise ValueError("leak: option 'min_overlap' must be a number")
        phrases = options.get("ignored_phrases", cls.DEFAULT_IGNORED_PHRASES)
        if not isinstance(phrases, list | tuple) or not all(isinstance(p, str) for p in phrases):
            raise ValueError("leak: option 'ignored_phrases' must be a list of strings")
        try:
            return cls(min_overlap=float(min_overlap), ignored_phrases=phrases, **ints)
        except ValueError as exc:
            raise ValueError(f"leak: option {exc}") from None

    def scan(self, request: ScanRequest) -> list[Finding]:
        """Canaries, then system-prompt passages, found in the request's text."""
        if not request.text:
            return []
        findings = list(self._canaries(request.text, request.canaries))
        if request.system_prompt:
            findings += self._overlap(request.text, request.system_prompt)
        return findings[: self.max_findings]

    # -- canaries ----------------------------------------------------------------------------------------------

    def _canaries(self, text: str, canaries: Sequence[str]) -> Iterable[Finding]:
        needles = []
        for canary in canaries:
            squeezed = _squeeze(canary)[0]
            if len(squeezed) >= _MIN_CANARY:
                needles.append(squeezed)
            if canary.lower().startswith(CANARY_PREFIX):  # the random part alone gives the canary away too
                body = _squeeze(canary[len(CANARY_PREFIX) :])[0]
                if len(body) >= _MIN_CANARY:
                    needles.append(body)
        if not needles:
            return
        # Most outputs hold no canary: look for one in the cheaply squeezed text before mapping offsets.
        quick = _NOT_ALNUM.sub("", text if text.isascii() else unicodedata.normalize("NFKD", text)).casefold()
        if not any(needle in quick for needle in needles):
            return
        squeezed, origins = _squeeze(text)
        seen: list[tuple[int, int]] = []
        for needle in sorted(set(needles), key=len, reverse=True):  # full tokens before their random parts
            pos = squeezed.find(needle)
            while pos >= 0:
                start, end = origins[pos], origins[pos + len(needle) - 1] + 1
                if not any(s <= start and end <= e for s, e in seen):
                    seen.append((start, end))
                    exact = text[start:end] in canaries
                    how = "" if exact else " (disguised)"
                    yield Finding("leak.canary", start, end, 1.0, self.name, f"output contains a canary token{how}")
                pos = squeezed.find(needle, pos + len(needle))

    # -- system prompt overlap ---------------------------------------------------------------------------------

    def _build_index(self, prompt: str) -> _PromptIndex:
        return _PromptIndex(prompt, self.ngram, self._ignored)

    def _overlap(self, text: str, prompt: str) -> list[Finding]:
        index = self._index(prompt)
        if not index.starts:
            return []
        words = _words(text)
        n = self.ngram
        covered_prompt = bytearray(len(index.words))
        runs: list[list[int]] = []  # [first word, last word + 1] of output passages
        for i in range(len(words) - n + 1):
            at = index.starts.get(tuple(words[i : i + n]))
            if at is None:
                continue
            covered_prompt[at : at + n] = b"\x01" * n
            if runs and i <= runs[-1][1] + self.max_gap:
                runs[-1][1] = i + n
            else:
                runs.append([i, i + n])
        if not runs:
            return []
        leaked = sum(covered_prompt)
        fraction = leaked / len(index.words)
        if fraction < self.min_overlap and leaked < self.min_words:
            return []
        explanation = f"output repeats {leaked} of the system prompt's {len(index.words)} words"
        spans = [m.span() for m in _WORD.finditer(text)]
        return [
            Finding("leak.system_prompt", spans[a][0], spans[b - 1][1], round(fraction, 4), self.name, explanation)
            for a, b in runs
        ]


def _squeeze(text: str) -> tuple[str, list[int]]:
    """Letters and digits of `text`, folded, with the original offset of each (spacing and case tricks undone)."""
    parts: list[str] = []
    origins: list[int] = []
    for m in _ALNUM_RUN.finditer(text):
        run = m.group()
        folded = run.lower() if run.isascii() else ""
        if folded:
            parts.append(folded)
            origins.extend(range(m.start(), m.end()))
            continue
        for i, ch in enumerate(run, m.start()):
            piece = _fold_word(ch)
            parts.append(piece)
            origins.extend([i] * len(piece))
    return "".join(parts), origins
