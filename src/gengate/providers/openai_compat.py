"""One OpenAI-compatible upstream client on aiohttp: OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp servers.

The differences are data: base URL, auth header (`Authorization: Bearer` or Azure's `api-key`), Azure's
deployment paths and `api-version`. URLs come only from server configuration, never from a request.

Owns: HTTP to upstreams, status → error classification, SSE parsing. Must not: retry (routing does that).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from gengate.errors import UpstreamError, UpstreamRejected, UpstreamTimeout
from gengate.providers.base import Chunk, UpstreamCall
from gengate.settings import ProviderSettings

_RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
_CREDENTIALS_REFUSED = {401, 403}
_MAX_ERROR_BODY = 4096


class OpenAICompatProvider:
    """Talks to any server that implements OpenAI's `/chat/completions` and `/embeddings`."""

    def __init__(
        self, name: str, settings: ProviderSettings, *, base_url: str | None = None, uuid_request_ids: bool = False
    ) -> None:
        self.name = name
        # Some servers (llama-cpp-python's, via starlette-context) answer 400 to an `x-request-id` that is not a
        # UUID; for them the id is sent as a UUID derived from ours, so logs on both sides still correlate.
        self._uuid_ids = uuid_request_ids
        self._settings = settings
        self._base = (base_url or settings.base_url or "").rstrip("/")
        self._azure = settings.type == "azure"
        headers = {"content-type": "application/json", **settings.headers}
        if settings.api_key is not None:
            secret = settings.api_key.get_secret_value()
            if self._azure:
                headers["api-key"] = secret
            else:
                headers["authorization"] = f"Bearer {secret}"
        self._headers = headers
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float, bool], aiohttp.ClientTimeout] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._settings.max_connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, json_serialize=lambda o: orjson.dumps(o).decode()
            )
        return self._session

    def _request_id(self, call: UpstreamCall) -> str:
        if not self._uuid_ids:
            return call.request_id
        try:
            return str(uuid.UUID(call.request_id))
        except ValueError:
            return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gengate:{call.request_id}"))

    def url(self, operation: str, model: str) -> str:
        """The upstream URL for an operation (`chat/completions` or `embeddings`)."""
        if self._azure:
            version = self._settings.api_version or "2024-10-21"
            return f"{self._base}/openai/deployments/{model}/{operation}?api-version={version}"
        return f"{self._base}/{operation}"

    def _timeout(self, call: UpstreamCall, stream: bool) -> aiohttp.ClientTimeout:
        key = (call.timeout, stream)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = self._make_timeout(call.timeout, stream)
        return timeout

    def _make_timeout(self, seconds: float, stream: bool) -> aiohttp.ClientTimeout:
        if stream:
            # For streams the timeout bounds the wait for each piece, not the whole answer.
            return aiohttp.ClientTimeout(sock_connect=self._settings.connect_timeout, sock_read=seconds)
        return aiohttp.ClientTimeout(total=seconds, sock_connect=self._settings.connect_timeout)

    async def _raise_for(self, resp: aiohttp.ClientResponse) -> None:
        message = summary = f"upstream {self.name} answered HTTP {resp.status}"
        status = resp.status
        if resp.status in _CREDENTIALS_REFUSED:
            # gengate's own upstream key or deployment is wrong, not the client's: a 502 the routing moves past
            # without retrying. The upstream's text is dropped, as it may quote part of the key.
            raise UpstreamError(
                f"{message}: gengate's credentials for it were refused", retryable=False, upstream_status=status
            )
        raw = await resp.content.read(_MAX_ERROR_BODY)
        body: dict[str, Any] | None = None
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict):
                body = parsed
                err = parsed.get("error")
                detail = err.get("message") if isinstance(err, dict) else err
                if isinstance(detail, str) and detail:
                    message = f"{message}: {detail[:500]}"
        except orjson.JSONDecodeError:
            pass
        if resp.status == 404:
            # The alias exists (gengate checked it), so a 404 means this deployment's model or path is wrong in
            # gengate's configuration: move on to the next deployment; the client sees a 502 if none answers.
            raise UpstreamError(
                f"{message} (deployment model or path not found upstream)",
                retryable=False,
                upstream_status=status,
                summary=f"{summary} (deployment model or path not found upstream)",
            )
        if resp.status == 429:
            # Retried and failed over like a 5xx; if every deployment keeps refusing, the client gets the 429.
            raise UpstreamRejected(message, status=429, body=body, summary=summary)
        if resp.status in _RETRYABLE or resp.status >= 500:
            raise UpstreamError(message, retryable=True, upstream_status=status, summary=summary)
        raise UpstreamRejected(message, status=status, body=body, summary=summary)

    async def _post_json(self, operation: str, call: UpstreamCall) -> dict[str, Any]:
        body = orjson.dumps(call.payload)
        try:
            async with self._client().post(
                self.url(operation, call.model),
                data=body,
                timeout=self._timeout(call, stream=False),
                headers={"x-request-id": self._request_id(call)},
            ) as resp:
                if resp.status != 200:
                    await self._raise_for(resp)
                raw = await resp.read()
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name} did not answer within {call.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.name} unreachable: {type(exc).__name__}") from None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"upstream {self.name} returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(f"upstream {self.name} returned JSON that is not an object")
        return parsed

    async def complete(self, call: UpstreamCall) -> dict[str, Any]:
        """Non-streaming chat completion."""
        body = await self._post_json("chat/completions", call)
        if not isinstance(body.get("choices"), list):
            raise UpstreamError(f"upstream {self.name} returned a completion without choices")
        return body

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        """Embeddings."""
        body = await self._post_json("embeddings", call)
        if not isinstance(body.get("data"), list):
            raise UpstreamError(f"upstream {self.name} returned embeddings without data")
        return body

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Streaming chat completion: parse `data:` lines of the SSE stream into chunk objects."""
        try:
            async with self._client().post(
                self.url("chat/completions", call.model),
                data=orjson.dumps(call.payload),
                timeout=self._timeout(call, stream=True),
                headers={"x-request-id": self._request_id(call), "accept": "text/event-stream"},
            ) as resp:
                if resp.status != 200:
                    await self._raise_for(resp)
                async for line in resp.content:
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError(f"upstream {self.name} sent a stream event that is not JSON") from None
                    if not isinstance(chunk, dict):
                        raise UpstreamError(f"upstream {self.name} sent a stream event that is not an object")
                    if "error" in chunk and "choices" not in chunk:
                        raise UpstreamError(f"upstream {self.name} reported an error mid-stream")
                    yield chunk
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name} stalled for more than {call.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream {self.name} unreachable: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
