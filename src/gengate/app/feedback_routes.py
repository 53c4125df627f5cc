"""`POST /v1/feedback` (one event, or `{"events": [...]}`), its CORS preflight, and `GET /v1/feedback.js` (the
browser snippet).

Feedback is authenticated exactly like chat completions (virtual key or JWT) and is always the caller's own. One
event answers 200 with `duplicate` (a retried event id is stored once), or an error in OpenAI's shape. A batch
answers 200 with one result per event, each with its own status, unless the rate limit refused every event
(then 429 with `Retry-After`, like a single event).

CORS: only for the exact origins in `feedback.cors_origins` (none by default), whose `Origin` is echoed — never
`*`, and never with credentials: the snippet sends its token in the `Authorization` header, not in cookies.
Every answer to such an origin carries the headers, errors included, so the snippet can read the status and
`Retry-After`.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gengate.app.errors import error_response, json_response
from gengate.app.gateway import Gateway
from gengate.app.openai_routes import Call
from gengate.app.requests import parse_object
from gengate.errors import GengateError, NotFound, PermissionDenied, RateLimited
from gengate.outer.feedback import Accepted, FeedbackService, parse_events

SNIPPET = "static/feedback.js"
SNIPPET_CACHE = "public, max-age=3600"
CORS_PREFLIGHT = {
    "access-control-allow-methods": "POST",
    "access-control-allow-headers": "authorization, content-type",
    "access-control-max-age": "3600",  # browsers cap it lower (Chromium: 2 hours)
}
CORS_EXPOSE = "retry-after, x-request-id"


def _service(gateway: Gateway) -> FeedbackService:
    if gateway.feedback is None:
        raise NotFound("feedback is not enabled on this gateway")
    return gateway.feedback


def _accepted(result: Accepted) -> dict[str, Any]:
    return {"object": "feedback.event", "response_id": result.response_id, "event_id": result.event_id,
            "duplicate": result.duplicate}  # fmt: skip


def _item(index: int, raw: Any, result: Accepted | GengateError) -> dict[str, Any]:
    if isinstance(result, Accepted):
        return {"index": index, "status": 200, **_accepted(result)}
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return {"index": index, "status": result.status, "event_id": event_id if isinstance(event_id, str) else None,
            **result.to_body()}  # fmt: skip


def _allowed_origin(request: Request) -> tuple[bool, str | None]:
    """(CORS is configured, the request's `Origin` when it is one of `feedback.cors_origins`)."""
    gateway: Gateway = request.app.state.gateway
    origins = gateway.settings.feedback.cors_origins
    origin = request.headers.get("origin")
    return bool(origins), origin if origin is not None and origin in origins else None


async def post_feedback(request: Request) -> Response:
    """POST /v1/feedback (with the CORS headers for a configured origin)."""
    response = await _post_feedback(request)
    configured, origin = _allowed_origin(request)
    if configured:
        response.headers.add_vary_header("origin")
    if origin is not None:
        response.headers["access-control-allow-origin"] = origin
        response.headers["access-control-expose-headers"] = CORS_EXPOSE
    return response


async def feedback_preflight(request: Request) -> Response:
    """OPTIONS /v1/feedback: the CORS preflight, allowed for `feedback.cors_origins` only."""
    configured, origin = _allowed_origin(request)
    if "origin" not in request.headers:
        return Response(status_code=204, headers={"allow": "OPTIONS, POST"})  # not CORS: plain OPTIONS
    if origin is None:
        response = error_response(
            PermissionDenied("this origin may not send feedback from a browser (feedback.cors_origins)",
                             code="origin_not_allowed")
        )  # fmt: skip
    else:
        response = Response(status_code=204, headers={"access-control-allow-origin": origin, **CORS_PREFLIGHT})
    if configured:
        response.headers.add_vary_header("origin")
    return response


async def _post_feedback(request: Request) -> Response:
    call = Call.begin(request, "feedback")
    try:
        principal = await call.authenticate(request)
        service = _service(call.gateway)
        body = parse_object(await request.body())
        batch, items = parse_events(body, call.gateway.settings.feedback)
        results = await service.submit(principal, items)
        if not batch:
            if isinstance(results[0], GengateError):
                raise results[0]
            return json_response(_accepted(results[0]))
        limited = [r for r in results if isinstance(r, RateLimited)]
        if len(limited) == len(results):
            raise limited[0]
        headers = {"retry-after": str(max(1, round(limited[0].retry_after)))} if limited else None
        data = [_item(i, raw, result) for i, (raw, result) in enumerate(zip(body["events"], results, strict=True))]
        return json_response({"object": "list", "data": data}, headers=headers)
    except Exception as exc:
        return call.fail(exc)
    finally:
        call.finish()


async def feedback_js(request: Request) -> Response:
    """GET /v1/feedback.js: the snippet, cacheable, revalidated by its ETag."""
    gateway: Gateway = request.app.state.gateway
    if not gateway.settings.feedback.snippet:
        return error_response(NotFound("the feedback snippet is not served here (feedback.snippet is off)"))
    body = resources.files("gengate.outer").joinpath(SNIPPET).read_bytes()
    etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
    headers = {"cache-control": SNIPPET_CACHE, "etag": etag, "x-content-type-options": "nosniff"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)
