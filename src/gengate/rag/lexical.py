"""BM25 over an in-memory inverted index whose corpus statistics respect access.

Owns the analyzer (lowercase, Unicode word split, a small English stopword list, light suffix stemming), the
inverted index (per-term postings as NumPy arrays of row positions and term frequencies for two fields: the text,
and the title + heading), BM25F scoring and RM3-style feedback terms.

Every statistic a score depends on (the number of rows N, the average field lengths and each term's document
frequency) is computed only over the rows a caller may read, passed in as a boolean mask: a caller's ranking is
never shaped by rows they may not read (an IDF computed over the whole corpus leaks their existence).

Must not: do I/O, know about access tokens (the caller turns them into the mask) or keep module-level state.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["STOPWORDS", "Analyzer", "Bm25Settings", "LexicalIndex", "light_stem"]

Mask = npt.NDArray[np.bool_]
Rows = npt.NDArray[np.int64]
Scores = npt.NDArray[np.float64]

_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself nor of off on once
    only or other our ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W_]+")
_BATCH = 4096  # rows tokenised at a time while building
_ASCII_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation, " "))


def light_stem(word: str) -> str:
    """A conservative English suffix stripper: plurals, -ing and -ed, keeping stems of at least three letters.
    Tokens with digits or non-ASCII letters are left alone."""
    if len(word) <= 3 or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        stem = word[: -len(suffix)]
        if word.endswith(suffix) and len(stem) >= 3 and any(c in "aeiouy" for c in stem):
            if stem[-1] == stem[-2] and stem[-1] not in "lsz":  # "stopped" → "stop"
                stem = stem[:-1]
            return stem
    # "activation", "activate" → "activat", as "activated" and "activating" became above.
    if word.endswith("ation") and len(word) > 7:
        return word[:-3]
    if word.endswith("e") and not word.endswith("ee") and len(word) > 4:
        return word[:-1]
    return word


def _plural_stem(word: str) -> str:
    if len(word) <= 3 or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True, slots=True)
class Analyzer:
    """Text → index terms: lowercase, split into Unicode words, drop stopwords, stem."""

    stem: Literal["none", "plural", "light"] = "light"

    def term(self, word: str) -> str | None:
        """The index term of one lowercase word, or None for a stopword."""
        if word in STOPWORDS:
            return None
        if self.stem == "light":
            return light_stem(word)
        return _plural_stem(word) if self.stem == "plural" else word

    def words(self, text: str) -> list[str]:
        """The lowercase words of `text` (maximal runs of Unicode letters and digits), stopwords included."""
        # Same result as _WORD.findall(text.lower()), about twice as fast: ASCII punctuation becomes spaces, and
        # only tokens that still hold a non-alphanumeric character go through the regex.
        tokens = text.lower().translate(_ASCII_PUNCTUATION).split()
        if text.isascii():
            return tokens
        return [w for token in tokens for w in ((token,) if token.isalnum() else _WORD.findall(token))]

    def terms(self, text: str) -> list[str]:
        """The index terms of `text`, in order, with repeats."""
        return [t for t in map(self.term, self.words(text)) if t is not None]


class Bm25Settings(BaseModel):
    """BM25F parameters: one saturation `k1`, a length normalisation `b` per field, and the title field's weight
    (the title field holds the document title and the chunk's heading path). `combine="sum"` adds two separate
    BM25 scores instead (weighted). Defaults: best on SciFact train queries (bench/retrieval_eval.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k1: float = Field(1.2, gt=0, le=10)
    b: float = Field(0.75, ge=0, le=1)
    title_weight: float = Field(2.0, ge=0, le=20)
    title_b: float = Field(1.0, ge=0, le=1)
    combine: Literal["bm25f", "sum"] = "bm25f"
    stem: Literal["none", "plural", "light"] = "light"


class LexicalIndex:
    """An immutable inverted index over two fields of N rows.

    Postings are stored term-major (CSR): for term t, `_rows[_offsets[t]:_offsets[t + 1]]` are the row positions
    holding it (ascending) with its frequency in each field. `scores` accumulates BM25F over the masked rows only.
    """

    def __init__(
        self,
        texts: Sequence[str],
        titles: Sequence[str] | None = None,
        *,
        settings: Bm25Settings | None = None,
        forward: bool = False,
    ) -> None:
        self.settings = settings or Bm25Settings()
        self.analyzer = Analyzer(self.settings.stem)
        if titles is not None and len(titles) != len(texts):
            raise ValueError(f"{len(titles)} titles for {len(texts)} texts")
        self.n_rows = len(texts)
        self._vocab: dict[str, int] = {}
        text_keys, self._len_text = self._count(texts)
        title_keys, self._len_title = self._count(titles if titles is not None else [""] * len(texts))
        keys, _ = _unique_counts(np.concatenate((text_keys[0], title_keys[0])))
        tf_text = np.zeros(len(keys), dtype=np.float32)
        tf_text[np.searchsorted(keys, text_keys[0])] = text_keys[1]
        tf_title = np.zeros(len(keys), dtype=np.float32)
        tf_title[np.searchsorted(keys, title_keys[0])] = title_keys[1]
        n = max(self.n_rows, 1)
        terms = keys // n
        self._rows = (keys % n).astype(np.int32)
        self._tf_text = tf_text
        self._tf_title = tf_title
        self._offsets = np.searchsorted(terms, np.arange(len(self._vocab) + 1)).astype(np.int64)
        self._terms: list[str] = sorted(self._vocab, key=self._vocab.__getitem__)
        # Row-major copy (term ids per row) for relevance feedback, only when asked for.
        self._fwd: tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32]] | None = None
        if forward:
            by_row = np.argsort(self._rows, kind="stable")
            row_offsets = np.searchsorted(self._rows[by_row], np.arange(self.n_rows + 1)).astype(np.int64)
            self._fwd = (row_offsets, terms[by_row].astype(np.int32), (tf_text + tf_title)[by_row])

    def _count(self, texts: Sequence[str]) -> tuple[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], Scores]:
        """Sorted unique (term * N + row) keys with their counts, and the number of terms per row.

        Rows are read in batches, so the token strings of only one batch are alive at a time."""
        n = max(len(texts), 1)
        ids: dict[str, int] = {}  # word → term id, or -1 for a stopword
        keys: list[npt.NDArray[np.int64]] = []
        counts: list[npt.NDArray[np.int64]] = []
        lengths = np.zeros(len(texts), dtype=np.float64)
        for first in range(0, len(texts), _BATCH):
            words = [self.analyzer.words(t) for t in texts[first : first + _BATCH]]
            flat = list(chain.from_iterable(words))
            # Each new word is analysed once (new words in sorted order, so term ids are deterministic); every
            # token is then a dict lookup done in C.
            for word in sorted(set(flat).difference(ids)):
                term = self.analyzer.term(word)
                ids[word] = -1 if term is None else self._vocab.setdefault(term, len(self._vocab))
            term_ids = np.fromiter(map(ids.__getitem__, flat), dtype=np.int64, count=len(flat))
            row_ids = np.repeat(np.arange(first, first + len(words), dtype=np.int64), [len(w) for w in words])
            kept = term_ids >= 0
            lengths[first : first + len(words)] = np.bincount(row_ids[kept] - first, minlength=len(words))
            batch_keys, batch_counts = _unique_counts(term_ids[kept] * n + row_ids[kept])
            keys.append(batch_keys)
            counts.append(batch_counts)
        if not keys:
            return (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)), lengths
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        return (all_keys[order], np.concatenate(counts)[order]), lengths

    @property
    def vocabulary_size(self) -> int:
        """Number of distinct index terms."""
        return len(self._vocab)

    def scores(self, query: Sequence[str] | Mapping[str, float], mask: Mask) -> tuple[Rows, Scores]:
        """BM25F scores of the masked rows that match at least one query term: (row positions ascending, scores).

        `query` is a list of terms (repeats add up) or a {term: weight} map. N, the average field lengths and every
        document frequency are computed over the rows where `mask` is True, and nothing else is read."""
        weights: dict[str, float] = {}
        for term, w in query.items() if isinstance(query, Mapping) else ((t, 1.0) for t in query):
            weights[term] = weights.get(term, 0.0) + w
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        n = int(np.count_nonzero(mask))
        # Terms are visited in string order: accumulating in the same order for the same readable rows gives
        # bit-identical sums, whatever else the index holds.
        ids = [(self._vocab[t], w) for t, w in sorted(weights.items()) if t in self._vocab and w > 0]
        if n == 0 or not ids:
            return empty
        p = self.settings
        # Sums of integer lengths are exact, so the statistics do not depend on row order or on unread rows.
        avg_text = max(float(self._len_text[mask].sum()) / n, 1e-9)
        avg_title = max(float(self._len_title[mask].sum()) / n, 1e-9)
        acc = np.zeros(self.n_rows, dtype=np.float64)
        for tid, weight in ids:
            lo, hi = self._offsets[tid], self._offsets[tid + 1]
            rows = self._rows[lo:hi]
            keep = mask[rows]
            rows = rows[keep]
            if len(rows) == 0:
                continue
            tft = self._tf_text[lo:hi][keep].astype(np.float64)
            tfh = self._tf_title[lo:hi][keep].astype(np.float64)
            # An empty field has tf 0; the floor only keeps 0 / 0 (b = 1, length 0) from becoming NaN.
            norm_text = tft / np.maximum(1.0 - p.b + p.b * self._len_text[rows] / avg_text, 1e-9)
            norm_title = tfh / np.maximum(1.0 - p.title_b + p.title_b * self._len_title[rows] / avg_title, 1e-9)
            if p.combine == "bm25f":
                tf = norm_text + p.title_weight * norm_title
                acc[rows] += weight * _idf(n, len(rows)) * tf * (p.k1 + 1.0) / (p.k1 + tf)
            else:
                in_text, in_title = int(np.count_nonzero(tft)), int(np.count_nonzero(tfh))
                text_part = _idf(n, in_text) * norm_text * (p.k1 + 1.0) / (p.k1 + norm_text) if in_text else 0.0
                title_part = _idf(n, in_title) * norm_title * (p.k1 + 1.0) / (p.k1 + norm_title) if in_title else 0.0
                acc[rows] += weight * (text_part + p.title_weight * title_part)
        hit = np.flatnonzero(acc)
        return hit.astype(np.int64), acc[hit]

    def feedback_terms(self, rows: Rows, row_weights: Scores, mask: Mask, *, n_terms: int) -> dict[str, float]:
        """RM3's relevance model over feedback rows: P(w|R) ∝ Σ_d P(w|d)·weight(d), restricted to terms with a
        document frequency of at least two among the masked rows; the top `n_terms`, normalised to sum 1.

        `rows` must be masked rows (callers pass their top-ranked eligible results)."""
        if self._fwd is None:
            raise RuntimeError("build the LexicalIndex with forward=True to use relevance feedback")
        offsets, term_ids, tfs = self._fwd
        if len(rows) == 0 or n_terms <= 0:
            return {}
        parts = [term_ids[offsets[r] : offsets[r + 1]] for r in rows]
        dist = [tfs[offsets[r] : offsets[r + 1]] / max(float(tfs[offsets[r] : offsets[r + 1]].sum()), 1.0)
                for r in rows]  # fmt: skip
        w = row_weights / max(float(row_weights.sum()), 1e-12)
        all_terms = np.concatenate(parts).astype(np.int64)
        all_p = np.concatenate([d * wi for d, wi in zip(dist, w, strict=True)])
        order = np.argsort(all_terms, kind="stable")
        uniq, counts = _unique_counts(all_terms[order], presorted=True)
        mass = np.add.reduceat(all_p[order], np.concatenate(([0], np.cumsum(counts)[:-1])))
        # Rank candidates by mass (ties by the term itself) and keep those at least two readable rows hold.
        chosen: dict[str, float] = {}
        for j in sorted(range(len(uniq)), key=lambda j: (-mass[j], self._terms[uniq[j]])):
            tid = int(uniq[j])
            posting = self._rows[self._offsets[tid] : self._offsets[tid + 1]]
            if np.count_nonzero(mask[posting]) >= 2:
                chosen[self._terms[tid]] = float(mass[j])
                if len(chosen) == n_terms:
                    break
        total = sum(chosen.values())
        return {t: v / total for t, v in chosen.items()} if total > 0 else {}


def _idf(n: int, df: int) -> float:
    """Lucene's BM25 idf, always positive."""
    return math.log(1.0 + (n - df + 0.5) / (df + 0.5))


def _unique_counts(values: npt.NDArray[np.int64], *, presorted: bool = False) -> tuple[npt.NDArray[np.int64], Rows]:
    """Sorted distinct values and how often each occurs (by sorting: NumPy's hash-based `unique` is far slower
    on large integer arrays)."""
    x = values if presorted else np.sort(values)
    if len(x) == 0:
        return x, np.zeros(0, dtype=np.int64)
    first = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    return x[first], np.diff(np.append(first, len(x)))
