"""Shared fixtures: the fake upstream, gateways running for real on loopback, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
import yaml

from dashboard_helpers import UiClient
from fake_upstream import FakeUpstream
from gengate.app.factory import GatewayHolder, create_admin_app, create_app
from gengate.embed.minilm import INSTALL_HINT, MiniLMEncoder, available
from gengate.settings import Settings, load_settings

ADMIN_KEY = "admin-test-key-0123456789abcdef"
PG_URL = os.environ.get("GENGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningGateway:
    """A gengate app served by uvicorn on loopback in its own thread and event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.holder = GatewayHolder(settings)
        self.port = settings.server.port
        self.admin_port = settings.server.admin_port
        self._servers = [self._server(create_app(settings, holder=self.holder), self.port)]
        if self.admin_port:
            self._servers.append(self._server(create_admin_app(settings, self.holder), self.admin_port))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _server(app: Any, port: int) -> uvicorn.Server:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", access_log=False)
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        return server

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(asyncio.gather(*(s.serve() for s in self._servers)))

    def start(self) -> RunningGateway:
        self._thread.start()
        for _ in range(500):
            if all(s.started for s in self._servers):
                return self
            if not self._thread.is_alive():
                raise RuntimeError("gateway failed to start")
            threading.Event().wait(0.01)
        raise RuntimeError("gateway did not start")

    def stop(self) -> None:
        for s in self._servers:
            s.should_exit = True
        self._thread.join(20)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def gateway(self) -> Any:
        return self.holder.gateway

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's loop (for store access from a test)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port or self.port}"

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)

    def create_key(self, team: str = "team-a", **fields: Any) -> str:
        with self.admin() as client:
            resp = client.post("/admin/keys", json={"team": team, **fields})
            assert resp.status_code == 201, resp.text
            return str(resp.json()["key"])


def base_config(upstream: FakeUpstream | None, data_dir: Path) -> dict[str, Any]:
    """A config with the fake upstream as provider `fake` and alias `gpt-test`, plus the offline provider."""
    providers: dict[str, Any] = {"offline": {"type": "offline"}}
    models: dict[str, Any] = {
        "offline": {"deployments": [{"provider": "offline", "model": "offline"}]},
        "offline-embed": {"kind": "embedding", "deployments": [{"provider": "offline", "model": "hash-256"}]},
    }
    pricing: dict[str, Any] = {"offline": {"input": 0, "output": 0}, "hash-256": {"input": 0, "output": 0}}
    if upstream is not None:
        providers["fake"] = {
            "type": "openai",
            "base_url": upstream.base_url,
            "api_key": "upstream-secret",
            "timeout": 5,
        }
        models["gpt-test"] = {"deployments": [{"provider": "fake", "model": "fake-model"}]}
        pricing["fake-model"] = {"input": 1.0, "output": 2.0}
    return {
        "server": {"port": free_port()},
        "storage": {"data_dir": str(data_dir), "log_flush_seconds": 0.05},
        "auth": {"admin_keys": [ADMIN_KEY], "key_cache_seconds": 0},
        "providers": providers,
        "models": models,
        "pricing": pricing,
        "routing": {"backoff_seconds": 0.01, "backoff_max_seconds": 0.05},
        "telemetry": {"log_level": "WARNING"},
    }


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def settings_from(config: dict[str, Any], tmp_path: Path) -> Settings:
    path = tmp_path / f"gengate-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_settings(path, environ={})


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def make_gateway(tmp_path: Path, upstream: FakeUpstream) -> Iterator[Callable[..., RunningGateway]]:
    running: list[RunningGateway] = []

    def factory(overrides: dict[str, Any] | None = None, *, with_upstream: bool = True) -> RunningGateway:
        config = merge(base_config(upstream if with_upstream else None, tmp_path / "data"), overrides or {})
        gw = RunningGateway(settings_from(config, tmp_path)).start()
        running.append(gw)
        return gw

    yield factory
    for gw in running:
        gw.stop()


@pytest.fixture
def sdk() -> Iterator[Callable[[RunningGateway, str], openai.OpenAI]]:
    """Build real `openai.OpenAI` clients pointed at a gateway; closed after the test."""
    clients: list[openai.OpenAI] = []

    def build(gw: RunningGateway, key: str, **options: Any) -> openai.OpenAI:
        options = {"max_retries": 0, "timeout": 20, **options}
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def gateway(make_gateway: Callable[..., RunningGateway]) -> RunningGateway:
    return make_gateway()


@pytest.fixture
def open_ui() -> Iterator[Callable[..., UiClient]]:
    """Build dashboard clients (signed in when given a credential); all closed after the test."""
    made: list[UiClient] = []

    def make(gw: RunningGateway, credential: str | None = None, *, admin_port: bool = False) -> UiClient:
        client = UiClient(gw.admin_url if admin_port else gw.url)
        made.append(client)
        if credential is not None:
            resp = client.sign_in(credential)
            assert resp.status_code == 303, resp.text
        return client

    yield make
    for client in made:
        client.close()


def require(what: str, why: str) -> None:
    """A missing service or model: fail in CI (GENGATE_REQUIRE_SERVICES, set by .ci/run), skip elsewhere."""
    if os.environ.get("GENGATE_REQUIRE_SERVICES"):
        pytest.fail(f"{what} is required (GENGATE_REQUIRE_SERVICES is set): {why}")
    pytest.skip(f"{what} unavailable: {why}")


@pytest.fixture(scope="session")
def encoder() -> MiniLMEncoder:
    """The local MiniLM encoder, loaded once for the run (required in CI, skipped elsewhere when missing)."""
    if not available():
        require("the embedding model", INSTALL_HINT)
    return MiniLMEncoder()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    import asyncpg

    name = f"gengate_t_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        require("PostgreSQL", f"unreachable: {exc}")
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Config overrides for a gateway on SQLite (the default, under tmp_path) or on a fresh PostgreSQL database.

    Request it before `make_gateway`, so that gateways stop before their database is dropped.
    """
    if request.param == "sqlite":
        return {}
    return {"storage": {"url": request.getfixturevalue("pg_url")}}


@pytest.fixture
def database_url(storage: dict[str, Any], tmp_path: Path) -> str:
    """The SQLAlchemy URL of the `storage` database (the one `make_gateway`'s gateways use), for `open_store`."""
    raw = storage.get("storage", {}).get("url") or f"sqlite:///{tmp_path / 'data' / 'gengate.db'}"
    return Settings.model_validate({"storage": {"url": raw}}).database_url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The Redis server (tests use a unique key prefix through `redis_prefix`)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        require("Redis", f"unreachable: {exc}")
    finally:
        client.close()
    yield REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"gg-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()
