"""RAG apps over HTTP: model `app/<name>` on `/v1/chat/completions`, and `POST /v1/apps/<name>/ask`.

One request: authenticate → the app's guard on the input → retrieve with the caller's access tokens → the guard's
context stage on every retrieved chunk (flagged chunks are dropped, and that is recorded) → answer (extractively
with the offline provider, else through the app's model with identity-bound tools) → the output stage → an
answer with citations in the `gengate` extension field. When nothing the caller may read is relevant, the app
says so instead of guessing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gengate.app.errors import json_response
from gengate.app.guarding import (
    CONTEXT_REMOVED,
    GuardRun,
    blocked_completion,
    check_answer,
    check_messages,
    escalate,
    scan,
)
from gengate.apps.prompt import Source, cited, model_messages, retrieval_query
from gengate.apps.tools import model_tools, run_tool_calls
from gengate.errors import RequestError, UnknownModel
from gengate.guard.base import Stage
from gengate.outer.payloads import last_user_text
from gengate.policy.pricing import PriceTable, usd
from gengate.providers.base import usage_of
from gengate.providers.routing import RouteLog, deployment_label
from gengate.rag.answer import Passage
from gengate.rag.types import caller_tokens
from gengate.settings import AppSettings
from gengate.telemetry.trace_steps import attempt_steps, retrieval_step, tool_step
from gengate.types import Usage

PREFIX = "app/"


@dataclass
class AppOutcome:
    """What an app answered, and how."""

    text: str
    sources: list[Source] = field(default_factory=list)  # the ones the answer cites
    context: list[Source] = field(default_factory=list)  # every permitted chunk the answer was written from
    blocked: bool = False
    no_answer: bool = False
    retrieved: int = 0
    dropped: int = 0
    tools: list[dict[str, Any]] = field(default_factory=list)
    # Tool requests that reached a backend: name, HTTP status and the arguments sent. For evaluation (the red
    # team checks whose identity a backend received); never part of the response.
    backend_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    run: GuardRun | None = None
    experiment: str | None = None  # the A/B experiment that chose this answer's variant, if any
    variant: str | None = None

    def extension(self, app: str) -> dict[str, Any]:
        """The `gengate` extension field: citations, retrieval and guard outcomes."""
        ext: dict[str, Any] = {
            "app": app,
            "citations": [s.citation() for s in self.sources],
            "retrieval": {"retrieved": self.retrieved, "dropped_by_guard": self.dropped},
            "outcome": "blocked" if self.blocked else "no_answer" if self.no_answer else "answered",
        }
        if self.tools:
            ext["tools"] = self.tools
        if self.experiment is not None:
            ext["experiment"], ext["variant"] = self.experiment, self.variant
        if self.run is not None and (self.run.trace.findings or self.run.blocked is not None):
            ext.update(self.run.extension())
        return ext


def _app(call: Any, name: str) -> AppSettings:
    """The app, if it exists and the caller may use it (otherwise it does not exist for them)."""
    app: AppSettings | None = call.gateway.settings.apps.get(name)
    assert call.principal is not None
    if app is None or not call.gateway.policy.may_use(call.principal, call.key, PREFIX + name):
        raise UnknownModel(f"the model '{PREFIX}{name}' does not exist", param="model")
    return app


def _offline(call: Any, app: AppSettings) -> bool:
    providers = call.gateway.settings.providers
    return all(providers[d.provider].type == "offline" for d in call.gateway.settings.models[app.model].deployments)


def _tool_finding(call: Any, run: GuardRun | None, tool: str, key: str) -> dict[str, Any]:
    return {
        "request_id": call.trace.id, "ts": time.time(), "team": call.trace.team,
        "profile": run.pipeline.name if run else "", "stage": "context", "detector": "tools",
        "detector_version": "1", "label": f"tool.bound_argument_ignored.{tool}.{key}"[:128], "action": "flag",
        "score": 1.0, "span_start": 0, "span_end": 0, "value_hash": None,
    }  # fmt: skip


async def run_app(call: Any, name: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> AppOutcome:
    """Answer one conversation with an app (the caller is authenticated; `call` is the request's state)."""
    gateway = call.gateway
    principal = call.principal
    app = _app(call, name)
    # A running A/B experiment may serve this caller a variant: its settings, answerer and request parameters.
    choice = gateway.experiments.choose(name, app, principal)
    app, body = choice.app, choice.body(body)
    pipeline = (
        gateway.guard.pipelines.get(app.guard_profile) if app.guard_profile else gateway.guard.for_team(principal.team)
    )
    run = GuardRun(gateway.guard, pipeline, call.trace) if pipeline is not None else None
    if run is not None:
        await check_messages(run, messages)
        if run.blocked is not None:
            return AppOutcome(
                text=run.block_text(), blocked=True, run=run, experiment=choice.experiment, variant=choice.variant
            )
    query = retrieval_query(messages)

    retrieved = await gateway.kbs.search(
        app.knowledge_bases, query, caller_tokens(principal), k=app.top_k, where=app.where or None,
        retrieval=app.retrieval,
    )  # fmt: skip
    outcome = AppOutcome(
        text="", retrieved=len(retrieved), run=run, experiment=choice.experiment, variant=choice.variant
    )
    sources: list[Source] = []
    for rank, item in enumerate(retrieved, 1):
        chunk = item.chunk
        step = retrieval_step(
            kb=item.kb, doc_id=chunk.doc_id, version=chunk.version, chunk_id=chunk.chunk_id, title=chunk.title,
            score=item.score, rank=rank, access=chunk.access, dropped=False,
        )  # fmt: skip
        call.trace.steps.append(step)
        text = chunk.context or chunk.text
        if run is not None and run.pipeline.has(Stage.CONTEXT):
            result = await scan(run, Stage.CONTEXT, text)
            await escalate(run, result, text)
            run.record(result, text)
            if result.blocked:
                outcome.dropped += 1  # an indirect injection (or other violation) never reaches the model
                step["dropped"] = True
                continue
            text = result.text
        sources.append(
            Source(
                len(sources) + 1, item.kb, chunk.doc_id, chunk.version, chunk.title, text, chunk.chunk_id, item.score
            )
        )

    outcome.context = sources
    answerer = choice.answerer
    passages = [Passage(ref=s.ref, text=s.text, title=s.title, score=s.score) for s in sources]
    extract = await asyncio.to_thread(answerer.answer, query, passages) if passages else None
    if extract is None:
        outcome.text, outcome.no_answer = app.no_answer, True
        return outcome
    if _offline(call, app):
        by_ref = {s.ref: s for s in sources}
        outcome.text = extract.text
        outcome.sources = [by_ref[r] for r in extract.refs if r in by_ref]
    else:
        await _ask_model(call, app, run, sources, messages, body, outcome)
        outcome.sources = cited(outcome.text, sources)
    if run is not None and run.pipeline.has(Stage.OUTPUT) and outcome.text:
        outcome.text = await check_answer(run, outcome.text)
        if run.blocked is not None:
            outcome.blocked, outcome.sources = True, []
    elif run is not None and run.pipeline.profile.restore_pseudonyms:
        outcome.text = run.pseudonyms.restore(outcome.text)
    return outcome


async def _ask_model(
    call: Any, app: AppSettings, run: GuardRun | None, sources: list[Source], messages: list[dict[str, Any]],
    body: dict[str, Any], outcome: AppOutcome,
) -> None:  # fmt: skip
    """The app's model, with tool rounds; costs are reserved up front and settled on what was used."""
    gateway = call.gateway
    alias = gateway.router.alias(app.model)
    payload: dict[str, Any] = {"messages": model_messages(app.system_prompt, sources, messages)}
    for key in ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "user"):
        if key in body:
            payload[key] = body[key]
    max_out = payload.get("max_tokens") or payload.get("max_completion_tokens")
    rounds = app.tool_limits.max_rounds if app.tools else 0
    call.admission = await gateway.policy.admit(
        call.principal, call.key, app.model, alias.deployments,
        prompt_tokens_bound=len(orjson.dumps(payload)) * (rounds + 1), max_output_tokens=max_out,
        access_checked=True,
    )  # fmt: skip
    if max_out is None and call.admission.max_output_tokens is not None:
        payload["max_tokens"] = call.admission.max_output_tokens
    specs = {t.name: t for t in app.tools}
    cost = 0
    prompt = completion = 0
    try:
        for round_no in range(rounds + 1):
            if specs and round_no < rounds:
                payload["tools"] = model_tools(app.tools)
            else:
                payload.pop("tools", None)  # the last round must answer
            route = RouteLog()
            try:
                result = await gateway.router.run(app.model, payload, call.trace.id, "complete", route)
            finally:
                call.trace.attempts += len(route.attempts)
                call.trace.fallbacks += route.fallbacks
                call.trace.steps.extend(attempt_steps(route.attempts, round_no))
                gateway.metrics.count_failed_attempts(route.attempts)
            usage = usage_of(result) or Usage()
            prompt += usage.prompt_tokens
            completion += usage.completion_tokens
            if route.deployment is not None:
                call.trace.deployment = deployment_label(route.deployment)
                price = gateway.prices.lookup(route.deployment, app.model)
                cost += PriceTable.cost_nanos(price, usage) if price is not None else 0
            choices = result.get("choices") or [{}]
            message = choices[0].get("message") if isinstance(choices[0], dict) else None
            message = message if isinstance(message, dict) else {}
            tool_calls = message.get("tool_calls")
            if not tool_calls or not specs or round_no >= rounds:
                content = message.get("content")
                outcome.text = content if isinstance(content, str) else ""
                break
            payload["messages"].append({"role": "assistant", "content": message.get("content"),
                                        "tool_calls": tool_calls})  # fmt: skip
            results = await asyncio.wait_for(
                run_tool_calls(gateway.tool_executor, specs, tool_calls, call.principal), app.tool_limits.timeout
            )
            for item in results:
                content = item.content
                if run is not None and run.pipeline.has(Stage.CONTEXT):
                    checked = await scan(run, Stage.CONTEXT, content)
                    await escalate(run, checked, content)
                    run.record(checked, content)
                    content = CONTEXT_REMOVED if checked.blocked else checked.text
                for key in item.ignored:
                    call.trace.findings.append(_tool_finding(call, run, item.name, key))
                outcome.tools.append({"name": item.name, "ok": item.ok, "ignored_arguments": list(item.ignored)})
                spec = specs.get(item.name)
                call.trace.steps.append(
                    tool_step(
                        tool=item.name, bound=spec.bound if spec is not None else {}, arguments=item.supplied,
                        unknown=item.unknown, ignored=item.ignored, ok=item.ok, status=item.status,
                        error=item.error, round_no=round_no,
                    )
                )  # fmt: skip
                if item.sent is not None:
                    outcome.backend_calls.append({"name": item.name, "status": item.status, "arguments": item.sent})
                payload["messages"].append({"role": "tool", "tool_call_id": item.tool_call_id, "content": content})
    except TimeoutError:
        raise RequestError("the app's tools took too long to answer", code="tool_timeout") from None
    finally:
        outcome.usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
        call.trace.prompt_tokens, call.trace.completion_tokens = prompt, completion
        call.trace.cost_usd = usd(cost)
        if call.admission is not None:
            await gateway.policy.settle(call.admission, cost_nanos=cost, tokens=prompt + completion)
            call.admission = None


def keep_response(call: Any, name: str, messages: list[dict[str, Any]], outcome: AppOutcome) -> None:
    """Leave the answer's record for the outer loop on the trace (payloads as the app's setting keeps them)."""
    gateway = call.gateway
    app = gateway.settings.apps[name]
    question = last_user_text(messages)
    call.trace.response = {
        "app": name, "experiment": outcome.experiment, "variant": outcome.variant,
        "outcome": "blocked" if outcome.blocked else "no_answer" if outcome.no_answer else "answered",
        "question": gateway.redactor.keep(question, app.payloads),
        "answer": gateway.redactor.keep(outcome.text, app.payloads), "payload": app.payloads,
        "sources": orjson.dumps([{"kb": s.kb, "doc_id": s.doc_id, "version": s.version}
                                 for s in outcome.sources]).decode(),
        "caller_groups": orjson.dumps(list(call.principal.groups)).decode() if call.principal else None,
    }  # fmt: skip


def completion(call: Any, name: str, outcome: AppOutcome) -> dict[str, Any]:
    """The app's answer as an OpenAI chat.completion with the `gengate` extension."""
    if outcome.blocked and outcome.run is not None:
        answer = blocked_completion(outcome.run, PREFIX + name)
        answer["gengate"] = outcome.extension(name)
        return answer
    usage = outcome.usage
    return {
        "id": f"chatcmpl-{call.trace.id}", "object": "chat.completion", "created": int(time.time()),
        "model": PREFIX + name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens},
        "gengate": outcome.extension(name),
    }  # fmt: skip


async def chat(call: Any, body: dict[str, Any], model: str, stream: bool) -> Response:
    """`/v1/chat/completions` for `model: app/<name>` (streams are sent as one checked answer)."""
    from gengate.app.openai_routes import finished_stream

    name = model[len(PREFIX) :]
    outcome = await run_app(call, name, body["messages"], body)
    if outcome.blocked or outcome.dropped:
        call.trace.error_code = "guard_blocked" if outcome.blocked else None
    keep_response(call, name, body["messages"], outcome)
    answer = completion(call, name, outcome)
    if stream:
        return StreamingResponse(finished_stream(answer), media_type="text/event-stream")
    return json_response(answer)


async def ask(request: Request) -> Response:
    """POST /v1/apps/{name}/ask with `{"question": "..."}` (or `"messages": [...]`)."""
    from gengate.app.openai_routes import Call

    call = Call.begin(request, "apps.ask")
    try:
        await call.authenticate(request)
        body = _ask_body(await request.body(), call.gateway.settings.server.max_messages)
        name = request.path_params["name"]
        call.trace.model = PREFIX + name
        outcome = await run_app(call, name, body["messages"], body)
        if outcome.blocked:
            call.trace.error_code = "guard_blocked"
        keep_response(call, name, body["messages"], outcome)
        ext = outcome.extension(name)
        return json_response({"id": call.trace.id, "object": "app.answer", "answer": outcome.text, **ext})
    except Exception as exc:
        return call.fail(exc)
    finally:
        call.finish()


def _ask_body(raw: bytes, max_messages: int) -> dict[str, Any]:
    from gengate.app.requests import parse_object, validate_chat

    body = parse_object(raw)
    question = body.get("question")
    messages = body.get("messages")
    if messages is None:
        if not isinstance(question, str) or not question.strip():
            raise RequestError("'question' must be a non-empty string (or send 'messages')", param="question")
        if len(question) > 32_000:
            raise RequestError("'question' is longer than 32,000 characters", param="question")
        body["messages"] = [{"role": "user", "content": question}]
    validate_chat({"model": "app", "messages": body["messages"]}, max_messages=max_messages)
    return body
