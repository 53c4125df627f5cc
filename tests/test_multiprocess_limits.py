"""Two real `gengate serve` processes sharing PostgreSQL and Redis enforce one team's limits exactly.

The fake upstream runs in the test process; each gateway is a subprocess started from the CLI, as in production.
200 concurrent requests are split across both processes; the team's RPM or budget must hold across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from conftest import ADMIN_KEY, base_config, free_port, merge
from fake_upstream import FakeUpstream, Step

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

CLI = [sys.executable, "-m", "gengate.cli.main"]
CONCURRENT = 200
TEAM = "shared"


def chat_body(max_tokens: int) -> bytes:
    """A request whose byte length (the prompt bound) the test knows exactly."""
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}
    return json.dumps(body, separators=(",", ":")).encode()


def cost_nanos(body: bytes, max_tokens: int) -> int:
    """The worst-case reservation for `body`, which is also its cost when the upstream reports that usage.

    `fake-model` costs $1/M input and $2/M output tokens: (bytes × 1 + max_tokens × 2) µ$ = × 1000 nano-dollars.
    """
    return (len(body) * 1 + max_tokens * 2) * 1000


def worst_case_usage(body: bytes, max_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": len(body), "completion_tokens": max_tokens}


@dataclass
class GatewayProcess:
    """One `gengate serve` subprocess on its own port, its output in a log file."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"gengate on port {self.port} exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"gengate on port {self.port} did not become healthy:\n{self.output()}")

    def stop(self) -> None:
        """SIGTERM (the gateway flushes its request log), then kill if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def child_env() -> dict[str, str]:
    """The test's environment without GENGATE_* overrides, so the config file alone decides."""
    return {k: v for k, v in os.environ.items() if not k.startswith("GENGATE_")}


@dataclass
class Deployment:
    """A gengate.yaml shared by every gateway process, and a way to run them."""

    config: Path
    tmp_path: Path

    def create_key(self, team: str) -> str:
        done = subprocess.run(
            [*CLI, "keys", "create", "--config", str(self.config), "--team", team],
            capture_output=True, env=child_env(), timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().strip()

    @contextlib.contextmanager
    def gateways(self, count: int = 2) -> Iterator[list[GatewayProcess]]:
        started: list[GatewayProcess] = []
        try:
            for _ in range(count):
                port = free_port()
                log = self.tmp_path / f"gengate-{port}.log"
                with log.open("wb") as out:
                    process = subprocess.Popen(
                        [*CLI, "serve", "--config", str(self.config), "--port", str(port)],
                        stdout=out, stderr=subprocess.STDOUT, env=child_env(),
                    )  # fmt: skip
                started.append(GatewayProcess(port, process, log))
            for gateway in started:
                gateway.wait_healthy()
            yield started
        finally:
            for gateway in started:
                gateway.stop()


Deploy = Callable[[dict[str, Any]], Deployment]


@pytest.fixture
def deploy(tmp_path: Path, upstream: FakeUpstream, pg_url: str, redis_url: str, redis_prefix: str) -> Deploy:
    """Write the shared gengate.yaml with a policy for TEAM."""

    def write(policy: dict[str, Any]) -> Deployment:
        config = merge(
            base_config(upstream, tmp_path / "data"),
            {
                "storage": {"url": pg_url},
                "redis": {"url": redis_url, "prefix": redis_prefix},
                "policy": {"teams": {TEAM: policy}},
                # a request's key lookup should not be the bottleneck of a 200-request burst
                "auth": {"key_cache_seconds": 30},
            },
        )
        path = tmp_path / "gengate.yaml"
        path.write_text(yaml.safe_dump(config))
        return Deployment(path, tmp_path)

    return write


async def fire(gateways: list[GatewayProcess], key: str, bodies: list[bytes]) -> list[httpx.Response]:
    """Send every body at once, alternating between the gateways."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with httpx.AsyncClient(timeout=30, limits=limits, headers=headers) as client:
        return await asyncio.gather(
            *(
                client.post(f"{gateways[i % len(gateways)].url}/v1/chat/completions", content=body)
                for i, body in enumerate(bodies)
            )
        )


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert {"type", "param"} <= set(error)


def team_spend(gateway: GatewayProcess, requests: int, timeout: float = 10.0) -> dict[str, Any]:
    """The team's row of `/admin/spend` once the batched logs hold `requests` records."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = httpx.get(
            f"{gateway.url}/admin/spend", params={"by": "team", "period": "total"},
            headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10,
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        row = next((r for r in resp.json()["data"] if r["team"] == TEAM), {})
        if row.get("requests") == requests:
            return row
        time.sleep(0.1)
    pytest.fail(f"the request log did not reach {requests} records for {TEAM}: {row}")


def test_two_gateways_admit_exactly_the_team_rpm_from_200_concurrent_requests(
    deploy: Deploy, upstream: FakeUpstream
) -> None:
    deployment = deploy({"rpm": 50})
    key = deployment.create_key(TEAM)
    # slow enough that every request is in flight at once
    upstream.default = Step(delay=0.2)
    with deployment.gateways(2) as gateways:
        responses = asyncio.run(fire(gateways, key, [chat_body(16)] * CONCURRENT))
        # Each gateway got 100 requests and alone would admit 50 of them: 50 in all means one shared limit
        # (how they split between the two depends on scheduling).
        assert sum(r.status_code == 200 for r in responses) == 50
        refused = [r for r in responses if r.status_code != 200]
        assert len(refused) == CONCURRENT - 50
        for resp in refused:
            assert_openai_error(resp, 429, "requests_per_minute_exceeded")
            assert int(resp.headers["retry-after"]) >= 1
        assert len(upstream.requests) == 50
        team_spend(gateways[0], CONCURRENT)  # every call, admitted or refused, is in the shared log


def test_two_gateways_never_overspend_a_team_budget_and_the_spend_survives_a_restart(
    deploy: Deploy, upstream: FakeUpstream, redis_url: str, redis_prefix: str
) -> None:
    full = chat_body(100)
    per_call = cost_nanos(full, 100)
    fits = 20
    # room for 20 full calls and half of another: the 21st must be refused, a small one later still fits
    budget_nanos = fits * per_call + per_call // 2
    deployment = deploy({"budget": {"usd": budget_nanos / 1e9, "period": "total"}})
    key = deployment.create_key(TEAM)
    # the upstream reports exactly the worst case, so each call costs what it reserved
    upstream.default = Step(delay=0.2, usage=worst_case_usage(full, 100))

    with deployment.gateways(2) as gateways:
        responses = asyncio.run(fire(gateways, key, [full] * CONCURRENT))
        assert sum(r.status_code == 200 for r in responses) == fits
        for resp in (r for r in responses if r.status_code != 200):
            assert_openai_error(resp, 429, "insufficient_quota")
        assert len(upstream.requests) == fits
        spend = team_spend(gateways[1], CONCURRENT)
        assert spend["usd"] <= budget_nanos / 1e9
        assert round(spend["usd"] * 1e9) == fits * per_call

    # As if Redis had restarted too: the new processes must find the spend in PostgreSQL.
    client = redis.Redis.from_url(redis_url)
    try:
        budget_keys = list(client.scan_iter(f"{redis_prefix}:budget:*"))
        assert budget_keys
        client.delete(*budget_keys)
    finally:
        client.close()

    small = chat_body(1)
    left = budget_nanos - fits * per_call
    assert cost_nanos(small, 1) <= left < min(per_call, 2 * cost_nanos(small, 1))  # one small call fits, not two
    with deployment.gateways(2) as gateways:
        refused = asyncio.run(fire(gateways, key, [full]))[0]
        assert_openai_error(refused, 429, "insufficient_quota")
        upstream.default = Step(usage=worst_case_usage(small, 1))
        assert asyncio.run(fire(gateways[1:], key, [small]))[0].status_code == 200
        assert asyncio.run(fire(gateways, key, [small]))[0].status_code == 429
        spend = team_spend(gateways[0], CONCURRENT + 3)
        assert round(spend["usd"] * 1e9) == fits * per_call + cost_nanos(small, 1) <= budget_nanos
    assert len(upstream.requests) == fits + 1
