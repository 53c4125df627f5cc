"""The dashboard's routes under a prefix, and its sign-in and sign-out pages.

Mounted by `create_app` on the public port (team members, and admins when there is no admin port) and by
`create_admin_app` on `server.admin_port` (admins). See `gengate.dashboard.session` for the rules.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gengate.app.gateway import Gateway
from gengate.dashboard.html import notice, page, render
from gengate.dashboard.pages import evals, experiments, feedback, guardrails, keys, knowledge, overview, requests
from gengate.dashboard.session import LOGIN_COOKIE, Plane, resolve, sign_in, sign_out, tokens_match
from gengate.dashboard.web import Ctx, Handler, error_page, guarded, read_form, secure_headers
from gengate.errors import AuthenticationError, GengateError, PermissionDenied
from gengate.settings import Settings

log = logging.getLogger("gengate.dashboard")
Endpoint = Callable[[Request], Awaitable[Response]]


def _safe_next(plane: Plane, target: str | None) -> str:
    """Where to go after signing in: only a path inside the dashboard (no open redirect)."""
    home = f"{plane.prefix}/"
    if not target or not target.startswith(home) or target.startswith("//") or "\\" in target or len(target) > 2000:
        return home
    return target


def _login_page(plane: Plane, token: str, next_path: str, error: str | None = None, status: int = 200) -> Response:
    who = "an API key (sk-gg-…), an admin key" if plane.admins else "an API key (sk-gg-…)"
    body = render(
        '<div class="login">{error}<p>Sign in with {who} or a token from your identity provider.</p>'
        '<form method="post" action="{action}"><input type="hidden" name="csrf" value="{token}">'
        '<input type="hidden" name="next" value="{next}">'
        '<label for="credential">API key or token<input id="credential" name="credential" type="password" required '
        'autocomplete="off" autofocus></label><button type="submit">Sign in</button></form>'
        '<p class="muted">The key or token is checked once and not kept; the session ends after the configured '
        "hours, at logout, or when the key is revoked.</p></div>",
        error=notice(error, error=True) if error else "", who=who, action=f"{plane.prefix}/login", token=token,
        next=next_path,
    )  # fmt: skip
    return page("Sign in", body, None, status=status)


def _login_get(plane: Plane) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        target = _safe_next(plane, request.query_params.get("next"))
        if await resolve(request, gateway, plane) is not None:
            return secure_headers(RedirectResponse(target, 303))
        token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(24)
        response = _login_page(plane, token, target)
        plane.set_cookie(response, LOGIN_COOKIE, token, 3600)
        return secure_headers(response)

    return endpoint


def _login_post(plane: Plane) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        try:
            form = await read_form(request)
            cookie = request.cookies.get(LOGIN_COOKIE) or ""
            if not cookie or not tokens_match(cookie, form.get("csrf")):
                raise PermissionDenied("the sign-in form expired: reload the page and try again")
            target = _safe_next(plane, form.get("next"))
            try:
                session_id, _ = await sign_in(gateway, plane, form.get("credential", ""))
            except (AuthenticationError, PermissionDenied) as exc:
                # Say why (expired, revoked, wrong plane), never echo the credential.
                return secure_headers(_login_page(plane, cookie, target, exc.message, status=exc.status))
            response: Response = RedirectResponse(target, 303)
            plane.set_cookie(response, plane.cookie, session_id, int(plane.session_hours * 3600))
            plane.clear_cookie(response, LOGIN_COOKIE)
        except GengateError as exc:
            response = error_page(exc, None)
        return secure_headers(response)

    return endpoint


async def _logout(ctx: Ctx) -> Response:
    await sign_out(ctx.gateway, ctx.viewer)
    response = RedirectResponse(f"{ctx.plane.prefix}/login", 303)
    ctx.plane.clear_cookie(response, ctx.plane.cookie)
    return response


def dashboard_routes(settings: Settings, *, admin_plane: bool, prefix: str = "/ui") -> list[Route]:
    """The dashboard under `prefix` for one plane (see the module docstring); empty when `ui.enabled` is off."""
    if not settings.ui.enabled:
        return []
    separate_admin = settings.server.admin_port is not None
    plane = Plane(
        prefix=prefix, cookie="gengate_ui_admin" if admin_plane else "gengate_ui",
        admins=admin_plane or not separate_admin, secure=settings.ui.cookie_secure,
        session_hours=settings.ui.session_hours,
    )  # fmt: skip

    def get(path: str, handler: Handler, *, admin: bool = False) -> Route:
        return Route(prefix + path, guarded(plane, handler, admin_only=admin), methods=["GET"])

    def post(path: str, handler: Handler, *, admin: bool = False) -> Route:
        return Route(prefix + path, guarded(plane, handler, admin_only=admin), methods=["POST"])

    async def home(request: Request) -> Response:
        return secure_headers(RedirectResponse(f"{prefix}/", 307))

    return [
        Route(prefix, home, methods=["GET"]),
        Route(f"{prefix}/login", _login_get(plane), methods=["GET"]),
        Route(f"{prefix}/login", _login_post(plane), methods=["POST"]),
        post("/logout", _logout),
        get("/", overview.overview),
        get("/requests", requests.request_log),
        get("/requests/{request_id}", requests.trace),
        get("/guardrails", guardrails.guardrails),
        get("/knowledge", knowledge.knowledge_bases),
        get("/knowledge/{kb}", knowledge.knowledge_base),
        get("/knowledge/{kb}/document", knowledge.document),
        get("/evals", evals.evaluations, admin=True),
        get("/evals/report/{name}", evals.report, admin=True),
        get("/evals/{run}", evals.evaluation, admin=True),
        get("/experiments", experiments.experiments_list, admin=True),
        get("/experiments/{name}", experiments.experiment, admin=True),
        post("/experiments/{name}/{action}", experiments.experiment_action, admin=True),
        get("/feedback", feedback.feedback),
        get("/keys", keys.keys),
        post("/keys", keys.create, admin=True),
        post("/keys/{key_id}/revoke", keys.revoke, admin=True),
    ]
