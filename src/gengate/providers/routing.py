"""Routing: model aliases → ordered deployments, retries with backoff, fallbacks, a circuit breaker.

Deployments are tried by `priority` (lowest first); within one priority tier the order is a weighted random
shuffle, so weights spread load. Each deployment gets `max_retries` retries with exponential backoff on
retryable faults (429, 5xx, timeouts, garbage), then the next deployment is tried. A fault that retrying cannot
cure (the deployment refuses gengate's credentials, the provider is not installed) moves on to the next
deployment at once; an upstream refusing the request itself (4xx) ends the call: another deployment would too.
A deployment that fails `breaker_failures` times in a row is skipped for `breaker_cooldown_seconds`, then
half-open: one call (and only one) is let through, and it decides. With every circuit open the call fails with
`ProviderUnavailable` without touching an upstream. Streams fall back too, but only before the first chunk has
been received (nothing has reached the client).

Owns: attempt order, retry timing, breaker state, the attempt log of each call. Must not: know about HTTP
requests, policy or budgets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gengate.errors import ProviderUnavailable, UnknownModel, UpstreamError, UpstreamRejected
from gengate.providers.base import Chunk, Provider, UpstreamCall
from gengate.settings import Deployment, ModelAlias, RoutingSettings

# `Attempt.error` markers that steer what is tried next (None: retry this deployment after a backoff).
_FATAL = "fatal"  # the upstream refused the request itself: stop, another deployment would refuse it too
_SKIP = "skip"  # retrying this deployment cannot help: go straight to the next one
MESSAGE_CHARS = 200  # an attempt's error summary is cut to this many characters


@dataclass
class Attempt:
    """One try at one deployment: how it ended, for routing (`error`, a marker) and for the trace (the rest)."""

    deployment: str
    ok: bool
    error: str | None = None
    code: str | None = None  # the error's code (`bad_gateway`, `upstream_timeout`, …)
    status: int | None = None  # the upstream's HTTP status, when it answered
    message: str | None = None  # a short summary, never what the upstream wrote
    latency_ms: float | None = None


@dataclass
class RouteLog:
    """What routing did for one call; read by telemetry."""

    attempts: list[Attempt] = field(default_factory=list)
    deployment: Deployment | None = None

    @property
    def fallbacks(self) -> int:
        """How many distinct deployments failed before the one that answered (or before giving up)."""
        failed = {a.deployment for a in self.attempts if not a.ok}
        if self.deployment is not None:
            # Retries that the answering deployment needed are not fallbacks.
            failed.discard(deployment_label(self.deployment))
        return len(failed)


@dataclass
class _Breaker:
    failures: int = 0
    open_until: float = 0.0
    # Opened since the last success: once the cooldown is over, the next call is the half-open probe.
    tripped: bool = False


def deployment_label(d: Deployment) -> str:
    """`provider/model`, the name used in logs and metrics."""
    return f"{d.provider}/{d.model}"


class Router:
    """Chooses deployments for an alias and runs calls with retries and fallbacks."""

    def __init__(
        self,
        models: Mapping[str, ModelAlias],
        providers: Mapping[str, Provider],
        settings: RoutingSettings,
        *,
        default_timeout: Mapping[str, float] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._models = dict(models)
        self._providers = dict(providers)
        self._settings = settings
        self._timeouts = dict(default_timeout or {})
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._breakers: dict[str, _Breaker] = {}
        self._tier_cache: dict[str, list[list[Deployment]]] = {}
        self._labels: dict[int, str] = {}

    @property
    def aliases(self) -> Mapping[str, ModelAlias]:
        """The configured aliases."""
        return self._models

    def alias(self, name: str) -> ModelAlias:
        """The alias, or UnknownModel."""
        spec = self._models.get(name)
        if spec is None:
            raise UnknownModel(f"the model {name!r} does not exist", param="model")
        return spec

    def _tiers(self, name: str) -> list[list[Deployment]]:
        tiers = self._tier_cache.get(name)
        if tiers is None:
            grouped: dict[int, list[Deployment]] = {}
            for dep in self.alias(name).deployments:
                grouped.setdefault(dep.priority, []).append(dep)
                self._labels[id(dep)] = deployment_label(dep)
            tiers = self._tier_cache[name] = [grouped[p] for p in sorted(grouped)]
        return tiers

    def plan(self, name: str) -> list[Deployment]:
        """The order in which deployments will be tried; deployments with an open circuit are left out."""
        ordered: list[Deployment] = []
        for tier in self._tiers(name):
            if len(tier) == 1:
                ordered.append(tier[0])
                continue
            pool = list(tier)
            while pool:
                pick = self._rng.choices(range(len(pool)), weights=[d.weight for d in pool])[0]
                ordered.append(pool.pop(pick))
        return [d for d in ordered if not self.circuit_open(d)]

    def _breaker(self, dep: Deployment) -> _Breaker:
        label = self._labels.get(id(dep)) or deployment_label(dep)
        breaker = self._breakers.get(label)
        if breaker is None:
            breaker = self._breakers[label] = _Breaker()
        return breaker

    def circuit_open(self, dep: Deployment) -> bool:
        """Whether the deployment is currently skipped."""
        return self._breaker(dep).open_until > self._clock()

    def _admit(self, dep: Deployment) -> bool:
        """Whether a call may go to the deployment now; a half-open one admits a single probe."""
        breaker = self._breaker(dep)
        now = self._clock()
        if breaker.open_until > now:
            return False
        if breaker.tripped:
            # This call is the probe; others skip the deployment until it succeeds (closing the circuit)
            # or fails (re-opening it). A probe that never finishes frees the slot after one more cooldown.
            breaker.open_until = now + self._settings.breaker_cooldown_seconds
        return True

    def _record(self, dep: Deployment, ok: bool) -> None:
        breaker = self._breaker(dep)
        if ok:
            breaker.failures = 0
            breaker.open_until = 0.0
            breaker.tripped = False
            return
        breaker.failures += 1
        # A failed half-open probe re-opens the circuit at once.
        if breaker.tripped or breaker.failures >= self._settings.breaker_failures:
            breaker.open_until = self._clock() + self._settings.breaker_cooldown_seconds
            breaker.failures = 0
            breaker.tripped = True

    def _call(self, dep: Deployment, payload: dict[str, Any], request_id: str) -> tuple[Provider, UpstreamCall]:
        provider = self._providers[dep.provider]
        timeout = dep.timeout or self._timeouts.get(dep.provider, 60.0)
        return provider, UpstreamCall({**payload, "model": dep.model}, dep.model, timeout, request_id)

    def _backoff(self, attempt: int) -> float:
        base = self._settings.backoff_seconds * (2**attempt)
        return float(min(self._settings.backoff_max_seconds, base) * (0.5 + self._rng.random() / 2))

    async def _attempts(self, name: str, log: RouteLog) -> AsyncIterator[Deployment]:
        """Yield deployments to try (with retries), sleeping between retries of the same one."""
        for dep in self.plan(name):
            retries = dep.max_retries if dep.max_retries is not None else self._settings.max_retries
            for attempt in range(retries + 1):
                if attempt:
                    await self._sleep(self._backoff(attempt - 1))
                # Checked before every try: the circuit may have opened (or a probe started) since `plan`.
                if not self._admit(dep):
                    break
                yield dep
                last = log.attempts[-1] if log.attempts else None
                if last is None or last.ok or last.error == _FATAL:
                    return
                if last.error == _SKIP:
                    break

    @staticmethod
    def _final_error(errors: list[UpstreamError], name: str) -> UpstreamError:
        if not errors:
            return ProviderUnavailable(f"no deployment of {name!r} is available", retryable=False)
        return errors[-1]

    async def run(
        self, name: str, payload: dict[str, Any], request_id: str, operation: str, log: RouteLog
    ) -> dict[str, Any]:
        """A non-streaming call (`complete` or `embed`) with retries and fallbacks."""
        errors: list[UpstreamError] = []
        async for dep in self._attempts(name, log):
            provider, call = self._call(dep, payload, request_id)
            started = time.perf_counter()
            try:
                body: dict[str, Any] = await (
                    provider.complete(call) if operation == "complete" else provider.embed(call)
                )
            except UpstreamError as exc:
                errors.append(exc)
                self._record(dep, ok=_healthy_despite(exc))
                log.attempts.append(_failed_attempt(dep, exc, started))
                continue
            self._record(dep, ok=True)
            log.attempts.append(Attempt(deployment_label(dep), True, latency_ms=_since(started)))
            log.deployment = dep
            return body
        raise self._final_error(errors, name)

    async def open_stream(
        self, name: str, payload: dict[str, Any], request_id: str, log: RouteLog
    ) -> tuple[Chunk, AsyncIterator[Chunk]]:
        """Start a stream, falling back until a first chunk arrives; return it and the rest of the stream."""
        errors: list[UpstreamError] = []
        async for dep in self._attempts(name, log):
            provider, call = self._call(dep, payload, request_id)
            started = time.perf_counter()
            stream = provider.stream(call)
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                exc: UpstreamError = UpstreamError(f"upstream {dep.provider} closed the stream without data")
            except UpstreamError as err:
                exc = err
            else:
                self._record(dep, ok=True)
                log.attempts.append(Attempt(deployment_label(dep), True, latency_ms=_since(started)))
                log.deployment = dep
                return first, stream
            await _aclose(stream)
            errors.append(exc)
            self._record(dep, ok=_healthy_despite(exc))
            log.attempts.append(_failed_attempt(dep, exc, started))
        raise self._final_error(errors, name)

    def report_stream_failure(self, dep: Deployment) -> None:
        """A stream that broke after its first chunk still counts against the deployment's breaker."""
        self._record(dep, ok=False)


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _failed_attempt(dep: Deployment, exc: UpstreamError, started: float) -> Attempt:
    """The log entry of a failure, marked with what should be tried next."""
    if isinstance(exc, UpstreamRejected) and not exc.retryable:
        marker: str | None = _FATAL
    else:
        marker = None if exc.retryable else _SKIP
    return Attempt(
        deployment_label(dep), False, marker, code=exc.code or exc.type, status=exc.upstream_status,
        message=exc.summary[:MESSAGE_CHARS], latency_ms=_since(started),
    )  # fmt: skip


def _healthy_despite(exc: UpstreamError) -> bool:
    """A deployment that refused a bad request is working; anything else counts against its breaker."""
    return isinstance(exc, UpstreamRejected) and not exc.retryable


async def _aclose(stream: AsyncIterator[Chunk]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()
