"""Gateway overhead: what gengate adds to a call, next to a bare aiohttp forwarder and the LiteLLM proxy.

One fake upstream, everything on 127.0.0.1, each server and the load client in its own process:

    direct   the fake upstream itself (the baseline)
    bare     a minimal aiohttp forwarder with a pooled session (the "at least half of bare aiohttp" reference)
    gengate  `gengate serve` (one worker) with a virtual key, team RPM/TPM limits, a budget, pricing for the
             model, request logging and metrics on (defaults)
    litellm  the LiteLLM proxy, installed into bench/.venv-litellm on first use (~80 s)

Every server starts once. Then `--rounds` rounds measure every target in turn, the order rotated by one target
per round (direct, bare, gengate, litellm; then bare, gengate, litellm, direct; ...), so a slow spell of the
machine spreads over the targets instead of landing on one of them. Per target and round: p50/p99 at
concurrency 1 (sequential, after a warm-up) and what they add over direct *in the same round*; throughput and
p99 at concurrency 64 for `--duration` seconds (after a warm-up). LiteLLM takes ~25 ms a call, so its c=1 phase
sends `--litellm-requests` instead of `--requests`.

The main table shows the median of each figure over the rounds, and the peak RSS (VmHWM) of each proxy's process
tree at the end; a second table the min-max over the rounds of c=1 p50, added p50 and c=64 req/s, and the most
CPU other processes took in a round. The goal checks use the medians. Every round's figures go into
bench/results/gateway_overhead.json next to the medians.

    python bench/gateway_overhead.py [--rounds 3] [--requests 1000] [--duration 5] [--skip-litellm]

With the defaults this takes about 2 minutes without LiteLLM and about 4 with it (plus its install, once).

The process under test runs alone on one CPU during its phases; the load client, the upstream and the idle
servers share another (`--no-pin`: let the OS place them). "Other CPU %" is what processes outside the bench
used meanwhile: a round above 10 % reads low. The median outvotes one such round; if the spread is wide or
several rounds were noisy, rerun. Compare rows of the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
CN_MAX_REQUESTS = 1_000_000  # c=N phases end after --duration, not on a request count
NOISY_PCT = 10.0
NAMES = ("direct", "bare", "gengate", "litellm")  # the first round's order; later rounds rotate it


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


@dataclass
class Target:
    """A server under test: started once, measured once per round."""

    name: str
    url: str
    key: str
    proc: subprocess.Popen[bytes]
    log: str  # its log's name in Procs
    c1_requests: int
    c1_warmup: int
    many_warmup: int
    measure_rss: bool = True  # not for direct: the upstream also serves every other target
    rounds: list[dict[str, Any]] = field(default_factory=list)  # one raw result (or {"failed": why}) per round


def measure(procs: Procs, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """Latency at c=1 and throughput at c=N against one target, each with the CPU other processes took meanwhile."""
    ours = [p.pid for p in procs.running]
    with OtherCpu(ours) as other1:
        c1 = run_load(procs, target.url, target.key, 1, target.c1_warmup, target.c1_requests, C1_MAX_SECONDS)
    with OtherCpu(ours) as other_n:
        many = run_load(
            procs, target.url, target.key, args.concurrency, target.many_warmup, CN_MAX_REQUESTS, args.duration
        )
    return {
        "c1": {**c1, "other_cpu_pct": other1.percent},
        "cN": {**many, "other_cpu_pct": other_n.percent},
        "peak_rss_mb": peak_rss_mb(target.proc.pid) if target.measure_rss else None,
    }


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
MEDIANS = ("c1_p50_ms", "c1_p99_ms", "added_p50_ms", "added_p99_ms", "cN_rps", "cN_p99_ms", "other_cpu_pct")
SPREADS = ("c1_p50_ms", "added_p50_ms", "cN_rps", "other_cpu_pct")


def round_figures(result: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """The table's figures for one target in one round; `direct` is the baseline's raw result of the same round."""
    if "failed" in result:
        return {"failed": result["failed"]}
    c1, many = result["c1"], result["cN"]
    flat = {
        "c1_p50_ms": c1["p50_ms"], "c1_p99_ms": c1["p99_ms"], "cN_rps": many["rps"], "cN_p99_ms": many["p99_ms"],
        "errors": c1["errors"] + many["errors"], "peak_rss_mb": result["peak_rss_mb"],
        "other_cpu_pct": max(c1["other_cpu_pct"], many["other_cpu_pct"]),
    }  # fmt: skip
    if "failed" not in direct:
        flat["added_p50_ms"] = round(c1["p50_ms"] - direct["c1"]["p50_ms"], 3)
        flat["added_p99_ms"] = round(c1["p99_ms"] - direct["c1"]["p99_ms"], 3)
    return flat


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's row: the median of each figure over its measured rounds, min/max of the noisy ones."""
    ok = [r for r in rounds if "failed" not in r]
    if not ok:
        return {"failed": rounds[0]["failed"] if rounds else "not measured"}
    row: dict[str, Any] = {"rounds_measured": len(ok), "rounds": len(rounds)}
    for key in MEDIANS:
        values = [r[key] for r in ok if r.get(key) is not None]
        row[key] = round(statistics.median(values), 3) if values else None
    for key in SPREADS:
        values = [r[key] for r in ok if r.get(key) is not None]
        row[f"{key}_min"], row[f"{key}_max"] = (min(values), max(values)) if values else (None, None)
    rss = [r["peak_rss_mb"] for r in ok if r["peak_rss_mb"] is not None]
    row["peak_rss_mb"] = max(rss) if rss else None  # VmHWM only grows: the last round's
    row["errors"] = sum(r["errors"] for r in ok)
    return row


def table(rows: dict[str, dict[str, Any]], concurrency: int, rounds: int) -> str:
    """Fixed-width table of the medians, one row per target."""
    cols = [("c1_p50_ms", "c=1 p50 ms"), ("c1_p99_ms", "c=1 p99 ms"), ("added_p50_ms", "added p50 ms")]
    cols += [("added_p99_ms", "added p99 ms"), ("cN_rps", f"c={concurrency} req/s")]
    cols += [("cN_p99_ms", f"c={concurrency} p99 ms"), ("peak_rss_mb", "peak RSS MB"), ("other_cpu_pct", "other CPU %")]
    lines = [f"median of {rounds} round{'s' * (rounds != 1)}", f"{'target':<9}" + "".join(f"{t:>14}" for _, t in cols)]
    for name, row in rows.items():
        if "failed" in row:
            lines.append(f"{name:<9}  FAILED: {row['failed']}")
            continue
        cells = "".join(f"{row[k]:>14.2f}" if isinstance(row.get(k), float | int) else f"{'-':>14}" for k, _ in cols)
        notes = [f"{row['errors']} errors"] if row["errors"] else []
        if row["rounds_measured"] < row["rounds"]:
            notes.append(f"measured in {row['rounds_measured']} of {row['rounds']} rounds")
        lines.append(f"{name:<9}{cells}" + (f"   ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines)


def spread_table(rows: dict[str, dict[str, Any]], concurrency: int) -> str:
    """Min-max over the rounds of the figures that move most between runs."""
    cols = [("c1_p50_ms", "c=1 p50 ms", 2), ("added_p50_ms", "added p50 ms", 2)]
    cols += [("cN_rps", f"c={concurrency} req/s", 0), ("other_cpu_pct", "other CPU %", 1)]
    lines = ["min-max over the rounds", f"{'target':<9}" + "".join(f"{title:>18}" for _, title, _ in cols)]
    for name, row in rows.items():
        if "failed" in row:
            continue
        cells = ""
        for key, _, digits in cols:
            low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
            cells += f"{'-':>18}" if low is None or high is None else f"{f'{low:.{digits}f}-{high:.{digits}f}':>18}"
        lines.append(f"{name:<9}{cells}")
    if any(row.get("other_cpu_pct_max", 0) > NOISY_PCT for row in rows.values()):
        lines.append(
            f"note: other processes took > {NOISY_PCT}% of the CPUs in some rounds; those rounds read low."
            " The medians outvote one such round; if several were, rerun."
        )
    return "\n".join(lines)


def goal_checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The four goals on the medians, each PASS, FAIL or SKIP with its figures."""
    gg, lite, bare = (rows.get(n, {"failed": "not run"}) for n in ("gengate", "litellm", "bare"))
    checks: list[dict[str, Any]] = []

    def check(goal: str, ok: bool | None, detail: str) -> None:
        checks.append({"goal": goal, "result": "SKIP" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail})

    if "failed" in gg:
        for goal in ("added p50 < 1 ms", ">= 20x LiteLLM", ">= 0.5x bare aiohttp", "peak RSS < 150 MB"):
            check(f"gengate {goal}", None, "gengate was not measured")
        return checks
    added = gg.get("added_p50_ms")
    spread = f" (rounds: {gg['added_p50_ms_min']}-{gg['added_p50_ms_max']} ms)" if added is not None else ""
    check("gengate added p50 < 1 ms", None if added is None else added < 1.0, f"median {added} ms{spread}")
    relative = (("20x LiteLLM", lite, 20.0, "litellm"), ("0.5x bare aiohttp", bare, 0.5, "bare"))
    for goal, other, factor, label in relative:
        if "failed" in other:
            check(f"gengate throughput >= {goal}", None, f"{label} not measured: {other['failed'][:80]}")
        else:
            ratio = gg["cN_rps"] / other["cN_rps"]
            detail = f"medians {gg['cN_rps']:.0f} vs {other['cN_rps']:.0f} req/s = {ratio:.2f}x"
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


def start_targets(
    args: argparse.Namespace, procs: Procs, tmp: Path, upstream: str, upstream_proc: subprocess.Popen[bytes]
) -> tuple[list[Target], dict[str, str]]:
    """Start every proxy once (each parked on the driver CPU while idle). → (targets, {name: why it failed})."""
    url = f"{upstream}/chat/completions"
    plain = (args.requests, args.warmup, 10 * args.concurrency)
    targets = [Target("direct", url, "none", upstream_proc, "upstream", *plain, measure_rss=False)]
    failed: dict[str, str] = {}
    starters: dict[str, Starter] = {"bare": start_bare, "gengate": start_gengate}
    if not args.skip_litellm:
        starters["litellm"] = start_litellm
    for name, starter in starters.items():
        progress(f"{name}: starting")
        before = list(procs.running)
        try:
            url, key, proc = starter(procs, tmp, upstream)
        except BenchError as exc:
            progress(f"{name}: FAILED: {exc}")
            failed[name] = str(exc)
            for leftover in [p for p in procs.running if p not in before]:
                procs.stop(leftover)
            continue
        pin(proc.pid, procs.driver_cpu)
        # LiteLLM takes ~25 ms a call: fewer c=1 requests and shorter warm-ups keep its rounds short.
        slow = (args.litellm_requests, min(args.warmup, args.litellm_requests // 4), 2 * args.concurrency)
        targets.append(Target(name, url, key, proc, name, *(slow if name == "litellm" else plain)))
    return targets, failed


def run_rounds(args: argparse.Namespace, procs: Procs, targets: list[Target]) -> list[list[str]]:
    """Measure every target once a round, the order rotated by one each round. → the order of each round."""
    orders = []
    for number in range(args.rounds):
        shift = number % len(targets)
        order = targets[shift:] + targets[:shift]
        orders.append([t.name for t in order])
        for target in order:
            label = f"round {number + 1}/{args.rounds} {target.name}"
            if target.proc.poll() is not None:
                why = f"{target.log} exited with code {target.proc.returncode}: {procs.log_tail(target.log)}"
                progress(f"{label}: FAILED: {why}")
                target.rounds.append({"failed": why})
                continue
            progress(f"{label}: c=1 x {target.c1_requests} after {target.c1_warmup} warm-up; then c={args.concurrency}")
            pin(target.proc.pid, procs.target_cpu)
            try:
                result = measure(procs, target, args)
            except BenchError as exc:
                progress(f"{label}: FAILED: {exc}")
                target.rounds.append({"failed": str(exc)})
                continue
            finally:
                pin(target.proc.pid, procs.driver_cpu)
            target.rounds.append(result)
            c1, many = result["c1"], result["cN"]
            progress(
                f"{label}: c=1 p50 {c1['p50_ms']} ms; c={args.concurrency} {many['rps']} req/s, p99 {many['p99_ms']} ms"
                f" (other processes: {c1['other_cpu_pct']}% / {many['other_cpu_pct']}% CPU)"
            )
    return orders


def run_targets(
    args: argparse.Namespace, procs: Procs, tmp: Path
) -> tuple[list[Target], dict[str, str], list[list[str]]]:
    """Start the upstream and every proxy, then run the rounds. → (targets, failed starts, orders)."""
    up_port = free_port()
    upstream_proc = procs.start("upstream", [sys.executable, str(LOOPBACK), "upstream", "--port", str(up_port)])
    wait_ready(procs, "upstream", upstream_proc, f"http://127.0.0.1:{up_port}/healthz", 30)
    pin(upstream_proc.pid, procs.driver_cpu)
    targets, failed = start_targets(args, procs, tmp, f"http://127.0.0.1:{up_port}/v1", upstream_proc)
    return targets, failed, run_rounds(args, procs, targets)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM takes the same clean-up path as Ctrl-C."""
    raise KeyboardInterrupt


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run every round, print the tables and goals, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive, default=3, help="times each target is measured (interleaved)")
    parser.add_argument("--requests", type=positive, default=1000, help="measured requests at c=1, per round")
    parser.add_argument("--litellm-requests", type=positive, default=200, help="the same for LiteLLM (~25 ms each)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests before c=1, per round")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds at c=N per round (after a warm-up)")
    parser.add_argument("--concurrency", type=positive, default=64)
    parser.add_argument("--skip-litellm", action="store_true", help="do not install or run the LiteLLM proxy")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the target to one CPU, the rest to another")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="gengate-bench-") as tmpdir:
        allowed = sorted(os.sched_getaffinity(0))
        pinned = not args.no_pin and len(allowed) >= 2
        procs = Procs(Path(tmpdir), allowed[0] if pinned else None, allowed[1] if pinned else None)
        cpus = {"target": procs.target_cpu, "load_upstream_and_idle_servers": procs.driver_cpu}
        try:
            targets, failed, orders = run_targets(args, procs, Path(tmpdir))
        except BenchError as exc:
            progress(f"FAILED: {exc}")
            return 1
        except KeyboardInterrupt:
            progress("interrupted; stopping every process")
            return 130
        finally:
            procs.stop_all()
    direct = targets[0].rounds
    per_round = {t.name: [round_figures(r, d) for r, d in zip(t.rounds, direct, strict=True)] for t in targets}
    rows = {t.name: summarize(per_round[t.name]) for t in targets} | {n: {"failed": why} for n, why in failed.items()}
    rows = {name: rows[name] for name in NAMES if name in rows}
    checks = goal_checks(rows)
    print("\n" + table(rows, args.concurrency, args.rounds) + "\n\n" + spread_table(rows, args.concurrency) + "\n")
    for c in checks:
        print(f"{c['result']:<4}  {c['goal']}: {c['detail']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "options": vars(args),
        "pinned_cpus": cpus,
        "versions": {"gengate": metadata.version("gengate"), "litellm": litellm_version()},
        "round_orders": orders,
        "rows": rows,  # medians over the rounds, min/max of the noisy figures
        "per_round": per_round,  # every round's figures, in round order
        "raw": {t.name: t.rounds for t in targets} | {n: [{"failed": why}] for n, why in failed.items()},
        "checks": checks,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(BENCH.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
