"""Parsing and validating OpenAI request bodies on the hot path (orjson + explicit checks, no model classes).

Only the fields gengate acts on are checked; everything else passes through to the upstream untouched, so
tool definitions, response formats and new OpenAI fields keep working.
"""

from __future__ import annotations

from typing import Any

import orjson

from gengate.errors import RequestError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong."""
    if not raw:
        raise RequestError("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestError("model is required and must be a non-empty string", param="model")
    return model


def _positive_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise RequestError(f"{name} must be a positive integer", param=name)
    return value


def validate_chat(body: dict[str, Any], *, max_messages: int) -> tuple[str, bool, int | None]:
    """Check a chat request; return (model, stream, max output tokens)."""
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty array", param="messages")
    if len(messages) > max_messages:
        raise RequestError(f"too many messages: {len(messages)} > {max_messages}", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}", param=f"messages[{i}].role"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise RequestError(f"messages[{i}].content must be a string or an array", param=f"messages[{i}].content")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("stream_options must be an object", param="stream_options")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise RequestError(f"{name} must be a number", param=name)
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RequestError("tools must be an array", param="tools")
    max_out = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")
    return model, stream, max_out


def validate_embeddings(body: dict[str, Any]) -> str:
    """Check an embeddings request; return the model."""
    model = _model(body)
    value = body.get("input")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list)
        and value
        and (all(isinstance(v, str) for v in value) or all(isinstance(v, int) for v in value)
             or all(isinstance(v, list) for v in value))
    )  # fmt: skip
    if not ok:
        raise RequestError("input must be a non-empty string or array", param="input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise RequestError("encoding_format must be 'float' or 'base64'", param="encoding_format")
    return model


def include_usage(body: dict[str, Any]) -> bool:
    """Did the client ask for the final usage chunk of a stream?"""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
