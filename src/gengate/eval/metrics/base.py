"""The metric protocol, the values it speaks (cases, observations, results) and the metric registry.

A metric is a small object with a `name`, a `version`, a `kind` ("score" or "pass") and one method,
`score(case, observation) -> MetricResult` (`ascore` for metrics that call a model, such as an LLM judge). Metrics
are pure: they read the case and what one trial produced and return a value; they never call the gateway, read
files or keep state between calls. Anything they need (an encoder, a judge's completion function) is given when
they are built.

The registry is an instance, not a global: it maps names to factories taking an options mapping. The built-ins
register through the same path as third-party plugins (the `gengate.metrics` entry-point group, or `register`),
and `build("ndcg@10")` is shorthand for `build("ndcg", {"k": 10})`. A registration (or an entry point's target) is
either a metric dataclass, whose init fields become its options, or a factory taking the options mapping.

Owns: `EvalCase`, `Observation`, `MetricResult`, the `Metric` / `AsyncMetric` protocols, `MetricRegistry` and the
`options_factory` helper that turns a metric dataclass into a factory with option checking, and `score_trial`, which
scores a trial with either kind of metric. Must not: run cases, aggregate trials or decide pass/fail for a whole
run (that is the runner's and the gate's job).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Literal, Protocol, TypeAlias, cast

__all__ = [
    "BUILTINS",
    "AnyMetric",
    "AsyncMetric",
    "EvalCase",
    "GuardOutcome",
    "Metric",
    "MetricFactory",
    "MetricKind",
    "MetricRegistry",
    "MetricResult",
    "Observation",
    "is_async_metric",
    "options_factory",
    "score_trial",
]

MetricKind: TypeAlias = Literal["score", "pass"]
GuardOutcome: TypeAlias = Literal["answered", "no_answer", "blocked"]
GUARD_OUTCOMES: tuple[GuardOutcome, ...] = ("answered", "no_answer", "blocked")


@dataclass(frozen=True, slots=True)
class EvalCase:
    """One evaluation case: the question and what a good run looks like.

    `reference` is a reference answer (for match and F1 metrics), `required_facts` strings a good answer contains,
    `gold_ids` the documents a retriever should return. `metadata` carries per-case expectations read by some
    metrics (`expected_outcome`, `expect_refusal`, `expected_template`) and anything else the suite needs.
    """

    case_id: str
    question: str
    reference: str | None = None
    required_facts: tuple[str, ...] = ()
    gold_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Observation:
    """What one trial of a case produced.

    `retrieved_ids` are in rank order and `retrieved_texts` hold the passages the answer was written from (same
    order; the texts may be empty when only ids are known). `citations` are the ids the answer cites. `template`
    is the name of the approved response template the answer came from (None for free text). `error` is set when
    the trial failed; the other fields then hold whatever was observed before the failure. `tool_calls` are the
    app's tool requests that reached a backend, each `{"name", "status", "arguments"}` (the arguments sent).
    """

    answer: str = ""
    retrieved_ids: tuple[str, ...] = ()
    retrieved_texts: tuple[str, ...] = ()
    citations: tuple[str, ...] = ()
    guard_outcome: GuardOutcome = "answered"
    template: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    error: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.guard_outcome not in GUARD_OUTCOMES:
            raise ValueError(f"guard_outcome must be one of {', '.join(GUARD_OUTCOMES)}, got {self.guard_outcome!r}")


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric's verdict on one trial.

    `value` is in [0, 1] (higher is better) unless `bounded` is False, which raw quantities such as latency in
    milliseconds or cost in USD use; None means the metric does not apply to this case (no reference, no gold
    ids, the answer is a refusal …) and the trial is left out of that metric's aggregate. `passed` is the verdict
    of pass metrics (and of score metrics given a threshold), None when there is nothing to judge against.
    """

    value: float | None
    passed: bool | None = None
    detail: str = ""
    bounded: bool = True

    def __post_init__(self) -> None:
        if self.value is None:
            return
        if not math.isfinite(self.value):
            raise ValueError(f"metric value must be finite, got {self.value}")
        if self.bounded and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"a bounded metric value must be in [0, 1], got {self.value}")

    @classmethod
    def not_applicable(cls, detail: str) -> MetricResult:
        """A result that leaves this trial out of the metric (value and verdict None)."""
        return cls(None, None, detail)

    @classmethod
    def verdict(cls, passed: bool, detail: str = "") -> MetricResult:
        """A pass metric's result: value 1.0 when passed, 0.0 when not."""
        return cls(1.0 if passed else 0.0, passed, detail)


class Metric(Protocol):
    """What the runner needs from a metric computed without I/O."""

    @property
    def name(self) -> str:
        """A stable name for reports (may include options, e.g. `ndcg@10`)."""
        ...

    @property
    def version(self) -> str:
        """Changes whenever the metric's definition changes, so old and new figures are never compared."""
        ...

    @property
    def kind(self) -> MetricKind:
        """Either "pass" for pass/fail checks (value 1 or 0) or "score" for graded values."""
        ...

    def score(self, case: EvalCase, obs: Observation) -> MetricResult:
        """The metric's verdict on one trial of `case`."""
        ...


class AsyncMetric(Protocol):
    """A metric that awaits something, such as an LLM judge's completion."""

    @property
    def name(self) -> str:
        """A stable name for reports."""
        ...

    @property
    def version(self) -> str:
        """Changes whenever the metric's definition (for a judge: its prompt) changes."""
        ...

    @property
    def kind(self) -> MetricKind:
        """Either "pass" or "score", as for `Metric`."""
        ...

    async def ascore(self, case: EvalCase, obs: Observation) -> MetricResult:
        """The metric's verdict on one trial of `case`."""
        ...


AnyMetric: TypeAlias = Metric | AsyncMetric
MetricFactory: TypeAlias = Callable[[Mapping[str, Any]], AnyMetric]


def is_async_metric(metric: AnyMetric) -> bool:
    """True when the metric is scored with `await metric.ascore(...)` rather than `metric.score(...)`."""
    return callable(getattr(metric, "ascore", None))


async def score_trial(metric: AnyMetric, case: EvalCase, obs: Observation) -> MetricResult:
    """One trial scored by either kind of metric (`ascore` is awaited when the metric has one)."""
    if is_async_metric(metric):
        result: MetricResult = await cast(AsyncMetric, metric).ascore(case, obs)
        return result
    return cast(Metric, metric).score(case, obs)


def options_factory(cls: type[Any]) -> MetricFactory:
    """A factory for a metric dataclass whose init fields are its options: unknown options raise ValueError
    naming them and listing the accepted ones; the class's own checks (in `__post_init__`) report bad values."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    accepted = sorted(f.name for f in dataclasses.fields(cls) if f.init)

    def build(options: Mapping[str, Any]) -> AnyMetric:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            known = ", ".join(accepted) if accepted else "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} (accepted: {known})")
        metric: Any = cls(**options)
        built: AnyMetric = metric
        return built

    return build


# name -> "module:attr" of a factory (a callable taking the options mapping); imported only when built.
BUILTINS: Mapping[str, str] = MappingProxyType(
    {
        "exact_match": "gengate.eval.metrics.deterministic:ExactMatch",
        "normalized_match": "gengate.eval.metrics.deterministic:NormalizedMatch",
        "contains": "gengate.eval.metrics.deterministic:Contains",
        "regex": "gengate.eval.metrics.deterministic:RegexMatch",
        "token_f1": "gengate.eval.metrics.deterministic:TokenF1",
        "json_valid": "gengate.eval.metrics.deterministic:JsonValid",
        "refusal": "gengate.eval.metrics.deterministic:Refusal",
        "template_used": "gengate.eval.metrics.deterministic:TemplateUsed",
        "guard_outcome": "gengate.eval.metrics.deterministic:GuardOutcomeMatch",
        "latency": "gengate.eval.metrics.deterministic:Latency",
        "cost": "gengate.eval.metrics.deterministic:Cost",
        "recall": "gengate.eval.metrics.retrieval:RecallAtK",
        "precision": "gengate.eval.metrics.retrieval:PrecisionAtK",
        "mrr": "gengate.eval.metrics.retrieval:MrrAtK",
        "ndcg": "gengate.eval.metrics.retrieval:NdcgAtK",
        "faithfulness": "gengate.eval.metrics.grounding:Faithfulness",
        "answer_relevance": "gengate.eval.metrics.grounding:AnswerRelevance",
        "judge_faithfulness": "gengate.eval.metrics.judge:JudgeFaithfulness",
        "judge_relevance": "gengate.eval.metrics.judge:JudgeRelevance",
        "attack_resisted": "gengate.eval.metrics.attack:AttackResisted",
    }
)

_AT_K = re.compile(r"^(?P<base>[A-Za-z_][\w.-]*)@(?P<k>\d+)$")


def _from_path(path: str) -> MetricFactory:
    module_name, _, attr = path.partition(":")

    def build(options: Mapping[str, Any]) -> AnyMetric:
        target: Any = getattr(importlib.import_module(module_name), attr)
        # A metric dataclass gets option checking; anything else is taken to be a factory already.
        factory: MetricFactory = options_factory(target) if isinstance(target, type) else target
        return factory(options)

    return build


class MetricRegistry:
    """Names → metric factories. Build one per evaluation run (or share one); it holds no per-run state."""

    def __init__(self, *, builtins: bool = True, load_plugins: bool = True) -> None:
        self._factories: dict[str, MetricFactory] = {}
        if builtins:
            for name, path in BUILTINS.items():
                self.register(name, _from_path(path))
        if load_plugins:
            for ep in entry_points(group="gengate.metrics"):
                if ep.name not in self._factories:
                    self.register(ep.name, _from_path(ep.value))

    def register(self, name: str, factory: MetricFactory | type[Any]) -> None:
        """Add (or replace) a metric: a factory taking the options mapping, or a metric dataclass (whose init
        fields become its options)."""
        if not name or "@" in name or name != name.strip():
            raise ValueError(f"invalid metric name {name!r} (no '@' or surrounding spaces)")
        self._factories[name] = options_factory(factory) if isinstance(factory, type) else factory

    def names(self) -> list[str]:
        """Every registered metric name."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._resolve(name)[0] in self._factories

    def _resolve(self, name: str) -> tuple[str, dict[str, Any]]:
        if name in self._factories:
            return name, {}
        m = _AT_K.match(name)
        if m and m["base"] in self._factories:
            return m["base"], {"k": int(m["k"])}
        return name, {}

    def build(self, name: str, options: Mapping[str, Any] | None = None) -> AnyMetric:
        """A metric instance. Unknown names and bad options raise ValueError naming the metric and the problem."""
        base, implied = self._resolve(name)
        factory = self._factories.get(base)
        if factory is None:
            close = difflib.get_close_matches(name, self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown metric {name!r}{hint} (known: {', '.join(self.names())})")
        merged = dict(options or {})
        if implied:
            if "k" in merged and merged["k"] != implied["k"]:
                raise ValueError(f"metric {name!r}: option k={merged['k']!r} contradicts the name")
            merged.update(implied)
        try:
            return factory(merged)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric {name!r}: {exc}") from None
