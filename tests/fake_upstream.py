"""A fake OpenAI-compatible provider: a real aiohttp server on loopback whose behaviour tests script.

Each request to a model takes the next `Step` queued for that model (or the default): status, delay, garbage,
a stream with tool-call deltas, a stall mid-stream, chosen usage. Every request received is recorded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Step:
    """What the fake does for one request."""

    status: int = 200
    delay: float = 0.0  # before answering (headers)
    content: str = "Hello from the fake upstream."
    tool_calls: list[dict[str, Any]] | None = None
    usage: dict[str, int] | None = field(default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5})
    garbage: bool = False  # 200 with a body that is not JSON
    stall_after_chunks: int | None = None  # stream: stop sending (hang) after N chunks
    chunk_delay: float = 0.0
    error_message: str = "fake upstream failure"


class ServerThread:
    """Runs an aiohttp application on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        # Handlers still sleeping (scripted hangs) are cancelled, not left pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class FakeUpstream:
    """The fake provider. `queue(model, *steps)` scripts the next requests for a model."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._steps: dict[str, deque[Step]] = defaultdict(deque)
        self.default = Step()
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        self._server = ServerThread(app)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}"

    def start(self) -> FakeUpstream:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def queue(self, model: str, *steps: Step) -> None:
        with self._lock:
            self._steps[model].extend(steps)

    def calls_for(self, model: str) -> int:
        return sum(1 for r in self.requests if r.get("model") == model)

    def _next(self, model: str) -> Step:
        with self._lock:
            queue = self._steps.get(model)
            return queue.popleft() if queue else self.default

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            if "deployment" in request.match_info:
                body["_path_deployment"] = request.match_info["deployment"]
                body["_query"] = dict(request.query)
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body.get("_path_deployment") or body.get("model", "")
        step = self._next(model)
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.status != 200:
            return web.json_response(
                {"error": {"message": step.error_message, "type": "fake", "code": "fake_error"}}, status=step.status
            )
        if step.garbage:
            return web.Response(text="<html>502 proxy error</html>", content_type="text/html")
        if body.get("stream"):
            return await self._stream(request, body, step, model)
        message: dict[str, Any] = {"role": "assistant", "content": step.content}
        if step.tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": step.tool_calls}
        answer: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if step.tool_calls else "stop"}],
        }
        if step.usage is not None:
            answer["usage"] = {**step.usage, "total_tokens": sum(step.usage.values())}
        return web.json_response(answer)

    async def _stream(self, request: web.Request, body: dict[str, Any], step: Step, model: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        chunks: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        if step.tool_calls:
            for i, call in enumerate(step.tool_calls):
                args = call["function"]["arguments"]
                half = len(args) // 2
                head = {
                    "index": i,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": args[:half]},
                }
                tail = {"index": i, "function": {"arguments": args[half:]}}
                chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
                chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [tail]}}]})
            finish = "tool_calls"
        else:
            for word in step.content.split(" "):
                chunks.append({**base, "choices": [{"index": 0, "delta": {"content": word + " "}}]})
            finish = "stop"
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        options = body.get("stream_options") or {}
        if options.get("include_usage") and step.usage is not None:
            chunks.append({**base, "choices": [], "usage": {**step.usage, "total_tokens": sum(step.usage.values())}})
        for n, chunk in enumerate(chunks):
            if step.stall_after_chunks is not None and n >= step.stall_after_chunks:
                await asyncio.sleep(3600)
            if step.chunk_delay:
                await asyncio.sleep(step.chunk_delay)
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        step = self._next(body.get("model", ""))
        if step.status != 200:
            return web.json_response({"error": {"message": step.error_message}}, status=step.status)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )
