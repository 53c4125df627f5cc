"""Experiments at run time: which variant a caller gets, lifecycle changes, and the guardrail watch.

`ExperimentService` lives on the Gateway (`gateway.experiments`). It re-reads running, paused and shipped
experiments from the store every `experiments.refresh_seconds` (other gateway processes and the CLI change them
there) and keeps, per app, what each variant serves: the app's settings with the variant's overlay (validated once
per change, not per request), an extractive answerer when the overlay changes how answers are extracted, and the
request parameters to apply. `choose` is then a dictionary lookup and one hash:

- running: the caller's unit (subject, or team) is assigned stickily (`sequential.assign`) and the answer is tagged
  with the experiment and variant;
- paused: everyone gets the control, untagged (paused traffic does not count);
- stopped or draft: the app's configuration;
- shipped: the winner's overlay keeps being served over the configuration — while the configuration still holds
  the values the winner replaced; once `gengate.yaml` is updated (the YAML `ship` prints), the configuration wins.

Every `experiments.guardrail_check_seconds` the service also checks running experiments' guardrails: a breach with
action `stop` stops the experiment (conditionally: several processes may check, one update wins), `flag` records a
note. The lifecycle functions (`create_experiment`, `change_status`, `load_analysis`) are shared by the CLI and the
admin API.

Must not: compute statistics (`experiment_analysis`) or render anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gengate.errors import ConfigError, Conflict, GengateError
from gengate.outer.experiment_analysis import Analysis, GuardrailResult, analyse
from gengate.outer.experiments import (
    ExperimentSpec,
    baseline_holds,
    check_spec,
    knowledge_bases_of,
    next_status,
    overlay_app,
    shipped_baseline,
    split_overrides,
)
from gengate.outer.sequential import assign
from gengate.rag.answer import ExtractiveAnswerer, SentenceEncoder
from gengate.settings import AppSettings, Settings
from gengate.store.experiments import ExperimentRecord, ExperimentStore
from gengate.store.knowledge import KnowledgeStore
from gengate.types import Principal

log = logging.getLogger("gengate.experiments")
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Choice:
    """What one request to an app is served with."""

    app: AppSettings
    answerer: ExtractiveAnswerer
    experiment: str | None = None
    variant: str | None = None
    request: Mapping[str, Any] = field(default_factory=dict)  # temperature, top_p, max_tokens

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The request body with the variant's request parameters (they win over the client's)."""
        return {**body, **self.request} if self.request else body


@dataclass(frozen=True, slots=True)
class _Running:
    name: str
    unit: str
    weights: dict[str, float]
    arms: dict[str, Choice]


class ExperimentService:
    """Per-app variants of running experiments, refreshed from the store; guardrails watched in the background."""

    def __init__(
        self, settings: Settings, store: ExperimentStore, answerers: Mapping[str, ExtractiveAnswerer],
        encoder: SentenceEncoder | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.store = store
        self._answerers = answerers
        self._encoder = encoder
        self._running: dict[str, _Running] = {}
        self._base: dict[str, Choice] = {}
        self._seen: tuple[Any, ...] | None = None
        self._warned: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    # -- serving ------------------------------------------------------------------------------------------

    def choose(self, app_name: str, app: AppSettings, principal: Principal) -> Choice:
        """The settings, answerer and tags for one request by `principal` to `app_name`."""
        running = self._running.get(app_name)
        if running is not None:
            unit = principal.team if running.unit == "team" else principal.subject
            if unit:
                return running.arms[assign(running.name, unit, running.weights)]
        base = self._base.get(app_name)
        return base if base is not None else Choice(app, self._answerers[app_name])

    def _answerer(self, app_name: str, app: AppSettings) -> ExtractiveAnswerer:
        configured = self.settings.apps[app_name]
        if (
            app.answer_sentences == configured.answer_sentences
            and app.extractive_encoder == configured.extractive_encoder
        ):
            return self._answerers[app_name]  # extraction unchanged: share the gateway's answerer
        return ExtractiveAnswerer(self._encoder if app.extractive_encoder else None, max_sentences=app.answer_sentences)

    def _choice(self, app_name: str, base: Choice, variant: str, overrides: Mapping[str, Any],
                experiment: str | None = None) -> Choice:  # fmt: skip
        """`base` with a variant's overlay (validated here, once per change of the experiments)."""
        app = overlay_app(self.settings, base.app, variant, overrides)
        _, params = split_overrides(overrides)
        answerer = base.answerer if app is base.app else self._answerer(app_name, app)
        return Choice(app, answerer, experiment, variant if experiment else None, {**base.request, **params})

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    async def refresh(self) -> None:
        """Re-read live experiments from the store; rebuild the variants when anything changed."""
        records = await self.store.list(statuses=("running", "paused", "shipped"))
        seen = tuple((r.name, r.status, r.winner, r.spec, repr(r.shipped_over)) for r in records)
        if seen == self._seen:
            return
        self._base, self._running = self._build(records)
        self._seen = seen

    def _build(self, records: Sequence[ExperimentRecord]) -> tuple[dict[str, Choice], dict[str, _Running]]:
        """Per app: what everyone outside a running experiment gets, and the running experiment's arms."""
        for r in records:
            if r.app not in self.settings.apps:
                self._warn_once(f"app:{r.name}", "experiment %s: no app %r in this gateway's configuration",
                                r.name, r.app)  # fmt: skip
        bases: dict[str, Choice] = {}
        running: dict[str, _Running] = {}
        for app_name, configured in self.settings.apps.items():
            plain = Choice(configured, self._answerers[app_name])
            base = self._shipped(app_name, plain, [r for r in records if r.app == app_name and r.status == "shipped"])
            live = [r for r in records if r.app == app_name and r.status in ("running", "paused")]
            if len(live) > 1:
                self._warn_once(f"live:{app_name}", "app %s has several live experiments (%s); serving the oldest",
                                app_name, ", ".join(r.name for r in live))  # fmt: skip
            arms = self._arms(app_name, base, live[0]) if live else None
            if arms is not None and live[0].status == "running":
                spec = live[0].spec
                running[app_name] = _Running(spec.name, spec.unit, spec.weights(), arms)
            elif arms is not None:  # paused: the control for everyone, untagged
                control = arms[live[0].spec.control.name]
                base = Choice(control.app, control.answerer, request=control.request)
            if base != plain:
                bases[app_name] = base
        return bases, running

    def _shipped(self, app_name: str, base: Choice, shipped: Sequence[ExperimentRecord]) -> Choice:
        """The app's configuration with the winners shipped over it, oldest first, while the configuration
        still holds the values each winner replaced."""
        for r in sorted(shipped, key=lambda r: r.stopped_at or 0.0):
            if r.winner is None or not baseline_holds(self.settings.apps[app_name], r.shipped_over or {}):
                continue
            try:
                base = self._choice(app_name, base, r.winner, r.spec.variant(r.winner).overrides)
            except GengateError as exc:
                self._warn_once(f"ship:{r.name}", "experiment %s: cannot serve the shipped winner: %s",
                                r.name, exc.message)  # fmt: skip
        return base

    def _arms(self, app_name: str, base: Choice, record: ExperimentRecord) -> dict[str, Choice] | None:
        """Each variant of a live experiment over `base`; None (and a warning) when an overlay does not validate."""
        try:
            return {
                v.name: self._choice(app_name, base, v.name, v.overrides, record.name) for v in record.spec.variants
            }
        except GengateError as exc:
            self._warn_once(f"spec:{record.name}", "experiment %s is not served: %s", record.name, exc.message)
            return None

    # -- the background task ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the experiments now, then keep refreshing them and watching guardrails (idempotent)."""
        if self._task is not None:
            return
        try:
            await self.refresh()
        except Exception:
            log.exception("reading experiments failed; will retry")
        self._task = asyncio.create_task(self._run(), name="gengate-experiments")

    async def _run(self) -> None:
        cfg = self.settings.experiments
        next_check = time.monotonic() + cfg.guardrail_check_seconds
        while True:
            await asyncio.sleep(cfg.refresh_seconds)
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + cfg.guardrail_check_seconds
                    await self.check_guardrails()
                await self.refresh()
            except Exception:
                # The database may be restarting: keep serving what was read last and try again.
                log.exception("refreshing experiments failed; will retry")

    async def check_guardrails(self, now: float | None = None) -> list[str]:
        """Check every running experiment's guardrails once; stop or flag on breaches; return what changed."""
        now = now if now is not None else time.time()
        changed = []
        for record in await self.store.list(statuses=("running",)):
            spec = record.spec
            if not spec.guardrails:
                continue
            analysis = analyse(spec, [(now, await self.store.unit_totals(record.name, spec.unit, until=now))])
            breaches = analysis.breaches
            if not breaches:
                continue
            stops = [b for b in breaches if b.guardrail.action == "stop"]
            note = "; ".join(breach_note(b, spec.control.name) for b in breaches)
            if stops:
                note = f"stopped by guardrail: {note}"
                if await self.store.set_status(record.name, "stopped", expected="running", now=now, note=note):
                    log.warning("experiment %s stopped: %s", record.name, note)
                    changed.append(record.name)
            elif await self.store.set_note(record.name, f"guardrail flagged: {note}", status="running"):
                log.warning("experiment %s flagged: %s", record.name, note)
                changed.append(record.name)
        return changed

    async def aclose(self) -> None:
        """Stop the background task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def breach_note(breach: GuardrailResult, control: str) -> str:
    """`block_rate of terse 0.420 vs control 0.010 (bound +2pt; at least +0.350 over it)`: which, and by how much."""
    g = breach.guardrail
    over = breach.excess.low
    return (
        f"{g.metric} of {breach.variant} {breach.treatment:.4g} vs {control} {breach.control:.4g} "
        f"(bound {g.label()}; at least {over:+.4g} over it, always-valid)"
    )


# -- lifecycle, shared by the CLI and the admin API ---------------------------------------------------------------


async def create_experiment(store: ExperimentStore, settings: Settings, spec: ExperimentSpec) -> ExperimentRecord:
    """Validate a spec against the configuration (and the knowledge bases it names) and store it as a draft."""
    check_spec(spec, settings)
    knowledge = KnowledgeStore(store.engine)
    missing = sorted([kb for kb in knowledge_bases_of(spec) if await knowledge.get(kb) is None])
    if missing:
        raise ConfigError(f"experiment {spec.name!r}: unknown knowledge bases {', '.join(missing)}")
    return await store.create(spec)


async def change_status(
    store: ExperimentStore, settings: Settings, name: str, action: str, *, winner: str | None = None
) -> ExperimentRecord:
    """Start, pause, stop or ship an experiment (ship needs the winning variant)."""
    record = await store.get(name)
    status = next_status(name, record.status, action)
    shipped_over = None
    note = None
    if action == "start":
        check_spec(record.spec, settings)
        others = [r.name for r in await store.list(statuses=("running", "paused"), app=record.app) if r.name != name]
        if others:
            raise Conflict(f"app {record.app!r} already has a live experiment ({', '.join(others)}): stop it first")
    if action == "ship":
        if winner is None:
            raise ConfigError("ship needs the winning variant")
        overrides = record.spec.variant(winner).overrides
        configured = settings.apps.get(record.app)
        if configured is None:
            raise ConfigError(f"no app {record.app!r} in the configuration")
        shipped_over = shipped_baseline(configured, overrides)
        note = f"shipped {winner}"
    if not await store.set_status(name, status, expected=record.status, winner=winner, note=note,
                                  shipped_over=shipped_over):  # fmt: skip
        now = await store.get(name)
        raise Conflict(f"experiment {name!r} changed meanwhile (it is {now.status} now): try again")
    return await store.get(name)


def looks(first: float, now: float, *, buckets: int | None = None, max_looks: int = 60) -> list[float]:
    """When the analysis looks: at the end of each day since `first` and now (or `buckets` even steps)."""
    if now <= first:
        return [now]
    if buckets is not None:
        step = (now - first) / max(1, buckets)
        return [first + step * i for i in range(1, buckets)] + [now]
    days = [first + DAY * i for i in range(1, math.ceil((now - first) / DAY))]
    if len(days) >= max_looks:
        stride = len(days) / (max_looks - 1)
        days = [days[int(i * stride)] for i in range(max_looks - 1)]
    return [*days, now]


async def load_analysis(
    store: ExperimentStore, record: ExperimentRecord, *, now: float | None = None, buckets: int | None = None
) -> Analysis:
    """The experiment's analysis, folded over a look per day (or `buckets` looks) up to now (or its stop)."""
    end = now if now is not None else time.time()
    if record.stopped_at is not None:
        end = min(end, record.stopped_at)
    span = await store.span(record.name)
    if span is not None:
        end = max(end, span[1])
    first = span[0] if span else end
    times = looks(first, end, buckets=buckets)
    totals = [(ts, await store.unit_totals(record.name, record.spec.unit, until=ts)) for ts in times]
    return analyse(record.spec, totals)


def record_data(record: ExperimentRecord) -> dict[str, Any]:
    """An experiment as the admin API shows it."""
    return {
        "name": record.name, "app": record.app, "status": record.status, "winner": record.winner,
        "note": record.note, "created_at": record.created_at, "started_at": record.started_at,
        "stopped_at": record.stopped_at, "spec": record.spec.model_dump(mode="json"),
    }  # fmt: skip
