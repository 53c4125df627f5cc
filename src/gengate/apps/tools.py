"""App tools at run time: the schema the model sees, caller-bound arguments and identity-forwarding HTTP calls.

Owns: removing bound parameters from the model's view of a tool, resolving a model's arguments against the tool's
schema (bound values always come from the `Principal`), building each backend request from configuration only,
forwarding the caller's identity (their own bearer token, or one from an RFC 8693 exchange), per-call timeouts,
response caps, and turning every backend failure into a `ToolResult`.

Must not: let a model-supplied value choose the scheme, host, port or path structure of a request; fall back to a
model value when a binding fails; follow redirects; forward a gengate key (virtual or admin) to a backend; put a
token into any result, error or log. The tool-round loop and the context guard belong to the app, not here.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlencode, urlsplit, urlunsplit

import aiohttp
import orjson
import yarl

from gengate.apps.tool_settings import PLACEHOLDER, TokenExchange, ToolLimits, ToolSpec
from gengate.errors import GengateError, PermissionDenied, RequestError, UpstreamError
from gengate.types import Principal

_TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN, not a secret
_ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN, not a secret
_EXCHANGE_MAX_BYTES = 64 * 1024
_EXCHANGE_DEFAULT_LIFETIME = 60.0  # seconds, when the exchange does not say (`expires_in`)
_EXCHANGE_SKEW = 30.0  # refresh this long before the exchanged token expires
_EXCHANGE_CACHE_MAX = 4096
_ERROR_DETAIL_CHARS = 300
_SHOWN_CHARS = 40
_REDACTED = "[redacted]"


@dataclass(frozen=True, slots=True)
class ResolvedCall:
    """A model's tool call made safe: arguments to send, bound keys the model tried to set, and problems."""

    arguments: dict[str, Any]
    ignored: list[str] = field(default_factory=list)  # bound parameters the model supplied (its values dropped)
    errors: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # undeclared keys the model supplied (dropped)

    @property
    def ok(self) -> bool:
        """True when the call may be sent to the backend."""
        return not self.errors


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool call produced: text for the model, and whether it worked."""

    content: str
    ok: bool
    status: int | None = None  # the backend's HTTP status, when it answered
    error: str | None = None  # short, never contains a token


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """One executed entry of an assistant message's `tool_calls`, ready to be fed back to the model."""

    tool_call_id: str
    name: str
    content: str
    ignored: list[str]
    ok: bool
    status: int | None = None
    error: str | None = None
    # The arguments the backend received (bound values included); None when the call never reached a backend.
    sent: dict[str, Any] | None = None
    # Names (never values) of the arguments the model supplied: declared ones kept, undeclared ones dropped.
    supplied: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        """The `role: tool` chat message answering this call."""
        return {"role": "tool", "tool_call_id": self.tool_call_id, "content": self.content}


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """An HTTP request built from a tool's configuration and resolved arguments (URL already encoded)."""

    method: str
    url: str
    body: bytes | None = None


# ---------------------------------------------------------------- the model's view


def _strip_bind(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_bind(v) for k, v in schema.items() if k != "bind"}
    if isinstance(schema, list):
        return [_strip_bind(v) for v in schema]
    return schema


def model_tools(specs: Iterable[ToolSpec]) -> list[dict[str, Any]]:
    """The OpenAI `tools` array: bound parameters are removed, so the model never sees nor sets them."""
    tools: list[dict[str, Any]] = []
    for spec in specs:
        bound = spec.bound
        parameters = {k: v for k, v in spec.parameters.items() if k not in ("properties", "required")}
        parameters["properties"] = {n: _strip_bind(s) for n, s in spec.properties.items() if n not in bound}
        required = [r for r in spec.parameters.get("required", []) if r not in bound]
        if required:
            parameters["required"] = required
        function: dict[str, Any] = {"name": spec.name}
        if spec.description:
            function["description"] = spec.description
        function["parameters"] = _strip_bind(parameters)
        tools.append({"type": "function", "function": function})
    return tools


# ---------------------------------------------------------------- arguments


def bound_value(source: str, principal: Principal) -> object | None:
    """The caller's value for a bind source; None when the credential does not carry it (the call must fail)."""
    root, _, rest = source.partition(".")
    value: object
    if root == "principal":
        if rest in ("groups", "roles"):
            return list(getattr(principal, rest))
        value = getattr(principal, rest, None)
    else:
        value = principal.claims
        for part in rest.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
    if value is None or value == "":
        return None
    return value


def _shown(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:_SHOWN_CHARS] + ("…" if len(text) > _SHOWN_CHARS else ""))


def _is_type(value: object, name: str) -> bool:
    if name == "string":
        return isinstance(value, str)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    return value is None  # "null"


def validate(value: object, schema: Mapping[str, Any], where: str) -> list[str]:
    """Problems of `value` against the supported JSON-schema subset (see `tool_settings`), as readable lines."""
    declared = schema.get("type")
    if declared is not None:
        names = [declared] if isinstance(declared, str) else list(declared)
        if not any(_is_type(value, n) for n in names):
            return [f"{where}: expected {' or '.join(names)}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: must be one of {', '.join(_shown(v) for v in schema['enum'][:20])}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: must be <= {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: must be at least {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: must be at most {schema['maxLength']} characters")
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            errors.append(f"{where}: does not match the pattern {schema['pattern']!r}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: must have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: must have at most {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors.extend(validate(item, schema["items"], f"{where}[{i}]"))
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}.{name}: required")
        for name, item in value.items():
            if name in properties:
                errors.extend(validate(item, properties[name], f"{where}.{name}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}.{name}: not allowed")
    return errors


def _parse_arguments(model_args: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    if model_args is None or (isinstance(model_args, str) and not model_args.strip()):
        return {}, []
    if isinstance(model_args, Mapping):
        return dict(model_args), []
    try:
        parsed = orjson.loads(model_args)
    except orjson.JSONDecodeError:
        return {}, ["arguments are not valid JSON"]
    if not isinstance(parsed, dict):
        return {}, ["arguments must be a JSON object"]
    return parsed, []


def resolve_arguments(spec: ToolSpec, model_args: str | Mapping[str, Any] | None, principal: Principal) -> ResolvedCall:
    """Keep the model's declared, unbound arguments; set bound ones from the caller; validate the result."""
    parsed, errors = _parse_arguments(model_args)
    properties = spec.properties
    bound = spec.bound
    arguments: dict[str, Any] = {}
    ignored: list[str] = []
    unknown: list[str] = []
    for key, value in parsed.items():
        if key in bound:
            ignored.append(key)
        elif key in properties:
            arguments[key] = value
        else:
            unknown.append(key)
    for name, source in bound.items():
        value = bound_value(source, principal)
        if value is None:
            # Fail closed: a bound parameter never falls back to the model's value or to nothing.
            errors.append(f"{name}: bound to {source}, which the caller's credential does not carry")
            continue
        if isinstance(value, int) and not isinstance(value, bool) and properties[name].get("type") == "string":
            value = str(value)  # numeric ids in claims, declared as strings
        arguments[name] = value
    if not errors:
        errors.extend(validate(arguments, spec.parameters, "arguments"))
    return ResolvedCall(arguments=arguments, ignored=ignored, errors=errors, unknown=unknown)


# ---------------------------------------------------------------- requests


def _scalar_text(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise RequestError(f"{name}: only strings, numbers and booleans can be sent in a URL")


def _path_segment(name: str, value: object) -> str:
    if value is None:
        raise RequestError(f"{name}: missing (it is part of the backend URL)")
    text = _scalar_text(name, value)
    if text in ("", ".", ".."):
        # Percent-encoding leaves dots alone, and an empty, `.` or `..` segment would change the path.
        raise RequestError(f"{name}: {text!r} is not allowed in the backend URL")
    return quote(text, safe="")


def build_request(spec: ToolSpec, arguments: Mapping[str, Any]) -> BackendRequest:
    """The backend request: scheme, host, port and path shape from configuration; values only percent-encoded."""
    http = spec.http
    parts = urlsplit(http.url)
    path = PLACEHOLDER.sub(lambda m: _path_segment(m.group(1), arguments.get(m.group(1))), parts.path)
    in_path = set(http.path_params)
    if http.query is not None:
        query_names = list(http.query)
    elif http.method == "GET":
        query_names = [n for n in spec.properties if n not in in_path]
    else:
        query_names = []
    pairs: list[tuple[str, str]] = []
    for name in query_names:
        value = arguments.get(name)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        pairs.extend((name, _scalar_text(name, item)) for item in items)
    query = "&".join(q for q in (parts.query, urlencode(pairs, quote_via=quote)) if q)
    body = None
    if http.method == "POST":
        sent = in_path | set(query_names)
        body = orjson.dumps({k: v for k, v in arguments.items() if k not in sent})
    return BackendRequest(http.method, urlunsplit((parts.scheme, parts.netloc, path, query, "")), body)


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def _failure(message: str, *, status: int | None = None, detail: str = "") -> ToolResult:
    body: dict[str, Any] = {"error": message}
    if detail:
        body["detail"] = detail
    return ToolResult(content=orjson.dumps(body).decode(), ok=False, status=status, error=message)


def _render(raw: bytes, truncated: bool, limit: int) -> str:
    """Response text for the model: compact JSON when the whole body is JSON, otherwise the text as sent."""
    if not truncated:
        try:
            return orjson.dumps(orjson.loads(raw)).decode()
        except orjson.JSONDecodeError:
            pass
    text = raw.decode("utf-8", errors="replace")
    if truncated:
        text += f"\n[truncated: the response exceeded {limit} bytes]"
    return text


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(16 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[:limit], size > limit


# ---------------------------------------------------------------- execution


class ToolExecutor:
    """Calls tool backends with the caller's identity; owns an HTTP session (close it with `aclose`)."""

    def __init__(
        self,
        specs: Iterable[ToolSpec] = (),
        *,
        limits: ToolLimits | None = None,
        clock: Callable[[], float] = time.time,
        max_connections: int = 64,
    ) -> None:
        self._specs = {s.name: s for s in specs}
        self._limits = limits or ToolLimits()
        self._clock = clock
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        # (exchange url, client id, audience, scope, issuer, subject) → (token, wall-clock expiry)
        self._exchanged: dict[tuple[str, ...], tuple[str, float]] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                # Cookies a backend sets for one caller must never ride along with another caller's call.
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    def timeout_for(self, spec: ToolSpec) -> float:
        """Seconds allowed for one call of this tool (its own timeout, capped by the app's limit)."""
        own = spec.http.timeout
        return self._limits.timeout if own is None else min(own, self._limits.timeout)

    async def call(self, spec: ToolSpec | str, resolved: ResolvedCall, principal: Principal) -> ToolResult:
        """Execute one resolved call; every failure (arguments, identity, backend, timeout) is a ToolResult."""
        tool = self._specs.get(spec) if isinstance(spec, str) else spec
        if tool is None:
            return _failure(f"unknown tool {_shown(spec)}")
        if resolved.errors:
            return _failure("invalid arguments: " + "; ".join(resolved.errors))
        # Tokens the backend might echo back; configured header values are not listed, as short ones ("hr")
        # would garble ordinary text and they are never put in errors anyway.
        secrets = [principal.token]
        if tool.http.exchange is not None:
            secrets.append(tool.http.exchange.client_secret.get_secret_value())
        seconds = self.timeout_for(tool)
        try:
            request = build_request(tool, resolved.arguments)
            async with asyncio.timeout(seconds):
                headers = {name: value.get_secret_value() for name, value in tool.http.headers.items()}
                token = await self._identity_token(tool, principal)
                if token is not None:
                    secrets.append(token)
                    headers["Authorization"] = f"Bearer {token}"
                result = await self._send(tool, request, headers)
        except TimeoutError:
            result = _failure(f"tool {tool.name} did not answer within {seconds:g}s")
        except GengateError as exc:
            result = _failure(exc.message)
        except aiohttp.ClientError as exc:
            result = _failure(f"tool {tool.name}: backend unreachable ({type(exc).__name__})")
        return ToolResult(
            content=_redact(result.content, secrets),
            ok=result.ok,
            status=result.status,
            error=None if result.error is None else _redact(result.error, secrets),
        )

    async def _identity_token(self, spec: ToolSpec, principal: Principal) -> str | None:
        identity = spec.http.identity
        if identity == "none":
            return None
        if principal.auth != "jwt" or not principal.token:
            # A gengate key is a credential for gengate itself: handing it to a backend would let that backend
            # act as the caller here. Only an identity provider's token is forwarded (or exchanged).
            raise PermissionDenied(
                f"tool {spec.name} acts as the caller and needs a sign-in token from the identity provider; "
                "gengate API keys are never forwarded"
            )
        if identity == "bearer":
            return principal.token
        assert spec.http.exchange is not None  # guaranteed by ToolHttp's validation
        return await self._exchange(spec.name, spec.http.exchange, principal)

    async def _exchange(self, tool: str, exchange: TokenExchange, principal: Principal) -> str:
        issuer = principal.claims.get("iss")
        key = (
            exchange.url,
            exchange.client_id,
            exchange.audience or "",
            exchange.scope or "",
            issuer if isinstance(issuer, str) else "",
            principal.subject,
        )
        now = self._clock()
        cached = self._exchanged.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        form = {
            "grant_type": _TOKEN_EXCHANGE_GRANT,
            "subject_token": principal.token,
            "subject_token_type": exchange.subject_token_type,
            "requested_token_type": _ACCESS_TOKEN_TYPE,
        }
        if exchange.audience:
            form["audience"] = exchange.audience
        if exchange.scope:
            form["scope"] = exchange.scope
        secret = exchange.client_secret.get_secret_value()
        headers = {"Accept": "application/json"}
        if exchange.client_auth == "basic":
            pair = f"{quote_plus(exchange.client_id)}:{quote_plus(secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = exchange.client_id
            form["client_secret"] = secret
        async with self._client().post(
            yarl.URL(exchange.url), data=form, allow_redirects=False, headers=headers
        ) as resp:
            # The exchange's body is never shown: it may quote the tokens or the client secret.
            if resp.status != 200:
                raise UpstreamError(f"tool {tool}: token exchange refused (HTTP {resp.status})")
            raw, truncated = await _read_capped(resp, _EXCHANGE_MAX_BYTES)
        try:
            answer = orjson.loads(raw) if not truncated else None
        except orjson.JSONDecodeError:
            answer = None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError(f"tool {tool}: token exchange answered without an access_token")
        assert isinstance(answer, dict)
        lifetime = answer.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
            lifetime = _EXCHANGE_DEFAULT_LIFETIME
        expires = now + lifetime - min(_EXCHANGE_SKEW, lifetime / 2)
        caller_expiry = principal.claims.get("exp")
        if isinstance(caller_expiry, int | float) and not isinstance(caller_expiry, bool):
            expires = min(expires, float(caller_expiry))  # never outlive the caller's own token
        self._remember(key, token, expires, now)
        return token

    def _remember(self, key: tuple[str, ...], token: str, expires: float, now: float) -> None:
        if expires <= now:
            return
        if len(self._exchanged) >= _EXCHANGE_CACHE_MAX:
            self._exchanged = {k: v for k, v in self._exchanged.items() if v[1] > now}
            if len(self._exchanged) >= _EXCHANGE_CACHE_MAX:
                self._exchanged.clear()
        self._exchanged[key] = (token, expires)

    async def _send(self, spec: ToolSpec, request: BackendRequest, headers: dict[str, str]) -> ToolResult:
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        headers.setdefault("Accept", "application/json")
        limit = spec.http.max_response_bytes
        async with self._client().request(
            request.method,
            yarl.URL(request.url, encoded=True),
            data=request.body,
            headers=headers,
            allow_redirects=False,
        ) as resp:
            status = resp.status
            if 300 <= status < 400:
                return _failure(
                    f"tool {spec.name}: the backend answered with a redirect (HTTP {status}), which is not followed",
                    status=status,
                )
            raw, truncated = await _read_capped(resp, limit if status < 400 else _ERROR_DETAIL_CHARS)
        if status >= 400 or status < 200:
            detail = raw.decode("utf-8", errors="replace")[:_ERROR_DETAIL_CHARS]
            refused = " (the caller is not allowed)" if status in (401, 403) else ""
            return _failure(
                f"tool {spec.name}: the backend answered HTTP {status}{refused}", status=status, detail=detail
            )
        return ToolResult(content=_render(raw, truncated, limit), ok=True, status=status)

    async def aclose(self) -> None:
        """Close the HTTP session and forget exchanged tokens."""
        self._exchanged.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _run_one(
    executor: ToolExecutor, specs_by_name: Mapping[str, ToolSpec], call: Mapping[str, Any], principal: Principal
) -> ToolOutcome:
    call_id = call.get("id")
    call_id = call_id if isinstance(call_id, str) else ""
    function = call.get("function")
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(name, str):
        result = _failure("malformed tool call (no function name)")
        return ToolOutcome(call_id, "", result.content, [], False, error=result.error)
    spec = specs_by_name.get(name)
    if spec is None:
        result = _failure(f"unknown tool {_shown(name)}")
        return ToolOutcome(call_id, name, result.content, [], False, error=result.error)
    arguments = function.get("arguments")
    if not isinstance(arguments, str | Mapping | None):
        arguments = "not a JSON object"  # reported as invalid JSON, like any other garbage
    resolved = resolve_arguments(spec, arguments, principal)
    result = await executor.call(spec, resolved, principal)
    sent = resolved.arguments if result.status is not None else None  # a status means the backend answered
    supplied = [key for key in resolved.arguments if key not in spec.bound]
    return ToolOutcome(
        call_id, name, result.content, resolved.ignored, result.ok, result.status, result.error, sent, supplied,
        list(resolved.unknown),
    )  # fmt: skip


async def run_tool_calls(
    executor: ToolExecutor,
    specs_by_name: Mapping[str, ToolSpec],
    tool_calls: Sequence[Mapping[str, Any]],
    principal: Principal,
) -> list[ToolOutcome]:
    """Resolve and execute an assistant message's `tool_calls` concurrently; one outcome per call, in order."""
    return list(await asyncio.gather(*(_run_one(executor, specs_by_name, c, principal) for c in tool_calls)))
