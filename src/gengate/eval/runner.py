"""Experiments: a dataset run against an app under one configuration variant, N trials per case, in-process.

Each trial goes through the same code as `POST /v1/chat/completions` with `model: app/<name>` — the app's guard
stages, permission-aware retrieval with the case's identity, the answerer or model, templates — so what is
measured is what users get. Variants are overlays on the app's configuration (system prompt, model, top-k,
knowledge bases, retrieval settings, guard profile) plus request parameters (temperature), never code.

Owns: building a variant's settings, running trials with bounded concurrency, scoring them with the metrics,
appending every finished trial to a JSONL journal so an interrupted run resumes without redoing finished trials.
Must not: compute statistics (see `results`, `stats`) or render reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gengate.app.app_routes import PREFIX, run_app
from gengate.app.gateway import Gateway, open_gateway
from gengate.errors import ConfigError, GengateError
from gengate.eval.datasets import Case
from gengate.eval.metrics.base import (
    AnyMetric,
    EvalCase,
    GuardOutcome,
    MetricRegistry,
    Observation,
    is_async_metric,
)
from gengate.eval.results import Retrieved, RunResult, TrialResult, to_json
from gengate.eval.results import _trial_from_data as trial_from_data
from gengate.providers.routing import RouteLog
from gengate.settings import Settings
from gengate.telemetry.traces import TraceRecord
from gengate.types import Principal

APP_KEYS = {"system_prompt", "model", "top_k", "knowledge_bases", "retrieval", "guard_profile", "no_answer",
            "answer_sentences", "where", "extractive_encoder"}  # fmt: skip
REQUEST_KEYS = {"temperature", "top_p", "max_tokens"}
DEFAULT_METRICS = ("contains", "token_f1", "faithfulness", "answer_relevance", "refusal", "guard_outcome",
                   "recall@5", "mrr@10", "latency", "cost")  # fmt: skip
LOWER_IS_BETTER = {"latency", "cost"}
log = logging.getLogger("gengate.eval")

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Variant:
    """A named configuration overlay: app settings and request parameters."""

    name: str = "default"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse keys that are not configuration overlays."""
        unknown = sorted(set(self.overrides) - APP_KEYS - REQUEST_KEYS)
        if unknown:
            allowed = ", ".join(sorted(APP_KEYS | REQUEST_KEYS))
            raise ConfigError(f"variant {self.name!r}: unknown keys {', '.join(unknown)} (allowed: {allowed})")


def variant_settings(settings: Settings, app: str, variant: Variant) -> Settings:
    """The settings with the variant's overlay applied to one app."""
    variant.check()
    if app not in settings.apps:
        raise ConfigError(f"no app {app!r} in the configuration (apps: {', '.join(sorted(settings.apps)) or 'none'})")
    data = settings.model_dump()
    data["apps"][app].update({k: v for k, v in variant.overrides.items() if k in APP_KEYS})
    try:
        return Settings.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"variant {variant.name!r}: {exc}") from None


def eval_case(case: Case) -> EvalCase:
    """The metrics' view of a dataset case."""
    question = case.question or next(m["content"] for m in reversed(case.messages or []) if m["role"] == "user")
    metadata: dict[str, Any] = dict(case.metadata)
    if "outcome" in case.expected:
        metadata["expected_outcome"] = case.expected["outcome"]
        metadata.setdefault("expect_refusal", case.expected["outcome"] != "answered")
    return EvalCase(case.case_id, question, case.reference, case.required_facts, case.gold_ids, case.tags, metadata)


def principal_for(case: Case) -> Principal:
    """Who the case runs as (an anonymous member of team `eval` when the case names nobody)."""
    identity = case.identity
    if identity is None:
        return Principal(subject="eval", team="eval", auth="eval")
    return Principal(subject=identity.subject, team=identity.team or "eval", groups=identity.groups,
                     roles=identity.roles, auth="eval")  # fmt: skip


class _Call:
    """The per-request state `run_app` expects, for a caller that did not come over HTTP."""

    def __init__(self, gateway: Gateway, principal: Principal, request_id: str) -> None:
        self.gateway = gateway
        self.principal = principal
        self.key = None
        self.admission = None
        self.trace = TraceRecord(id=request_id, ts=time.time(), endpoint="eval", status=200)
        self.trace.subject, self.trace.team = principal.subject, principal.team


class Journal:
    """Finished trials of one run, one JSON line each, so a run can resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def header(self) -> dict[str, Any] | None:
        """The run's description (first line), if the journal exists."""
        if not self.path.exists():
            return None
        with self.path.open(encoding="utf-8") as f:
            first = f.readline()
        return dict(json.loads(first)) if first.strip() else None

    def start(self, header: Mapping[str, Any]) -> None:
        """Create the journal with its header."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def done(self) -> dict[tuple[str, int], TrialResult]:
        """Trials already finished (a torn last line from a crash is ignored)."""
        out: dict[tuple[str, int], TrialResult] = {}
        if not self.path.exists():
            return out
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            with self.path.open("a", encoding="utf-8") as f:
                f.write("\n")  # a line torn by a crash: new trials start on a line of their own
        lines = text.splitlines()[1:]
        for line in lines:
            try:
                trial = _trial(json.loads(line))
            except (json.JSONDecodeError, ValueError):
                continue  # a line torn by a crash: that trial runs again
            out[(trial.case_id, trial.trial)] = trial
        return out

    def append(self, trial: TrialResult) -> None:
        """Record one finished trial."""
        with self.path.open("a", encoding="utf-8") as f:
            f.write(to_json(trial, indent=None) + "\n")


def _judge(gateway: Gateway, model: str) -> Callable[[list[dict[str, str]]], Awaitable[str]]:
    """The judge metrics' completion function: one routed call to the judge model (temperature 0)."""
    if model not in gateway.settings.models or gateway.settings.models[model].kind != "chat":
        raise ConfigError(f"judge model {model!r} is not a chat model in `models`")

    async def complete(messages: list[dict[str, str]]) -> str:
        body = await gateway.router.run(
            model, {"messages": messages, "temperature": 0, "max_tokens": 200}, f"judge-{uuid.uuid4().hex[:12]}",
            "complete", RouteLog(),
        )  # fmt: skip
        choices = body.get("choices") or [{}]
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        return content if isinstance(content, str) else ""

    return complete


def _trial(data: Mapping[str, Any]) -> TrialResult:
    return trial_from_data(data, "journal")


@dataclass
class Experiment:
    """One dataset version × one variant of one app, with its metrics."""

    settings: Settings
    app: str
    dataset: str
    dataset_version: int
    cases: Sequence[Case]
    variant: Variant = field(default_factory=Variant)
    trials: int = 3
    concurrency: int = 4
    seed: int = 0
    metrics: Sequence[str] = DEFAULT_METRICS
    registry: MetricRegistry = field(default_factory=MetricRegistry)
    judge_model: str | None = None  # chat alias the judge_* metrics call

    def _metrics(self, gateway: Gateway | None = None) -> dict[str, AnyMetric]:
        built: dict[str, AnyMetric] = {}
        for name in self.metrics:
            options: dict[str, Any] = {}
            if name.startswith("judge_"):
                if self.judge_model is None:
                    raise ConfigError(f"metric {name!r} needs a judge model (--judge-model <chat alias>)")
                if gateway is not None:
                    options["complete"] = _judge(gateway, self.judge_model)
                else:
                    continue  # checked again once the gateway is open
            try:
                built[name] = self.registry.build(name, options)
            except (KeyError, ValueError) as exc:
                raise ConfigError(f"metric {name!r}: {exc}") from None
        return built

    async def run(self, journal: Journal, *, run_id: str | None = None, progress: Progress | None = None) -> RunResult:
        """Run (or resume) every trial; return the whole run."""
        self._metrics()  # refuse unknown metrics before anything runs
        header = journal.header()
        if header is None:
            header = {
                "run_id": run_id or f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
                "dataset": self.dataset, "dataset_version": str(self.dataset_version), "target": PREFIX + self.app,
                "variant": self.variant.name, "variant_overrides": dict(self.variant.overrides),
                "trials_per_case": self.trials, "seed": self.seed, "metrics": list(self.metrics),
                "judge_model": self.judge_model,
                "started_at": datetime.now(UTC).isoformat(),
            }  # fmt: skip
            journal.start(header)
        done = journal.done()
        todo = [(c, t) for c in self.cases for t in range(self.trials) if (c.case_id, t) not in done]
        gateway = await open_gateway(variant_settings(self.settings, self.app, self.variant))
        try:
            metrics = self._metrics(gateway)
        except BaseException:
            await gateway.close()
            raise
        semaphore = asyncio.Semaphore(self.concurrency)
        finished = len(done)
        total = len(self.cases) * self.trials
        if progress is not None:
            progress(finished, total)

        async def one(case: Case, trial: int) -> None:
            nonlocal finished
            async with semaphore:
                result = await self._trial(gateway, metrics, case, trial)
            journal.append(result)
            done[(case.case_id, trial)] = result
            finished += 1
            if progress is not None:
                progress(finished, total)

        try:
            await asyncio.gather(*(one(c, t) for c, t in todo))
        finally:
            await gateway.close()
        kinds = {name: m.kind for name, m in metrics.items()}
        return RunResult(
            run_id=header["run_id"], dataset=header["dataset"], dataset_version=header["dataset_version"],
            target=header["target"], variant=header["variant"], trials_per_case=header["trials_per_case"],
            seed=header["seed"], started_at=datetime.fromisoformat(header["started_at"]),
            finished_at=datetime.now(UTC), trials=[done[k] for k in sorted(done)], metric_kinds=kinds,
            case_questions={c.case_id: eval_case(c).question for c in self.cases},
            case_tags={c.case_id: list(c.tags) for c in self.cases},
            variant_overrides=header.get("variant_overrides", {}),
            metric_directions={n: "lower_is_better" for n in kinds if n.split("@")[0] in LOWER_IS_BETTER},
        )  # fmt: skip

    async def _trial(self, gateway: Gateway, metrics: Mapping[str, AnyMetric], case: Case, trial: int) -> TrialResult:
        messages = [dict(m) for m in case.messages] if case.messages else [{"role": "user", "content": case.question}]
        body: dict[str, Any] = {k: v for k, v in self.variant.overrides.items() if k in REQUEST_KEYS}
        body["seed"] = self.seed * 1000 + trial
        call = _Call(gateway, principal_for(case), f"eval-{uuid.uuid4().hex[:16]}")
        started = time.perf_counter()
        try:
            outcome = await run_app(call, self.app, messages, body)
        except GengateError as exc:
            latency = (time.perf_counter() - started) * 1000
            return TrialResult(case.case_id, trial, outcome="error", error=exc.message, latency_ms=latency)
        latency = (time.perf_counter() - started) * 1000
        status: GuardOutcome = "blocked" if outcome.blocked else "no_answer" if outcome.no_answer else "answered"
        obs = Observation(
            answer=outcome.text, retrieved_ids=tuple(dict.fromkeys(s.doc_id for s in outcome.context)),
            retrieved_texts=tuple(s.text for s in outcome.context), citations=tuple(s.doc_id for s in outcome.sources),
            guard_outcome=status, template="blocked" if outcome.blocked else None, latency_ms=latency,
            cost_usd=call.trace.cost_usd,
        )  # fmt: skip
        ec = eval_case(case)
        scores: dict[str, float | None] = {}
        passed: dict[str, bool | None] = {}
        for name, metric in metrics.items():
            try:
                result = await metric.ascore(ec, obs) if is_async_metric(metric) else metric.score(ec, obs)  # type: ignore[union-attr]
            except (ValueError, TypeError, GengateError, TimeoutError) as exc:
                log.warning("metric %s failed on case %s: %s", name, case.case_id, exc)
                scores[name], passed[name] = None, None  # one broken metric must not lose the run
                continue
            scores[name], passed[name] = result.value, result.passed
        return TrialResult(
            case.case_id, trial, answer=outcome.text, outcome=status,
            retrieved=[Retrieved(s.doc_id, s.title, s.text[:300]) for s in outcome.context],
            citations=[s.doc_id for s in outcome.sources], latency_ms=latency, cost_usd=call.trace.cost_usd,
            prompt_tokens=outcome.usage.prompt_tokens, completion_tokens=outcome.usage.completion_tokens,
            scores=scores, passed=passed,
        )  # fmt: skip
