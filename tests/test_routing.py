"""Routing, end to end and on the Router itself: retries with backoff, fallbacks, weights, timeouts, garbage,
refused connections, the circuit breaker, streams, Azure by configuration, upstream URLs that only come from
configuration, and the trace record of each call.

HTTP behaviour goes through a real gateway and the openai SDK; timing and breaker state are tested on `Router`
with real providers against the fake upstream, an injected clock and a `sleep` that only records.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from conftest import RunningGateway, free_port
from fake_upstream import FakeUpstream, Step
from gengate.errors import ProviderUnavailable, UpstreamError
from gengate.providers.base import Provider
from gengate.providers.openai_compat import OpenAICompatProvider
from gengate.providers.routing import RouteLog, Router
from gengate.settings import Deployment, ModelAlias, ProviderSettings, RoutingSettings

MakeGateway = Callable[..., RunningGateway]
Sdk = Callable[..., openai.OpenAI]
HI = [{"role": "user", "content": "hi"}]


# --- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture
def backup() -> Iterator[FakeUpstream]:
    """A second fake provider, for fallbacks (and as a decoy that must receive nothing)."""
    fake = FakeUpstream().start()
    fake.default = Step(content="from the backup")
    yield fake
    fake.stop()


def provider(url: str, **fields: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "api_key": "upstream-secret", "timeout": 5, **fields}


def alias(*deployments: dict[str, Any]) -> dict[str, Any]:
    """An override replacing the deployments of `gpt-test`."""
    return {"models": {"gpt-test": {"deployments": list(deployments)}}}


def with_backup(backup: FakeUpstream, *, routing: dict[str, Any] | None = None, **primary: Any) -> dict[str, Any]:
    """`gpt-test` → fake/fake-model (priority 0), then backup/backup-model (priority 1)."""
    return {
        "providers": {"backup": provider(backup.base_url)},
        **alias(
            {"provider": "fake", "model": "fake-model", **primary},
            {"provider": "backup", "model": "backup-model", "priority": 1},
        ),
        "routing": routing or {},
        "pricing": {"backup-model": {"input": 1.0, "output": 2.0}},
    }


def trace_of(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    """The trace record of a request, once the batched writer has flushed it."""
    deadline = time.monotonic() + 5
    with gw.admin() as admin:
        while True:
            resp = admin.get("/admin/requests", params={"limit": 100})
            assert resp.status_code == 200, resp.text
            for row in resp.json()["data"]:
                if row["id"] == request_id:
                    return dict(row)
            assert time.monotonic() < deadline, f"no trace record for {request_id}"
            time.sleep(0.05)


def failing_call(client: openai.OpenAI, **fields: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-test", messages=HI, **fields)
    return caught.value


# --- retries, rejections, fallbacks (through the gateway) ---------------------------------------------------


@pytest.mark.parametrize(
    "statuses",
    [[429], [500], [503], [502, 504], [429, 500, 503]],
    ids=["429", "500", "503", "502-504", "429-500-503"],
)
def test_retries_retryable_statuses_then_answers_from_same_deployment(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk, statuses: list[int]
) -> None:
    gw = make_gateway({"routing": {"max_retries": 3}})
    upstream.queue("fake-model", *(Step(status=s) for s in statuses), Step(content="finally"))
    raw = sdk(gw, gw.create_key()).chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
    assert raw.parse().choices[0].message.content == "finally"
    assert upstream.calls_for("fake-model") == len(statuses) + 1
    trace = trace_of(gw, raw.headers["x-request-id"])
    assert (trace["status"], trace["attempts"], trace["fallbacks"]) == (200, len(statuses) + 1, 0)
    assert trace["deployment"] == "fake/fake-model"


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (413, openai.APIStatusError),
        (422, openai.UnprocessableEntityError),
    ],
)
def test_rejected_request_is_not_retried_and_upstream_error_passes_back(
    make_gateway: MakeGateway,
    upstream: FakeUpstream,
    backup: FakeUpstream,
    sdk: Sdk,
    status: int,
    error_class: type[openai.APIStatusError],
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 3}))
    upstream.queue("fake-model", Step(status=status, error_message="maximum context length is 8192 tokens"))
    key = gw.create_key()

    err = failing_call(sdk(gw, key))

    assert type(err) is error_class
    assert err.status_code == status
    with httpx.Client() as plain:  # the exact wire shape, as OpenAI's own errors have it
        upstream.queue("fake-model", Step(status=status, error_message="maximum context length is 8192 tokens"))
        resp = plain.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "gpt-test", "messages": HI},
            headers={"authorization": f"Bearer {key}"},
        )
    assert resp.status_code == status
    assert resp.json() == {
        "error": {
            "message": "maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "param": None,
            "code": "fake_error",
        }
    }
    assert upstream.calls_for("fake-model") == 2  # one per request: never retried
    assert backup.requests == []  # and never sent elsewhere: another deployment would refuse it too


def test_upstream_rate_limit_that_outlasts_retries_reaches_client_as_429(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway({"routing": {"max_retries": 2}})
    upstream.queue("fake-model", *[Step(status=429, error_message="slow down")] * 3)

    err = failing_call(sdk(gw, gw.create_key()))

    assert isinstance(err, openai.RateLimitError)
    assert err.message.endswith("slow down")
    assert upstream.calls_for("fake-model") == 3


def test_falls_back_to_next_priority_after_retries_are_exhausted(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 1}))
    upstream.queue("fake-model", Step(status=500), Step(status=503))

    raw = sdk(gw, gw.create_key()).chat.completions.with_raw_response.create(model="gpt-test", messages=HI)

    assert raw.parse().choices[0].message.content == "from the backup"
    assert upstream.calls_for("fake-model") == 2
    assert backup.calls_for("backup-model") == 1
    trace = trace_of(gw, raw.headers["x-request-id"])
    assert trace["id"] == raw.headers["x-request-id"]
    assert (trace["status"], trace["attempts"], trace["fallbacks"]) == (200, 3, 1)
    assert trace["deployment"] == "backup/backup-model"
    assert (trace["prompt_tokens"], trace["completion_tokens"]) == (10, 5)


def test_trace_of_failed_call_counts_every_attempt(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 1}))
    upstream.queue("fake-model", Step(status=500), Step(status=500))
    backup.queue("backup-model", Step(status=502), Step(status=503))

    err = failing_call(sdk(gw, gw.create_key()))

    assert err.status_code == 502
    trace = trace_of(gw, err.response.headers["x-request-id"])
    assert (trace["status"], trace["error_code"], trace["attempts"], trace["fallbacks"]) == (502, "bad_gateway", 4, 2)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_gateway_credentials_falls_back_without_leaking_its_message(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk, status: int
) -> None:
    leaky = "Incorrect API key provided: sk-proj-****Xq9z"
    gw = make_gateway(with_backup(backup, routing={"max_retries": 2}))
    upstream.queue("fake-model", Step(status=status, error_message=leaky))
    client = sdk(gw, gw.create_key())

    resp = client.chat.completions.create(model="gpt-test", messages=HI)
    assert resp.choices[0].message.content == "from the backup"
    assert upstream.calls_for("fake-model") == 1  # the deployment's credentials are wrong: no retry

    upstream.queue("fake-model", Step(status=status, error_message=leaky))
    backup.queue("backup-model", Step(status=status, error_message=leaky))
    err = failing_call(client)
    # The client's own key is fine, so it must not see 401/403, nor the upstream's hint of gengate's key.
    assert err.status_code == 502
    assert "credentials" in err.message
    assert "Xq9z" not in err.message
    assert (upstream.calls_for("fake-model"), backup.calls_for("backup-model")) == (2, 2)


def test_upstream_404_is_a_misconfigured_deployment_and_falls_back(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 2}))
    upstream.queue("fake-model", Step(status=404, error_message="The model `fake-model` does not exist"))
    client = sdk(gw, gw.create_key())
    assert client.chat.completions.create(model="gpt-test", messages=HI).choices[0].message.content == "from the backup"
    assert upstream.calls_for("fake-model") == 1

    upstream.queue("fake-model", Step(status=404))
    backup.queue("backup-model", Step(status=404))
    err = failing_call(client)
    assert err.status_code == 502 and "not found upstream" in err.message


def test_unavailable_local_provider_falls_back(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk, tmp_path: Path
) -> None:
    gw = make_gateway(
        {
            "providers": {"local": {"type": "local", "model_path": str(tmp_path / "missing.gguf")}},
            **alias(
                {"provider": "local", "model": "SmolLM2-135M-Instruct"},
                {"provider": "fake", "model": "fake-model", "priority": 1},
            ),
        }
    )
    resp = sdk(gw, gw.create_key()).chat.completions.create(model="gpt-test", messages=HI)
    assert resp.choices[0].message.content == "Hello from the fake upstream."


# --- timeouts, garbage, refused connections ----------------------------------------------------------------


def test_hanging_upstream_gives_504_upstream_timeout_promptly(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway({**alias({"provider": "fake", "model": "fake-model", "timeout": 0.3, "max_retries": 0})})
    upstream.queue("fake-model", Step(delay=3))
    client = sdk(gw, gw.create_key())

    started = time.monotonic()
    err = failing_call(client)

    assert time.monotonic() - started < 2  # gengate gave up at its timeout, not when the upstream answered
    assert err.status_code == 504
    assert isinstance(err.body, dict) and err.body["code"] == "upstream_timeout"


def test_hanging_deployment_falls_back_to_healthy_one(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 0}, timeout=0.3))
    upstream.queue("fake-model", Step(delay=3))
    resp = sdk(gw, gw.create_key()).chat.completions.create(model="gpt-test", messages=HI)
    assert resp.choices[0].message.content == "from the backup"


@pytest.mark.parametrize(
    ("fallback", "primary_steps", "answer"),
    [
        (False, [Step(garbage=True), Step(content="retried")], "retried"),
        (True, [Step(garbage=True), Step(garbage=True)], "from the backup"),
        (False, [Step(garbage=True), Step(garbage=True)], None),
    ],
    ids=["retried", "fallback", "502"],
)
def test_non_json_answer_is_retried_then_falls_back_else_502(
    make_gateway: MakeGateway,
    upstream: FakeUpstream,
    backup: FakeUpstream,
    sdk: Sdk,
    fallback: bool,
    primary_steps: list[Step],
    answer: str | None,
) -> None:
    gw = make_gateway(with_backup(backup) if fallback else {})
    upstream.queue("fake-model", *primary_steps)
    client = sdk(gw, gw.create_key())
    if answer is None:
        err = failing_call(client)
        assert err.status_code == 502
        assert isinstance(err.body, dict) and err.body["code"] == "bad_gateway"
        assert "not JSON" in err.message
    else:
        assert client.chat.completions.create(model="gpt-test", messages=HI).choices[0].message.content == answer
    assert upstream.calls_for("fake-model") == 2


@pytest.mark.parametrize("fallback", [False, True], ids=["alone", "with-fallback"])
def test_refused_connection_gives_502_or_falls_back(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk, fallback: bool
) -> None:
    dead = {"provider": "dead", "model": "fake-model"}
    live = {"provider": "fake", "model": "fake-model", "priority": 1}
    gw = make_gateway(
        {
            "providers": {"dead": provider(f"http://127.0.0.1:{free_port()}/v1")},
            **(alias(dead, live) if fallback else alias(dead)),
        }
    )
    client = sdk(gw, gw.create_key())
    if fallback:
        resp = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HI)
        assert resp.parse().choices[0].message.content == "Hello from the fake upstream."
        trace = trace_of(gw, resp.headers["x-request-id"])
        assert (trace["deployment"], trace["attempts"], trace["fallbacks"]) == ("fake/fake-model", 3, 1)
    else:
        err = failing_call(client)
        assert err.status_code == 502
        assert "unreachable" in err.message
        assert upstream.requests == []


# --- the circuit breaker through the gateway ----------------------------------------------------------------


def test_open_circuit_everywhere_gives_503_without_calling_upstream(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway({"routing": {"max_retries": 0, "breaker_failures": 2, "breaker_cooldown_seconds": 60}})
    upstream.queue("fake-model", Step(status=500), Step(status=500))
    client = sdk(gw, gw.create_key())
    assert [failing_call(client).status_code for _ in range(2)] == [502, 502]

    err = failing_call(client)

    assert err.status_code == 503
    assert isinstance(err.body, dict) and err.body["code"] == "provider_unavailable"
    assert upstream.calls_for("fake-model") == 2


# --- streams ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [Step(status=500), Step(garbage=True), Step(stall_after_chunks=0)],
    ids=["http-500", "not-sse", "silent"],
)
def test_stream_failing_before_first_chunk_falls_back(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk, failure: Step
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 0}, timeout=0.5))
    upstream.queue("fake-model", failure)
    stream = sdk(gw, gw.create_key()).chat.completions.create(model="gpt-test", messages=HI, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == ["from", "the", "backup"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (upstream.calls_for("fake-model"), backup.calls_for("backup-model")) == (1, 1)


def test_stream_stalling_mid_way_ends_with_error_event(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk
) -> None:
    gw = make_gateway(with_backup(backup, routing={"max_retries": 0}, timeout=0.5))
    upstream.queue("fake-model", Step(content="one two three four", stall_after_chunks=3))
    client = sdk(gw, gw.create_key()).with_options(timeout=10)
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=HI, stream=True)
    received: list[str] = []

    started = time.monotonic()
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            received.extend(c.delta.content or "" for c in chunk.choices)

    assert time.monotonic() - started < 5
    # An error event from gengate, not the client giving up on a silent connection.
    assert not isinstance(caught.value, openai.APIConnectionError)
    assert "stalled" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_timeout"
    assert "".join(received).split() == ["one", "two"]
    assert backup.requests == []  # the client already had chunks: no fallback after the first one
    trace = trace_of(gw, raw.headers["x-request-id"])
    assert (trace["status"], trace["error_code"], trace["deployment"]) == (504, "upstream_timeout", "fake/fake-model")


# --- where requests go --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_azure_by_configuration_uses_deployment_path_api_version_and_api_key(
    make_gateway: MakeGateway, upstream: FakeUpstream, sdk: Sdk, stream: bool
) -> None:
    azure = {"type": "azure", "base_url": upstream.root_url, "api_key": "azure-secret", "api_version": "2024-06-01"}
    gw = make_gateway({"providers": {"az": azure}, **alias({"provider": "az", "model": "fake-model"})})
    client = sdk(gw, gw.create_key())
    if stream:
        chunks = list(client.chat.completions.create(model="gpt-test", messages=HI, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = client.chat.completions.create(model="gpt-test", messages=HI).choices[0].message.content or ""
    assert text.strip() == "Hello from the fake upstream."
    [sent] = upstream.requests
    assert sent["_path_deployment"] == "fake-model"
    assert sent["_query"] == {"api-version": "2024-06-01"}
    assert upstream.headers[0]["api-key"] == "azure-secret"
    assert "authorization" not in upstream.headers[0]


@pytest.mark.parametrize("field", ["api_base", "base_url", "azure_endpoint", "api_url", "url", "endpoint"])
def test_upstream_url_never_comes_from_the_request(
    make_gateway: MakeGateway, upstream: FakeUpstream, backup: FakeUpstream, sdk: Sdk, field: str
) -> None:
    decoy = backup
    gw = make_gateway()
    key = gw.create_key()
    resp = sdk(gw, key).chat.completions.create(
        model="gpt-test",
        messages=HI,
        extra_body={"api_base": "http://127.0.0.1:1", "api_key": "client-chosen", field: decoy.base_url},
        extra_headers={"x-upstream-url": decoy.base_url, "api-base": decoy.base_url},
        extra_query={"base_url": decoy.base_url, "api-version": "evil"},
    )
    assert resp.choices[0].message.content == "Hello from the fake upstream."
    assert decoy.requests == []
    [sent] = upstream.requests
    assert sent[field] == decoy.base_url  # unknown fields still pass through, untouched and unused
    headers = upstream.headers[0]
    assert headers["authorization"] == "Bearer upstream-secret"
    assert not {"x-upstream-url", "api-base"} & set(headers)


# --- the Router itself: timing and state --------------------------------------------------------------------


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Records backoff sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


BuildRouter = Callable[..., Router]


@pytest.fixture
async def build_router(upstream: FakeUpstream, backup: FakeUpstream) -> AsyncIterator[BuildRouter]:
    """Routers over real providers: `primary` (the fake upstream) and `backup` (the second fake)."""
    made: list[Provider] = []

    def build(
        *deployments: Deployment,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] | None = None,
        seed: int = 7,
        timeout: float = 5.0,
        **routing: Any,
    ) -> Router:
        providers: dict[str, Provider] = {
            name: OpenAICompatProvider(name, ProviderSettings(base_url=fake.base_url, timeout=timeout))
            for name, fake in (("primary", upstream), ("backup", backup))
        }
        made.extend(providers.values())
        return Router(
            {"chat": ModelAlias(deployments=list(deployments))},
            providers,
            RoutingSettings(**{"backoff_seconds": 0.1, "backoff_max_seconds": 10, **routing}),
            default_timeout={name: timeout for name in providers},
            rng=random.Random(seed),
            clock=clock,
            sleep=sleep or RecordingSleep(),
        )

    yield build
    for p in made:
        await p.aclose()


PRIMARY = Deployment(provider="primary", model="model-a")
BACKUP = Deployment(provider="backup", model="model-b", priority=1)


async def complete(router: Router, log: RouteLog | None = None) -> str:
    body = await router.run("chat", {"messages": HI}, "req-1", "complete", log or RouteLog())
    return str(body["choices"][0]["message"]["content"])


async def test_backoff_sleeps_grow_between_retries_of_one_deployment(
    build_router: BuildRouter, upstream: FakeUpstream
) -> None:
    sleep = RecordingSleep()
    router = build_router(PRIMARY, sleep=sleep, max_retries=3)
    upstream.queue("model-a", Step(status=429), Step(status=500), Step(status=503), Step(content="ok"))
    log = RouteLog()

    assert await complete(router, log) == "ok"

    assert upstream.calls_for("model-a") == 4
    assert [a.ok for a in log.attempts] == [False, False, False, True]
    assert len(sleep.calls) == 3
    assert sleep.calls == sorted(sleep.calls) and len(set(sleep.calls)) == 3
    for n, slept in enumerate(sleep.calls):  # exponential, with jitter of up to half
        assert 0.1 * 2**n * 0.5 <= slept <= 0.1 * 2**n
    assert log.fallbacks == 0


async def test_backoff_is_capped_by_backoff_max_seconds(build_router: BuildRouter, upstream: FakeUpstream) -> None:
    sleep = RecordingSleep()
    router = build_router(
        PRIMARY, sleep=sleep, max_retries=5, backoff_seconds=1, backoff_max_seconds=2, breaker_failures=10
    )
    upstream.queue("model-a", *[Step(status=500)] * 5)
    assert await complete(router) == "Hello from the fake upstream."
    assert len(sleep.calls) == 5
    assert all(s <= 2 for s in sleep.calls)
    assert all(s >= 1 for s in sleep.calls[2:])  # base 4, 8, 16 capped to 2, jitter ≥ half


async def test_deployment_max_retries_overrides_routing_default(
    build_router: BuildRouter, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    primary = PRIMARY.model_copy(update={"max_retries": 0})
    router = build_router(primary, BACKUP, max_retries=4)
    upstream.queue("model-a", Step(status=500))
    backup.queue("model-b", Step(status=500), Step(content="second try"))
    log = RouteLog()
    assert await complete(router, log) == "second try"
    assert [a.deployment for a in log.attempts] == ["primary/model-a", "backup/model-b", "backup/model-b"]
    assert log.fallbacks == 1
    assert log.deployment == BACKUP


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_weights_spread_load_within_a_tier(build_router: BuildRouter, seed: int) -> None:
    heavy = Deployment(provider="primary", model="heavy", weight=3)
    light = Deployment(provider="primary", model="light", weight=1)
    spare = Deployment(provider="backup", model="spare", weight=100, priority=1)
    router = build_router(heavy, light, spare, seed=seed)

    plans = [router.plan("chat") for _ in range(400)]

    firsts = Counter(p[0].model for p in plans)
    assert set(firsts) == {"heavy", "light"}
    assert abs(firsts["heavy"] - 300) <= 40
    assert all(p[-1] == spare for p in plans)  # a lower tier never goes before a higher one, whatever its weight


async def test_circuit_opens_after_breaker_failures_and_half_open_success_closes_it(
    build_router: BuildRouter, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    clock = FakeClock()
    router = build_router(PRIMARY, BACKUP, clock=clock, max_retries=0, breaker_failures=3, breaker_cooldown_seconds=30)
    upstream.queue("model-a", *[Step(status=500)] * 3)
    for _ in range(3):
        assert await complete(router) == "from the backup"
    assert router.circuit_open(PRIMARY)

    clock.advance(29)
    assert await complete(router) == "from the backup"
    assert upstream.calls_for("model-a") == 3  # skipped while open

    clock.advance(2)  # cooldown over: half-open, one call decides
    log = RouteLog()
    assert await complete(router, log) == "Hello from the fake upstream."
    assert log.deployment == PRIMARY
    assert not router.circuit_open(PRIMARY)

    # Closed again with a fresh count: it takes breaker_failures new failures to open it.
    upstream.queue("model-a", *[Step(status=500)] * 2)
    for _ in range(2):
        await complete(router)
    assert not router.circuit_open(PRIMARY)
    assert upstream.calls_for("model-a") == 6


async def test_half_open_failure_reopens_circuit_at_once(
    build_router: BuildRouter, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    clock = FakeClock()
    router = build_router(PRIMARY, BACKUP, clock=clock, max_retries=0, breaker_failures=3, breaker_cooldown_seconds=30)
    upstream.queue("model-a", *[Step(status=500)] * 4)
    for _ in range(3):
        await complete(router)
    clock.advance(31)

    assert await complete(router) == "from the backup"  # the half-open probe failed …
    assert upstream.calls_for("model-a") == 4
    assert router.circuit_open(PRIMARY)  # … so the circuit is open again without waiting for 3 more
    assert await complete(router) == "from the backup"
    assert upstream.calls_for("model-a") == 4


async def test_half_open_lets_one_probe_through_while_others_fall_back(
    build_router: BuildRouter, upstream: FakeUpstream, backup: FakeUpstream
) -> None:
    clock = FakeClock()
    router = build_router(PRIMARY, BACKUP, clock=clock, max_retries=0, breaker_failures=1, breaker_cooldown_seconds=30)
    upstream.queue("model-a", Step(status=500), Step(delay=0.3, content="probe"))
    await complete(router)
    clock.advance(31)

    answers = await asyncio.gather(*(complete(router) for _ in range(4)))

    assert sorted(answers) == ["from the backup"] * 3 + ["probe"]
    assert upstream.calls_for("model-a") == 2


async def test_all_circuits_open_raises_provider_unavailable_without_calls(
    build_router: BuildRouter, upstream: FakeUpstream
) -> None:
    clock = FakeClock()
    router = build_router(PRIMARY, clock=clock, max_retries=0, breaker_failures=1, breaker_cooldown_seconds=30)
    upstream.queue("model-a", Step(status=500))
    with pytest.raises(UpstreamError):
        await complete(router)
    with pytest.raises(ProviderUnavailable):
        await complete(router)
    assert upstream.calls_for("model-a") == 1
    clock.advance(30)
    assert await complete(router) == "Hello from the fake upstream."


async def test_breaker_skips_retries_once_circuit_opens(build_router: BuildRouter, upstream: FakeUpstream) -> None:
    router = build_router(PRIMARY, BACKUP, clock=FakeClock(), max_retries=5, breaker_failures=2)
    upstream.queue("model-a", *[Step(status=500)] * 5)
    log = RouteLog()
    assert await complete(router, log) == "from the backup"
    assert upstream.calls_for("model-a") == 2
    assert [a.deployment for a in log.attempts] == ["primary/model-a"] * 2 + ["backup/model-b"]


async def test_stream_breaking_after_first_chunk_counts_against_breaker(
    build_router: BuildRouter, upstream: FakeUpstream
) -> None:
    router = build_router(PRIMARY, BACKUP, clock=FakeClock(), timeout=0.3, max_retries=0, breaker_failures=1)
    upstream.queue("model-a", Step(stall_after_chunks=2))
    log = RouteLog()
    first, rest = await router.open_stream("chat", {"messages": HI, "stream": True}, "req-1", log)
    assert first["choices"][0]["delta"] == {"role": "assistant"}
    with pytest.raises(UpstreamError, match="stalled"):
        async for _ in rest:
            pass
    router.report_stream_failure(PRIMARY)
    assert router.circuit_open(PRIMARY)
    assert router.plan("chat") == [BACKUP]
