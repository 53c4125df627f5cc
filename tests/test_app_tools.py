"""App tools: bound parameters, identity forwarding, token exchange, SSRF and path-injection defences, limits.

The backend and the token-exchange server are real aiohttp servers on loopback. The backend authorises on the
bearer token itself (as a real one would): it refuses a token that does not belong to the employee in the path,
and records every request it receives. Time for the exchange cache is an injected fake clock.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import yarl
from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from gengate.apps.tool_settings import ToolLimits, ToolSpec, ToolSpecs
from gengate.apps.tools import (
    ResolvedCall,
    ToolExecutor,
    ToolResult,
    build_request,
    model_tools,
    resolve_arguments,
    run_tool_calls,
)
from gengate.types import Principal

ALICE_TOKEN = "eyJhbGciOi.alice-bearer-token-0123456789"
BOB_TOKEN = "eyJhbGciOi.bob-bearer-token-9876543210"
VIRTUAL_KEY = "gg-virtual-key-abcdefghijklmnop"
CLIENT_SECRET = "exchange-client-secret-42"
NOW = 1_700_000_000.0

ALICE = Principal(
    subject="alice",
    team="hr",
    groups=("staff", "leave-readers"),
    auth="jwt",
    claims={"sub": "alice", "iss": "https://idp.test", "exp": NOW + 3600, "org": {"tenant": "acme"}},
    token=ALICE_TOKEN,
)
KEY_CALLER = Principal(subject="key:k1", team="hr", key_id="k1", auth="key", token=VIRTUAL_KEY)


# ---------------------------------------------------------------- fixtures and helpers


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Servers:
    """The backend and the exchange server; what they received, and what unblocks the slow endpoint."""

    backend: str = ""
    idp: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def paths(self) -> list[str]:
        return [r["raw_path"] for r in self.requests]


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    owners = {ALICE_TOKEN: "alice", BOB_TOKEN: "bob"}

    def caller(request: web.Request) -> tuple[str, str | None]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return token, owners.get(token)

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        s.requests.append(
            {
                "method": request.method,
                "raw_path": request.rel_url.raw_path,
                "query": dict(request.rel_url.query),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        response: web.StreamResponse = await handler(request)
        return response

    async def leave(request: web.Request) -> web.Response:
        token, who = caller(request)
        employee = request.match_info["employee_id"]
        if who is None:
            return web.json_response({"error": "who are you?"}, status=401)
        if who != employee:
            # Echoes the token, as careless backends do: gengate must not pass it on to the model.
            return web.json_response({"error": f"token {token} may not read {employee}"}, status=403)
        return web.json_response({"employee": employee, "year": request.query.get("year"), "days": 12})

    async def docs(request: web.Request) -> web.Response:
        return web.json_response({"doc": request.match_info["doc_id"]})

    async def admin(request: web.Request) -> web.Response:
        return web.json_response({"admin": "secrets"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(s.release.wait(), 10)
        return web.json_response({"late": True})

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/admin")

    async def big(request: web.Request) -> web.Response:
        return web.Response(text="x" * 200_000)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"you sent {request.headers.get('Authorization')}")

    async def orders(request: web.Request) -> web.Response:
        return web.json_response({"body": await request.json(), "query": dict(request.query)})

    backend = web.Application(middlewares=[record])
    backend.router.add_get("/leave/{employee_id}", leave)
    backend.router.add_get("/docs/{doc_id}", docs)
    backend.router.add_get("/admin", admin)
    backend.router.add_get("/slow", slow)
    backend.router.add_get("/redirect", redirect)
    backend.router.add_get("/big", big)
    backend.router.add_get("/echo", echo)
    backend.router.add_post("/orders/{shop}", orders)

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        s.exchanges.append({"form": form, "authorization": request.headers.get("Authorization", "")})
        expected = "Basic " + base64.b64encode(f"gengate:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        subject = owners.get(str(form.get("subject_token")))
        if subject is None:
            return web.json_response({"error": "invalid_grant"}, status=400)
        exchanged = f"xchg-{subject}-{len(s.exchanges)}"
        owners[exchanged] = subject
        return web.json_response({"access_token": exchanged, "token_type": "Bearer", "expires_in": 300})

    idp = web.Application()
    idp.router.add_post("/token", token)

    backend_runner, s.backend = await _serve(backend)
    idp_runner, s.idp = await _serve(idp)
    yield s
    s.release.set()
    await backend_runner.cleanup()
    await idp_runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def executor(clock: FakeClock) -> AsyncIterator[ToolExecutor]:
    made = ToolExecutor(limits=ToolLimits(max_rounds=3, timeout=10), clock=clock)
    yield made
    await made.aclose()


def leave_tool(base: str, **http: Any) -> ToolSpec:
    """The issue's example: employee and tenant bound to the caller, the year chosen by the model."""
    return ToolSpec.model_validate(
        {
            "name": "get_leave_balance",
            "description": "Leave balance of the employee asking",
            "parameters": {
                "type": "object",
                "properties": {
                    "employee_id": {"type": "string", "bind": "claims.sub"},
                    "tenant": {"type": "string", "bind": "principal.team"},
                    "year": {"type": "integer", "minimum": 2000},
                },
                "required": ["employee_id", "year"],
            },
            "http": {"method": "GET", "url": f"{base}/leave/{{employee_id}}", "query": ["year", "tenant"], **http},
        },
        context={"environ": {"EXCHANGE_SECRET": CLIENT_SECRET}},
    )


def simple_tool(base: str, path: str, *, name: str = "fetch", **http: Any) -> ToolSpec:
    """A tool with one model-generated path parameter, `doc_id`, and identity `none` unless told otherwise."""
    return ToolSpec.model_validate(
        {
            "name": name,
            "parameters": {"type": "object", "properties": {"doc_id": {"type": "string"}}},
            "http": {"url": f"{base}{path}", "identity": "none", **http},
        }
    )


async def call(executor: ToolExecutor, spec: ToolSpec, args: Any, principal: Principal = ALICE) -> ToolResult:
    return await executor.call(spec, resolve_arguments(spec, args, principal), principal)


def exchange_http(idp: str) -> dict[str, Any]:
    return {
        "identity": "exchange",
        "exchange": {
            "url": f"{idp}/token",
            "client_id": "gengate",
            "client_secret": "env:EXCHANGE_SECRET",
            "audience": "leave-api",
        },
    }


# ---------------------------------------------------------------- what the model sees


def test_model_sees_no_bound_parameters() -> None:
    tools = model_tools([leave_tool("http://127.0.0.1:9000")])
    function = tools[0]["function"]
    assert tools[0]["type"] == "function"
    assert function["name"] == "get_leave_balance"
    assert function["description"] == "Leave balance of the employee asking"
    assert function["parameters"] == {
        "type": "object",
        "properties": {"year": {"type": "integer", "minimum": 2000}},
        "required": ["year"],
    }
    assert b"bind" not in orjson.dumps(tools)


# ---------------------------------------------------------------- resolving arguments


def test_model_supplied_bound_values_are_ignored_and_recorded() -> None:
    resolved = resolve_arguments(
        leave_tool("http://127.0.0.1:9000"), '{"employee_id": "bob", "tenant": "it", "year": 2024, "x": 1}', ALICE
    )
    assert resolved.ok
    assert resolved.arguments == {"employee_id": "alice", "tenant": "hr", "year": 2024}
    assert resolved.ignored == ["employee_id", "tenant"]
    assert resolved.unknown == ["x"]


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("{not json", "arguments are not valid JSON"),
        ("[2024]", "arguments must be a JSON object"),
        ("{}", "arguments.year: required"),
        ('{"year": "2024"}', "arguments.year: expected integer"),
        ('{"year": true}', "arguments.year: expected integer"),
        ('{"year": 1999}', "arguments.year: must be >= 2000"),
    ],
)
def test_invalid_model_arguments_are_reported(arguments: str, error: str) -> None:
    resolved = resolve_arguments(leave_tool("http://127.0.0.1:9000"), arguments, ALICE)
    assert error in resolved.errors


def test_binds_groups_and_nested_claims() -> None:
    spec = ToolSpec.model_validate(
        {
            "name": "groups",
            "parameters": {
                "type": "object",
                "properties": {
                    "groups": {"type": "array", "items": {"type": "string"}, "bind": "principal.groups"},
                    "tenant": {"type": "string", "bind": "claims.org.tenant"},
                },
            },
            "http": {"method": "POST", "url": "http://127.0.0.1:9000/g"},
        }
    )
    resolved = resolve_arguments(spec, {"groups": ["admins"]}, ALICE)
    assert resolved.arguments == {"groups": ["staff", "leave-readers"], "tenant": "acme"}
    assert resolved.ignored == ["groups"]


# ---------------------------------------------------------------- identity and authorisation by the backend


async def test_backend_gets_callers_own_id_and_token(servers: Servers, executor: ToolExecutor) -> None:
    spec = leave_tool(servers.backend)
    outcomes = await run_tool_calls(
        executor,
        {spec.name: spec},
        [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_leave_balance", "arguments": '{"employee_id": "bob", "year": 2024}'},
            }
        ],
        ALICE,
    )
    [outcome] = outcomes
    assert outcome.ok, outcome.error
    assert outcome.tool_call_id == "call_1"
    assert outcome.ignored == ["employee_id"]
    assert orjson.loads(outcome.content) == {"employee": "alice", "year": "2024", "days": 12}
    assert outcome.message() == {"role": "tool", "tool_call_id": "call_1", "content": outcome.content}
    [received] = servers.requests
    assert received["raw_path"] == "/leave/alice"
    assert received["query"] == {"year": "2024", "tenant": "hr"}
    assert received["headers"]["Authorization"] == f"Bearer {ALICE_TOKEN}"


async def test_backend_refusal_is_a_tool_error_without_the_token(servers: Servers, executor: ToolExecutor) -> None:
    # Claims say bob, but the token is alice's: the backend decides, and refuses.
    mismatched = Principal(subject="bob", team="hr", auth="jwt", claims={"sub": "bob"}, token=ALICE_TOKEN)
    result = await call(executor, leave_tool(servers.backend), {"year": 2024}, mismatched)
    assert not result.ok
    assert result.status == 403
    assert result.error == "tool get_leave_balance: the backend answered HTTP 403 (the caller is not allowed)"
    assert ALICE_TOKEN not in result.content
    assert "[redacted]" in result.content


async def test_token_echoed_by_backend_is_redacted(servers: Servers, executor: ToolExecutor) -> None:
    spec = simple_tool(servers.backend, "/echo", identity="bearer")
    result = await call(executor, spec, {})
    assert result.ok
    assert result.content == "you sent Bearer [redacted]"


async def test_virtual_key_caller_fails_closed_on_claims_binding(servers: Servers, executor: ToolExecutor) -> None:
    result = await call(executor, leave_tool(servers.backend), {"employee_id": "alice", "year": 2024}, KEY_CALLER)
    assert not result.ok
    assert result.error is not None
    assert "employee_id: bound to claims.sub, which the caller's credential does not carry" in result.error
    assert servers.requests == []


async def test_gengate_keys_are_never_forwarded(servers: Servers, executor: ToolExecutor) -> None:
    result = await call(executor, simple_tool(servers.backend, "/echo", identity="bearer"), {}, KEY_CALLER)
    assert not result.ok
    assert result.error is not None
    assert "gengate API keys are never forwarded" in result.error
    assert servers.requests == []


async def test_token_exchange_posts_client_credentials_and_forwards_the_new_token(
    servers: Servers, executor: ToolExecutor, clock: FakeClock
) -> None:
    spec = leave_tool(servers.backend, **exchange_http(servers.idp))
    first = await call(executor, spec, {"year": 2024})
    second = await call(executor, spec, {"year": 2025})
    assert first.ok and second.ok, (first.error, second.error)

    [exchange] = servers.exchanges  # the second call reused the cached token
    assert exchange["authorization"] == "Basic " + base64.b64encode(f"gengate:{CLIENT_SECRET}".encode()).decode()
    assert exchange["form"] == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": ALICE_TOKEN,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "leave-api",
    }
    assert [r["headers"]["Authorization"] for r in servers.requests] == ["Bearer xchg-alice-1"] * 2

    clock.now += 300  # past the exchanged token's lifetime
    third = await call(executor, spec, {"year": 2026})
    assert third.ok
    assert len(servers.exchanges) == 2
    assert servers.requests[-1]["headers"]["Authorization"] == "Bearer xchg-alice-2"


async def test_refused_exchange_fails_without_calling_the_backend(servers: Servers, executor: ToolExecutor) -> None:
    http = exchange_http(servers.idp)
    http["exchange"]["client_secret"] = "wrong-secret"
    result = await call(executor, leave_tool(servers.backend, **http), {"year": 2024})
    assert not result.ok
    assert result.error == "tool get_leave_balance: token exchange refused (HTTP 401)"
    assert servers.requests == []


# ---------------------------------------------------------------- SSRF and path injection


@pytest.mark.parametrize(
    ("doc_id", "raw_path"),
    [
        ("../admin", "/docs/..%2Fadmin"),
        ("x/y", "/docs/x%2Fy"),
        ("%2e%2e%2fadmin", "/docs/%252e%252e%252fadmin"),
        ("a?b=1#c", "/docs/a%3Fb%3D1%23c"),
    ],
)
async def test_path_values_are_encoded_and_stay_under_the_configured_path(
    servers: Servers, executor: ToolExecutor, doc_id: str, raw_path: str
) -> None:
    result = await call(executor, simple_tool(servers.backend, "/docs/{doc_id}"), {"doc_id": doc_id})
    assert result.ok, result.error
    assert orjson.loads(result.content) == {"doc": doc_id}
    assert servers.paths() == [raw_path]


@pytest.mark.parametrize("doc_id", ["..", ".", ""])
async def test_dot_segments_and_empty_values_are_refused(servers: Servers, executor: ToolExecutor, doc_id: str) -> None:
    result = await call(executor, simple_tool(servers.backend, "/docs/{doc_id}"), {"doc_id": doc_id})
    assert not result.ok
    assert result.error == f"doc_id: {doc_id!r} is not allowed in the backend URL"
    assert servers.requests == []


@pytest.mark.parametrize(
    "doc_id",
    ["evil.example", "@evil.example", "//evil.example:81/x", "http://evil.example/", "\r\nHost: evil", "127.0.0.1:1"],
)
def test_model_values_cannot_change_scheme_host_or_port(doc_id: str) -> None:
    spec = simple_tool("http://127.0.0.1:9000", "/docs/{doc_id}")
    url = yarl.URL(build_request(spec, {"doc_id": doc_id, "host": "evil.example"}).url, encoded=True)
    assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 9000)
    assert url.raw_path.startswith("/docs/")
    assert url.raw_path.count("/") == 2


def test_post_sends_the_rest_as_json_body() -> None:
    spec = ToolSpec.model_validate(
        {
            "name": "order",
            "parameters": {
                "type": "object",
                "properties": {
                    "shop": {"type": "string"},
                    "dry_run": {"type": "boolean"},
                    "item": {"type": "string"},
                    "tenant": {"type": "string", "bind": "principal.team"},
                },
            },
            "http": {"method": "post", "url": "http://127.0.0.1:9000/orders/{shop}?v=2", "query": ["dry_run"]},
        }
    )
    resolved = resolve_arguments(spec, {"shop": "a b", "dry_run": True, "item": "pen", "tenant": "it"}, ALICE)
    request = build_request(spec, resolved.arguments)
    assert request.method == "POST"
    assert request.url == "http://127.0.0.1:9000/orders/a%20b?v=2&dry_run=true"
    assert orjson.loads(request.body or b"") == {"item": "pen", "tenant": "hr"}


# ---------------------------------------------------------------- limits and backend misbehaviour


async def test_slow_backend_times_out_quickly(servers: Servers, executor: ToolExecutor) -> None:
    spec = simple_tool(servers.backend, "/slow", timeout=0.3)
    started = time.monotonic()
    result = await call(executor, spec, {})
    assert time.monotonic() - started < 5
    assert not result.ok
    assert result.error == "tool fetch did not answer within 0.3s"


async def test_redirects_are_not_followed(servers: Servers, executor: ToolExecutor) -> None:
    result = await call(executor, simple_tool(servers.backend, "/redirect"), {})
    assert not result.ok
    assert result.status == 302
    assert "redirect" in (result.error or "")
    assert servers.paths() == ["/redirect"]


async def test_oversize_response_is_truncated_with_a_note(servers: Servers, executor: ToolExecutor) -> None:
    result = await call(executor, simple_tool(servers.backend, "/big", max_response_bytes=2048), {})
    assert result.ok
    assert result.content == "x" * 2048 + "\n[truncated: the response exceeded 2048 bytes]"


async def test_unreachable_backend_is_a_tool_error(executor: ToolExecutor) -> None:
    spec = simple_tool("http://127.0.0.1:1", "/nothing-listens-here")
    result = await call(executor, spec, {})
    assert not result.ok
    assert (result.error or "").startswith("tool fetch: backend unreachable")


async def test_unknown_and_malformed_tool_calls_get_error_results(executor: ToolExecutor) -> None:
    spec = simple_tool("http://127.0.0.1:1", "/x")
    outcomes = await run_tool_calls(
        executor,
        {spec.name: spec},
        [{"id": "a", "function": {"name": "rm_rf", "arguments": "{}"}}, {"id": "b"}],
        ALICE,
    )
    assert [(o.tool_call_id, o.ok, o.error) for o in outcomes] == [
        ("a", False, "unknown tool 'rm_rf'"),
        ("b", False, "malformed tool call (no function name)"),
    ]
    assert orjson.loads(outcomes[0].content) == {"error": "unknown tool 'rm_rf'"}


async def test_invalid_arguments_never_reach_the_backend(servers: Servers, executor: ToolExecutor) -> None:
    spec = leave_tool(servers.backend)
    result = await executor.call(spec, ResolvedCall(arguments={}, errors=["arguments.year: required"]), ALICE)
    assert not result.ok
    assert result.error == "invalid arguments: arguments.year: required"
    assert servers.requests == []


# ---------------------------------------------------------------- configuration


def _config(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "get_leave_balance",
        "parameters": {
            "type": "object",
            "properties": {"employee_id": {"type": "string", "bind": "claims.sub"}, "year": {"type": "integer"}},
        },
        "http": {"url": "http://127.0.0.1:9000/leave/{employee_id}"},
    }
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            config[section] = {**config[section], name: value}
        else:
            config[section] = value
    return config


def _props(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (_config(name="get leave"), "tool name 'get leave' must be 1-64 letters, digits, '_' or '-'"),
        (_config(name="x" * 65), "must be 1-64 letters"),
        (
            _config(parameters=_props(employee_id={"type": "string", "bind": "claim.sub"})),
            "parameters.properties.employee_id.bind: unknown bind source 'claim.sub'",
        ),
        (
            _config(parameters=_props(employee_id={"type": "string", "bind": "principal.password"})),
            "unknown bind source 'principal.password'",
        ),
        (
            _config(
                parameters=_props(
                    employee_id={"type": "string"},
                    filter={"type": "object", "properties": {"team": {"type": "string", "bind": "principal.team"}}},
                )
            ),
            "parameters.properties.filter.properties.team.bind: bind is allowed only on top-level properties",
        ),
        (
            _config(parameters=_props(employee_id={"type": "integer", "bind": "principal.team"})),
            "principal.team is a string, so the property must allow type string",
        ),
        (
            _config(parameters=_props(employee_id={"type": "string", "format": "uuid"})),
            "parameters.properties.employee_id: keyword 'format' is not supported",
        ),
        (_config(http__url="http://127.0.0.1:9000/leave/{employee}"), "placeholder {employee} is not a declared"),
        (_config(http__url="http://{employee_id}.internal/leave"), "allowed only in the path"),
        (_config(http__url="http://127.0.0.1:9000/leave?id={employee_id}"), "allowed only in the path"),
        (_config(http__url="file:///etc/passwd"), "must be an http:// or https:// URL"),
        (_config(http__url="http:///leave"), "has no host"),
        (_config(http__url="http://user:pw@127.0.0.1/leave"), "must not carry credentials"),
        (_config(http__identity="exchange"), "identity: exchange needs an `exchange` block"),
        (
            _config(http__exchange={"url": "http://127.0.0.1:1/t", "client_id": "c", "client_secret": "s"}),
            "`exchange` is only used with identity: exchange",
        ),
        (_config(http__query=["year", "nope"]), "http.query: nope not declared"),
        (_config(http__query=[]), "GET sends no body, so year must be in the url path or in query"),
        (_config(http__headers={"Authorization": "Bearer static"}), "conflicts with identity: bearer"),
        (_config(http__headers={"Host": "evil"}), "'Host' is set by the HTTP client"),
        (_config(http__method="DELETE"), "Input should be 'GET' or 'POST'"),
    ],
)
def test_invalid_tool_configuration_is_refused_with_a_clear_message(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ToolSpec.model_validate(config)
    assert message in str(raised.value)


def test_duplicate_tool_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate tool names: get_leave_balance"):
        TypeAdapter(ToolSpecs).validate_python([_config(), _config()])


def test_exchange_secret_comes_from_the_environment_and_is_not_shown() -> None:
    spec = leave_tool("http://127.0.0.1:9000", **exchange_http("http://127.0.0.1:9001"))
    assert spec.http.exchange is not None
    assert spec.http.exchange.client_secret.get_secret_value() == CLIENT_SECRET
    assert CLIENT_SECRET not in repr(spec)
    with pytest.raises(ValidationError, match="environment variable EXCHANGE_SECRET is not set"):
        ToolSpec.model_validate(
            _config(http={"url": "http://127.0.0.1:9000/leave/{employee_id}", **exchange_http("http://127.0.0.1:1")}),
            context={"environ": {}},
        )


def test_tool_limits_defaults() -> None:
    assert ToolLimits() == ToolLimits(max_rounds=3, timeout=10)
    with pytest.raises(ValidationError):
        ToolLimits(max_rounds=0)


@pytest.mark.parametrize(
    ("path", "options"),
    [
        ("/leave/{doc_id}", {}),  # 403 whose body quotes the token
        ("/echo", {}),  # 200 whose body quotes the token
        ("/redirect", {}),
        ("/slow", {"timeout": 0.2}),
        ("/missing", {}),
    ],
)
async def test_the_callers_token_never_appears_in_results(
    servers: Servers, executor: ToolExecutor, path: str, options: dict[str, Any]
) -> None:
    spec = simple_tool(servers.backend, path, identity="bearer", **options)
    result = await call(executor, spec, {"doc_id": "bob"})
    assert ALICE_TOKEN not in result.content
    assert ALICE_TOKEN not in (result.error or "")
    assert servers.requests[0]["headers"]["Authorization"] == f"Bearer {ALICE_TOKEN}"


async def test_signed_in_caller_without_a_token_fails_closed(servers: Servers, executor: ToolExecutor) -> None:
    tokenless = Principal(subject="alice", team="hr", auth="jwt", claims={"sub": "alice"})
    result = await call(executor, leave_tool(servers.backend), {"year": 2024}, tokenless)
    assert not result.ok
    assert "needs a sign-in token" in (result.error or "")
    assert servers.requests == []
