"""Prometheus metrics, in a registry owned by one app instance (no global registry)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Attempt(Protocol):
    """What counting needs of a routing attempt (`gengate.providers.routing.Attempt`)."""

    @property
    def ok(self) -> bool: ...

    @property
    def deployment(self) -> str: ...


class Metrics:
    """The gateway's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gengate_requests",
            "Requests by endpoint, model, team and status",
            ["endpoint", "model", "team", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gengate_request_latency_seconds", "End-to-end request latency", ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "gengate_time_to_first_token_seconds", "Time to first streamed token", ["model"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("gengate_tokens", "Tokens by model, team and kind", ["model", "team", "kind"], registry=r)
        self.cost = Counter("gengate_cost_usd", "Cost in USD by model and team", ["model", "team"], registry=r)
        self.upstream_errors = Counter(
            "gengate_upstream_errors", "Failed upstream attempts by deployment", ["deployment"], registry=r
        )
        self.limit_rejections = Counter(
            "gengate_limit_rejections", "Requests refused by policy", ["team", "reason"], registry=r
        )
        self.guard_findings = Counter(
            "gengate_guard_findings", "Guard findings by detector, stage and action", ["detector", "stage", "action"],
            registry=r,
        )  # fmt: skip
        self.log_dropped = Counter("gengate_log_dropped", "Trace records that could not be written", registry=r)
        self.log_reused_ids = Counter(
            "gengate_log_reused_request_ids",
            "Requests whose client-chosen x-request-id was already in the log (kept under a new id)",
            registry=r,
        )
        # Drift (refreshed by the gateway's drift task, see `gengate.outer.drift_service`).
        self.knowledge_changes = Gauge(
            "gengate_knowledge_changes_since_eval", "Document changes in an app's knowledge bases since its last "
            "evaluation run", ["app"], registry=r,
        )  # fmt: skip
        self.question_drift = Gauge(
            "gengate_question_drift_score", "Effect size (homogeneity coefficient H) of recent questions vs the "
            "app's evaluation dataset", ["app"], registry=r,
        )  # fmt: skip
        self.question_drifted = Gauge(
            "gengate_question_drift_drifted", "1 when recent questions drifted from the evaluation dataset", ["app"],
            registry=r,
        )  # fmt: skip
        self._children: dict[tuple[str, str, str, int], tuple[Any, ...]] = {}

    def observe(
        self, endpoint: str, model: str, team: str, status: int, latency_s: float, ttft_s: float | None,
        prompt_tokens: int, completion_tokens: int, cost_usd: float,
    ) -> None:  # fmt: skip
        """Account one finished request (label children are cached: `.labels()` is slow on the hot path)."""
        key = (endpoint, model, team, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, model, team, str(status)),
                self.latency.labels(endpoint, model),
                self.ttft.labels(model),
                self.tokens.labels(model, team, "prompt"),
                self.tokens.labels(model, team, "completion"),
                self.cost.labels(model, team),
            )
        requests, latency, ttft, prompt, completion, cost = children
        requests.inc()
        latency.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
        if cost_usd:
            cost.inc(cost_usd)

    def count_failed_attempts(self, attempts: Iterable[_Attempt]) -> None:
        """Count the failed ones among a route's upstream attempts in `gengate_upstream_errors` (by deployment)."""
        for attempt in attempts:
            if not attempt.ok:
                self.upstream_errors.labels(attempt.deployment).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
