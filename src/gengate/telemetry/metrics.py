"""Prometheus metrics, in a registry owned by one app instance (no global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


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
        self.log_dropped = Counter("gengate_log_dropped", "Trace records that could not be written", registry=r)

    def render(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
