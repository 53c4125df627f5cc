"""OpenAI-compatible routes: `/v1/chat/completions` (plain and SSE), `/v1/embeddings`, `/v1/models`.

Each call: authenticate → validate → admit (policy reserves) → route (retries, fallbacks) → settle (actual
cost) → trace. Settling happens in a `finally` shielded from cancellation, so errors and client disconnects
release reservations too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gengate.app import app_routes
from gengate.app.errors import error_response, json_response
from gengate.app.gateway import Gateway
from gengate.app.guarding import GuardRun, Judge, StreamGuard, blocked_completion, check_answer, check_messages
from gengate.app.requests import include_usage, parse_object, validate_chat, validate_embeddings
from gengate.errors import (
    GengateError,
    PermissionDenied,
    PricingMissing,
    RequestError,
    UnknownModel,
    UpstreamError,
)
from gengate.guard.base import Finding, Stage
from gengate.guard.pipeline import RuleFinding, StageResult
from gengate.guard.templates import TemplateError, render_model_answer, slot_schema
from gengate.policy.engine import Admission
from gengate.policy.pricing import PriceTable, usd
from gengate.providers.base import Chunk, usage_of
from gengate.providers.local_llm import LocalLLMProvider
from gengate.providers.offline import count_tokens
from gengate.providers.routing import RouteLog, deployment_label
from gengate.settings import GuardRule
from gengate.store.db import KeyRecord
from gengate.telemetry.trace_steps import ATTEMPT, attempt_steps
from gengate.telemetry.traces import TraceRecord
from gengate.types import Principal, Usage


@dataclass
class Call:
    """Per-request state shared by the steps of one call."""

    gateway: Gateway
    trace: TraceRecord
    started: float
    principal: Principal | None = None
    key: KeyRecord | None = None
    admission: Admission | None = None
    guard: GuardRun | None = None

    @classmethod
    def begin(cls, request: Request, endpoint: str) -> Call:
        gateway: Gateway = request.app.state.gateway
        trace = TraceRecord(id=request.scope["state"]["request_id"], ts=time.time(), endpoint=endpoint, status=200)
        return cls(gateway, trace, time.perf_counter())

    async def authenticate(self, request: Request) -> Principal:
        headers = request.headers
        self.principal, self.key = await self.gateway.authenticate(headers.get("authorization"), headers.get("api-key"))
        self.trace.subject = self.principal.subject
        self.trace.team = self.principal.team
        self.trace.key_id = self.principal.key_id
        return self.principal

    async def settle(self, usage: Usage | None, route: RouteLog) -> None:
        """Record the actual cost against the reservation (zero when nothing was served)."""
        trace = self.trace
        if route.attempts:
            # An app request routes its own model calls (one log per tool round) and leaves this one empty.
            trace.attempts = len(route.attempts)
            trace.fallbacks = route.fallbacks
            # Settling may run twice (an output check failing after the answer was settled): keep one copy.
            trace.steps = [s for s in trace.steps if s["kind"] != ATTEMPT] + attempt_steps(route.attempts)
        self.gateway.metrics.count_failed_attempts(route.attempts)
        cost = 0
        if route.attempts:
            trace.deployment = route.attempts[-1].deployment
        if usage is not None and route.deployment is not None:
            trace.deployment = deployment_label(route.deployment)
            trace.prompt_tokens = usage.prompt_tokens
            trace.completion_tokens = usage.completion_tokens
            trace.cached_tokens = usage.cached_tokens
            price = self.gateway.prices.lookup(route.deployment, trace.model or "")
            cost = PriceTable.cost_nanos(price, usage) if price is not None else 0
            trace.cost_usd = usd(cost)
        if self.admission is not None:
            await self.gateway.policy.settle(self.admission, cost_nanos=cost, tokens=usage.total_tokens if usage else 0)

    def fail(self, exc: BaseException) -> Response:
        """Turn an exception into the error response, noting it in the trace."""
        if isinstance(exc, GengateError):
            self.trace.status = exc.status
            self.trace.error_code = exc.code or exc.type
            if exc.status == 429 and self.principal is not None:
                self.gateway.metrics.limit_rejections.labels(self.principal.team, exc.code or "limit").inc()
        else:
            self.trace.status = 500
            self.trace.error_code = "internal_error"
        return error_response(exc)

    def finish(self) -> None:
        self.trace.latency_ms = (time.perf_counter() - self.started) * 1000
        self.gateway.record(self.trace)


def _estimate_prompt(payload: dict[str, Any]) -> int:
    """Approximate prompt tokens when an upstream reports no usage."""
    total = 0
    for message in payload.get("messages") or payload.get("input") or []:
        content = message.get("content") if isinstance(message, dict) else message
        total += count_tokens(content if isinstance(content, str) else orjson.dumps(content).decode()) + 4
    return total


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    call = Call.begin(request, "chat.completions")
    route = RouteLog()
    streaming = False
    try:
        await call.authenticate(request)
        raw = await request.body()
        body = parse_object(raw)
        model, stream, max_out = validate_chat(body, max_messages=call.gateway.settings.server.max_messages)
        call.trace.model = model
        call.trace.stream = stream
        if model.startswith(app_routes.PREFIX):
            return await app_routes.chat(call, body, model, stream)
        _chat_alias(call, model)
        blocked = await _admit(call, body, model, max_out, len(raw))
        if blocked is not None:
            return _send(blocked, stream)
        template = call.guard is not None and call.guard.pipeline.profile.answer_template
        if stream and not template:
            payload = _payload(call, body, max_out)
            payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
            first, rest = await call.gateway.router.open_stream(model, payload, call.trace.id, route)
            streaming = True
            return StreamingResponse(
                _relay(call, route, first, rest, include_usage(body), payload),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        return _send(await _answer_whole(call, route, body, model, max_out), stream)
    except Exception as exc:
        response = call.fail(exc)
        with anyio.CancelScope(shield=True):
            await call.settle(None, route)
        return response
    finally:
        if not streaming:
            call.finish()


def _chat_alias(call: Call, model: str) -> None:
    if call.gateway.router.alias(model).kind != "chat":
        raise RequestError(f"model {model!r} is an embedding model", param="model")


def _send(completion: dict[str, Any], stream: bool) -> Response:
    """A finished completion as JSON, or as a stream of one delta for a client that asked for a stream."""
    if stream:
        return StreamingResponse(finished_stream(completion), media_type="text/event-stream")
    return Response(orjson.dumps(completion), media_type="application/json")


async def _admit(
    call: Call, body: dict[str, Any], model: str, max_out: int | None, prompt_bound: int
) -> dict[str, Any] | None:
    """The team's input guard, then admission (limits, budget): a blocked completion, or None when admitted."""
    assert call.principal is not None
    pipeline = call.gateway.guard.for_team(call.principal.team)
    if pipeline is not None:
        call.guard = GuardRun(call.gateway.guard, pipeline, call.trace, judge=_judge_for(call))
        await check_messages(call.guard, body["messages"])
        if call.guard.blocked is not None:
            call.trace.error_code = "guard_blocked"
            return blocked_completion(call.guard, model)
    alias = call.gateway.router.alias(model)
    call.admission = await call.gateway.policy.admit(
        call.principal, call.key, model, alias.deployments, prompt_tokens_bound=prompt_bound,
        max_output_tokens=max_out,
    )  # fmt: skip
    return None


def _payload(call: Call, body: dict[str, Any], max_out: int | None) -> dict[str, Any]:
    payload = dict(body)
    if max_out is None and call.admission is not None and call.admission.max_output_tokens is not None:
        payload["max_tokens"] = call.admission.max_output_tokens
    return payload


async def _answer_whole(
    call: Call, route: RouteLog, body: dict[str, Any], model: str, max_out: int | None
) -> dict[str, Any]:
    """An admitted request answered in one piece: routed, settled, and checked by the output stage."""
    payload = _payload(call, body, max_out)
    if call.guard is not None and call.guard.pipeline.profile.answer_template:
        return await _template_only(call, route, model, payload)
    result = await call.gateway.router.run(model, payload, call.trace.id, "complete", route)
    usage = usage_of(result) or _estimated_usage(payload, result)
    await call.settle(usage, route)
    if call.guard is not None:
        await _guard_answer(call.guard, result)
    return result


async def complete_model(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    """One non-streamed chat completion for an authenticated caller, on the same path HTTP requests take.

    For in-process callers (evaluation of a model route): `body` is a validated chat request; errors propagate
    after the reservation is released.
    """
    route = RouteLog()
    model, _, max_out = validate_chat(body, max_messages=call.gateway.settings.server.max_messages)
    call.trace.model = model
    try:
        _chat_alias(call, model)
        blocked = await _admit(call, body, model, max_out, len(orjson.dumps(body)))
        if blocked is not None:
            return blocked
        return await _answer_whole(call, route, body, model, max_out)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await call.settle(None, route)
        raise


def _estimated_usage(payload: dict[str, Any], result: dict[str, Any]) -> Usage:
    text = ""
    for choice in result.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            text += message["content"]
    return Usage(prompt_tokens=_estimate_prompt(payload), completion_tokens=count_tokens(text))


def _judge_for(call: Call) -> Judge:
    """The judge callable for `escalate` rules: a routed call whose cost is charged to the caller."""
    gateway = call.gateway

    async def judge(model: str, payload: dict[str, Any]) -> tuple[str, int]:
        assert call.principal is not None
        route = RouteLog()
        body = await gateway.router.run(model, payload, f"{call.trace.id}-judge", "complete", route)
        usage = usage_of(body) or _estimated_usage(payload, body)
        price = gateway.prices.lookup(route.deployment, model) if route.deployment is not None else None
        if price is None and gateway.policy.has_budget(call.principal, call.key):
            raise PricingMissing(f"judge model {model!r} has no price and a budget applies")
        cost = PriceTable.cost_nanos(price, usage) if price is not None else 0
        await gateway.policy.charge(call.principal, call.key, cost)
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        return (content if isinstance(content, str) else ""), cost

    return judge


async def _guard_answer(run: GuardRun, result: dict[str, Any]) -> None:
    """Output stage on every choice of a whole answer (tool calls are left to the app's own checks)."""
    checks = run.pipeline.has(Stage.OUTPUT)
    restore = run.pipeline.profile.restore_pseudonyms
    for choice in result.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        if checks:
            message["content"] = await check_answer(run, message["content"])
        elif restore:
            message["content"] = run.pseudonyms.restore(message["content"])
        if run.blocked is not None:
            message.pop("tool_calls", None)
            choice["finish_reason"] = "stop"
    if run.blocked is not None:
        run.trace.error_code = "guard_blocked"
    if run.trace.findings:
        result["gengate"] = run.extension()


async def _guard_chunk(guard: StreamGuard, chunk: Chunk) -> list[Chunk] | None:
    """What to send for one upstream chunk under output checks (None: the answer is blocked)."""
    out: list[Chunk] = []
    choices = []
    for choice in chunk["choices"]:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or choice.get("index", 0) != 0:
            choices.append(choice)
            continue
        delta = dict(delta)
        content = delta.pop("content", None)
        if isinstance(content, str) and content:
            released = await guard.feed(content)
            if released is None:
                return None
            if released:
                delta["content"] = released
        if choice.get("finish_reason") is not None:
            tail = await guard.finish()
            if tail is None:
                return None
            if tail:
                out.append(
                    {**_envelope(chunk), "choices": [{"index": 0, "delta": {"content": tail}, "finish_reason": None}]}
                )
        if delta or choice.get("finish_reason") is not None:
            choices.append({**choice, "delta": delta})
    if choices:
        out.append({**chunk, "choices": choices})
    return out


def _guard_blocked_tail(guard: StreamGuard, chunk: Chunk) -> list[bytes]:
    base = _envelope(chunk)
    guard.run.trace.error_code = "guard_blocked"
    return [
        _sse({**base, "choices": [{"index": 0, "delta": {"content": guard.run.block_text()}, "finish_reason": None}]}),
        _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        _sse({**base, "choices": [], "gengate": guard.run.extension()}),
    ]


async def _template_only(call: Call, route: RouteLog, model: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Template-only answers: the model fills the template's slots as JSON; gengate validates and renders."""
    run = call.guard
    assert run is not None and run.pipeline.profile.answer_template is not None
    name = run.pipeline.profile.answer_template
    template = call.gateway.settings.guard.templates[name]
    for field_name in ("tools", "tool_choice", "functions", "function_call", "stream_options"):
        payload.pop(field_name, None)
    payload["stream"] = False
    payload["response_format"] = slot_schema(name, template)
    result = await call.gateway.router.run(model, payload, call.trace.id, "complete", route)
    await call.settle(usage_of(result) or _estimated_usage(payload, result), route)
    choices = result.get("choices") or []
    message = choices[0].get("message") if choices and isinstance(choices[0], dict) else None
    answer = message.get("content") if isinstance(message, dict) else None
    try:
        rendered = render_model_answer(name, template, answer if isinstance(answer, str) else "", call.trace.id)
    except TemplateError as exc:
        failure = RuleFinding(
            Finding("template.invalid", 0, 0, 1.0, "templates", str(exc)),
            GuardRule(detector="templates", action="block"),
            0,
        )
        run.blocked = StageResult(Stage.OUTPUT, "", [failure], failure)
        run.record(run.blocked, "")
        completion = blocked_completion(run, model)
    else:
        completion = {**result, "choices": [{"index": 0, "message": {"role": "assistant", "content": rendered},
                                             "finish_reason": "stop"}]}  # fmt: skip
        await _guard_answer(run, completion)
    if run.blocked is not None:
        call.trace.error_code = "guard_blocked"
        completion.setdefault("gengate", run.extension())
    return completion


async def finished_stream(answer: dict[str, Any]) -> AsyncIterator[bytes]:
    """A finished answer (blocked, or rendered from a template) sent as a stream: one delta, then the reason."""
    base = {
        "id": answer["id"],
        "object": "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
    }
    text = answer["choices"][0]["message"]["content"]
    yield _sse(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]}
    )
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if "gengate" in answer:
        yield _sse({**base, "choices": [], "gengate": answer["gengate"]})
    yield b"data: [DONE]\n\n"


def _envelope(chunk: Chunk) -> Chunk:
    return {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}


def _usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def _sse(chunk: Chunk) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _relay(
    call: Call,
    route: RouteLog,
    first: Chunk,
    rest: AsyncIterator[Chunk],
    want_usage: bool,
    payload: dict[str, Any],
) -> AsyncIterator[bytes]:
    """Forward stream chunks as SSE, keep the usage, settle and trace whatever happens."""
    run = call.guard
    guard = (
        StreamGuard(run, call.gateway.settings.guard.hold_back_chars)
        if run and run.pipeline.has(Stage.OUTPUT)
        else None
    )
    usage: Usage | None = None
    pieces: list[str] = []
    finished = False
    try:
        chunk: Chunk | None = first
        last: Chunk = first
        while chunk is not None:
            found = usage_of(chunk)
            if found is not None:
                usage = found
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
                    if call.trace.ttft_ms is None:
                        call.trace.ttft_ms = (time.perf_counter() - call.started) * 1000
                    if isinstance(delta.get("content"), str):
                        pieces.append(delta["content"])
            last = chunk
            if guard is not None and chunk.get("choices"):
                outgoing = await _guard_chunk(guard, chunk)
                if outgoing is None:  # blocked: the template ends the stream, the upstream is closed
                    for blocked in _guard_blocked_tail(guard, chunk):
                        yield blocked
                    break
                for item in outgoing:
                    yield _sse(item)
            elif want_usage or "usage" not in chunk:
                yield _sse(chunk)
            elif chunk.get("choices"):
                yield _sse({k: v for k, v in chunk.items() if k != "usage"})
            chunk = await anext(rest, None)
        if guard is not None and not guard.run.blocked:
            tail = await guard.finish()
            if tail is None:
                for blocked in _guard_blocked_tail(guard, last):
                    yield blocked
            elif tail:
                yield _sse(
                    {**_envelope(last), "choices": [{"index": 0, "delta": {"content": tail}, "finish_reason": None}]}
                )
            if guard.run.trace.findings:
                yield _sse({**_envelope(last), "choices": [], "gengate": guard.run.extension()})
        if usage is None:
            # Some servers ignore include_usage: account (and, if asked, report) gengate's own count.
            usage = Usage(prompt_tokens=_estimate_prompt(payload), completion_tokens=count_tokens("".join(pieces)))
            if want_usage:
                yield _sse({**_envelope(last), "choices": [], "usage": _usage_body(usage)})
        yield b"data: [DONE]\n\n"
        finished = True
    except UpstreamError as exc:
        if route.deployment is not None:
            call.gateway.router.report_stream_failure(route.deployment)
        call.trace.status = exc.status
        call.trace.error_code = exc.code
        yield _sse(exc.to_body())
        finished = True
    finally:
        with anyio.CancelScope(shield=True):
            call.trace.client_disconnected = not finished
            close = getattr(rest, "aclose", None)
            if close is not None:
                await close()
            if usage is None:
                # No final usage (client left, or the upstream never sent it): charge what was streamed.
                usage = Usage(prompt_tokens=_estimate_prompt(payload), completion_tokens=count_tokens("".join(pieces)))
            await call.settle(usage, route)
            call.finish()


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings."""
    call = Call.begin(request, "embeddings")
    route = RouteLog()
    try:
        principal = await call.authenticate(request)
        raw = await request.body()
        body = parse_object(raw)
        model = validate_embeddings(body)
        call.trace.model = model
        alias = call.gateway.router.alias(model)
        if alias.kind != "embedding":
            raise RequestError(f"model {model!r} is not an embedding model", param="model")
        pipeline = call.gateway.guard.for_team(principal.team)
        if pipeline is not None and pipeline.has(Stage.INPUT):
            body = await _guard_embedding_input(GuardRun(call.gateway.guard, pipeline, call.trace), body)
        call.admission = await call.gateway.policy.admit(
            principal, call.key, model, alias.deployments, prompt_tokens_bound=len(raw), max_output_tokens=0
        )
        result = await call.gateway.router.run(model, body, call.trace.id, "embed", route)
        usage = usage_of(result) or Usage(prompt_tokens=_estimate_prompt(body))
        await call.settle(usage, route)
        return Response(orjson.dumps(result), media_type="application/json")
    except Exception as exc:
        response = call.fail(exc)
        with anyio.CancelScope(shield=True):
            await call.settle(None, route)
        return response
    finally:
        call.finish()


async def _guard_embedding_input(run: GuardRun, body: dict[str, Any]) -> dict[str, Any]:
    """The input stage on texts to embed: redactions are applied before they leave; a block is a 400 whose code
    names the reason (an embedding has no place for a templated answer). Token arrays are not text: unchecked."""
    value = body["input"]
    texts = [value] if isinstance(value, str) else value
    if not all(isinstance(t, str) for t in texts):
        return body
    messages = [{"role": "user", "content": t} for t in texts]
    await check_messages(run, messages)
    if run.blocked is not None:
        run.trace.error_code = "guard_blocked"
        raise PermissionDenied(
            f"the input was blocked by guard profile {run.pipeline.name!r} ({run.blocked.reason})",
            code="guard_blocked",
        )
    checked = [m["content"] for m in messages]
    return {**body, "input": checked[0] if isinstance(value, str) else checked}


def visible_models(gateway: Gateway, principal: Principal, key: KeyRecord | None) -> list[str]:
    """Aliases this caller may use whose providers can serve (the local model only when installed)."""
    names = []
    for name, alias in gateway.router.aliases.items():
        if not gateway.policy.may_use(principal, key, name):
            continue
        providers = [gateway.providers[d.provider] for d in alias.deployments]
        if all(isinstance(p, LocalLLMProvider) and not p.available for p in providers):
            continue
        names.append(name)
    names += [
        app_routes.PREFIX + name
        for name in gateway.settings.apps
        if gateway.policy.may_use(principal, key, app_routes.PREFIX + name)
    ]
    return sorted(names)


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "gengate"}


async def _visible_for(request: Request) -> tuple[Gateway, list[str]]:
    gateway: Gateway = request.app.state.gateway
    headers = request.headers
    principal, key = await gateway.authenticate(headers.get("authorization"), headers.get("api-key"))
    return gateway, visible_models(gateway, principal, key)


async def list_models(request: Request) -> Response:
    """GET /v1/models: only what the caller may use."""
    try:
        gateway, names = await _visible_for(request)
    except GengateError as exc:
        return error_response(exc)
    created = int(gateway.started_at)
    return json_response({"object": "list", "data": [_model_object(n, created) for n in names]})


async def get_model(request: Request) -> Response:
    """GET /v1/models/{model}: 404 for models that do not exist or that the caller may not use."""
    try:
        gateway, names = await _visible_for(request)
    except GengateError as exc:
        return error_response(exc)
    name = request.path_params["model"]
    if name not in names:
        return error_response(UnknownModel(f"the model {name!r} does not exist", param="model"))
    return json_response(_model_object(name, int(gateway.started_at)))
