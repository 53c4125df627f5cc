"""Ranking metrics for the retrieval bench: nDCG@k, recall@k and MRR@k over qrels.

The maths lives in `gengate.eval.metrics.retrieval` so the bench and the evaluation metrics compute the same
figures; this module keeps the names the bench scripts import.
"""

from __future__ import annotations

from gengate.eval.metrics.retrieval import Qrels, mean_metrics, mrr_at_k, ndcg_at_k, precision_at_k, recall_at_k

__all__ = ["Qrels", "mean_metrics", "mrr_at_k", "ndcg_at_k", "precision_at_k", "recall_at_k"]
