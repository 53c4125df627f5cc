"""Feedback throughput and durability: events/s through `POST /v1/feedback` on SQLite, and zero loss across restarts.

One `gengate serve` (SQLite in a temporary directory, the offline provider, one app without knowledge bases so
every question gets a quick answer and leaves a response record) and, in this process, an async HTTP client with
`--concurrency` keep-alive connections (aiohttp by default; `--client httpx` for comparison, see `Client`):

    responses   ask the app `--responses` times through /v1/chat/completions; feedback goes to these answers
    single      `--events` events, one per request (thumbs 70 %, copies 30 %, every 20th with a comment that
                holds an e-mail address, which the app's `redacted` payload setting masks)
    batch       the same number of events in requests of `--batch` events (what the JS snippet sends)
    restart     SIGTERM (a graceful stop) while `--events` more are in flight; start again
    crash       SIGKILL while `--events` more are in flight; start again

After each restart every event the gateway acknowledged (HTTP 200) must be in the database: "lost" counts those
that are not, and must be 0. Then every event ever sent is sent again — as a client that never heard back
would — and each must come back as stored, once.

    python bench/feedback_throughput.py [--events 20000] [--concurrency 64] [--batch 20] [--client aiohttp]

The gateway runs alone on one CPU and this client on another (`--no-pin`: let the OS place them); "other CPU %"
is what processes outside the bench used meanwhile (above ~10 % the figures read low). Figures go to
bench/results/feedback_throughput.json. Latency is per HTTP request (a batch's latency covers all its events).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from gateway_overhead import bin_of, positive, progress
from procs import BenchError, OtherCpu, Procs, free_port, peak_rss_mb, pin, wait_ready

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results" / "feedback_throughput.json"
ADMIN_KEY = "admin-bench-key-0123456789abcdef"
GOAL_EVENTS_PER_SECOND = 2000.0


@dataclass
class Server:
    """The gateway under test: its config, a key, and the running process."""

    config: Path
    port: int
    key: str
    db: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Phase:
    """What one phase sent and what came back."""

    name: str
    events: int = 0
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    other_cpu_pct: float = 0.0
    timed: bool = True  # False when the phase is cut short on purpose: its rate means nothing

    def row(self, stored: set[str]) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else None

        return {
            "phase": self.name, "events": self.events, "requests": self.requests, "seconds": round(self.seconds, 3),
            "events_per_s": round(len(self.acknowledged) / self.seconds, 1) if self.seconds and self.timed else None,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "acknowledged": len(self.acknowledged),
            "stored": len(self.acknowledged & stored), "lost": len(self.acknowledged - stored),
            "errors": self.errors, "other_cpu_pct": self.other_cpu_pct if self.timed else None,
        }  # fmt: skip


def write_config(tmp: Path, port: int) -> Path:
    """A gateway with the offline provider, one app and no effective feedback rate limit."""
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(tmp / "gengate-data")},
        "auth": {"admin_keys": [ADMIN_KEY]},
        "providers": {"offline": {"type": "offline"}},
        "models": {"offline": {"deployments": [{"provider": "offline", "model": "offline"}]}},
        "pricing": {"offline": {"input": 0, "output": 0}},
        "apps": {"support": {"knowledge_bases": [], "payloads": "redacted"}},
        "feedback": {"rate_per_minute": 100_000_000},
        "rag": {"embeddings": "none"},
        "telemetry": {"log_level": "WARNING"},
    }
    path = tmp / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def create_key(config: Path) -> str:
    done = subprocess.run([bin_of("gengate"), "keys", "create", "--config", str(config), "--team", "bench"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    key = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not key.startswith("sk-"):
        raise BenchError(f"gengate keys create failed: {done.stderr.strip()[-300:]}")
    return key


def start(procs: Procs, server: Server, cpu: int | None) -> None:
    server.proc = procs.start("gengate", [bin_of("gengate"), "serve", "--config", str(server.config)])
    wait_ready(procs, "gengate", server.proc, f"{server.url}/healthz", 60)
    pin(server.proc.pid, cpu)


def stored_events(db: Path) -> tuple[set[str], int]:
    """Event ids in the database, and the number of rows (a read-only reader beside the gateway: WAL allows it)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        ids = [row[0] for row in conn.execute("SELECT event_id FROM feedback")]
    return set(ids), len(ids)


def event(phase: str, i: int, answers: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"response_id": answers[i % len(answers)], "event_id": f"{phase}-{i}"}
    if i % 10 < 7:
        body.update(kind="thumbs", value="up" if i % 3 else "down")
    else:
        body["kind"] = "copy"
    if i % 20 == 0:
        body["comment"] = f"Answer {i} helped; write to reader{i}@example.com with more"
    return body


class Lost(Exception):
    """The request got no answer (connection refused or dropped): the client cannot know whether it was stored."""


class Client:
    """Keep-alive connections to the gateway through aiohttp or httpx.

    httpx costs the client ~1-2 ms of CPU a request with many connections (aiohttp ~0.2 ms); on a machine with
    two cores the httpx client, not the gateway, sets the pace, so it is offered for comparison, not the default.
    """

    def __init__(self, kind: str, server: Server, connections: int, timeout: float = 60) -> None:
        self.kind, self.url, self.connections, self.timeout = kind, server.url, connections, timeout
        self.headers = {"authorization": f"Bearer {server.key}", "content-type": "application/json"}
        self._aiohttp: aiohttp.ClientSession | None = None
        self._httpx: httpx.AsyncClient | None = None

    async def __aenter__(self) -> Client:
        if self.kind == "aiohttp":
            connector = aiohttp.TCPConnector(limit=self.connections)
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            self._aiohttp = aiohttp.ClientSession(connector=connector, headers=self.headers, timeout=timeout)
        else:
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections)
            self._httpx = httpx.AsyncClient(headers=self.headers, limits=limits, timeout=self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._aiohttp is not None:
            await self._aiohttp.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        """(status, JSON body) of one POST; `Lost` when no answer came."""
        payload = json.dumps(body).encode()
        try:
            if self._aiohttp is not None:
                async with self._aiohttp.post(self.url + path, data=payload) as resp:
                    return resp.status, json.loads(await resp.read())
            assert self._httpx is not None
            answer = await self._httpx.post(self.url + path, content=payload)
            return answer.status_code, answer.json()
        except (TimeoutError, aiohttp.ClientError, httpx.TransportError) as exc:
            raise Lost(type(exc).__name__) from None


async def ask_all(server: Server, count: int, concurrency: int) -> list[str]:
    """Ask the app `count` times; return the completion ids (`chatcmpl-<request id>`)."""
    answers: list[str] = []
    async with Client("aiohttp", server, concurrency) as client:

        async def one(i: int) -> None:
            body = {"model": "app/support", "messages": [{"role": "user", "content": f"Question number {i}?"}]}
            status, answer = await client.post("/v1/chat/completions", body)
            if status != 200:
                raise BenchError(f"asking the app failed: {status} {str(answer)[:200]}")
            answers.append(answer["id"])

        for start_at in range(0, count, concurrency):
            await asyncio.gather(*(one(i) for i in range(start_at, min(count, start_at + concurrency))))
    return answers


def _count(errors: dict[str, int], what: str, n: int = 1) -> None:
    errors[what] = errors.get(what, 0) + n


async def fire(args: argparse.Namespace, server: Server, phase: Phase, bodies: list[dict[str, Any]], batch: int,
               stop_after: int | None = None, stop: Any = None) -> None:  # fmt: skip
    """Send `bodies` (one per request, or `batch` per request) over `--concurrency` keep-alive connections. With
    `stop_after`, call `stop()` once that many events are acknowledged, and keep sending until the server is gone."""
    requests = [bodies[i : i + batch] for i in range(0, len(bodies), batch)] if batch > 1 else [[b] for b in bodies]
    requests.reverse()
    phase.events += len(bodies)
    stopping: asyncio.Future[None] | None = None

    async def worker(client: Client) -> None:
        nonlocal stopping
        while requests:
            events = requests.pop()
            began = time.perf_counter()
            try:
                status, answer = await client.post("/v1/feedback", {"events": events} if batch > 1 else events[0])
            except Lost as exc:
                _count(phase.errors, str(exc), len(events))
                continue
            phase.latencies.append(time.perf_counter() - began)
            phase.requests += 1
            if status != 200:
                _count(phase.errors, str(status), len(events))
            elif batch > 1:
                for item in answer["data"]:
                    if item["status"] == 200:
                        phase.acknowledged.add(item["event_id"])
                    else:
                        _count(phase.errors, str(item["status"]))
            else:
                phase.acknowledged.add(events[0]["event_id"])
            if stop_after is not None and stopping is None and len(phase.acknowledged) >= stop_after:
                stopping = asyncio.ensure_future(asyncio.to_thread(stop))

    began = time.perf_counter()
    async with Client(args.client, server, args.concurrency) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    phase.seconds = time.perf_counter() - began
    if stopping is not None:
        await stopping


async def resend_all(server: Server, bodies: list[dict[str, Any]], concurrency: int) -> dict[str, int]:
    """Send every event again in batches of 100: each must come back stored (nearly all as duplicates)."""
    counts = {"new": 0, "duplicate": 0, "failed": 0}
    chunks = [bodies[i : i + 100] for i in range(0, len(bodies), 100)]
    async with Client("aiohttp", server, concurrency, timeout=120) as client:

        async def one(chunk: list[dict[str, Any]]) -> None:
            status, answer = await client.post("/v1/feedback", {"events": chunk})
            if status != 200:
                counts["failed"] += len(chunk)
                return
            for item in answer["data"]:
                counts["failed" if item["status"] != 200 else "duplicate" if item["duplicate"] else "new"] += 1

        for i in range(0, len(chunks), concurrency):
            await asyncio.gather(*(one(c) for c in chunks[i : i + concurrency]))
    return counts


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("events", "events"), ("requests", "requests"), ("events_per_s", "events/s"), ("p50_ms", "p50 ms"),
            ("p99_ms", "p99 ms"), ("acknowledged", "acked"), ("stored", "stored"), ("lost", "lost"),
            ("other_cpu_pct", "other CPU %")]  # fmt: skip
    lines = [f"{'phase':<10}" + "".join(f"{title:>12}" for _, title in cols)]
    for row in rows:
        cells = "".join(f"{('-' if row.get(k) is None else row[k]):>12}" for k, _ in cols)
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(row["errors"].items()))
        lines.append(f"{row['phase']:<10}{cells}" + (f"   (errors {errors})" if errors else ""))
    return "\n".join(lines)


async def run(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, Any]:
    port = free_port()
    config = write_config(tmp, port)
    server = Server(config, port, create_key(config), tmp / "gengate-data" / "gengate.db")
    start(procs, server, procs.target_cpu)
    progress(f"asking the app {args.responses} times")
    answers = await ask_all(server, args.responses, min(args.concurrency, 32))
    progress("warm-up")
    await fire(args, server, Phase("warmup"), [event("warmup", i, answers) for i in range(1000)], 1)
    phases: list[Phase] = []
    sent: list[dict[str, Any]] = []
    for name, batch in (("single", 1), (f"batch{args.batch}", args.batch)):
        progress(f"{name}: {args.events} events, {batch} a request, {args.concurrency} connections")
        phase = Phase(name)
        bodies = [event(name, i, answers) for i in range(args.events)]
        with OtherCpu([p.pid for p in procs.running]) as other:
            await fire(args, server, phase, bodies, batch)
        phase.other_cpu_pct = other.percent
        phases.append(phase)
        sent += bodies
        progress(f"{name}: {len(phase.acknowledged) / phase.seconds:.0f} events/s")
    rss = peak_rss_mb(server.proc.pid) if server.proc else None
    restarts = []
    for name, sig in (("restart", signal.SIGTERM), ("crash", signal.SIGKILL)):
        proc = server.proc
        assert proc is not None

        def stop(proc: subprocess.Popen[bytes] = proc, sig: signal.Signals = sig) -> None:
            os.killpg(proc.pid, sig)
            proc.wait(30)

        progress(f"{name}: {signal.Signals(sig).name} once {args.events // 4} of {args.events} events are acked")
        phase = Phase(name, timed=False)
        bodies = [event(name, i, answers) for i in range(args.events)]
        await fire(args, server, phase, bodies, args.batch, stop_after=args.events // 4, stop=stop)
        procs.stop(proc)
        phases.append(phase)
        sent += bodies
        start(procs, server, procs.target_cpu)
        stored, rows = stored_events(server.db)
        lost = len(phase.acknowledged - stored)
        progress(f"{name}: {len(phase.acknowledged)} acked before the stop, {lost} of them missing after it")
        restarts.append({"phase": name, "signal": signal.Signals(sig).name, "acknowledged": len(phase.acknowledged),
                         "lost": lost, "rows": rows})  # fmt: skip
    progress(f"resending all {len(sent)} events, as clients that never heard back would")
    resent = await resend_all(server, sent, min(args.concurrency, 16))
    stored, rows = stored_events(server.db)
    report_rows = [p.row(stored) for p in phases]
    return {
        "rows": report_rows,
        "restarts": restarts,
        "resend": {
            **resent,
            "events": len(sent),
            "stored_after": len(stored & {b["event_id"] for b in sent}),
            "rows": rows,
            "distinct": len(stored),
        },
        "peak_rss_mb": rss,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the phases, print the table and the checks, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=positive, default=20_000, help="events in each phase")
    parser.add_argument("--concurrency", type=positive, default=64, help="keep-alive connections")
    parser.add_argument("--batch", type=positive, default=20, help="events per request in the batch phase")
    parser.add_argument("--responses", type=positive, default=200, help="answers to give feedback on")
    parser.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp", help="the load client's library")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the gateway to one CPU, the client to another"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gengate-bench-") as tmpdir:
        allowed = sorted(os.sched_getaffinity(0))
        pinned = not args.no_pin and len(allowed) >= 2
        procs = Procs(Path(tmpdir), allowed[0] if pinned else None, allowed[1] if pinned else None)
        if pinned:
            os.sched_setaffinity(0, {allowed[0]})
        try:
            result = asyncio.run(run(args, procs, Path(tmpdir)))
        except BenchError as exc:
            progress(f"FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            progress("interrupted; stopping every process")
            return 130
        finally:
            procs.stop_all()
    print("\n" + table(result["rows"]) + "\n")
    resend = result["resend"]
    single = next(r for r in result["rows"] if r["phase"] == "single")
    batched = next(r for r in result["rows"] if r["phase"].startswith("batch"))
    lost = sum(r["lost"] for r in result["rows"])
    checks = [
        ("single events >= 2,000 events/s", (single["events_per_s"] or 0) >= GOAL_EVENTS_PER_SECOND,
         f"{single['events_per_s']} events/s"),
        ("batched events >= 2,000 events/s", (batched["events_per_s"] or 0) >= GOAL_EVENTS_PER_SECOND,
         f"{batched['events_per_s']} events/s"),
        ("zero acknowledged events lost (SIGTERM and SIGKILL restarts)", lost == 0, f"{lost} lost"),
        ("every event stored exactly once after clients resend", resend["stored_after"] == resend["events"]
         and resend["rows"] == resend["distinct"] and resend["failed"] == 0,
         f"{resend['stored_after']} of {resend['events']} stored, {resend['rows']} rows, {resend['failed']} failed"),
    ]  # fmt: skip
    for goal, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL':<4}  {goal}: {detail}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "options": vars(args),
        "versions": {
            "gengate": metadata.version("gengate"),
            "client": f"{args.client} {metadata.version(args.client)}",
        },
        **result,
        "checks": [{"goal": g, "result": "PASS" if ok else "FAIL", "detail": d} for g, ok, d in checks],
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
