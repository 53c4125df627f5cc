"""Transport concerns as pure ASGI middleware: request ids, raw-path hygiene, body size limits.

Authorisation decisions are made on the raw path: a path with dot segments, doubled slashes, encoded
slashes/dots or backslashes is refused before routing, so `/v1/../admin/keys` cannot reach the admin plane.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gengate.app.errors import error_response
from gengate.errors import PayloadTooLarge, RequestError

_BAD_PATH = re.compile(rb"(/\.\.?(/|$)|//|%2[fFeE]|%5[cC]|\\)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContext:
    """Assigns `x-request-id` (client's if well-formed), enforces the body limit, checks the raw path."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        raw_path = scope.get("raw_path") or scope["path"].encode()
        if _BAD_PATH.search(raw_path.split(b"?", 1)[0]):
            await error_response(RequestError("malformed request path"))(scope, receive, send_with_id)
            return
        limit = self.max_body_bytes
        if length is not None and length > limit:
            await error_response(PayloadTooLarge(f"request body exceeds {limit} bytes"))(scope, receive, send_with_id)
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

        await self.app(scope, limited_receive, send_with_id)
