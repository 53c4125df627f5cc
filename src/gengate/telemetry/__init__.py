"""Observability: trace records (batched to the store), Prometheus metrics, JSON logs, OpenTelemetry."""
