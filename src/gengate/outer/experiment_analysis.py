"""The analysis of an A/B experiment: per-unit metrics, always-valid comparisons, guardrails and the winner.

The unit of analysis is the unit of assignment (a user by default): each unit's answers and feedback are folded into
one value per metric first — its thumbs-up share among its rated answers, its copy share among its answers, its
mean cost per answer … — because one user's many answers are not independent. The comparisons are then the mixture
SPRT of `sequential` on those per-unit values (`ContinuousStats`), each treatment against the control with
Bonferroni over treatments, folded look by look (a look per day of the experiment, and now) so the p-value only goes
down and a decision, once made, stays.

Rates get a variance floor: a unit's share of `m` yes/no events has variance at least `p(1 - p) / m`; with the rate
`p` adjusted like Agresti-Caffo (`(x + 1) / (n + 2)`) the floor is never 0, so a variant that blocks everything
(every unit at 1.0, no spread) is still measurably worse than one that blocks nothing.

Owns: `UnitTotals` (what the store aggregates per unit), per-unit metric values, per-variant estimates with
always-valid intervals, guardrail checks (relative bounds, and bounds in points for rates) and the decision.
Must not: do I/O or keep state between calls.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gengate.eval.stats import Interval
from gengate.outer.experiments import RATE_METRICS, ExperimentSpec, Guardrail
from gengate.outer.sequential import (
    DEFAULT_TAU2,
    Comparison,
    ContinuousStats,
    GuardrailReport,
    check_guardrails,
    compare_variants,
)

METRICS = ("thumbs_up_rate", "copy_rate", "mean_score", "block_rate", "no_answer_rate", "cost_per_answer",
           "latency_ms")  # fmt: skip
LABELS = {
    "thumbs_up_rate": "thumbs-up rate", "copy_rate": "copy rate", "mean_score": "mean score",
    "block_rate": "block rate", "no_answer_rate": "no-answer rate", "cost_per_answer": "cost per answer (USD)",
    "latency_ms": "latency (ms)",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class UnitTotals:
    """One unit's answers and feedback in one variant, up to a moment (the store aggregates these)."""

    variant: str
    unit: str
    responses: int = 0
    answered: int = 0
    blocked: int = 0
    no_answer: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    rated: int = 0  # answers with a thumbs (the latest thumbs of each answer counts)
    thumbs_up: int = 0
    copied: int = 0  # answers copied at least once
    scored: int = 0
    score_sum: float = 0.0


def _share(successes: int, trials: int) -> tuple[float, int, int] | None:
    return (successes / trials, successes, trials) if trials > 0 else None


def unit_value(row: UnitTotals, metric: str) -> tuple[float, int, int] | None:
    """(value, successes, trials) of one unit for a metric; None when the unit has no data for it.

    For rates `successes / trials` is the value; for other metrics successes and trials are 0 and 1.
    """
    if metric == "thumbs_up_rate":
        return _share(row.thumbs_up, row.rated)
    if metric == "copy_rate":
        return _share(min(row.copied, row.answered), row.answered)
    if metric == "block_rate":
        return _share(row.blocked, row.responses)
    if metric == "no_answer_rate":
        return _share(row.no_answer, row.responses)
    if metric == "mean_score":
        return (row.score_sum / row.scored, 0, 1) if row.scored else None
    if metric == "cost_per_answer":
        return (row.cost_usd / row.responses, 0, 1) if row.responses else None
    if metric == "latency_ms":
        return (row.latency_ms / row.responses, 0, 1) if row.responses else None
    raise ValueError(f"unknown metric {metric!r}")


def arm_stats(rows: Iterable[UnitTotals], metric: str) -> ContinuousStats:
    """Per-unit values of one variant as `ContinuousStats` (with the variance floor for rates)."""
    values, successes, trials = [], 0, 0
    for row in rows:
        got = unit_value(row, metric)
        if got is not None:
            values.append(got[0])
            successes += got[1]
            trials += got[2]
    stats = ContinuousStats.from_values(values)
    if metric in RATE_METRICS and stats.n:
        adjusted = (successes + 1.0) / (trials + 2.0)
        floor = adjusted * (1.0 - adjusted) / (trials / stats.n)
        stats = ContinuousStats(stats.n, stats.mean, max(stats.variance, floor))
    return stats


def confidence_sequence(stats: ContinuousStats, alpha: float, tau2: float = DEFAULT_TAU2) -> Interval | None:
    """An always-valid interval for one variant's mean (the same normal-mixture boundary as the comparisons)."""
    if stats.n < 2 or stats.variance <= 0:
        return None
    v = stats.variance / stats.n
    r = tau2 * stats.n
    half = math.sqrt(v * (1.0 + 1.0 / r) * (2.0 * math.log(1.0 / alpha) + math.log1p(r)))
    return Interval(stats.mean - half, stats.mean + half, stats.mean)


@dataclass(frozen=True, slots=True)
class Estimate:
    """A variant's value on one metric: the mean over units, its always-valid interval and the units counted."""

    value: float | None
    interval: Interval | None
    units: int


@dataclass(frozen=True, slots=True)
class VariantResult:
    """One variant's totals and per-unit estimates."""

    name: str
    weight: float
    units: int
    responses: int
    answered: int
    rated: int
    thumbs_up: int
    copied: int
    metrics: dict[str, Estimate]


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """One guardrail of one treatment at the last look."""

    variant: str
    guardrail: Guardrail
    control: float
    treatment: float
    excess: Interval  # confidence sequence of treatment − bound(control); breached when its low end is above 0
    breached: bool


@dataclass(frozen=True, slots=True)
class Look:
    """The comparisons as they stood at one moment."""

    ts: float
    comparisons: dict[str, Comparison]


@dataclass(frozen=True)
class Analysis:
    """An experiment's state of evidence at the last look."""

    spec: ExperimentSpec
    variants: dict[str, VariantResult]
    comparisons: dict[str, Comparison]
    guardrails: list[GuardrailResult]
    history: list[Look]
    winner: str | None
    decision: str
    tau2: float = DEFAULT_TAU2
    notes: list[str] = field(default_factory=list)

    @property
    def breaches(self) -> list[GuardrailResult]:
        """The guardrails breached at the last look."""
        return [g for g in self.guardrails if g.breached]


def _by_variant(rows: Iterable[UnitTotals]) -> dict[str, list[UnitTotals]]:
    out: dict[str, list[UnitTotals]] = defaultdict(list)
    for row in rows:
        out[row.variant].append(row)
    return out


def _variant_result(spec: ExperimentSpec, name: str, rows: Sequence[UnitTotals]) -> VariantResult:
    metrics = {}
    for metric in METRICS:
        stats = arm_stats(rows, metric)
        interval = confidence_sequence(stats, spec.alpha)
        if interval is not None and metric in RATE_METRICS:
            interval = Interval(max(0.0, interval.low), min(1.0, interval.high), interval.estimate)
        metrics[metric] = Estimate(stats.mean if stats.n else None, interval, stats.n)
    return VariantResult(
        name=name, weight=spec.variant(name).weight, units=sum(1 for r in rows if r.responses),
        responses=sum(r.responses for r in rows), answered=sum(r.answered for r in rows),
        rated=sum(r.rated for r in rows), thumbs_up=sum(r.thumbs_up for r in rows),
        copied=sum(r.copied for r in rows), metrics=metrics,
    )  # fmt: skip


def _guardrail_arms(spec: ExperimentSpec, rows: Sequence[UnitTotals], shift: bool) -> dict[str, ContinuousStats]:
    """Guardrail metrics of one variant; a treatment's bounds in points become a shift of its mean."""
    arms: dict[str, ContinuousStats] = {}
    for g in spec.guardrails:
        stats = arm_stats(rows, g.metric)
        if shift and g.unit == "points":
            stats = ContinuousStats(stats.n, stats.mean - g.max_increase, stats.variance)
        arms[g.metric] = stats
    return arms


def _bounds(spec: ExperimentSpec) -> dict[str, float]:
    return {g.metric: g.max_increase if g.unit == "relative" else 0.0 for g in spec.guardrails}


def analyse(
    spec: ExperimentSpec, looks: Sequence[tuple[float, Sequence[UnitTotals]]], *, tau2: float = DEFAULT_TAU2
) -> Analysis:
    """Fold the looks (cumulative unit totals at increasing moments, the last one now) into the analysis."""
    if not looks:
        raise ValueError("at least one look is needed")
    control = spec.control.name
    names = [v.name for v in spec.variants]
    guard_alpha = spec.alpha / max(1, len(spec.guardrails) * len(spec.treatments))
    previous: dict[str, Comparison] | None = None
    reports: dict[str, GuardrailReport] = {}
    history: list[Look] = []
    groups: dict[str, list[UnitTotals]] = {}
    for ts, rows in looks:
        groups = _by_variant(rows)
        arms = {name: arm_stats(groups.get(name, ()), spec.metric) for name in names}
        previous = compare_variants(
            arms, control, alpha=spec.alpha, tau2=tau2, min_n=spec.min_units, previous=previous
        )  # fmt: skip
        history.append(Look(ts, previous))
        if spec.guardrails:
            base = _guardrail_arms(spec, groups.get(control, ()), shift=False)
            for t in spec.treatments:
                reports[t.name] = check_guardrails(
                    base, _guardrail_arms(spec, groups.get(t.name, ()), shift=True), _bounds(spec),
                    alpha=guard_alpha, tau2=tau2, min_n=spec.min_units, previous=reports.get(t.name),
                )  # fmt: skip
    assert previous is not None
    guardrails = []
    for t in spec.treatments:
        report = reports.get(t.name)
        for g, check in zip(spec.guardrails, report.checks if report else (), strict=False):
            shift = g.max_increase if g.unit == "points" else 0.0
            guardrails.append(
                GuardrailResult(t.name, g, check.control_mean, check.treatment_mean + shift, check.excess,
                                check.breached)
            )  # fmt: skip
    variants = {name: _variant_result(spec, name, groups.get(name, ())) for name in names}
    winner, decision = _decide(spec, previous, guardrails)
    return Analysis(spec, variants, previous, guardrails, history, winner, decision, tau2)


def _p(value: float) -> str:
    return "p<0.0001" if value < 0.0001 else f"p={value:.4f}"


def _decide(
    spec: ExperimentSpec, comparisons: Mapping[str, Comparison], guardrails: Sequence[GuardrailResult]
) -> tuple[str | None, str]:
    control = spec.control.name
    breached = {g.variant for g in guardrails if g.breached}
    better = [n for n, c in comparisons.items() if c.decision == "b_better" and n not in breached]
    if better:
        best = max(better, key=lambda n: comparisons[n].mean_b)
        c = comparisons[best]
        return best, (
            f"{best} beats {control} on {spec.metric}: {c.difference:+.3f} "
            f"[{c.interval.low:+.3f}, {c.interval.high:+.3f}], {_p(c.p_value)} (alpha {spec.alpha:g})"
        )
    if all(c.decision == "a_better" for c in comparisons.values()):
        worst = max(comparisons.values(), key=lambda c: c.p_value)
        return control, f"{control} beats every treatment on {spec.metric} ({_p(worst.p_value)}, alpha {spec.alpha:g})"
    short = [n for n, c in comparisons.items() if min(c.n_a, c.n_b) < spec.min_units]
    if short:
        counts = ", ".join(f"{n}: {comparisons[n].n_b}" for n in short)
        return None, (
            f"continue: {spec.min_units} units per variant with {spec.metric} data are needed "
            f"({control}: {next(iter(comparisons.values())).n_a}, {counts})"
        )
    if breached & {n for n, c in comparisons.items() if c.decision == "b_better"}:
        return None, "continue: a better treatment breached a guardrail (see guardrails)"
    return None, "continue: no difference shown yet"


def unit_values(rows: Iterable[UnitTotals], metric: str) -> dict[str, list[float]]:
    """Per-unit values of a metric by variant (for plots and the JSON export)."""
    out: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        got = unit_value(row, metric)
        if got is not None:
            out[row.variant].append(got[0])
    return dict(out)


def _interval(interval: Interval | None) -> dict[str, float | None] | None:
    """An interval as data; an unbounded end (no evidence yet) is null."""
    if interval is None:
        return None
    return {"low": _finite(interval.low), "high": _finite(interval.high), "estimate": _finite(interval.estimate)}


def _finite(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def to_data(analysis: Analysis) -> dict[str, Any]:
    """The analysis as plain JSON-ready data (the report's JSON export and the admin API)."""

    def comparison(c: Comparison) -> dict[str, Any]:
        return {
            "n_control": c.n_a, "n_treatment": c.n_b, "control_mean": c.mean_a, "treatment_mean": c.mean_b,
            "difference": _interval(c.interval), "p_value": c.p_value, "decision": c.decision, "alpha": c.alpha,
        }  # fmt: skip

    return {
        "experiment": analysis.spec.name, "app": analysis.spec.app, "metric": analysis.spec.metric,
        "alpha": analysis.spec.alpha, "tau2": analysis.tau2, "control": analysis.spec.control.name,
        "winner": analysis.winner, "decision": analysis.decision,
        "variants": {
            name: {
                "weight": v.weight, "units": v.units, "responses": v.responses, "answered": v.answered,
                "rated": v.rated, "thumbs_up": v.thumbs_up, "copied": v.copied,
                "metrics": {m: {"value": _finite(e.value), "interval": _interval(e.interval), "units": e.units}
                            for m, e in v.metrics.items()},
            }
            for name, v in analysis.variants.items()
        },
        "comparisons": {name: comparison(c) for name, c in analysis.comparisons.items()},
        "guardrails": [
            {"variant": g.variant, "metric": g.guardrail.metric, "bound": g.guardrail.label(),
             "action": g.guardrail.action, "control": g.control, "treatment": g.treatment,
             "excess": _interval(g.excess), "breached": g.breached}
            for g in analysis.guardrails
        ],
        "history": [{"ts": look.ts, "comparisons": {n: comparison(c) for n, c in look.comparisons.items()}}
                    for look in analysis.history],
    }  # fmt: skip
