"""The one place exceptions become HTTP responses in OpenAI's error shape."""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from gengate.errors import GengateError, RateLimited, UpstreamRejected

log = logging.getLogger("gengate.http")


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BaseException) -> Response:
    """OpenAI's `{"error": {...}}` with the right status; unexpected exceptions become a logged, opaque 500."""
    if isinstance(exc, GengateError):
        headers = {}
        if isinstance(exc, RateLimited):
            headers["retry-after"] = str(max(1, round(exc.retry_after)))
        body = exc.to_body()
        if isinstance(exc, UpstreamRejected) and exc.body and isinstance(exc.body.get("error"), dict):
            # The upstream's own error (e.g. context length exceeded) is more useful than ours.
            upstream = exc.body["error"]
            body["error"]["message"] = str(upstream.get("message") or exc.message)
            body["error"]["param"] = upstream.get("param")
            body["error"]["code"] = upstream.get("code") or exc.code
        return json_response(body, exc.status, headers)
    log.error("unhandled error", exc_info=exc)
    return json_response(
        {
            "error": {
                "message": "internal error",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        },
        500,
    )
