"""Transport concerns as pure ASGI middleware: request ids, raw-path hygiene, body size limits.

The hot routes (`POST /v1/chat/completions`, `/v1/embeddings`) are dispatched straight from here to their
handlers, skipping Starlette's router and exception layers: those handlers turn every exception into a
response themselves, and this saves a measurable share of the gateway's per-request CPU.

Authorisation decisions are made on the raw path: a path with dot segments, doubled slashes, encoded
slashes/dots or backslashes is refused before routing, so `/v1/../admin/keys` cannot reach the admin plane.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gengate.app.errors import error_response
from gengate.errors import PayloadTooLarge, RequestError

_BAD_PATH = re.compile(rb"(/\.\.?(/|$)|//|%2[fFeE]|%5[cC]|\\)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
Endpoint = Callable[[Request], Awaitable[Response]]


class RequestContext:
    """Assigns `x-request-id` (client's if well-formed), enforces the body limit, checks the raw path."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, fast_routes: Mapping[str, Endpoint] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.fast_routes = dict(fast_routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    request_id = candidate
            elif name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if not request_id:
            request_id = os.urandom(16).hex()  # 128 random bits, like uuid4, at a fraction of its cost
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        raw_path = scope.get("raw_path") or scope["path"].encode()
        error: Exception | None = None
        limit = self.max_body_bytes
        if _BAD_PATH.search(raw_path.split(b"?", 1)[0]):
            error = RequestError("malformed request path")
        elif length is not None and length > limit:
            error = PayloadTooLarge(f"request body exceeds {limit} bytes")
        if error is not None:
            response = error_response(error)
            response.raw_headers.append(header)
            await response(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            return message

        endpoint = self.fast_routes.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is not None:
            scope["app"] = self.app  # what Starlette would set: handlers find the gateway on app.state
            response = await endpoint(Request(scope, limited_receive))
            response.raw_headers.append(header)
            await response(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        await self.app(scope, limited_receive, send_with_id)
