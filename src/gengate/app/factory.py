"""`create_app`: the one place the ASGI application is assembled from Settings.

The public app serves the OpenAI API (and the admin plane under `/admin` unless `server.admin_port` is set);
`create_admin_app` serves the admin plane alone, sharing the same Gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gengate.app import admin_routes, app_routes, feedback_routes, guard_routes, openai_routes
from gengate.app.errors import error_response, json_response
from gengate.app.gateway import Gateway, open_gateway
from gengate.app.middleware import Endpoint, RequestContext
from gengate.dashboard import dashboard_routes
from gengate.errors import GengateError, NotFound, RequestError
from gengate.settings import Settings


async def _health(request: Request) -> Response:
    return json_response({"status": "ok"})


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(NotFound(f"no route for {request.method} {request.url.path}"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    error = RequestError(f"method {request.method} is not allowed on {request.url.path}", code="method_not_allowed")
    error.status = 405
    return error_response(error)


async def _gengate_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


def admin_routes_list(prefix: str) -> list[Route]:
    """The admin plane's routes under a prefix."""
    return [
        Route(f"{prefix}/keys", admin_routes.create_key_endpoint, methods=["POST"]),
        Route(f"{prefix}/keys", admin_routes.list_keys_endpoint, methods=["GET"]),
        Route(f"{prefix}/keys/{{key_id}}", admin_routes.revoke_key_endpoint, methods=["DELETE"]),
        Route(f"{prefix}/requests", admin_routes.requests_endpoint, methods=["GET"]),
        Route(f"{prefix}/requests/{{request_id}}", admin_routes.request_endpoint, methods=["GET"]),
        Route(f"{prefix}/spend", admin_routes.spend_endpoint, methods=["GET"]),
        Route(f"{prefix}/subjects/{{subject}}", admin_routes.forget_subject_endpoint, methods=["DELETE"]),
        Route(f"{prefix}/experiments", admin_routes.list_experiments_endpoint, methods=["GET"]),
        Route(f"{prefix}/experiments/{{name}}", admin_routes.get_experiment_endpoint, methods=["GET"]),
        Route(f"{prefix}/experiments/{{name}}/{{action}}", admin_routes.experiment_action_endpoint, methods=["POST"]),
        Route("/metrics", admin_routes.metrics_endpoint, methods=["GET"]),
    ]


def _build(
    settings: Settings, routes: list[Route], lifespan: object, fast_routes: dict[str, Endpoint] | None = None
) -> RequestContext:
    """The Starlette app wrapped in the transport middleware (outermost, so hot routes skip Starlette)."""
    app = Starlette(
        routes=routes,
        exception_handlers={
            404: _not_found, 405: _method_not_allowed, GengateError: _gengate_error, Exception: _gengate_error
        },
        lifespan=lifespan,  # type: ignore[arg-type]
    )  # fmt: skip
    return RequestContext(app, max_body_bytes=settings.server.max_body_bytes, fast_routes=fast_routes)


class GatewayHolder:
    """Opens the Gateway once for however many apps share it, and closes it after the last one."""

    def __init__(self, settings: Settings, gateway: Gateway | None = None) -> None:
        self.settings = settings
        self.gateway = gateway
        self._users = 0
        self._owned = gateway is None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Starlette lifespan: open on first start, close on last stop."""
        async with self._lock:
            if self.gateway is None:
                self.gateway = await open_gateway(self.settings)
                if self.gateway.experiments is not None:
                    await self.gateway.experiments.start()  # served traffic only (not an eval run's gateway)
                if self.gateway.drift is not None:
                    self.gateway.drift.start()
            self._users += 1
            app.state.gateway = gateway = self.gateway
            # Everything built at start-up lives for the process: keep it out of the cyclic GC's generations,
            # which cut full-collection pauses (and the p99 they cause) several-fold in bench/.
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            async with self._lock:
                self._users -= 1
                if self._users == 0 and self._owned:
                    await gateway.close()
                    self.gateway = None


def create_app(settings: Settings, *, holder: GatewayHolder | None = None) -> RequestContext:
    """The public application (OpenAI API; admin plane too unless it has its own port)."""
    holder = holder or GatewayHolder(settings)
    routes = [
        Route("/v1/chat/completions", openai_routes.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", openai_routes.embeddings, methods=["POST"]),
        Route("/v1/models", openai_routes.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_routes.get_model, methods=["GET"]),
        Route("/v1/guard/scan", guard_routes.guard_scan, methods=["POST"]),
        Route("/v1/apps/{name}/ask", app_routes.ask, methods=["POST"]),
        Route("/v1/feedback", feedback_routes.post_feedback, methods=["POST"]),
        Route("/v1/feedback", feedback_routes.feedback_preflight, methods=["OPTIONS"]),
        Route("/v1/feedback.js", feedback_routes.feedback_js, methods=["GET"]),
        Route("/healthz", _health, methods=["GET"]),
    ]
    if settings.server.admin_port is None:
        routes += admin_routes_list("/admin")
    routes += dashboard_routes(settings, admin_plane=False)  # team members; admins too without an admin port
    fast: dict[str, Endpoint] = {
        "/v1/chat/completions": openai_routes.chat_completions,
        "/v1/embeddings": openai_routes.embeddings,
        "/v1/feedback": feedback_routes.post_feedback,
    }
    return _build(settings, routes, holder.lifespan, fast)


def create_admin_app(settings: Settings, holder: GatewayHolder) -> RequestContext:
    """The admin plane alone, for `server.admin_port`."""
    routes = [*admin_routes_list("/admin"), *dashboard_routes(settings, admin_plane=True), Route("/healthz", _health)]
    return _build(settings, routes, holder.lifespan)
