"""Gateway overhead: what gengate adds to a call, next to a bare aiohttp forwarder and the LiteLLM proxy.

One run, one fake upstream, everything on 127.0.0.1, each server and the load client in its own process:

    direct   the fake upstream itself (the baseline)
    bare     a minimal aiohttp forwarder with a pooled session (the "at least half of bare aiohttp" reference)
    gengate  `gengate serve` (one worker) with a virtual key, team RPM/TPM limits, a budget, pricing for the
             model, request logging and metrics on (defaults)
    litellm  the LiteLLM proxy, installed into bench/.venv-litellm on first use (~80 s)

Per target: p50/p99 at concurrency 1 (sequential, after a warm-up) and what it adds over direct; throughput and
p99 at concurrency 64; peak RSS (VmHWM) of the proxy's process tree. Prints a table and the goal checks, and
writes bench/results/gateway_overhead.json.

    python bench/gateway_overhead.py [--requests 2000] [--duration 10] [--skip-litellm]

The process under test runs alone on one CPU, the load client and the upstream on another (`--no-pin`: let the
OS place them). The "other CPU %" column is what processes outside the bench used meanwhile: above 10 % a row
reads low, so rerun. Compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from procs import BenchError, OtherCpu, Procs, free_port, peak_rss_mb, pin, wait_ready

BENCH = Path(__file__).resolve().parent
LOOPBACK = BENCH / "loopback.py"
RESULTS = BENCH / "results" / "gateway_overhead.json"
LITELLM_VENV = BENCH / ".venv-litellm"
ADMIN_KEY = "admin-bench-key-0123456789abcdef"
LITELLM_KEY = "sk-bench-" + "0123456789abcdef" * 2
C1_MAX_SECONDS = 120.0
NOISY_PCT = 10.0


def progress(message: str) -> None:
    """One line per phase."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_load(
    procs: Procs, url: str, key: str, concurrency: int, warmup: int, requests: int, seconds: float
) -> dict[str, Any]:
    """Run the load client in its own process and return its summary."""
    argv = [sys.executable, str(LOOPBACK), "load", "--url", url, "--key", key, "--concurrency", str(concurrency)]
    argv += ["--warmup", str(warmup), "--requests", str(requests), "--duration", str(seconds)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    procs.running.append(proc)
    pin(proc.pid, procs.driver_cpu)
    try:
        # Bounded: warm-up (at most 30 s or `seconds`), the measured part, and slack.
        out, err = proc.communicate(timeout=2 * max(seconds, 30.0) + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"load client (c={concurrency}) did not finish in time") from None
    finally:
        procs.stop(proc)
    try:
        result: dict[str, Any] = json.loads(out or b"{}")
    except json.JSONDecodeError:
        result = {}
    if proc.returncode != 0 or not result:
        raise BenchError(f"load client failed (code {proc.returncode}): {err.decode(errors='replace')[-300:]}")
    if result["errors"] == result["requests"]:
        raise BenchError(f"every request failed (c={concurrency}): {result['first_error']}")
    return result


def measure(procs: Procs, url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Latency at c=1 and throughput at c=N against one URL, each with the CPU other processes took meanwhile."""
    ours = [p.pid for p in procs.running]
    with OtherCpu(ours) as other1:
        c1 = run_load(procs, url, key, 1, args.warmup, args.requests, C1_MAX_SECONDS)
    with OtherCpu(ours) as other_n:
        many = run_load(procs, url, key, args.concurrency, 10 * args.concurrency, 10 * args.requests, args.duration)
    return {"c1": {**c1, "other_cpu_pct": other1.percent}, "cN": {**many, "other_cpu_pct": other_n.percent}}


def bin_of(name: str, python: str = sys.executable) -> str:
    """A console script next to an interpreter (the venv's own), else on PATH."""
    beside = Path(python).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"`{name}` not found next to {python} or on PATH")
    return found


def start_gengate(procs: Procs, tmp: Path, upstream: str) -> tuple[str, str, subprocess.Popen[bytes]]:
    """Write a config with a priced model, team limits and a budget; create a key; serve. → (url, key, proc)."""
    port = free_port()
    big = {"rpm": 100_000_000, "tpm": 100_000_000_000, "budget": {"usd": 1_000_000, "period": "month"}}
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(tmp / "gengate-data")},
        "auth": {"admin_keys": [ADMIN_KEY]},
        "providers": {"fake": {"type": "openai", "base_url": upstream, "api_key": "upstream-secret", "timeout": 30}},
        "models": {"m": {"deployments": [{"provider": "fake", "model": "m"}]}},
        "pricing": {"m": {"input": 1.0, "output": 2.0}},
        "policy": {"teams": {"bench": big}},
        "telemetry": {"log_level": "WARNING"},
    }
    path = tmp / "gengate.yaml"
    path.write_text(yaml.safe_dump(config))
    gengate = bin_of("gengate")
    create = [gengate, "keys", "create", "--config", str(path), "--team", "bench"]
    create += ["--rpm", "100000000", "--budget-usd", "1000000"]
    done = subprocess.run(create, capture_output=True, text=True, timeout=60, check=False)
    key = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not key.startswith("sk-"):
        raise BenchError(f"gengate keys create failed: {done.stderr.strip()[-300:]}")
    proc = procs.start("gengate", [gengate, "serve", "--config", str(path)])
    wait_ready(procs, "gengate", proc, f"http://127.0.0.1:{port}/healthz", 60)
    return f"http://127.0.0.1:{port}/v1/chat/completions", key, proc


def start_bare(procs: Procs, tmp: Path, upstream: str) -> tuple[str, str, subprocess.Popen[bytes]]:
    """The bare aiohttp forwarder."""
    port = free_port()
    target = f"{upstream}/chat/completions"
    proc = procs.start("bare", [sys.executable, str(LOOPBACK), "forwarder", "--port", str(port), "--upstream", target])
    wait_ready(procs, "bare", proc, f"http://127.0.0.1:{port}/healthz", 30)
    return f"http://127.0.0.1:{port}/v1/chat/completions", "none", proc


def ensure_litellm(tmp: Path) -> Path:
    """bench/.venv-litellm with `litellm[proxy]`, created on first use."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    progress(f"installing litellm[proxy] into {LITELLM_VENV} (about 80 s, once)")
    log = tmp / "litellm-install.log"
    steps = [[sys.executable, "-m", "venv", str(LITELLM_VENV)]]
    steps.append([str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "litellm[proxy]"])
    with log.open("wb") as out:
        for step in steps:
            try:
                code = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False).returncode
            except subprocess.TimeoutExpired:
                code = -1
            if code != 0:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-4:])
                raise BenchError(f"installing litellm failed ({' '.join(step[-2:])}): {tail}")
    if not exe.exists():
        raise BenchError("litellm installed but its `litellm` command is missing")
    return exe


def start_litellm(procs: Procs, tmp: Path, upstream: str) -> tuple[str, str, subprocess.Popen[bytes]]:
    """The LiteLLM proxy as DESIGN.md runs it: offline cost map, master key, one model on the fake upstream."""
    exe = ensure_litellm(tmp)
    port = free_port()
    model = {"model_name": "m", "litellm_params": {"model": "openai/m", "api_base": upstream, "api_key": "x"}}
    cfg = tmp / "litellm.yaml"
    cfg.write_text(yaml.safe_dump({"model_list": [model]}))
    env = {**os.environ, "LITELLM_MASTER_KEY": LITELLM_KEY, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    env.pop("VIRTUAL_ENV", None)
    proc = procs.start("litellm", [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)], env)
    wait_ready(procs, "litellm", proc, f"http://127.0.0.1:{port}/health/liveliness", 180)
    return f"http://127.0.0.1:{port}/v1/chat/completions", LITELLM_KEY, proc


Starter = Callable[[Procs, Path, str], tuple[str, str, subprocess.Popen[bytes]]]


def flatten(row: dict[str, Any], direct: dict[str, Any] | None) -> dict[str, Any]:
    """The table's figures for one measured target."""
    c1, many = row["c1"], row["cN"]
    flat = {
        "c1_p50_ms": c1["p50_ms"], "c1_p99_ms": c1["p99_ms"], "cN_rps": many["rps"], "cN_p99_ms": many["p99_ms"],
        "errors": c1["errors"] + many["errors"], "peak_rss_mb": row.get("peak_rss_mb"),
        "other_cpu_pct": max(c1["other_cpu_pct"], many["other_cpu_pct"]),
    }  # fmt: skip
    if direct is not None:
        flat["added_p50_ms"] = round(c1["p50_ms"] - direct["c1_p50_ms"], 3)
        flat["added_p99_ms"] = round(c1["p99_ms"] - direct["c1_p99_ms"], 3)
    return flat


def table(rows: dict[str, dict[str, Any]], concurrency: int) -> str:
    """Fixed-width table, one row per target."""
    cols = [("c1_p50_ms", "c=1 p50 ms"), ("c1_p99_ms", "c=1 p99 ms"), ("added_p50_ms", "added p50 ms")]
    cols += [("added_p99_ms", "added p99 ms"), ("cN_rps", f"c={concurrency} req/s")]
    cols += [("cN_p99_ms", f"c={concurrency} p99 ms"), ("peak_rss_mb", "peak RSS MB"), ("other_cpu_pct", "other CPU %")]
    lines = [f"{'target':<9}" + "".join(f"{title:>14}" for _, title in cols)]
    for name, row in rows.items():
        if "failed" in row:
            lines.append(f"{name:<9}  FAILED: {row['failed']}")
            continue
        cells = "".join(f"{row[k]:>14.2f}" if isinstance(row.get(k), float | int) else f"{'-':>14}" for k, _ in cols)
        lines.append(f"{name:<9}{cells}" + (f"   ({row['errors']} errors)" if row["errors"] else ""))
    if any(row.get("other_cpu_pct", 0) > NOISY_PCT for row in rows.values()):
        lines.append(f"note: other processes took > {NOISY_PCT}% of the CPUs during some rows; those read low: rerun.")
    return "\n".join(lines)


def goal_checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The four goals, each PASS, FAIL or SKIP with its figures."""
    gg, lite, bare = (rows.get(n, {"failed": "not run"}) for n in ("gengate", "litellm", "bare"))
    checks: list[dict[str, Any]] = []

    def check(goal: str, ok: bool | None, detail: str) -> None:
        checks.append({"goal": goal, "result": "SKIP" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail})

    if "failed" in gg:
        for goal in ("added p50 < 1 ms", ">= 20x LiteLLM", ">= 0.5x bare aiohttp", "peak RSS < 150 MB"):
            check(f"gengate {goal}", None, "gengate was not measured")
        return checks
    added = gg.get("added_p50_ms")
    check("gengate added p50 < 1 ms", None if added is None else added < 1.0, f"{added} ms")
    relative = (("20x LiteLLM", lite, 20.0, "litellm"), ("0.5x bare aiohttp", bare, 0.5, "bare"))
    for goal, other, factor, label in relative:
        if "failed" in other:
            check(f"gengate throughput >= {goal}", None, f"{label} not measured: {other['failed'][:80]}")
        else:
            ratio = gg["cN_rps"] / other["cN_rps"]
            detail = f"{gg['cN_rps']:.0f} vs {other['cN_rps']:.0f} req/s = {ratio:.2f}x"
            check(f"gengate throughput >= {goal}", ratio >= factor, detail)
    rss = gg["peak_rss_mb"]
    check("gengate peak RSS < 150 MB", None if rss is None else rss < 150, f"{rss} MB")
    return checks


def litellm_version() -> str | None:
    """The installed LiteLLM version, if any."""
    python = LITELLM_VENV / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or None


def run_targets(args: argparse.Namespace, procs: Procs, tmp: Path) -> dict[str, dict[str, Any]]:
    """Start the upstream, then measure each target in turn against it."""
    up_port = free_port()
    upstream_proc = procs.start("upstream", [sys.executable, str(LOOPBACK), "upstream", "--port", str(up_port)])
    wait_ready(procs, "upstream", upstream_proc, f"http://127.0.0.1:{up_port}/healthz", 30)
    upstream = f"http://127.0.0.1:{up_port}/v1"
    pin(upstream_proc.pid, procs.driver_cpu)
    starters: dict[str, Starter | None] = {"direct": None, "bare": start_bare, "gengate": start_gengate}
    if not args.skip_litellm:
        starters["litellm"] = start_litellm
    raw: dict[str, dict[str, Any]] = {}
    for name, starter in starters.items():
        proc = None
        try:
            progress(f"{name}: starting")
            if starter is None:  # direct: the upstream itself is the target of this phase
                url, key, target = f"{upstream}/chat/completions", "none", upstream_proc
            else:
                url, key, proc = starter(procs, tmp, upstream)
                target = proc
            pin(target.pid, procs.target_cpu)
            progress(f"{name}: c=1 x {args.requests} after {args.warmup} warm-up; then c={args.concurrency}")
            raw[name] = measure(procs, url, key, args)
            raw[name]["peak_rss_mb"] = peak_rss_mb(proc.pid) if proc is not None else None
            c1, many = raw[name]["c1"], raw[name]["cN"]
            progress(
                f"{name}: c=1 p50 {c1['p50_ms']} ms; c={args.concurrency} {many['rps']} req/s, p99 {many['p99_ms']} ms"
                f" (other processes: {c1['other_cpu_pct']}% / {many['other_cpu_pct']}% CPU)"
            )
        except BenchError as exc:
            progress(f"{name}: FAILED: {exc}")
            raw[name] = {"failed": str(exc)}
        finally:
            procs.stop(proc)
            pin(upstream_proc.pid, procs.driver_cpu)
    return raw


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM takes the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run every phase, print the table and goals, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests at c=1 (c=N caps at 10x)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests before c=1")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds at c=N (after a warm-up)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--skip-litellm", action="store_true", help="do not install or run the LiteLLM proxy")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the target to one CPU, the rest to another")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="gengate-bench-") as tmpdir:
        allowed = sorted(os.sched_getaffinity(0))
        pinned = not args.no_pin and len(allowed) >= 2
        procs = Procs(Path(tmpdir), allowed[0] if pinned else None, allowed[1] if pinned else None)
        cpus = {"target": procs.target_cpu, "load_and_upstream": procs.driver_cpu}
        try:
            raw = run_targets(args, procs, Path(tmpdir))
        except BenchError as exc:
            progress(f"FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            progress("interrupted; stopping every process")
            return 130
        finally:
            procs.stop_all()
    direct = flatten(raw["direct"], None) if "failed" not in raw.get("direct", {"failed": ""}) else None
    rows = {n: r if "failed" in r else flatten(r, direct) for n, r in raw.items()}
    checks = goal_checks(rows)
    print("\n" + table(rows, args.concurrency) + "\n")
    for c in checks:
        print(f"{c['result']:<4}  {c['goal']}: {c['detail']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "options": vars(args),
        "pinned_cpus": cpus,
        "versions": {"gengate": metadata.version("gengate"), "litellm": litellm_version()},
        "rows": rows,
        "raw": raw,
        "checks": checks,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
