"""Evaluation metrics: the `Metric` protocol and its registry, plus the built-in deterministic, retrieval,
grounding and LLM-judge metrics (see `base` for the protocol and how to add your own)."""

from gengate.eval.metrics.base import (
    AnyMetric,
    AsyncMetric,
    EvalCase,
    GuardOutcome,
    Metric,
    MetricFactory,
    MetricKind,
    MetricRegistry,
    MetricResult,
    Observation,
    is_async_metric,
    options_factory,
    score_trial,
)

__all__ = [
    "AnyMetric",
    "AsyncMetric",
    "EvalCase",
    "GuardOutcome",
    "Metric",
    "MetricFactory",
    "MetricKind",
    "MetricRegistry",
    "MetricResult",
    "Observation",
    "is_async_metric",
    "options_factory",
    "score_trial",
]
