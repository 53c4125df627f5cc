"""Ranking metrics for retrieval: recall@k, precision@k, MRR@k and nDCG@k against judged relevant ids.

Owns the ranking maths (pure functions over ranked id lists and relevance judgments, shared with the retrieval
bench through `bench/ir_metrics.py`) and the metric objects that apply it to an eval case's `gold_ids` and a
trial's `retrieved_ids`. Must not: read files or know about any index.

Conventions follow BEIR/pytrec_eval: graded gains with the log2 discount (gain = relevance, not 2^rel − 1; for
binary judgments, such as `gold_ids`, both agree), recall = relevant retrieved in the top k / all relevant,
precision = relevant retrieved in the top k / k, and queries without any relevant judgment are skipped by
`mean_metrics` (and are not applicable to the metric objects).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gengate.eval.metrics.base import EvalCase, MetricKind, MetricResult, Observation

__all__ = [
    "MrrAtK",
    "NdcgAtK",
    "PrecisionAtK",
    "Qrels",
    "RecallAtK",
    "mean_metrics",
    "mrr_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "recall_at_k",
]

Qrels = Mapping[str, Mapping[str, int]]  # query id → {doc id: relevance}


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the top `k` of `ranked` (0 when nothing is relevant).

    A document ranked again (several chunks of one document) gains only at its first rank, so the value stays
    in [0, 1]."""
    seen: set[str] = set()
    dcg = 0.0
    for i, doc in enumerate(ranked[:k]):
        if doc not in seen:
            seen.add(doc)
            dcg += relevant.get(doc, 0) / math.log2(i + 2)
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top `k` (0 when nothing is relevant)."""
    wanted = {doc for doc, r in relevant.items() if r > 0}
    return len(wanted.intersection(ranked[:k])) / len(wanted) if wanted else 0.0


def precision_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Share of the top `k` slots holding a relevant document (a shorter ranking still divides by `k`)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return sum(1 for doc in dict.fromkeys(ranked[:k]) if relevant.get(doc, 0) > 0) / k


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant document in the top `k` (0 when none is there)."""
    for i, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def mean_metrics(runs: Mapping[str, Sequence[str]], qrels: Qrels) -> dict[str, float]:
    """nDCG@10, recall@100 and MRR@10 averaged over the judged queries that have a run (a judged query without
    a run counts as 0)."""
    judged = [q for q, rel in qrels.items() if any(r > 0 for r in rel.values())]
    if not judged:
        return {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    n = len(judged)
    return {
        "ndcg@10": sum(ndcg_at_k(runs.get(q, ()), qrels[q], 10) for q in judged) / n,
        "recall@100": sum(recall_at_k(runs.get(q, ()), qrels[q], 100) for q in judged) / n,
        "mrr@10": sum(mrr_at_k(runs.get(q, ()), qrels[q], 10) for q in judged) / n,
    }


# --- metric objects ------------------------------------------------------------------------------------------------

_Ranking = Callable[[Sequence[str], Mapping[str, int], int], float]


def _score_ranking(case: EvalCase, obs: Observation, k: int, fn: _Ranking) -> MetricResult:
    if not case.gold_ids:
        return MetricResult.not_applicable("no gold ids")
    relevant = dict.fromkeys(case.gold_ids, 1)
    if obs.error and not obs.retrieved_ids:
        return MetricResult(0.0, None, f"run failed: {obs.error}")
    found = [doc for doc in obs.retrieved_ids[:k] if doc in relevant]
    detail = f"{len(set(found))}/{len(relevant)} gold in top {k}"
    return MetricResult(fn(obs.retrieved_ids, relevant, k), None, detail)


def _check_k(k: object) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


@dataclass(frozen=True, slots=True)
class RecallAtK:
    """Share of the case's gold ids among the first `k` retrieved ids."""

    k: int = 10
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_k(self.k)

    @property
    def name(self) -> str:
        """`recall@k`."""
        return f"recall@{self.k}"

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """Recall of the gold ids in the top k."""
        return _score_ranking(case, obs, self.k, recall_at_k)


@dataclass(frozen=True, slots=True)
class PrecisionAtK:
    """Share of the first `k` retrieval slots holding a gold id."""

    k: int = 10
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_k(self.k)

    @property
    def name(self) -> str:
        """`precision@k`."""
        return f"precision@{self.k}"

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """Precision of the top k against the gold ids."""
        return _score_ranking(case, obs, self.k, precision_at_k)


@dataclass(frozen=True, slots=True)
class MrrAtK:
    """Reciprocal rank of the first gold id within the first `k` retrieved ids."""

    k: int = 10
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_k(self.k)

    @property
    def name(self) -> str:
        """`mrr@k`."""
        return f"mrr@{self.k}"

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """1/rank of the first gold id in the top k, 0 when none is there."""
        return _score_ranking(case, obs, self.k, mrr_at_k)


@dataclass(frozen=True, slots=True)
class NdcgAtK:
    """nDCG of the first `k` retrieved ids with binary gains from the gold ids."""

    k: int = 10
    version: str = field(default="1", init=False)
    kind: MetricKind = field(default="score", init=False)

    def __post_init__(self) -> None:
        _check_k(self.k)

    @property
    def name(self) -> str:
        """`ndcg@k`."""
        return f"ndcg@{self.k}"

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """Normalised discounted cumulative gain of the top k."""
        return _score_ranking(case, obs, self.k, ndcg_at_k)
