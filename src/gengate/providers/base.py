"""The Provider protocol and the values that cross it.

A provider speaks OpenAI's wire format: it takes the request body (with `model` already set to the deployment's
model name) and returns the response body, or an async iterator of parsed stream chunks. Errors are raised as
`gengate.errors.UpstreamError` subclasses, flagged retryable or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from gengate.types import Usage

Chunk = dict[str, Any]


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One attempt at one deployment."""

    payload: dict[str, Any]
    model: str
    timeout: float
    request_id: str


class Provider(Protocol):
    """What routing needs from a model provider."""

    name: str

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        """A non-streaming chat completion; returns the response body."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """A streaming chat completion; yields parsed `chat.completion.chunk` objects."""
        ...

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        """An embeddings call; returns the response body."""
        ...

    async def aclose(self) -> None:
        """Release connections and processes."""
        ...


def usage_of(body: dict[str, Any] | None) -> Usage | None:
    """Read OpenAI's `usage` object (with cached tokens) if present and well-formed."""
    if not body:
        return None
    raw = body.get("usage")
    if not isinstance(raw, dict):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0

    def _int(v: object) -> int:
        return v if isinstance(v, int) and v >= 0 else 0

    return Usage(
        prompt_tokens=_int(raw.get("prompt_tokens")),
        completion_tokens=_int(raw.get("completion_tokens")),
        cached_tokens=_int(cached),
    )
