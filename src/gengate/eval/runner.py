"""Experiments: a dataset run against an app or a model route under one variant, N trials per case, in-process.

Each trial goes through the same code as `POST /v1/chat/completions` — for `model: app/<name>` the app's guard
stages, permission-aware retrieval with the case's identity, the answerer or model, templates; for a model alias
the caller's team guard, admission (limits, budgets), routing with fallbacks and the output stage — so what is
measured is what users get. Variants are overlays on the app's configuration (system prompt, model, top-k,
knowledge bases, retrieval settings, guard profile) plus request parameters (temperature), never code; a model
route takes `system_prompt`, `model` and the request parameters. Judge metrics' model calls are priced and kept
per trial, apart from what the target cost.

Owns: building a variant's settings, running trials with bounded concurrency, scoring them with the metrics,
appending every finished trial to a JSONL journal so an interrupted run resumes without redoing finished trials.
Must not: compute statistics (see `results`, `stats`) or render reports.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gengate.app.app_routes import PREFIX, run_app
from gengate.app.gateway import Gateway, open_gateway
from gengate.app.openai_routes import Call, complete_model
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
from gengate.policy.pricing import PriceTable, usd
from gengate.providers.base import usage_of
from gengate.providers.routing import RouteLog
from gengate.settings import Settings
from gengate.telemetry.traces import TraceRecord
from gengate.types import Principal, Usage

APP_KEYS = {"system_prompt", "model", "top_k", "knowledge_bases", "retrieval", "guard_profile", "no_answer",
            "answer_sentences", "where", "extractive_encoder"}  # fmt: skip
REQUEST_KEYS = {"temperature", "top_p", "max_tokens"}
MODEL_KEYS = {"system_prompt", "model"}  # what a variant may change on a model route (besides REQUEST_KEYS)
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

    def check(self, *, model_route: bool = False) -> None:
        """Refuse keys that are not configuration overlays (of an app, or of a model route)."""
        known = (MODEL_KEYS if model_route else APP_KEYS) | REQUEST_KEYS
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            allowed = ", ".join(sorted(known))
            target = "a model route" if model_route else "an app"
            raise ConfigError(
                f"variant {self.name!r}: unknown keys {', '.join(unknown)} for {target} (allowed: {allowed})"
            )


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


@dataclass
class _Spend:
    """What the judge calls of one trial cost."""

    nanos: int = 0
    tokens: int = 0


# Set by each trial's task around its scoring, so concurrent trials keep their judge costs apart.
_JUDGE_SPEND: ContextVar[_Spend | None] = ContextVar("gengate_judge_spend", default=None)


def _judge(gateway: Gateway, model: str) -> Callable[[list[dict[str, str]]], Awaitable[str]]:
    """The judge metrics' completion function: one routed call to the judge model (temperature 0), priced."""
    if model not in gateway.settings.models or gateway.settings.models[model].kind != "chat":
        raise ConfigError(f"judge model {model!r} is not a chat model in `models`")

    async def complete(messages: list[dict[str, str]]) -> str:
        route = RouteLog()
        payload = {"messages": messages, "temperature": 0, "max_tokens": 200}
        body = await gateway.router.run(model, payload, f"judge-{uuid.uuid4().hex[:12]}", "complete", route)
        spend = _JUDGE_SPEND.get()
        usage = usage_of(body)
        if spend is not None and usage is not None:
            spend.tokens += usage.total_tokens
            price = gateway.prices.lookup(route.deployment, model) if route.deployment is not None else None
            spend.nanos += PriceTable.cost_nanos(price, usage) if price is not None else 0
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
    app: str | None  # the app to run (name without app/), or None for a model route
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
    model: str | None = None  # a chat model alias (a model route) when `app` is None

    def __post_init__(self) -> None:
        if (self.app is None) == (self.model is None):
            raise ConfigError("an experiment targets an app or a model route (exactly one)")
        if self.model is not None:
            alias = self.settings.models.get(self.model)
            if alias is None or alias.kind != "chat":
                known = ", ".join(sorted(n for n, m in self.settings.models.items() if m.kind == "chat"))
                raise ConfigError(f"no chat model {self.model!r} in the configuration (chat models: {known})")
            self.variant.check(model_route=True)
            other = self.variant.overrides.get("model")
            if other is not None and other not in self.settings.models:
                raise ConfigError(f"variant {self.variant.name!r}: unknown model {other!r}")
        else:
            assert self.app is not None
            variant_settings(self.settings, self.app, self.variant)  # refuse bad overlays before anything runs

    @property
    def target(self) -> str:
        """`app/<name>` or the model alias."""
        return PREFIX + self.app if self.app is not None else str(self.model)

    def _settings(self) -> Settings:
        return self.settings if self.app is None else variant_settings(self.settings, self.app, self.variant)

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
                "dataset": self.dataset, "dataset_version": str(self.dataset_version), "target": self.target,
                "variant": self.variant.name, "variant_overrides": dict(self.variant.overrides),
                "trials_per_case": self.trials, "seed": self.seed, "metrics": list(self.metrics),
                "judge_model": self.judge_model,
                "started_at": datetime.now(UTC).isoformat(),
            }  # fmt: skip
            journal.start(header)
        done = journal.done()
        todo = [(c, t) for c in self.cases for t in range(self.trials) if (c.case_id, t) not in done]
        gateway = await open_gateway(self._settings())
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
            if self.app is not None:
                observed = await self._ask_app(call, messages, body)
            else:
                observed = await self._ask_model(call, messages, body)
        except GengateError as exc:
            latency = (time.perf_counter() - started) * 1000
            return TrialResult(case.case_id, trial, outcome="error", error=exc.message, latency_ms=latency)
        latency = (time.perf_counter() - started) * 1000
        obs = dataclasses.replace(observed.observation, latency_ms=latency, cost_usd=call.trace.cost_usd)
        ec = eval_case(case)
        scores: dict[str, float | None] = {}
        passed: dict[str, bool | None] = {}
        spend = _Spend()
        token = _JUDGE_SPEND.set(spend)
        try:
            for name, metric in metrics.items():
                try:
                    if is_async_metric(metric):
                        result = await metric.ascore(ec, obs)  # type: ignore[union-attr]
                    else:
                        result = metric.score(ec, obs)  # type: ignore[union-attr]
                except (ValueError, TypeError, GengateError, TimeoutError) as exc:
                    log.warning("metric %s failed on case %s: %s", name, case.case_id, exc)
                    scores[name], passed[name] = None, None  # one broken metric must not lose the run
                    continue
                scores[name], passed[name] = result.value, result.passed
        finally:
            _JUDGE_SPEND.reset(token)
        return TrialResult(
            case.case_id, trial, answer=obs.answer, outcome=obs.guard_outcome or "answered",
            retrieved=observed.retrieved, citations=list(obs.citations), latency_ms=latency,
            cost_usd=call.trace.cost_usd, prompt_tokens=observed.usage.prompt_tokens,
            completion_tokens=observed.usage.completion_tokens, scores=scores, passed=passed,
            judge_cost_usd=usd(spend.nanos), judge_tokens=spend.tokens,
        )  # fmt: skip

    async def _ask_app(self, call: _Call, messages: list[dict[str, Any]], body: dict[str, Any]) -> _Observed:
        assert self.app is not None
        outcome = await run_app(call, self.app, messages, body)
        status: GuardOutcome = "blocked" if outcome.blocked else "no_answer" if outcome.no_answer else "answered"
        obs = Observation(
            answer=outcome.text, retrieved_ids=tuple(dict.fromkeys(s.doc_id for s in outcome.context)),
            retrieved_texts=tuple(s.text for s in outcome.context), citations=tuple(s.doc_id for s in outcome.sources),
            guard_outcome=status, template="blocked" if outcome.blocked else None,
            tool_calls=tuple(outcome.backend_calls),
        )  # fmt: skip
        retrieved = [Retrieved(s.doc_id, s.title, s.text[:300]) for s in outcome.context]
        return _Observed(obs, retrieved, outcome.usage)

    async def _ask_model(self, call: _Call, messages: list[dict[str, Any]], body: dict[str, Any]) -> _Observed:
        overrides = self.variant.overrides
        if "system_prompt" in overrides:
            messages = [{"role": "system", "content": str(overrides["system_prompt"])}] + [
                m for m in messages if m.get("role") != "system"
            ]
        request = {**body, "model": str(overrides.get("model", self.model)), "messages": messages}
        http_call = Call(call.gateway, call.trace, time.perf_counter(), principal=call.principal)
        result = await complete_model(http_call, request)
        choices = result.get("choices") or [{}]
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        blocked = call.trace.error_code == "guard_blocked"
        obs = Observation(
            answer=content if isinstance(content, str) else "", guard_outcome="blocked" if blocked else "answered",
            template="blocked" if blocked else None,
        )  # fmt: skip
        return _Observed(obs, [], usage_of(result) or Usage())


@dataclass(frozen=True)
class _Observed:
    observation: Observation
    retrieved: list[Retrieved]
    usage: Usage
