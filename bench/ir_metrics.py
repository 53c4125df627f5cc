"""Ranking metrics for retrieval evaluation: nDCG@k, recall@k and MRR@k over qrels.

Owns the metric maths only (pure functions over ranked id lists and relevance judgments), so the retrieval bench
and a later evaluation module compute the same figures. Must not: read files or know about any index.

Conventions follow BEIR/pytrec_eval: graded gains with the log2 discount (gain = relevance, not 2^rel − 1; SciFact
is binary, where both agree), recall = relevant retrieved in the top k / all relevant, and queries without any
relevant judgment are skipped by `mean_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Qrels = Mapping[str, Mapping[str, int]]  # query id → {doc id: relevance}


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 10) -> float:
    """Normalised discounted cumulative gain of the top `k` of `ranked` (0 when nothing is relevant)."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted((r for r in relevant.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top `k` (0 when nothing is relevant)."""
    wanted = {doc for doc, r in relevant.items() if r > 0}
    return len(wanted.intersection(ranked[:k])) / len(wanted) if wanted else 0.0


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
