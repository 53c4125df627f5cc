"""Loopback processes for gateway benchmarks: a fake upstream, a bare aiohttp forwarder and a load client.

Each runs as its own process (so none shares an event loop or a core with what it measures), on 127.0.0.1 only:

    python bench/loopback.py upstream --port P
    python bench/loopback.py forwarder --port P --upstream http://127.0.0.1:U/v1/chat/completions
    python bench/loopback.py load --url URL --key K --concurrency C --warmup W --requests N --duration S

The servers run until SIGTERM/SIGINT. The load client prints one JSON object (count, errors, req/s, p50, p99)
on stdout. All of them use uvloop when it is installed. This module must not import gengate or tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web

MODEL = "m"
REQUEST_BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16}
).encode()
ANSWER_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop when available (the cheapest loop), else asyncio's default."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _serve(app: web.Application, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.router.add_get("/healthz", _health)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def upstream(port: int) -> None:
    """A fake OpenAI-compatible upstream answering one fixed completion (with usage) at once."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER_BODY, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/chat/completions", chat)
    await _serve(app, port)


async def forwarder(port: int, target: str) -> None:
    """The least a proxy can do: forward POST /v1/chat/completions over one pooled aiohttp session."""
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def open_session(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def chat(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {"content-type": "application/json", "authorization": "Bearer upstream-secret"}
        async with request.app[session_key].post(target, data=body, headers=headers) as resp:
            data = await resp.read()
            return web.Response(body=data, status=resp.status, content_type="application/json")

    app = web.Application()
    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_post("/v1/chat/completions", chat)
    await _serve(app, port)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already-sorted values (q in 0..1)."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


async def load(url: str, key: str, concurrency: int, warmup: int, requests: int, duration: float) -> dict[str, Any]:
    """Send `warmup` unmeasured requests, then up to `requests` measured ones within `duration` seconds."""
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    latencies: list[float] = []
    errors: list[str] = []

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def one(measure: bool) -> None:
            started = time.perf_counter()
            try:
                async with session.post(url, data=REQUEST_BODY) as resp:
                    data = await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, TimeoutError) as exc:
                ok, data = False, f"{type(exc).__name__}: {exc}".encode()
            if not measure:
                return
            if ok:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors.append(data[:300].decode(errors="replace"))

        async def worker(quota: int, deadline: float, measure: bool) -> None:
            for _ in range(quota):
                if time.perf_counter() >= deadline:
                    return
                await one(measure)

        def split(total: int) -> list[int]:
            return [total // concurrency + (1 if i < total % concurrency else 0) for i in range(concurrency)]

        warm_deadline = time.perf_counter() + max(duration, 30.0)
        await asyncio.gather(*(worker(q, warm_deadline, False) for q in split(warmup)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(q, started + duration, True) for q in split(requests)))
        elapsed = time.perf_counter() - started

    latencies.sort()
    done = len(latencies) + len(errors)
    return {
        "concurrency": concurrency,
        "requests": done,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(elapsed, 3),
        "rps": round(done / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (one role per process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("upstream").add_argument("--port", type=int, required=True)
    fwd = roles.add_parser("forwarder")
    fwd.add_argument("--port", type=int, required=True)
    fwd.add_argument("--upstream", required=True)
    ld = roles.add_parser("load")
    ld.add_argument("--url", required=True)
    ld.add_argument("--key", default="none")
    ld.add_argument("--concurrency", type=int, default=1)
    ld.add_argument("--warmup", type=int, default=200)
    ld.add_argument("--requests", type=int, default=2000)
    ld.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.role == "upstream":
        run(lambda: upstream(args.port))
    elif args.role == "forwarder":
        run(lambda: forwarder(args.port, args.upstream))
    else:
        result: dict[str, Any] = {}

        async def go() -> None:
            result.update(await load(args.url, args.key, args.concurrency, args.warmup, args.requests, args.duration))

        with contextlib.suppress(KeyboardInterrupt):
            run(go)
        json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
