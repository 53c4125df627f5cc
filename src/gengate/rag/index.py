"""The permission-aware in-memory hybrid index: BM25F + dense vectors (+ optional per-sentence vectors), fused.

Owns `RetrievalSettings` (every retrieval knob, defaulting to the configuration measured best on SciFact train
queries; see bench/retrieval_eval.py), `PartVectors` (extra vectors per row, e.g. one per sentence) and
`MemoryIndex`, which answers `search(query, query_vec, allowed, ...)`.

Deny by default. A row is eligible for a search only when its access tokens meet the caller's `allowed` tokens and
its metadata equals every `where` pair. Eligibility is decided first, as a boolean mask over the rows; ineligible
rows are never scored and never enter a candidate list, a fusion normalisation, relevance feedback or a corpus
statistic. So a search returns exactly what the same search returns on an index built only from the eligible
rows: same hits, same scores (tests/test_rag_index.py checks this bit for bit).

Rows are stored grouped by access list, so the rows a caller may read are a few contiguous runs: dense scoring then
runs over views of the embedding matrix, without copying it and without touching other rows.

Must not: do I/O, encode text (callers pass query vectors), or hold module-level state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from gengate.rag.lexical import Bm25Settings, LexicalIndex
from gengate.rag.types import Hit, IndexRow

__all__ = ["MemoryIndex", "PartVectors", "RetrievalSettings"]

Mode = Literal["hybrid", "lexical", "dense"]
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_MAX_RUNS = 512  # beyond this many runs of eligible rows, gathering them in blocks is cheaper than per-run products
_BLOCK = 8192


class RetrievalSettings(BaseModel):
    """Retrieval knobs. Defaults are the best configuration measured on SciFact's train queries: BM25F with the
    title weighted 2, z-score fusion of BM25F 0.5 + document vector 0.4 + best sentence (part) vector 0.5 over the
    top 200 of each retriever, no query expansion (RM3 and Rocchio did not help there)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "hybrid"
    lexical: Bm25Settings = Bm25Settings()
    fusion: Literal["linear", "rrf"] = "linear"
    # linear fusion: each signal normalised over the candidate set (z-score or min-max), then weighted
    normalise: Literal["zscore", "minmax"] = "zscore"
    lexical_weight: float = Field(0.5, ge=0)
    dense_weight: float = Field(0.4, ge=0)
    part_weight: float = Field(0.5, ge=0, description="weight of the best part (sentence) similarity, if any")
    rrf_k: int = Field(60, ge=1)
    candidates: int = Field(200, ge=1, le=10_000, description="top rows taken from each retriever before fusion")
    # RM3 pseudo-relevance feedback on the lexical side (0 docs = off)
    prf_docs: int = Field(0, ge=0, le=100)
    prf_terms: int = Field(10, ge=1, le=200)
    prf_query_weight: float = Field(0.5, ge=0, le=1, description="share of the original query in the RM3 query")
    # Rocchio on the query vector from the top fused rows (0 docs = off)
    dense_prf_docs: int = Field(0, ge=0, le=100)
    dense_prf_weight: float = Field(0.5, ge=0, le=10)


@dataclass(frozen=True, slots=True)
class PartVectors:
    """Extra unit vectors attached to rows (e.g. one per sentence): `rows[j]` is the position, in the row
    sequence given to `MemoryIndex`, of the row that `vectors[j]` belongs to. A row's part score is the best
    similarity of the query to any of its parts."""

    rows: npt.NDArray[np.integer]
    vectors: F32


class MemoryIndex:
    """An immutable hybrid index over `IndexRow`s with access-aware search.

    `embeddings` holds one vector per row, in the order of `rows` (None: take `IndexRow.embedding` when every row
    has one, else the index is lexical only). `parts` optionally adds vectors per row (e.g. one per sentence and
    the title), used as a third fusion signal. A row's title field is its title plus `metadata["heading"]`.
    """

    def __init__(
        self,
        rows: Sequence[IndexRow],
        embeddings: np.ndarray | None = None,
        *,
        settings: RetrievalSettings | None = None,
        parts: PartVectors | None = None,
    ) -> None:
        self._settings = settings or RetrievalSettings()
        n = len(rows)
        if embeddings is None and n and all(r.embedding is not None for r in rows):
            embeddings = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in rows])
        if embeddings is not None and (embeddings.ndim != 2 or embeddings.shape[0] != n):
            raise ValueError(f"embeddings must have shape ({n}, dim), got {embeddings.shape}")
        # Group rows by access list (sorted, so every index orders its groups the same way).
        keys = [tuple(sorted(r.access)) for r in rows]
        distinct = sorted(set(keys))
        group_id = {key: g for g, key in enumerate(distinct)}
        groups = np.fromiter((group_id[k] for k in keys), dtype=np.int64, count=n)
        order = np.argsort(groups, kind="stable")
        self._order = order  # internal position → position in the rows given (also the tie-break)
        self._rows = [rows[int(i)] for i in order]
        self._group = groups[order]
        self._token_groups: dict[str, list[int]] = {}
        for g, tokens in enumerate(distinct):
            for token in tokens:
                self._token_groups.setdefault(token, []).append(g)
        self._n_groups = len(distinct)
        self._chunk_ids = [r.chunk_id for r in self._rows]
        self._metadata: dict[str, tuple[dict[str, int], npt.NDArray[np.int32]]] = {}
        for name in sorted({k for r in self._rows for k in r.metadata}):
            values: dict[str, int] = {}
            codes = np.fromiter(
                (values.setdefault(r.metadata[name], len(values)) if name in r.metadata else -1 for r in self._rows),
                dtype=np.int32,
                count=n,
            )
            self._metadata[name] = (values, codes)
        s = self._settings
        self._lexical = LexicalIndex(
            [r.text for r in self._rows],
            [f"{r.title} {r.metadata.get('heading', '')}".strip() for r in self._rows],
            settings=s.lexical,
            forward=s.prf_docs > 0,
        )
        self._vectors: _Quantized | None = None
        self._parts: tuple[I64, _Quantized] | None = None
        if embeddings is not None:
            self._vectors = _Quantized.of(np.asarray(embeddings, dtype=np.float32)[order])
        self._parts = None if parts is None else self._attach_parts(parts, order)

    def _attach_parts(self, parts: PartVectors, order: I64) -> tuple[I64, _Quantized]:
        """Part vectors sorted by their row's internal position, with per-row offsets (CSR)."""
        n = len(order)
        owners = np.asarray(parts.rows, dtype=np.int64)
        if self._vectors is None or parts.vectors.shape[1:] != (self._vectors.dim,):
            raise ValueError("part vectors need row embeddings of the same dimension")
        if len(owners) != len(parts.vectors) or (len(owners) and (owners.min() < 0 or owners.max() >= n)):
            raise ValueError("part rows must name one row position (0..len(rows) - 1) per part vector")
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        owner = position[owners]
        by_owner = np.argsort(owner, kind="stable")
        offsets = np.searchsorted(owner[by_owner], np.arange(n + 1)).astype(np.int64)
        return offsets, _Quantized.of(np.asarray(parts.vectors, dtype=np.float32)[by_owner])

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def settings(self) -> RetrievalSettings:
        """The settings the index was built with (fixed: build another index to change them)."""
        return self._settings

    @property
    def has_vectors(self) -> bool:
        """True when the index holds row embeddings (dense and hybrid search possible)."""
        return self._vectors is not None

    # --- eligibility ----------------------------------------------------------------------------------------

    def _eligible(self, allowed: frozenset[str], where: Mapping[str, str] | None = None) -> npt.NDArray[np.bool_]:
        """The mask of rows (internal order) the caller may see: access meets `allowed`, metadata meets `where`."""
        ok = np.zeros(self._n_groups, dtype=bool)
        for token in allowed:
            ok[self._token_groups.get(token, [])] = True
        mask = ok[self._group]
        for key, value in (where or {}).items():
            values, codes = self._metadata.get(key, ({}, None))
            code = values.get(value)
            if codes is None or code is None:
                return np.zeros(len(self._rows), dtype=bool)
            mask &= codes == code
        return mask

    # --- search ---------------------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        query_vec: np.ndarray | None,
        allowed: frozenset[str],
        *,
        k: int = 10,
        mode: Mode | None = None,
        where: Mapping[str, str] | None = None,
    ) -> list[Hit]:
        """The best `k` eligible rows for the query, best first. Hybrid falls back to lexical without vectors;
        dense without vectors is an error."""
        mode = mode or self._settings.mode
        q = self._query_vector(query_vec)
        if mode == "dense" and q is None:
            raise ValueError("dense search needs row embeddings and a query vector")
        if k <= 0 or not allowed or not self._rows:
            return []
        mask = self._eligible(allowed, where)
        positions = np.flatnonzero(mask)
        if len(positions) == 0:
            return []
        if mode == "lexical" or (mode == "hybrid" and q is None):
            lex_rows, lex_scores = self._lexical_scores(query, mask)
            top = _top(lex_scores, self._order[lex_rows], k)
            return [
                Hit(self._chunk_ids[lex_rows[i]], float(lex_scores[i]), lexical_rank=r + 1) for r, i in enumerate(top)
            ]
        assert q is not None
        dense_scores = self._dense_scores(q, positions)
        if mode == "dense":
            top = _top(dense_scores, self._order[positions], k)
            return [
                Hit(self._chunk_ids[positions[i]], float(dense_scores[i]), dense_rank=r + 1) for r, i in enumerate(top)
            ]
        return self._hybrid(query, q, mask, positions, dense_scores, k)

    def _query_vector(self, query_vec: np.ndarray | None) -> F32 | None:
        if query_vec is None or self._vectors is None:
            return None
        q = np.asarray(query_vec, dtype=np.float32).reshape(-1)
        if q.shape[0] != self._vectors.dim:
            raise ValueError(f"query vector has dimension {q.shape[0]}, the index {self._vectors.dim}")
        return q

    def _lexical_scores(self, query: str, mask: npt.NDArray[np.bool_]) -> tuple[I64, F64]:
        """BM25F over eligible rows, with RM3 feedback from the top eligible rows when configured."""
        s = self._settings
        terms = self._lexical.analyzer.terms(query)
        rows, scores = self._lexical.scores(terms, mask)
        if s.prf_docs == 0 or len(rows) == 0:
            return rows, scores
        top = _top(scores, self._order[rows], s.prf_docs)
        expansion = self._lexical.feedback_terms(rows[top], scores[top], mask, n_terms=s.prf_terms)
        weights: dict[str, float] = {}
        for t in terms:
            weights[t] = weights.get(t, 0.0) + s.prf_query_weight / len(terms)
        for t, w in expansion.items():
            weights[t] = weights.get(t, 0.0) + (1.0 - s.prf_query_weight) * w
        return self._lexical.scores(weights, mask)

    def _dense_scores(self, q: F32, positions: I64) -> F64:
        """Similarity of `q` to the rows at `positions` (ascending), computed on those rows only."""
        vectors = self._vectors
        assert vectors is not None
        qi, q_scale = vectors.query(q)
        if len(positions) == len(vectors.ints):
            raw = vectors.ints @ qi
        else:
            breaks = np.flatnonzero(np.diff(positions) != 1) + 1
            if len(breaks) < _MAX_RUNS:  # a few runs of contiguous rows: products over views, nothing copied
                starts = np.concatenate(([0], breaks))
                ends = np.concatenate((breaks, [len(positions)]))
                spans = zip(positions[starts], positions[ends - 1] + 1, strict=True)
                raw = np.concatenate([vectors.ints[a:b] @ qi for a, b in spans])
            else:
                blocks = range(0, len(positions), _BLOCK)
                raw = np.concatenate([vectors.ints[positions[b : b + _BLOCK]] @ qi for b in blocks])
        return vectors.rescale(raw, positions, q_scale)

    def _part_scores(self, q: F32, rows: I64, fallback: F64) -> F64:
        """Best part similarity for each of `rows` (internal positions); rows without parts get `fallback`."""
        assert self._parts is not None
        offsets, parts = self._parts
        lengths = offsets[rows + 1] - offsets[rows]
        out = fallback.copy()
        has = lengths > 0
        if not has.any():
            return out
        lens = lengths[has]
        first = np.concatenate(([0], np.cumsum(lens)[:-1]))
        index = np.repeat(offsets[rows[has]] - first, lens) + np.arange(int(lens.sum()))
        qi, q_scale = parts.query(q)
        sims = parts.rescale(parts.ints[index] @ qi, index, q_scale)
        out[has] = np.maximum.reduceat(sims, first)
        return out

    def _hybrid(
        self, query: str, q: F32, mask: npt.NDArray[np.bool_], positions: I64, dense_scores: F64, k: int
    ) -> list[Hit]:
        s = self._settings
        lex_rows, lex_scores = self._lexical_scores(query, mask)
        fused, cand, lex_rank, dense_rank = self._fuse(q, positions, dense_scores, lex_rows, lex_scores, k)
        if s.dense_prf_docs > 0 and len(cand):
            top = cand[_top(fused, self._order[cand], s.dense_prf_docs)]
            assert self._vectors is not None
            centroid = self._vectors.dequantize(top).mean(axis=0)
            q2 = (q + s.dense_prf_weight * centroid).astype(np.float32)
            q2 /= max(float(np.linalg.norm(q2)), 1e-12)
            dense_scores = self._dense_scores(q2, positions)
            fused, cand, lex_rank, dense_rank = self._fuse(q, positions, dense_scores, lex_rows, lex_scores, k)
        best = _top(fused, self._order[cand], k)
        return [
            Hit(self._chunk_ids[cand[i]], float(fused[i]), lexical_rank=lex_rank[i], dense_rank=dense_rank[i])
            for i in best
        ]

    def _fuse(
        self, q: F32, positions: I64, dense_scores: F64, lex_rows: I64, lex_scores: F64, k: int
    ) -> tuple[F64, I64, list[int | None], list[int | None]]:
        """Fused scores over the union of both candidate lists, returned in ascending row position order, with
        each candidate's 1-based rank in each retriever's candidate list (None when outside it)."""
        s = self._settings
        depth = max(s.candidates, k)
        lex_top = lex_rows[_top(lex_scores, self._order[lex_rows], depth)]
        dense_top = positions[_top(dense_scores, self._order[positions], depth)]
        cand = np.sort(np.concatenate((lex_top, dense_top)))
        cand = cand[np.concatenate(([True], cand[1:] != cand[:-1]))] if len(cand) else cand
        lex_rank_of = {int(r): i + 1 for i, r in enumerate(lex_top)}
        dense_rank_of = {int(r): i + 1 for i, r in enumerate(dense_top)}
        lex_rank = [lex_rank_of.get(int(r)) for r in cand]
        dense_rank = [dense_rank_of.get(int(r)) for r in cand]
        if s.fusion == "rrf":
            fused = np.zeros(len(cand), dtype=np.float64)
            for weight, ranks in ((s.lexical_weight, lex_rank), (s.dense_weight, dense_rank)):
                fused += weight * np.array([1.0 / (s.rrf_k + r) if r else 0.0 for r in ranks])
            return fused, cand, lex_rank, dense_rank
        # Exact scores of every candidate from both retrievers (a row that matches no query term scores 0).
        lex = np.zeros(len(cand), dtype=np.float64)
        if len(lex_rows):
            at = np.minimum(np.searchsorted(lex_rows, cand), len(lex_rows) - 1)
            found = lex_rows[at] == cand
            lex[found] = lex_scores[at[found]]
        dense = dense_scores[np.searchsorted(positions, cand)]
        norm = _zscore if s.normalise == "zscore" else _minmax
        fused = s.lexical_weight * norm(lex) + s.dense_weight * norm(dense)
        if s.part_weight > 0 and self._parts is not None:
            fused += s.part_weight * norm(self._part_scores(q, cand, dense))
        return fused, cand, lex_rank, dense_rank


@dataclass(frozen=True, slots=True)
class _Quantized:
    """Vectors stored as small integers (one scale per row) so that dot products are exact.

    A float32 dot product depends on the order BLAS adds its terms in, which depends on how many rows are
    multiplied together: the same row could score differently in a search over all rows and over a subset. Here row
    components are integers in [-127, 127] and query components integers in [-levels, levels], with
    127 · levels · dim < 2**24, so every partial sum is an exactly representable integer whatever the order; the
    per-row and per-query scales are applied afterwards, row by row. Products still run through float32 BLAS at
    full speed, and 8 bits per component cost no measurable retrieval quality (bench/retrieval_eval.py).
    """

    ints: F32  # [n, dim] integer values in [-127, 127]
    scale: F64  # [n] per-row factor back to the original units
    levels: int  # query components are rounded to integers in [-levels, levels]

    @property
    def dim(self) -> int:
        return int(self.ints.shape[1])

    @classmethod
    def of(cls, vectors: F32) -> _Quantized:
        top = np.abs(vectors).max(axis=1) if len(vectors) else np.zeros(0, dtype=np.float32)
        top = np.where(top > 0, top, np.float32(1.0)).astype(np.float32)
        ints = np.ascontiguousarray(np.rint(vectors / top[:, None] * np.float32(127)), dtype=np.float32)
        levels = min(255, (2**24 - 1) // (127 * max(vectors.shape[1], 1)))
        if levels < 1:
            raise ValueError(f"vectors of dimension {vectors.shape[1]} are too long for exact scoring")
        return cls(ints, top.astype(np.float64) / 127.0, levels)

    def query(self, q: F32) -> tuple[F32, float]:
        top = float(np.abs(q).max()) or 1.0
        return np.rint(q / np.float32(top) * np.float32(self.levels)).astype(np.float32), top / self.levels

    def rescale(self, raw: F32, rows: I64, q_scale: float) -> F64:
        return raw.astype(np.float64) * self.scale[rows] * q_scale  # type: ignore[no-any-return]

    def dequantize(self, rows: I64) -> F32:
        return (self.ints[rows] * self.scale[rows, None]).astype(np.float32)  # type: ignore[no-any-return]


def _minmax(x: F64) -> F64:
    """Scale to [0, 1] over the candidates; a constant signal contributes nothing."""
    if len(x) == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _zscore(x: F64) -> F64:
    """Centre on the candidates' mean and scale by their standard deviation; a constant signal contributes
    nothing."""
    if len(x) == 0:
        return x
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def _top(scores: F64, tiebreak: I64, k: int) -> I64:
    """Indices of the `k` best scores, best first; equal scores in ascending `tiebreak` order."""
    if len(scores) == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        idx = np.flatnonzero(scores >= kth)
    else:
        idx = np.arange(len(scores))
    best = idx[np.lexsort((tiebreak[idx], -scores[idx]))]
    return best[:k].astype(np.int64)
