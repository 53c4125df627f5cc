"""Optional OpenTelemetry export of one span per model call, using the GenAI semantic conventions.

Needs the `otel` extra; without it, or with no endpoint configured, nothing is exported.
"""

from __future__ import annotations

from typing import Any

from gengate.errors import ConfigError
from gengate.settings import OtelSettings
from gengate.telemetry.traces import TraceRecord


class OtelExporter:
    """Turns trace records into spans (`gen_ai.*` attributes) sent over OTLP/HTTP."""

    def __init__(self, settings: OtelSettings) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise ConfigError(
                "telemetry.otel.endpoint is set but OpenTelemetry is not installed: pip install 'gengate[otel]'"
            ) from None
        self._provider: Any = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
        self._tracer = self._provider.get_tracer("gengate")

    def export(self, record: TraceRecord) -> None:
        """Record one finished call as a span."""
        operation = "embeddings" if record.endpoint == "embeddings" else "chat"
        start = int(record.ts * 1e9)
        span = self._tracer.start_span(f"{operation} {record.model or ''}".strip(), start_time=start)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": record.model or "",
            "gen_ai.response.model": (record.deployment or "").split("/", 1)[-1],
            "gen_ai.provider.name": (record.deployment or "").split("/", 1)[0],
            "gen_ai.usage.input_tokens": record.prompt_tokens,
            "gen_ai.usage.output_tokens": record.completion_tokens,
            "http.response.status_code": record.status,
            "gengate.request_id": record.id,
            "gengate.team": record.team or "",
            "gengate.cost_usd": record.cost_usd,
            "gengate.attempts": record.attempts,
        }
        if record.error_code:
            attributes["error.type"] = record.error_code
        span.set_attributes(attributes)
        span.end(end_time=start + int(record.latency_ms * 1e6))

    def close(self) -> None:
        """Flush and stop."""
        self._provider.shutdown()
