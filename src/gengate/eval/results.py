"""The results of one evaluation run, what they add up to, and how two runs compare.

Owns the run model (`RunResult` holding one `TrialResult` per case and trial, with `Retrieved` context), the pure
aggregations over it (`case_scores`, `case_passes`, `summarise` → `RunSummary`, `worst_cases`), the paired comparison
of two runs on their shared cases (`compare` → `Comparison`, `case_deltas`) and the JSON export (`to_data`,
`to_json`, `run_from_json`; every object here exports, and a run reads back equal).

Statistics come from `stats`, and cases are the unit of independence: a case's trials are folded first (mean score,
passing-trial count), then intervals and tests run over cases.

- score metrics: mean of per-case means, percentile bootstrap interval over cases; compared with a paired bootstrap.
- pass metrics: pass rate over trials (= pass@1, the mean of per-case passing fractions). With one trial per case
  the interval is Wilson's; with repeated trials it is a bootstrap over cases, since a case's trials are not
  independent and a Wilson interval over all trials would be too narrow. pass@k and pass^k use k = trials per case.
  Compared like the CI gate does (`gate.CASE_PASS_FRACTION`): a case passes when most of its trials pass, then
  McNemar's exact test.

A metric value of None (the metric does not apply to that trial) is left out; how errored trials score is the
runner's decision, recorded in their values. Metrics are higher-is-better unless `RunResult.metric_directions` says
otherwise (latency, cost).

Must not: run cases, call metrics, render reports or do I/O (callers write the JSON).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeAlias

import numpy as np

from gengate.eval.gate import CASE_PASS_FRACTION
from gengate.eval.stats import (
    CaseAggregate,
    Interval,
    bootstrap_interval,
    mcnemar,
    mean_pass_at_k,
    mean_pass_hat_k,
    paired_bootstrap,
    wilson_interval,
)

__all__ = [
    "OUTCOMES",
    "RUN_FORMAT",
    "CaseDelta",
    "Comparison",
    "Direction",
    "MetricComparison",
    "MetricKind",
    "MetricSummary",
    "Outcome",
    "Retrieved",
    "RunResult",
    "RunSummary",
    "RunTotals",
    "TrialResult",
    "WorstCase",
    "case_deltas",
    "case_passes",
    "case_scores",
    "compare",
    "run_from_json",
    "summarise",
    "to_data",
    "to_json",
    "worst_cases",
]

Outcome: TypeAlias = Literal["answered", "no_answer", "blocked", "error"]
MetricKind: TypeAlias = Literal["score", "pass"]
Direction: TypeAlias = Literal["higher_is_better", "lower_is_better"]
Change: TypeAlias = Literal["better", "worse", "unchanged"]

OUTCOMES: tuple[Outcome, ...] = ("answered", "no_answer", "blocked", "error")
RUN_FORMAT = "gengate.eval.run/1"
"""The `format` tag written into an exported run; `run_from_json` refuses other formats."""

_KINDS: tuple[MetricKind, ...] = ("score", "pass")
_DIRECTIONS: tuple[Direction, ...] = ("higher_is_better", "lower_is_better")


# -- the run model ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retrieved:
    """One retrieved passage the answer was written from: document id, title and the snippet shown."""

    id: str
    title: str = ""
    snippet: str = ""


def _check_number(value: float | None, name: str, *, non_negative: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


@dataclass(frozen=True, slots=True)
class TrialResult:
    """What one trial of one case produced and how each metric judged it.

    `scores` maps metric name → value (None: the metric does not apply); `passed` maps metric name → verdict
    (None: nothing to judge against). Sequences are stored as tuples and mappings as dicts, so a trial built from
    lists equals the same trial read back from JSON.
    """

    case_id: str
    trial: int  # 0-based trial number within the case
    answer: str = ""
    outcome: Outcome = "answered"
    error: str | None = None
    retrieved: Sequence[Retrieved] = ()
    citations: Sequence[str] = ()
    latency_ms: float | None = None
    cost_usd: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    scores: Mapping[str, float | None] = field(default_factory=dict)
    passed: Mapping[str, bool | None] = field(default_factory=dict)
    judge_cost_usd: float = 0.0  # what the judge metrics' model calls cost for this trial
    judge_tokens: int = 0

    def __post_init__(self) -> None:
        where = f"case {self.case_id!r} trial {self.trial!r}"
        if self.outcome not in OUTCOMES:
            raise ValueError(f"{where}: outcome must be one of {', '.join(OUTCOMES)}, got {self.outcome!r}")
        if isinstance(self.trial, bool) or not isinstance(self.trial, int) or self.trial < 0:
            raise ValueError(f"{where}: trial must be a non-negative integer")
        for name in ("prompt_tokens", "completion_tokens", "judge_tokens"):
            count = getattr(self, name)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"{where}: {name} must be a non-negative integer, got {count!r}")
        _check_number(self.latency_ms, f"{where}: latency_ms", non_negative=True)
        _check_number(self.cost_usd, f"{where}: cost_usd", non_negative=True)
        _check_number(self.judge_cost_usd, f"{where}: judge_cost_usd", non_negative=True)
        for metric, value in self.scores.items():
            _check_number(value, f"{where}: score {metric!r}")
        for metric, verdict in self.passed.items():
            if verdict is not None and not isinstance(verdict, bool):
                raise ValueError(f"{where}: verdict {metric!r} must be true, false or null, got {verdict!r}")
        object.__setattr__(self, "retrieved", tuple(self.retrieved))
        object.__setattr__(self, "citations", tuple(self.citations))
        object.__setattr__(self, "scores", dict(self.scores))
        object.__setattr__(self, "passed", dict(self.passed))


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run: a dataset version run against one target and variant, `trials_per_case` trials per case.

    `metric_kinds` declares every metric the trials carry ("score" or "pass"); `metric_directions` marks the
    lower-is-better ones (the rest are higher-is-better). `case_questions` and `case_tags` describe the cases.
    """

    run_id: str
    dataset: str
    dataset_version: str
    target: str
    variant: str
    trials_per_case: int
    seed: int
    started_at: datetime
    finished_at: datetime
    trials: Sequence[TrialResult]
    metric_kinds: Mapping[str, MetricKind]
    case_questions: Mapping[str, str] = field(default_factory=dict)
    case_tags: Mapping[str, Sequence[str]] = field(default_factory=dict)
    variant_overrides: Mapping[str, Any] = field(default_factory=dict)
    metric_directions: Mapping[str, Direction] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.trials_per_case, bool) or not isinstance(self.trials_per_case, int):
            raise ValueError(f"trials_per_case must be an integer, got {self.trials_per_case!r}")
        if self.trials_per_case < 1:
            raise ValueError(f"trials_per_case must be at least 1, got {self.trials_per_case}")
        for metric, kind in self.metric_kinds.items():
            if kind not in _KINDS:
                raise ValueError(f"metric {metric!r}: kind must be 'score' or 'pass', got {kind!r}")
        for metric, direction in self.metric_directions.items():
            if direction not in _DIRECTIONS:
                raise ValueError(f"metric {metric!r}: direction must be one of {_DIRECTIONS}, got {direction!r}")
        seen: set[tuple[str, int]] = set()
        for result in self.trials:
            key = (result.case_id, result.trial)
            if key in seen:
                raise ValueError(f"case {result.case_id!r} trial {result.trial} appears twice")
            seen.add(key)
            unknown = sorted((set(result.scores) | set(result.passed)) - set(self.metric_kinds))
            if unknown:
                raise ValueError(
                    f"case {result.case_id!r} trial {result.trial}: metrics {unknown} are not declared in "
                    f"metric_kinds ({sorted(self.metric_kinds)})"
                )
        object.__setattr__(self, "trials", tuple(self.trials))
        object.__setattr__(self, "metric_kinds", dict(self.metric_kinds))
        object.__setattr__(self, "case_questions", dict(self.case_questions))
        object.__setattr__(self, "case_tags", {case: tuple(tags) for case, tags in self.case_tags.items()})
        object.__setattr__(self, "variant_overrides", dict(self.variant_overrides))
        object.__setattr__(self, "metric_directions", dict(self.metric_directions))

    @property
    def case_ids(self) -> tuple[str, ...]:
        """Ids of the cases with at least one trial, in order of first appearance."""
        return tuple(dict.fromkeys(result.case_id for result in self.trials))

    @property
    def duration_s(self) -> float:
        """Wall-clock seconds from start to finish."""
        return (self.finished_at - self.started_at).total_seconds()

    def direction(self, metric: str) -> Direction:
        """Whether higher or lower values of `metric` are better (higher unless declared otherwise)."""
        return self.metric_directions.get(metric, "higher_is_better")

    def trials_of(self, case_id: str) -> tuple[TrialResult, ...]:
        """The trials of one case, ordered by trial number."""
        return tuple(sorted((r for r in self.trials if r.case_id == case_id), key=lambda r: r.trial))


# -- one run ------------------------------------------------------------------------------------------------------


def _kind(run: RunResult, metric: str) -> MetricKind:
    try:
        return run.metric_kinds[metric]
    except KeyError:
        raise ValueError(f"run {run.run_id!r} has no metric {metric!r}; it has {sorted(run.metric_kinds)}") from None


def case_scores(run: RunResult, metric: str) -> dict[str, float]:
    """Per-case mean of `metric` over trials, ignoring None; cases with no value at all are left out."""
    _kind(run, metric)
    values: dict[str, list[float]] = {}
    for result in run.trials:
        value = result.scores.get(metric)
        if value is not None:
            values.setdefault(result.case_id, []).append(float(value))
    return {case: math.fsum(vs) / len(vs) for case, vs in values.items()}


def case_passes(run: RunResult, metric: str) -> dict[str, tuple[int, int]]:
    """Per-case `(passing trials, judged trials)` of `metric`, ignoring None verdicts; unjudged cases left out."""
    _kind(run, metric)
    counts: dict[str, tuple[int, int]] = {}
    for result in run.trials:
        verdict = result.passed.get(metric)
        if verdict is not None:
            passes, trials = counts.get(result.case_id, (0, 0))
            counts[result.case_id] = (passes + bool(verdict), trials + 1)
    return counts


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """One metric over a set of cases.

    `value` is the mean of per-case means (score metrics) or the pass rate over trials (pass metrics, equal to
    `pass_at_1`), with its `interval`; both None when no case has a value. The pass fields are None for score
    metrics; `k` is the trials per case used for `pass_at_k` (at least one of k trials passes) and `pass_hat_k`
    (all k pass).
    """

    metric: str
    kind: MetricKind
    direction: Direction
    n_cases: int
    n_trials: int
    value: float | None
    interval: Interval | None
    interval_method: Literal["bootstrap", "wilson"] | None
    passes: int | None = None
    k: int | None = None
    pass_at_1: float | None = None
    pass_at_k: float | None = None
    pass_hat_k: float | None = None


@dataclass(frozen=True, slots=True)
class RunTotals:
    """Counts, cost, tokens and latency percentiles over all trials of a run."""

    cases: int
    trials: int
    errors: int
    outcomes: dict[str, int]
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    duration_s: float
    judge_cost_usd: float = 0.0  # judge metrics' model calls, on top of `cost_usd` (what the target cost)
    judge_tokens: int = 0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Every aggregate of a run: per-metric summaries, the same per tag, and the totals."""

    run_id: str
    dataset: str
    dataset_version: str
    target: str
    variant: str
    trials_per_case: int
    confidence: float
    metrics: dict[str, MetricSummary]
    by_tag: dict[str, dict[str, MetricSummary]]
    tag_cases: dict[str, int]
    totals: RunTotals


def _summarise_metric(
    run: RunResult, metric: str, cases: Sequence[str], *, confidence: float, resamples: int, seed: int
) -> MetricSummary:
    kind = _kind(run, metric)
    direction = run.direction(metric)
    empty = MetricSummary(metric, kind, direction, 0, 0, None, None, None)
    if kind == "score":
        all_scores = case_scores(run, metric)
        scores = [all_scores[case] for case in cases if case in all_scores]
        if not scores:
            return empty
        wanted = set(cases)
        n_trials = sum(1 for r in run.trials if r.case_id in wanted and r.scores.get(metric) is not None)
        interval = bootstrap_interval(scores, confidence, resamples=resamples, seed=seed)
        return MetricSummary(metric, kind, direction, len(scores), n_trials, interval.estimate, interval, "bootstrap")
    counts = case_passes(run, metric)
    aggregates = [CaseAggregate(case, p / t, p, t) for case in cases if case in counts for p, t in [counts[case]]]
    if not aggregates:
        return empty
    passes = sum(a.passes for a in aggregates)
    n_trials = sum(a.trials for a in aggregates)
    pass_at_1 = mean_pass_at_k(aggregates, 1)
    if all(a.trials == 1 for a in aggregates):
        # One trial per case: the trials are independent Bernoulli draws, Wilson's setting exactly.
        wilson = wilson_interval(passes, n_trials, confidence)
        interval = Interval(wilson.low, wilson.high, pass_at_1)
    else:
        rates = [a.pass_rate for a in aggregates]
        interval = bootstrap_interval(rates, confidence, resamples=resamples, seed=seed)
    k = min(run.trials_per_case, *(a.trials for a in aggregates))
    return MetricSummary(
        metric,
        kind,
        direction,
        len(aggregates),
        n_trials,
        pass_at_1,
        interval,
        "wilson" if n_trials == len(aggregates) else "bootstrap",
        passes=passes,
        k=k,
        pass_at_1=pass_at_1,
        pass_at_k=mean_pass_at_k(aggregates, k),
        pass_hat_k=mean_pass_hat_k(aggregates, k),
    )


def _tag_cases(run: RunResult) -> dict[str, list[str]]:
    by_tag: dict[str, list[str]] = {}
    for case in run.case_ids:
        for tag in run.case_tags.get(case, ()):
            by_tag.setdefault(tag, []).append(case)
    return dict(sorted(by_tag.items()))


def _totals(run: RunResult) -> RunTotals:
    outcomes: dict[str, int] = {outcome: 0 for outcome in OUTCOMES}
    for result in run.trials:
        outcomes[result.outcome] += 1
    latencies = [r.latency_ms for r in run.trials if r.latency_ms is not None]
    p50, p95 = (float(v) for v in np.percentile(latencies, [50, 95])) if latencies else (None, None)
    return RunTotals(
        cases=len(run.case_ids),
        trials=len(run.trials),
        errors=outcomes["error"],
        outcomes=outcomes,
        cost_usd=math.fsum(r.cost_usd or 0.0 for r in run.trials),
        prompt_tokens=sum(r.prompt_tokens for r in run.trials),
        completion_tokens=sum(r.completion_tokens for r in run.trials),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        duration_s=run.duration_s,
        judge_cost_usd=math.fsum(r.judge_cost_usd for r in run.trials),
        judge_tokens=sum(r.judge_tokens for r in run.trials),
    )


def summarise(run: RunResult, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> RunSummary:
    """Summarise every metric over all cases and per tag, with intervals at `confidence`, plus the run's totals.

    Deterministic for a given `seed` (the bootstraps' seed, not the run's).
    """

    def one(metric: str, cases: Sequence[str]) -> MetricSummary:
        return _summarise_metric(run, metric, cases, confidence=confidence, resamples=resamples, seed=seed)

    cases = run.case_ids
    tags = _tag_cases(run)
    return RunSummary(
        run_id=run.run_id,
        dataset=run.dataset,
        dataset_version=run.dataset_version,
        target=run.target,
        variant=run.variant,
        trials_per_case=run.trials_per_case,
        confidence=confidence,
        metrics={m: one(m, cases) for m in run.metric_kinds},
        by_tag={tag: {m: one(m, tag_cases) for m in run.metric_kinds} for tag, tag_cases in tags.items()},
        tag_cases={tag: len(tag_cases) for tag, tag_cases in tags.items()},
        totals=_totals(run),
    )


@dataclass(frozen=True, slots=True)
class WorstCase:
    """A case that did badly on a metric: its value (mean score or passing fraction), question and trials."""

    case_id: str
    question: str
    tags: tuple[str, ...]
    value: float
    passes: int | None
    n_trials: int
    trials: tuple[TrialResult, ...]


def _case_values(run: RunResult, metric: str) -> dict[str, float]:
    """Per-case value of a metric: mean score, or the passing fraction for pass metrics."""
    if _kind(run, metric) == "score":
        return case_scores(run, metric)
    return {case: p / t for case, (p, t) in case_passes(run, metric).items()}


def worst_cases(run: RunResult, metric: str, n: int = 5) -> list[WorstCase]:
    """The `n` cases that did worst on `metric` (by direction), ties in case order.

    For pass metrics only cases with at least one failing trial qualify: a case that always passed is not "worst".
    """
    kind = _kind(run, metric)
    values = _case_values(run, metric)
    counts = case_passes(run, metric) if kind == "pass" else {}
    if kind == "pass":
        values = {case: v for case, v in values.items() if v < 1.0}
    sign = -1.0 if run.direction(metric) == "lower_is_better" else 1.0
    order = {case: i for i, case in enumerate(run.case_ids)}
    ranked = sorted(values, key=lambda case: (sign * values[case], order[case]))[: max(n, 0)]
    out = []
    for case in ranked:
        trials = run.trials_of(case)
        passes = counts[case][0] if kind == "pass" else None
        n_trials = counts[case][1] if kind == "pass" else sum(1 for r in trials if r.scores.get(metric) is not None)
        question = run.case_questions.get(case, "")
        tags = tuple(run.case_tags.get(case, ()))
        out.append(WorstCase(case, question, tags, values[case], passes, n_trials, trials))
    return out


# -- two runs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """Run B against run A on one metric, over the cases both scored.

    Scores: `a_value` / `b_value` are means of per-case means; `delta = b - a` with a paired bootstrap interval and
    p-value. Pass: values are case pass rates (a case passes when most of its trials pass), the interval is a
    paired bootstrap of those and `p_value` McNemar's; `improved` / `regressed` count cases that went
    fail→pass / pass→fail. `dropped_a` / `dropped_b` count cases only that run had.
    """

    metric: str
    kind: MetricKind
    direction: Direction
    test: Literal["paired_bootstrap", "mcnemar"]
    n: int
    a_value: float
    b_value: float
    delta: float
    interval: Interval
    p_value: float
    improved: int | None
    regressed: int | None
    dropped_a: int
    dropped_b: int

    def change(self, confidence: float = 0.95) -> Change:
        """ "better" / "worse" when the change is significant at `confidence` (p < 1 − confidence), else "unchanged"."""
        if self.p_value >= 1.0 - confidence or self.delta == 0:
            return "unchanged"
        up = self.delta > 0
        return "better" if up == (self.direction == "higher_is_better") else "worse"


@dataclass(frozen=True, slots=True)
class Comparison:
    """Run B (`b_*`) against run A (`a_*`), per metric and per tag; `skipped` says why a metric was not compared."""

    a_run_id: str
    b_run_id: str
    a_variant: str
    b_variant: str
    same_dataset: bool
    confidence: float
    metrics: dict[str, MetricComparison]
    by_tag: dict[str, dict[str, MetricComparison]]
    skipped: dict[str, str]


def _compare_metric(
    a: RunResult, b: RunResult, metric: str, cases: set[str] | None, *, confidence: float, resamples: int, seed: int
) -> MetricComparison | str:
    """The comparison on the shared cases (restricted to `cases` when given), or why there is none."""
    kind = _kind(a, metric)
    if _kind(b, metric) != kind:
        raise ValueError(f"metric {metric!r} is a {kind} metric in run A but a {_kind(b, metric)} metric in run B")
    left, right = _case_values(a, metric), _case_values(b, metric)
    if cases is not None:
        left = {c: v for c, v in left.items() if c in cases}
        right = {c: v for c, v in right.items() if c in cases}
    shared = [case for case in left if case in right]
    if not shared:
        return f"no case has a value in both runs (A: {len(left)} cases, B: {len(right)})"
    xs, ys = [left[c] for c in shared], [right[c] for c in shared]
    improved = regressed = None
    if kind == "pass":
        xs = [1.0 if x >= CASE_PASS_FRACTION else 0.0 for x in xs]
        ys = [1.0 if y >= CASE_PASS_FRACTION else 0.0 for y in ys]
    paired = paired_bootstrap(xs, ys, resamples=resamples, seed=seed, confidence=confidence)
    p_value = paired.p_value
    if kind == "pass":
        test = mcnemar([x == 1.0 for x in xs], [y == 1.0 for y in ys])
        p_value, improved, regressed = test.p_value, test.b01, test.b10
    return MetricComparison(
        metric=metric,
        kind=kind,
        direction=a.direction(metric),
        test="mcnemar" if kind == "pass" else "paired_bootstrap",
        n=len(shared),
        a_value=math.fsum(xs) / len(xs),
        b_value=math.fsum(ys) / len(ys),
        delta=paired.delta,
        interval=paired.interval,
        p_value=p_value,
        improved=improved,
        regressed=regressed,
        dropped_a=len(left) - len(shared),
        dropped_b=len(right) - len(shared),
    )


def compare(
    a: RunResult, b: RunResult, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Comparison:
    """Compare run B against run A (B − A) on the cases both have, per metric both declare and per tag.

    Deterministic for a given `seed`. Raises `ValueError` when a metric's kind differs between the runs.
    """

    def one(metric: str, cases: set[str] | None) -> MetricComparison | str:
        return _compare_metric(a, b, metric, cases, confidence=confidence, resamples=resamples, seed=seed)

    metrics: dict[str, MetricComparison] = {}
    skipped: dict[str, str] = {}
    for metric in dict.fromkeys([*a.metric_kinds, *b.metric_kinds]):
        if metric not in a.metric_kinds or metric not in b.metric_kinds:
            skipped[metric] = f"only run {'A' if metric in a.metric_kinds else 'B'} has this metric"
            continue
        result = one(metric, None)
        if isinstance(result, str):
            skipped[metric] = result
        else:
            metrics[metric] = result
    tags: dict[str, set[str]] = {}
    for run in (a, b):
        for tag, members in _tag_cases(run).items():
            tags.setdefault(tag, set()).update(members)
    by_tag: dict[str, dict[str, MetricComparison]] = {}
    for tag, tag_cases in sorted(tags.items()):
        row = {m: one(m, tag_cases) for m in metrics}
        by_tag[tag] = {m: r for m, r in row.items() if not isinstance(r, str)}
    return Comparison(
        a_run_id=a.run_id,
        b_run_id=b.run_id,
        a_variant=a.variant,
        b_variant=b.variant,
        same_dataset=(a.dataset, a.dataset_version) == (b.dataset, b.dataset_version),
        confidence=confidence,
        metrics=metrics,
        by_tag=by_tag,
        skipped=skipped,
    )


@dataclass(frozen=True, slots=True)
class CaseDelta:
    """One shared case's value in run A and run B (mean score or passing fraction) and the change `b - a`."""

    case_id: str
    question: str
    a_value: float
    b_value: float
    delta: float
    a_trials: tuple[TrialResult, ...]
    b_trials: tuple[TrialResult, ...]


def case_deltas(a: RunResult, b: RunResult, metric: str, n: int | None = None) -> list[CaseDelta]:
    """Shared cases ordered from the largest worsening to the largest improvement (first `n` when given)."""
    left, right = _case_values(a, metric), _case_values(b, metric)
    sign = -1.0 if a.direction(metric) == "lower_is_better" else 1.0
    order = {case: i for i, case in enumerate(a.case_ids)}
    shared = sorted((c for c in left if c in right), key=lambda c: (sign * (right[c] - left[c]), order[c]))
    return [
        CaseDelta(
            case_id=case,
            question=b.case_questions.get(case) or a.case_questions.get(case, ""),
            a_value=left[case],
            b_value=right[case],
            delta=right[case] - left[case],
            a_trials=a.trials_of(case),
            b_trials=b.trials_of(case),
        )
        for case in shared[:n]
    ]


# -- JSON ---------------------------------------------------------------------------------------------------------


def to_data(obj: object) -> Any:
    """Plain JSON-ready data for any object of this module (dataclasses become dicts, datetimes ISO strings).

    A `RunResult` gets a `format` tag so `run_from_json` can tell what it reads. Raises `ValueError` for values
    JSON cannot hold (NaN, infinities, other types).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        data = {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {"format": RUN_FORMAT, **data} if isinstance(obj, RunResult) else data
    if isinstance(obj, datetime):
        return obj.isoformat()
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if isinstance(obj, float | np.floating):
        if not math.isfinite(obj):
            raise ValueError(f"JSON cannot hold the number {obj!r}")
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Mapping):
        return {str(key): to_data(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_data(value) for value in obj]
    raise ValueError(f"cannot export a {type(obj).__name__} to JSON: {obj!r}")


def to_json(obj: object, *, indent: int | None = 2) -> str:
    """`to_data(obj)` as a JSON string."""
    return json.dumps(to_data(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def _field(data: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ValueError(f"{where}: missing key {key!r}")
    value = data[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise ValueError(f"{where}.{key}: expected {_type_names(types)}, got {type(value).__name__}")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in _as_tuple(types))


_NUMBER = (int, float, type(None))


def _trial_from_data(data: Any, where: str) -> TrialResult:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    retrieved = []
    for i, item in enumerate(_field(data, "retrieved", list, where)):
        at = f"{where}.retrieved[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{at}: expected an object, got {type(item).__name__}")
        retrieved.append(
            Retrieved(_field(item, "id", str, at), _field(item, "title", str, at), _field(item, "snippet", str, at))
        )
    return TrialResult(
        case_id=_field(data, "case_id", str, where),
        trial=_field(data, "trial", int, where),
        answer=_field(data, "answer", str, where),
        outcome=_field(data, "outcome", str, where),
        error=_field(data, "error", (str, type(None)), where),
        retrieved=retrieved,
        citations=[str(c) for c in _field(data, "citations", list, where)],
        latency_ms=_field(data, "latency_ms", _NUMBER, where),
        cost_usd=_field(data, "cost_usd", _NUMBER, where),
        prompt_tokens=_field(data, "prompt_tokens", int, where),
        completion_tokens=_field(data, "completion_tokens", int, where),
        scores=_field(data, "scores", dict, where),
        passed=_field(data, "passed", dict, where),
        # Runs written before judge costs were kept have neither field.
        judge_cost_usd=_field(data, "judge_cost_usd", _NUMBER, where) if "judge_cost_usd" in data else 0.0,
        judge_tokens=_field(data, "judge_tokens", int, where) if "judge_tokens" in data else 0,
    )


def _datetime(data: Mapping[str, Any], key: str) -> datetime:
    text = _field(data, key, str, "run")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"run.{key}: not an ISO 8601 timestamp: {text!r}") from None


def _str_map(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _field(data, key, dict, "run")
    for name, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"run.{key}[{name!r}]: expected str, got {type(item).__name__}")
    return dict(value)


def _tags(data: Mapping[str, Any]) -> dict[str, list[str]]:
    value = _field(data, "case_tags", dict, "run")
    for case, tags in value.items():
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise ValueError(f"run.case_tags[{case!r}]: expected a list of strings, got {tags!r}")
    return dict(value)


def run_from_json(data: str | bytes | Mapping[str, Any]) -> RunResult:
    """Read a run exported by `to_json` / `to_data` (a JSON string or the parsed object).

    Raises `ValueError` naming the first missing or mistyped key.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"run JSON does not parse: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"run: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != RUN_FORMAT:
        raise ValueError(f"run: format must be {RUN_FORMAT!r}, got {data.get('format')!r}")
    trials = [_trial_from_data(item, f"run.trials[{i}]") for i, item in enumerate(_field(data, "trials", list, "run"))]
    return RunResult(
        run_id=_field(data, "run_id", str, "run"),
        dataset=_field(data, "dataset", str, "run"),
        dataset_version=_field(data, "dataset_version", str, "run"),
        target=_field(data, "target", str, "run"),
        variant=_field(data, "variant", str, "run"),
        trials_per_case=_field(data, "trials_per_case", int, "run"),
        seed=_field(data, "seed", int, "run"),
        started_at=_datetime(data, "started_at"),
        finished_at=_datetime(data, "finished_at"),
        trials=trials,
        metric_kinds=_str_map(data, "metric_kinds"),  # type: ignore[arg-type]  # RunResult checks the kinds
        case_questions=_str_map(data, "case_questions"),
        case_tags=_tags(data),
        variant_overrides=_field(data, "variant_overrides", dict, "run"),
        metric_directions=_str_map(data, "metric_directions"),  # type: ignore[arg-type]  # and the directions
    )


def run_scores(run: RunResult) -> dict[str, dict[str, float]]:
    """Per-case values of every metric, as the gate compares them (pass metrics as the share of passing trials)."""
    out: dict[str, dict[str, float]] = {}
    for name, kind in run.metric_kinds.items():
        if kind == "pass":
            out[name] = {c: p / n for c, (p, n) in case_passes(run, name).items() if n}
        else:
            out[name] = case_scores(run, name)
    return out
