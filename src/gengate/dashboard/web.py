"""The request side of every dashboard page: sign-in check, admin check, CSRF check, forms, parameters, errors.

`guarded` wraps a page handler: it resolves the session (a GET without one is sent to sign in), refuses team members
on admin pages, checks the CSRF token of every POST, and turns errors into HTML pages with the right status — bad
input is a 4xx page, never a 500. Every response gets the dashboard's security headers (a CSP without scripts, no
framing, no caching).

Owns: `Ctx`, `guarded`, form and parameter parsing, time windows. Must not: query the store for page content.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gengate.app.gateway import Gateway
from gengate.dashboard.html import Html, Shell, join, notice, page, render, url
from gengate.dashboard.session import Plane, Viewer, resolve, tokens_match
from gengate.errors import AuthenticationError, GengateError, PermissionDenied, RequestError
from gengate.store.dashboard import Window
from gengate.store.ui_rollups import roll_up

log = logging.getLogger("gengate.dashboard")

# (path below the prefix, label, admins only)
NAV: tuple[tuple[str, str, bool], ...] = (
    ("/", "Overview", False), ("/requests", "Requests", False), ("/guardrails", "Guardrails", False),
    ("/knowledge", "Knowledge", False), ("/evals", "Evaluations", True), ("/experiments", "Experiments", True),
    ("/feedback", "Feedback", False), ("/keys", "Keys & budgets", False),
)  # fmt: skip
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
    "frame-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
WINDOWS = {"1h": (3600, 300), "24h": (86400, 3600), "7d": (7 * 86400, 6 * 3600), "30d": (30 * 86400, 86400)}
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")


@dataclass(frozen=True, slots=True)
class Ctx:
    """One page request: who asks, the gateway, the page frame and the parsed form (POST only)."""

    request: Request
    gateway: Gateway
    viewer: Viewer
    shell: Shell
    plane: Plane
    form: dict[str, str]


Handler = Callable[[Ctx], Awaitable[Response]]


def shell_for(plane: Plane, viewer: Viewer) -> Shell:
    """The page frame for a viewer: admin pages appear only for admins."""
    pages = [(path, label) for path, label, admin in NAV if viewer.admin or not admin]
    return Shell(plane.prefix, viewer.label, viewer.csrf, pages)


def secure_headers(response: Response, *, csp: str = CSP) -> Response:
    """The headers every dashboard response carries."""
    if "content-security-policy" not in response.headers:  # a page may have set a stricter one (reports)
        response.headers["content-security-policy"] = csp
    response.headers["x-content-type-options"] = "nosniff"
    response.headers["referrer-policy"] = "same-origin"
    response.headers["cache-control"] = "no-store"
    if "frame-ancestors 'none'" in response.headers["content-security-policy"]:
        response.headers["x-frame-options"] = "DENY"
    return response


_TITLES = {400: "Bad request", 401: "Sign-in needed", 403: "Not allowed", 404: "Not found", 409: "Conflict"}


def error_page(exc: BaseException, shell: Shell | None) -> Response:
    """An error as a page: a GengateError keeps its status and message; anything else is an opaque 500."""
    if isinstance(exc, GengateError):
        status = exc.status if 400 <= exc.status < 600 else 500
        title = _TITLES.get(status, "Error")
        return page(title, notice(exc.message, error=True), shell, status=status)
    log.error("dashboard page failed", exc_info=exc)
    return page("Error", notice("Something went wrong on our side.", error=True), shell, status=500)


async def read_form(request: Request) -> dict[str, str]:
    """An url-encoded form body as a dict of first values (the only kind of form the pages send)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise RequestError("forms must be sent as application/x-www-form-urlencoded")
    try:
        fields = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the form could not be read") from None
    return {k: v[0] for k, v in fields.items()}


def guarded(plane: Plane, handler: Handler, *, admin_only: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running `handler` for a signed-in viewer (see the module docstring)."""

    async def endpoint(request: Request) -> Response:
        gateway: Gateway = request.app.state.gateway
        shell: Shell | None = None
        try:
            viewer = await resolve(request, gateway, plane)
            if viewer is None:
                if request.method == "GET":
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return secure_headers(RedirectResponse(url(f"{plane.prefix}/login", next=target), 303))
                raise AuthenticationError("your session has ended: sign in again")
            shell = shell_for(plane, viewer)
            if admin_only and not viewer.admin:
                raise PermissionDenied("this page is for admins")
            for name, value in request.path_params.items():
                # Path segments reach queries as they are; PostgreSQL refuses NUL in text (SQLite does not).
                if isinstance(value, str) and not _PRINTABLE.match(value):
                    raise RequestError(f"{name} must be printable text", param=name)
            form: dict[str, str] = {}
            if request.method == "POST":
                form = await read_form(request)
                if not tokens_match(viewer.csrf, form.get("csrf")):
                    raise PermissionDenied("the form's security token is missing or stale: reload the page and retry")
            response = await handler(Ctx(request, gateway, viewer, shell, plane, form))
        except Exception as exc:
            response = error_page(exc, shell)
        return secure_headers(response)

    return endpoint


def text_param(source: dict[str, str] | Request, name: str, *, max_len: int = 200) -> str | None:
    """An optional text parameter (query or form), stripped; RequestError when too long or not printable."""
    raw = source.query_params.get(name) if isinstance(source, Request) else source.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if len(value) > max_len or not _PRINTABLE.match(value):
        raise RequestError(f"{name} must be printable text of at most {max_len} characters", param=name)
    return value


def choice_param(request: Request, name: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
    """An optional parameter that must be one of `choices`."""
    value = text_param(request, name, max_len=32)
    if value is None:
        return default
    if value not in choices:
        raise RequestError(f"{name} must be one of {', '.join(choices)}", param=name)
    return value


def window_param(request: Request, default: str = "24h") -> tuple[str, Window]:
    """The `range` parameter as a bucketed window ending at the next bucket boundary."""
    key = choice_param(request, "range", tuple(WINDOWS), default) or default
    span, bucket = WINDOWS[key]
    until = math.ceil(time.time() / bucket) * bucket
    return key, Window(float(until - span), float(until), float(bucket))


def bucket_labels(window: Window) -> list[str]:
    """x-axis labels: clock time for short windows, dates for long ones."""
    fmt = "%H:%M" if window.until - window.since <= 86400 else "%m-%d %H:%M" if window.bucket < 86400 else "%m-%d"
    return [time.strftime(fmt, time.gmtime(window.since + i * window.bucket)) for i in range(window.buckets)]


def range_links(path: str, current: str, **params: object) -> Html:
    """The time-range switcher (plain links: no script, keyboard-friendly)."""
    items = []
    for key in WINDOWS:
        mark = ' aria-current="true"' if key == current else ""
        href = url(path, range=key, **params)
        items.append(render('<li><a href="{href}"' + mark + ">{key}</a></li>", href=href, key=key))
    return Html('<nav aria-label="Time range" class="pager"><span>Last:</span><ul class="legend">' + join(items)
                + "</ul></nav>")  # fmt: skip


async def rolled(ctx: Ctx) -> float:
    """Bring the request log's hourly roll-ups up to date; the moment they reach (see `gengate.store.ui_rollups`)."""
    async with ctx.plane.rollup_lock:
        return await roll_up(ctx.gateway.store.engine)
