"""Running the gateway under uvicorn: one process (optionally with a separate admin port) or N workers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from gengate.app.factory import GatewayHolder, create_admin_app, create_app
from gengate.errors import ConfigError
from gengate.settings import Settings, load_settings
from gengate.telemetry.logs import configure_logging


def app_from_env() -> ASGIApp:
    """uvicorn factory for worker processes: settings from `GENGATE_CONFIG` (or embedded defaults)."""
    settings = load_settings()
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_json)
    return create_app(settings)


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=10, server_header=False, proxy_headers=False,
    )  # fmt: skip


async def serve_async(settings: Settings) -> None:
    """Serve in this process until a signal arrives; the admin plane on its own port when configured."""
    holder = GatewayHolder(settings)
    server = settings.server
    servers = [uvicorn.Server(_config(create_app(settings, holder=holder), server.host, server.port))]
    if server.admin_port is not None:
        servers.append(uvicorn.Server(_config(create_admin_app(settings, holder), server.host, server.admin_port)))
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    # One signal stops every server (uvicorn's handlers are per server).
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)


def serve(settings: Settings, config_path: str | None) -> None:
    """Run the gateway (blocking)."""
    configure_logging(settings.telemetry.log_level, settings.telemetry.log_json)
    if settings.server.workers > 1:
        if settings.server.admin_port is not None:
            raise ConfigError("server.admin_port cannot be combined with server.workers > 1; run a separate process")
        if not settings.redis.url:
            raise ConfigError("server.workers > 1 needs redis.url so that limits and budgets are shared")
        if config_path:
            os.environ["GENGATE_CONFIG"] = str(config_path)
        uvicorn.run(
            "gengate.server:app_from_env", factory=True, host=settings.server.host, port=settings.server.port,
            workers=settings.server.workers, log_config=None, access_log=False, server_header=False,
            proxy_headers=False,
        )  # fmt: skip
        return
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve_async(settings))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (uvicorn[standard] brings it): about twice the throughput of the stdlib loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
