"""Drift at the edges: reading what the drift cores compare, the gateway's drift task, and re-evaluation commands.

- `knowledge_drift`: an app's last finished evaluation run (`eval_runs`) against the knowledge-base history.
- `question_drift_report`: the app's recent production questions (redacted again, whatever the payload setting
  kept) against an evaluation dataset's questions, embedded with the local encoder, through
  `gengate.outer.drift.question_drift_from_texts`.
- `DriftMonitor`: the gateway's background task refreshing `gengate_knowledge_changes_since_eval{app}` and
  `gengate_question_drift_score{app}` / `gengate_question_drift_drifted{app}` every `drift.interval_seconds`.
  Question drift is computed only for apps given a dataset in `drift.datasets`.
- `rerun_command`: the `gengate eval run` command line `gengate drift watch` starts when an app's knowledge
  changed since its last run (`drift.rerun_on_knowledge_change`). Evaluations run in their own process, never in
  the gateway: they are CPU-heavy, and every gateway worker would start one.

Must not: decide drift (the pure cores in `drift` and `knowledge_drift` do) or write anything but gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from gengate.errors import ConfigError, NotFound
from gengate.eval.datasets import Case
from gengate.outer.drift import DriftOptions, DriftResult, question_drift_from_texts
from gengate.outer.knowledge_drift import KnowledgeDrift, knowledge_changes
from gengate.outer.payloads import Redactor
from gengate.settings import DriftRerun, Settings
from gengate.store.db import Store
from gengate.store.evals import EvalStore
from gengate.store.outer_runs import OuterRunsStore
from gengate.telemetry.metrics import Metrics

__all__ = [
    "DriftMonitor",
    "QuestionDriftReport",
    "app_knowledge_bases",
    "case_question",
    "knowledge_drift",
    "question_drift_report",
    "rerun_command",
]

log = logging.getLogger("gengate.drift")
Encode = Callable[[list[str]], np.ndarray]
DAY = 86_400.0
APP_TARGET = "app/"  # evaluation runs' name of an app target (`app_routes.PREFIX`; gengate.app imports this module)


async def knowledge_drift(store: Store, settings: Settings, app: str) -> KnowledgeDrift:
    """What changed in the app's knowledge bases since its last finished evaluation run (all of it if none)."""
    if app not in settings.apps:
        raise NotFound(f"no app {app!r} in the configuration")
    runs = OuterRunsStore(store.engine)
    kbs = settings.apps[app].knowledge_bases
    last = await runs.last_run(APP_TARGET + app)
    seen = last.knowledge if last is not None else {}
    heads = await runs.knowledge_state(kbs)
    events: list[dict[str, Any]] = []
    new_kbs = []
    for kb in kbs:
        after = seen.get(kb)
        if after is None or heads[kb] < after:
            # Not read by the run, or its history restarted (deleted and created again): all of it is new.
            new_kbs.append(kb)
            after = 0
        events += await runs.kb_events_after(kb, after)
    return knowledge_changes(
        app, events, run_id=last.run_id if last else None, run_finished_at=last.finished_at if last else None,
        new_kbs=new_kbs if last is not None else (),
    )  # fmt: skip


def app_knowledge_bases(settings: Settings, app: str | None, overrides: Mapping[str, Any]) -> list[str]:
    """The knowledge bases an evaluation reads: the app's, or a variant's `knowledge_bases`; none for a model."""
    if app is None:
        return []
    if app not in settings.apps:
        raise ConfigError(f"no app {app!r} in the configuration (apps: {', '.join(sorted(settings.apps)) or 'none'})")
    chosen = overrides.get("knowledge_bases")
    return [str(kb) for kb in chosen] if isinstance(chosen, list) else list(settings.apps[app].knowledge_bases)


def case_question(case: Case) -> str:
    """A case's question (its last user turn for a transcript)."""
    if case.question is not None:
        return case.question
    return next((m["content"] for m in reversed(case.messages or []) if m["role"] == "user"), "")


@dataclass(frozen=True, slots=True)
class QuestionDriftReport:
    """Recent questions of an app against a dataset's: the counts, and the drift result when there was enough."""

    app: str
    dataset: str
    dataset_version: int
    since: float
    n_recent: int
    n_reference: int
    min_recent: int
    result: DriftResult | None  # None: fewer than `min_recent` recent questions

    @property
    def drifted(self) -> bool:
        """True when the test found drift."""
        return self.result is not None and self.result.drifted

    @property
    def message(self) -> str:
        """One line saying what was found."""
        if self.result is None:
            return f"not enough data: {self.n_recent} recent questions, need at least {self.min_recent}"
        return self.result.message

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "app": self.app, "dataset": self.dataset, "dataset_version": self.dataset_version, "since": self.since,
            "n_recent": self.n_recent, "n_reference": self.n_reference, "min_recent": self.min_recent,
            "drifted": self.drifted, "message": self.message,
            "result": self.result.to_dict() if self.result is not None else None,
        }  # fmt: skip


async def question_drift_report(
    store: Store, app: str, dataset: str, encode: Encode, *, since: float, min_recent: int,
    version: int | None = None, redactor: Redactor | None = None, **options: Any,
) -> QuestionDriftReport:  # fmt: skip
    """Compare the app's questions since `since` with the dataset's questions (embedding in a worker thread).

    Recent questions are redacted again (a no-op for `redacted` payloads), so `full` payloads never reach the
    output; the dataset's questions are compared as they are. `options` are `DriftOptions` fields.
    """
    evals = EvalStore(store.engine)
    record = await evals.get(dataset, version)
    reference = [q for q in (case_question(c) for c in await evals.cases(dataset, record.version)) if q.strip()]
    recent = await OuterRunsStore(store.engine).recent_questions(app, since=since)
    report = partial(QuestionDriftReport, app, dataset, record.version, since, len(recent), len(reference), min_recent)
    if len(recent) < min_recent:
        return report(None)
    redact = (redactor or Redactor()).redact

    options.setdefault("min_samples", max(2, min(min_recent, 20)))
    cap = int(options.get("max_per_side", DriftOptions().max_per_side))
    # Redacting is the costly part: sample first (seeded), so a month of traffic costs `max_per_side` redactions.
    chosen = recent if len(recent) <= cap else random.Random(options.get("seed", 0)).sample(recent, cap)

    def compare() -> DriftResult:
        return question_drift_from_texts(reference, [redact(q) for q in chosen], encode, **options)

    return report(await asyncio.to_thread(compare))


def rerun_command(app: str, rerun: DriftRerun, config_path: str | None) -> list[str]:
    """The `gengate eval run` command that re-evaluates an app (it records its own `eval_runs` row)."""
    command = [sys.executable, "-m", "gengate.cli.main", "eval", "run", rerun.dataset, "--app", app,
               "--variant", rerun.variant, "--trials", str(rerun.trials)]  # fmt: skip
    for key, value in rerun.overrides.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    if config_path:
        command += ["--config", config_path]
    return command


class DriftMonitor:
    """The gateway's drift task: refreshes the drift gauges every `drift.interval_seconds`."""

    def __init__(
        self, store: Store, settings: Settings, metrics: Metrics, encode: Encode | None, redactor: Redactor
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.encode = encode
        self.redactor = redactor
        self.refreshed_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()

    def start(self) -> None:
        """Start refreshing in the background (first refresh at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gengate-drift")

    async def close(self) -> None:
        """Stop the task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        """Recompute every gauge once: knowledge changes for every app, question drift where a dataset is set."""
        drift = self.settings.drift
        for app in self.settings.apps:
            changes = await knowledge_drift(self.store, self.settings, app)
            self.metrics.knowledge_changes.labels(app).set(changes.total)
        for app, dataset in drift.datasets.items():
            if self.encode is None:
                self._warn_once(app, "question drift needs the MiniLM embedding model: %s", app)
                continue
            try:
                report = await question_drift_report(
                    self.store, app, dataset, self.encode, since=time.time() - drift.window_days * DAY,
                    min_recent=drift.min_recent, redactor=self.redactor,
                )  # fmt: skip
            except NotFound as exc:
                self._warn_once(app, "question drift of app %s: %s", app, exc.message)
                continue
            if report.result is not None and report.result.effect is not None:
                self.metrics.question_drift.labels(app).set(report.result.effect)
                self.metrics.question_drifted.labels(app).set(1 if report.drifted else 0)
        self.refreshed_at = time.time()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except (ConfigError, NotFound, ValueError, OSError) as exc:
                log.warning("drift refresh failed: %s", exc)
            except Exception:
                # The store may be restarting; the next round tries again.
                log.exception("drift refresh failed")
            await asyncio.sleep(self.settings.drift.interval_seconds)
