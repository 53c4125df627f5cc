"""Dashboard page times with a large request log: 1,000,000 requests in SQLite, every page loaded over real HTTP.

Fills a fresh store (migrated by gengate itself, then bulk-inserted with sqlite3 in one transaction per chunk, with
progress): requests spread over the last 30 days across teams, keys, models and statuses, guard findings for the
blocked ones, app responses (some in an A/B experiment) with feedback and comments. Then starts `gengate serve`,
signs in to `/ui` with the admin key and loads each page `--loads` times after one warm-up; prints p50/p95 per page
(client-measured over loopback, so an upper bound of the server's time) and writes bench/results/dashboard_pages.json.

    python bench/dashboard_pages.py [--requests 1000000] [--loads 7] [--keep DIR]

Goal: every page under 300 ms at p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from procs import Procs, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dashboard_pages.json"
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TEAMS = ("search", "support", "sales", "research", "platform")
MODELS = ("gpt-4o-mini", "gpt-4o", "claude-haiku", "local")
APPS = ("help", "hr-bot", "sales-assist")
DAY = 86400.0
CHUNK = 50_000
INSERT_REQUESTS = "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_FINDINGS = (
    "INSERT INTO guard_findings (request_id, ts, team, profile, stage, detector, detector_version, label, action,"
    " score, span_start, span_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_RESPONSES = (
    "INSERT INTO responses (request_id, ts, app, model, subject, team, key_id, experiment, variant, outcome, payload,"
    " cost_usd, latency_ms, findings, sources) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_FEEDBACK = (
    "INSERT INTO feedback (request_id, event_id, ts, subject, team, app, experiment, variant, kind, value, comment)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _config(data_dir: Path, port: int) -> dict[str, Any]:
    return {
        "server": {"port": port},
        "storage": {"data_dir": str(data_dir)},
        "auth": {"admin_keys": [ADMIN_KEY]},
        "ui": {"cookie_secure": False},
        "policy": {
            "teams": {
                "search": {"budget": {"usd": 500, "period": "month"}},
                "support": {"budget": {"usd": 50, "period": "day"}},
            }
        },
        "telemetry": {"log_level": "WARNING"},
        "drift": {"enabled": False},
    }


def _progress(label: str, done: int, total: int, started: float) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(1e-9, time.monotonic() - started)
    print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} ({rate:,.0f}/s)", end="", flush=True)
    if done >= total:
        print()


def fill(db: Path, n: int, seed: int = 7) -> dict[str, Any]:
    """Bulk-insert the log; returns ids the page loads need (a blocked request, a subject, a key)."""
    rng = random.Random(seed)
    now = time.time()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    keys = []
    for i in range(25):
        team = TEAMS[i % len(TEAMS)]
        budget = (100.0, "month") if i % 3 == 0 else (5.0, "day") if i % 3 == 1 else (None, None)
        keys.append((f"{i:08x}", team, budget))
    conn.executemany(
        "INSERT INTO api_keys (id, hash, name, team, user, models, rpm, tpm, budget_usd, budget_period, created_at,"
        " expires_at, revoked_at) VALUES (?, ?, ?, ?, NULL, NULL, NULL, NULL, ?, ?, ?, NULL, NULL)",
        [(k, "0" * 64, f"key-{k}", team, b[0], b[1], now - 40 * DAY) for k, team, b in keys],
    )
    started = time.monotonic()
    blocked_id = ""
    feedback_id = 0
    for start in range(0, n, CHUNK):
        rows, findings, answers, events = [], [], [], []
        for i in range(start, min(n, start + CHUNK)):
            rid = f"{i:012x}{rng.getrandbits(32):08x}"
            ts = now - rng.random() * 30 * DAY
            key_id, team, _ = keys[rng.randrange(len(keys))]
            model = MODELS[min(len(MODELS) - 1, int(rng.expovariate(1.2)))]
            roll = rng.random()
            status, code = (200, None)
            if roll < 0.02:
                status, code = 403, "guard_blocked"
            elif roll < 0.035:
                status, code = 429, "rate_limit_exceeded"
            elif roll < 0.045:
                status, code = 502, "upstream_error"
            prompt, completion = rng.randint(20, 2000), rng.randint(0, 600) if status == 200 else 0
            cost = (prompt * 0.15 + completion * 0.6) / 1e6 * (10 if model == "gpt-4o" else 1)
            latency = rng.lognormvariate(6.0, 0.6)
            subject = f"user{rng.randrange(5000)}"
            rows.append((rid, ts, subject, team, key_id, "chat", model, f"prov/{model}", status, code, 0, prompt,
                         completion, 0, cost, latency, None, 1 + (status == 502), int(status == 502), 0))  # fmt: skip
            if code == "guard_blocked":
                blocked_id = rid
                findings.append(
                    (
                        rid,
                        ts,
                        team,
                        "default",
                        "input",
                        rng.choice(("injection", "secrets", "pii")),
                        "1",
                        rng.choice(("prompt_injection", "api_key", "EMAIL", "IBAN")),
                        "block",
                        0.95,
                        0,
                        10,
                    )
                )
            elif rng.random() < 0.03:
                findings.append((rid, ts, team, "default", "output", "pii", "1", "EMAIL", "redact", 0.9, 5, 20))
            if rng.random() < 0.1:
                app = APPS[rng.randrange(len(APPS))]
                exp, variant = ("tone", rng.choice(("control", "terse"))) if app == "help" else (None, None)
                outcome = "blocked" if code == "guard_blocked" else "answered" if status == 200 else "error"
                answers.append(
                    (
                        rid,
                        ts,
                        app,
                        model,
                        subject,
                        team,
                        key_id,
                        exp,
                        variant,
                        outcome,
                        "none",
                        cost,
                        latency,
                        0,
                        json.dumps([{"kb": "handbook", "doc_id": "leave.md", "version": 1}]),
                    )
                )
                if rng.random() < 0.2:
                    feedback_id += 1
                    comment = rng.choice((None, None, "Helpful, thanks", "Wrong policy cited", "Too long"))
                    events.append((rid, f"e{feedback_id}", ts + 5, subject, team, app, exp, variant, "thumbs",
                                   float(rng.random() < 0.7), comment))  # fmt: skip
        conn.executemany(INSERT_REQUESTS, rows)
        conn.executemany(INSERT_FINDINGS, findings)
        conn.executemany(INSERT_RESPONSES, answers)
        conn.executemany(INSERT_FEEDBACK, events)
        conn.commit()
        _progress("filling", min(n, start + CHUNK), n, started)
    spec = {"name": "tone", "app": "help", "variants": [{"name": "control"}, {"name": "terse"}]}
    conn.execute(
        "INSERT INTO experiments (name, app, status, spec, created_at, started_at, stopped_at, winner, note)"
        " VALUES ('tone', 'help', 'stopped', ?, ?, ?, ?, NULL, '')",
        (json.dumps(spec), now - 31 * DAY, now - 30 * DAY, now),
    )
    conn.commit()
    conn.close()
    return {"blocked_id": blocked_id, "subject": "user42", "key": keys[0][0]}


def migrate(config_path: Path) -> None:
    """Create the schema with gengate's own migrations."""
    from gengate.settings import load_settings
    from gengate.store.db import open_store

    async def go() -> None:
        store = await open_store(load_settings(config_path, environ={}).database_url)
        await store.close()

    asyncio.run(go())


def sign_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=120)
    page = client.get("/ui/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    resp = client.post("/ui/login", data={"csrf": token.group(1), "credential": ADMIN_KEY})
    if resp.status_code != 303:
        raise SystemExit(f"sign-in failed: {resp.status_code}")
    return client


def measure(client: httpx.Client, path: str, loads: int) -> dict[str, Any]:
    first = time.perf_counter()
    resp = client.get(path)
    first_ms = (time.perf_counter() - first) * 1000
    if resp.status_code != 200:
        return {"page": path, "error": f"HTTP {resp.status_code}"}
    times = []
    for _ in range(loads):
        t0 = time.perf_counter()
        resp = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        resp.raise_for_status()
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return {"page": path, "first_ms": round(first_ms, 1), "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(p95, 1), "bytes": len(resp.content)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--loads", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="reuse or keep the filled store in this folder")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="gengate-dash-"))
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = tmp / "gengate.yaml"
    config_path.write_text(yaml.safe_dump(_config(tmp / "data", port)))
    db = tmp / "data" / "gengate.db"
    marker = tmp / "filled.json"
    if marker.exists():
        ids = json.loads(marker.read_text())
        print(f"reusing the store in {tmp}")
    else:
        migrate(config_path)
        t0 = time.monotonic()
        ids = fill(db, args.requests)
        ids["fill_seconds"] = round(time.monotonic() - t0, 1)
        marker.write_text(json.dumps(ids))
    procs = Procs(tmp)
    try:
        gengate = str(Path(sys.executable).with_name("gengate"))
        proc = procs.start("gengate", [gengate, "serve", "--config", str(config_path)])
        wait_ready(procs, "gengate", proc, f"http://127.0.0.1:{port}/healthz", 300)
        client = sign_in(f"http://127.0.0.1:{port}")
        pages = [
            "/ui/", "/ui/?range=7d", "/ui/?range=30d", "/ui/requests", "/ui/requests?status=blocked",
            f"/ui/requests?subject={ids['subject']}", "/ui/requests?model=claude-haiku", "/ui/requests?status=errors",
            f"/ui/requests/{ids['blocked_id']}", "/ui/guardrails", "/ui/guardrails?range=7d", "/ui/knowledge",
            "/ui/evals", "/ui/experiments", "/ui/experiments/tone", "/ui/feedback", "/ui/keys",
        ]  # fmt: skip
        deep = client.get("/ui/requests").text
        for _ in range(20):  # page 21 of the log: keyset pages cost what the first one costs
            older = re.search(r'href="(/ui/requests\?before=[^"]+)">Older', deep)
            if older is None:
                break
            deep_path = older.group(1).replace("&amp;", "&")
            deep = client.get(deep_path).text
        else:
            pages.insert(4, deep_path)
        rows = [measure(client, path, args.loads) for path in pages]
        client.close()
    finally:
        procs.stop_all()
    print(f"\n{'PAGE':<46} {'FIRST':>9} {'P50':>9} {'P95':>9} {'KB':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['page'][:46]:<46} {r['error']}")
            continue
        print(f"{r['page'][:46]:<46} {r['first_ms']:>7.1f}ms {r['p50_ms']:>7.1f}ms {r['p95_ms']:>7.1f}ms "
              f"{r['bytes'] / 1024:>6.1f}")  # fmt: skip
    worst = max((r.get("p95_ms", 0.0) for r in rows), default=0.0)
    print(f"worst p95: {worst:.1f} ms (goal < 300 ms)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "requests": args.requests, "loads": args.loads, "fill_seconds": ids.get("fill_seconds"),
        "goal_ms": 300, "worst_p95_ms": worst, "pages": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
