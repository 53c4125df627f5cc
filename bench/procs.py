"""Process plumbing for benchmarks: start, wait for, measure and stop loopback servers.

Owns: every child process a bench starts (each in its own session, so one signal ends its whole tree), health
polling with a deadline, CPU pinning, peak RSS from /proc, and how much CPU *other* processes took during a
phase (so a noisy machine shows in the results instead of silently lowering them). Linux only; stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class BenchError(Exception):
    """A target could not be set up or measured; the reason goes into the results."""


def free_port() -> int:
    """A port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Procs:
    """The processes a bench started; `stop_all` in a `finally` ends every one of them.

    With CPUs to pin to, the process under test runs alone on `target_cpu`; load and upstream on `driver_cpu`.
    """

    logdir: Path
    driver_cpu: int | None = None
    target_cpu: int | None = None
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a process with its output in `<logdir>/<name>.log`."""
        with (self.logdir / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running.append(proc)
        return proc

    def log_tail(self, name: str, lines: int = 6) -> str:
        """The end of a process's log, for error messages."""
        path = self.logdir / f"{name}.log"
        text = path.read_text(errors="replace").strip() if path.exists() else ""
        return " | ".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM the process group, SIGKILL it after 5 s."""
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(5.0)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        # Whatever is left of the group once its leader is gone (the id of a live group is never reused).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        """Stop everything still running, newest first."""
        for proc in list(reversed(self.running)):
            self.stop(proc)


def wait_ready(procs: Procs, name: str, proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    """Poll a health URL until it answers 200; fail if the process dies or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with code {proc.returncode}: {procs.log_tail(name)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - a loopback URL built by the bench
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchError(f"{name} not ready within {timeout:.0f}s: {procs.log_tail(name)}")


def _tree(pid: int) -> list[int]:
    """A process and its live descendants."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def pin(pid: int, cpu: int | None) -> None:
    """Keep a process tree (every thread, and whatever it starts later) on one CPU; None leaves it free."""
    if cpu is None:
        return
    for p in _tree(pid):
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(task.name), {cpu})


def peak_rss_mb(pid: int) -> float | None:
    """Sum of VmHWM (peak resident set) over a process and its descendants, in MB."""
    total_kb = 0
    for p in _tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total_kb += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    return round(total_kb / 1024, 1) if total_kb else None


def _busy_ticks() -> int:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return sum(fields) - fields[3] - fields[4]  # minus idle and iowait


def _own_ticks(pids: list[int]) -> float:
    """CPU ticks of this process, its reaped children and the live trees of `pids`."""
    t = os.times()
    ticks = (t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")
    for pid in {p for root in pids for p in _tree(root)}:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ticks += sum(int(v) for v in stat.rsplit(")", 1)[1].split()[11:13])  # utime, stime
    return ticks


class OtherCpu:
    """Context manager: the share of all CPUs used by processes outside the bench during the block (%)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.percent = 0.0

    def __enter__(self) -> OtherCpu:
        self._start = (time.monotonic(), _busy_ticks(), _own_ticks(self.pids))
        return self

    def __exit__(self, *exc: object) -> None:
        t0, busy0, own0 = self._start
        capacity = (time.monotonic() - t0) * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1)
        other = (_busy_ticks() - busy0) - (_own_ticks(self.pids) - own0)
        self.percent = round(max(0.0, 100 * other / capacity), 1) if capacity > 0 else 0.0
