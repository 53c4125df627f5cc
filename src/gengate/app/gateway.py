"""The Gateway: every long-lived component, built once from Settings and passed to the routes.

There is no module-level state: tests build as many gateways as they like, each with its own store.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

from gengate.apps.tools import ToolExecutor
from gengate.auth.jwt import JwtVerifier
from gengate.auth.keys import KeyAuthenticator
from gengate.errors import AuthenticationError, ConfigError
from gengate.guard.hash_key import data_dir_key
from gengate.guard.pipeline import Guard
from gengate.outer.drift_service import DriftMonitor
from gengate.outer.experiment_service import ExperimentService
from gengate.outer.feedback import FeedbackService
from gengate.outer.payloads import Redactor
from gengate.policy.counters import Counters, LocalCounters, RedisCounters
from gengate.policy.engine import PolicyEngine
from gengate.policy.pricing import PriceTable
from gengate.providers.base import Provider
from gengate.providers.local_llm import LocalLLMProvider
from gengate.providers.offline import OfflineProvider
from gengate.providers.openai_compat import OpenAICompatProvider
from gengate.providers.routing import Router
from gengate.rag.answer import ExtractiveAnswerer
from gengate.rag.embedder import Embedder
from gengate.rag.kb import KnowledgeBases
from gengate.settings import GuardSettings, Settings
from gengate.store.db import KeyRecord, Store, open_store
from gengate.store.experiments import ExperimentStore
from gengate.store.feedback import FeedbackStore
from gengate.store.knowledge import KnowledgeStore
from gengate.telemetry.metrics import Metrics
from gengate.telemetry.otel import OtelExporter
from gengate.telemetry.traces import TraceRecord, TraceWriter
from gengate.types import Principal

log = logging.getLogger("gengate")


def build_providers(settings: Settings) -> dict[str, Provider]:
    """One provider object per configured provider."""
    providers: dict[str, Provider] = {}
    for name, spec in settings.providers.items():
        if spec.type == "offline":
            providers[name] = OfflineProvider(name)
        elif spec.type == "local":
            providers[name] = LocalLLMProvider(name, spec)
        else:
            providers[name] = OpenAICompatProvider(name, spec)
    return providers


@dataclass
class Gateway:
    """Long-lived parts of one gateway process."""

    settings: Settings
    store: Store
    keys: KeyAuthenticator
    jwt: JwtVerifier
    policy: PolicyEngine
    router: Router
    providers: dict[str, Provider]
    counters: Counters
    prices: PriceTable
    metrics: Metrics
    traces: TraceWriter
    guard: Guard = field(default_factory=lambda: Guard(GuardSettings()))
    kbs: KnowledgeBases | None = None
    answerers: dict[str, ExtractiveAnswerer] = field(default_factory=dict)
    tool_executor: ToolExecutor | None = None
    otel: OtelExporter | None = None
    redactor: Redactor = field(default_factory=Redactor)
    drift: DriftMonitor | None = None  # refreshes the drift gauges in the background
    feedback: FeedbackService | None = None  # `POST /v1/feedback` and the hourly retention purge
    # A/B experiments on apps; served traffic only: the server's lifespan starts it, so an eval run's gateway
    # measures exactly the configuration it was given.
    experiments: ExperimentService | None = None
    started_at: float = field(default_factory=time.time)

    async def authenticate(
        self, authorization: str | None, api_key: str | None = None
    ) -> tuple[Principal, KeyRecord | None]:
        """The caller from `Authorization: Bearer …` (virtual key, admin key or JWT) or `api-key`."""
        token: str | None = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise AuthenticationError("Authorization header must be 'Bearer <key or token>'")
            token = value.strip()
        elif api_key:
            token = api_key.strip()
        if not token:
            raise AuthenticationError("missing credentials: send 'Authorization: Bearer <key>'")
        if token.startswith("sk-") or not self.jwt.enabled or not self.jwt.looks_like_jwt(token):
            return await self.keys.authenticate(token)
        principal = await self.jwt.verify(token)
        if any(role in self.settings.auth.admin_roles for role in principal.roles):
            principal = dataclasses.replace(principal, admin=True)
        return principal, None

    def record(self, trace: TraceRecord) -> None:
        """Account for a finished request: metrics, the batched log, OpenTelemetry."""
        self.metrics.observe(
            trace.endpoint, trace.model or "", trace.team or "", trace.status, trace.latency_ms / 1000,
            None if trace.ttft_ms is None else trace.ttft_ms / 1000,
            trace.prompt_tokens, trace.completion_tokens, trace.cost_usd,
        )  # fmt: skip
        if trace.status >= 500:
            log.warning(
                "request failed",
                extra={"request_id": trace.id, "status": trace.status, "error_code": trace.error_code,
                       "model": trace.model, "deployment": trace.deployment, "team": trace.team,
                       "attempts": trace.attempts},
            )  # fmt: skip
        for finding in trace.findings:
            self.metrics.guard_findings.labels(finding["detector"], finding["stage"], finding["action"]).inc()
        self.traces.submit(trace)
        if self.otel is not None:
            self.otel.export(trace)

    async def close(self) -> None:
        """Flush logs and release every connection and process."""
        if self.drift is not None:
            await self.drift.close()
        if self.feedback is not None:
            await self.feedback.close()
        if self.experiments is not None:
            await self.experiments.aclose()
        await self.traces.close()
        if self.tool_executor is not None:
            await self.tool_executor.aclose()
        for provider in self.providers.values():
            await provider.aclose()
        await self.jwt.aclose()
        await self.counters.aclose()
        if self.otel is not None:
            self.otel.close()
        await self.store.close()


async def open_gateway(settings: Settings) -> Gateway:
    """Open the store (migrating it) and build every component."""
    try:
        key = None if settings.guard.hash_key else data_dir_key(settings.storage.data_dir)
        guard = Guard(settings.guard, hash_key=key)
    except ValueError as exc:
        raise ConfigError(f"guard: {exc}") from None
    store = await open_store(settings.database_url)
    if store.dialect == "postgresql" and not settings.redis.url:
        log.warning(
            "storage is shared (PostgreSQL) but redis.url is not set: each gateway process enforces rate limits "
            "and budget reservations on its own; set redis.url to share them"
        )
    metrics = Metrics()
    counters: Counters = (
        RedisCounters(settings.redis.url, settings.redis.prefix) if settings.redis.url else LocalCounters()
    )
    providers = build_providers(settings)
    router = Router(
        settings.models, providers, settings.routing,
        default_timeout={n: p.timeout for n, p in settings.providers.items()},
    )  # fmt: skip
    traces = TraceWriter(
        store,
        metrics,
        batch_size=settings.storage.log_batch_size,
        flush_seconds=settings.storage.log_flush_seconds,
    )
    traces.start()
    prices = PriceTable(settings.pricing)
    embedder = Embedder(settings.rag.embeddings)
    kbs = KnowledgeBases(KnowledgeStore(store.engine), settings.rag, embedder)
    encoder = embedder if embedder.enabled else None
    answerers = {
        name: ExtractiveAnswerer(encoder if app.extractive_encoder else None, max_sentences=app.answer_sentences)
        for name, app in settings.apps.items()
    }
    tools = [tool for app in settings.apps.values() for tool in app.tools]
    gateway = Gateway(
        settings=settings,
        store=store,
        keys=KeyAuthenticator(
            store,
            admin_keys=[k.get_secret_value() for k in settings.auth.admin_keys],
            cache_seconds=settings.auth.key_cache_seconds,
        ),
        jwt=JwtVerifier(settings.auth.jwt_issuers),
        policy=PolicyEngine(settings.policy, counters, prices, store),
        router=router,
        providers=providers,
        counters=counters,
        prices=prices,
        metrics=metrics,
        traces=traces,
        otel=OtelExporter(settings.telemetry.otel) if settings.telemetry.otel.endpoint else None,
        guard=guard,
        kbs=kbs,
        answerers=answerers,
        tool_executor=ToolExecutor(tools) if tools else None,
        experiments=ExperimentService(settings, ExperimentStore(store.engine), answerers, encoder),
    )
    if settings.drift.enabled and settings.telemetry.metrics and settings.apps:
        # Started by the server's lifespan (like experiments): an eval run's gateway does no drift work.
        gateway.drift = DriftMonitor(store, settings, metrics, encoder.encode if encoder else None, gateway.redactor)
    gateway.feedback = FeedbackService(FeedbackStore(store.engine), settings, traces, counters, gateway.redactor)
    gateway.feedback.start()
    return gateway
