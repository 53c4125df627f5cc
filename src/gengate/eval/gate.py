"""The CI regression gate: does a candidate run score worse than the baseline, beyond noise and tolerance?

Owns `GateRule` (what to check for one metric), `gate` (the decision) and its result objects.

A rule fails only when the candidate is worse than the baseline by more than `tolerance` *with statistical
confidence*, so a noisy judge does not fail the build at random while a real regression does:

- `kind="score"` (per-case means over trials): paired bootstrap (`stats.paired_bootstrap`) of candidate − baseline
  over the shared cases. Higher-is-better fails when the interval's *upper* end is below `-tolerance`;
  lower-is-better (latency, cost) fails when its *lower* end is above `+tolerance`. The interval is two-sided at
  `confidence`, so on an unchanged system the chance of a false failure is about `(1 - confidence) / 2` per rule
  (one tail), a little more since percentile intervals run slightly narrow (≈3% measured at 0.95 with 100 cases;
  more below ~20 cases).
- `kind="pass"` (per-case fraction of passing trials): each case is a pass when most of its trials pass (fraction
  ≥ 0.5; exact when there is one trial per case), and the exact McNemar test compares the two runs. The rule fails
  when `p < 1 - confidence` AND the observed change in pass rate is worse than `tolerance` (a two-sided exact
  test plus a direction check, so again at most about `(1 - confidence) / 2` false failures). McNemar rather than the
  bootstrap because pass/fail differences are discrete and often few: with 4 of 100 cases newly failing and none
  newly passing, the bootstrap interval excludes 0 while the exact test (p = 0.125) correctly says that proves
  nothing. The
  tolerance applies to the observed change, not inside the test. The bootstrap interval is still reported, for
  reading only.

Cases are compared on the intersection of case ids; cases only one side has are dropped and counted. A rule with
no shared cases (or a metric missing from a run) gets the verdict `no_data`, which FAILS the gate: a gate that
silently checks nothing would let any change through, so a missing metric must be fixed or its rule removed.

Must not: do I/O, run evaluations or read configuration; it is a pure function of the scores and rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gengate.eval.stats import Interval, PairedResult, mcnemar, paired_bootstrap

__all__ = ["CASE_PASS_FRACTION", "GateReport", "GateRule", "RuleResult", "RunScores", "Verdict", "gate"]

RunScores = Mapping[str, Mapping[str, float]]
"""One run's scores: metric → {case_id: per-case value} (mean over trials for scores; passing fraction for pass)."""

Verdict = Literal["pass", "fail", "no_data"]

CASE_PASS_FRACTION = 0.5
"""For `kind="pass"`, a case passes when at least this fraction of its trials passed (majority vote)."""


class GateRule(BaseModel):
    """What the gate checks for one metric: direction, kind, allowed worsening and required confidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(min_length=1)
    tolerance: float = Field(0.0, ge=0, allow_inf_nan=False, description="allowed worsening, in the metric's units")
    direction: Literal["higher_is_better", "lower_is_better"] = "higher_is_better"
    kind: Literal["score", "pass"] = "score"
    confidence: float = Field(0.95, gt=0, lt=1)


@dataclass(frozen=True, slots=True)
class RuleResult:
    """The gate's finding for one rule.

    `delta` is candidate − baseline in the metric's units (for `kind="pass"`, in case pass rate), `interval` its
    paired bootstrap interval and `p_value` the two-sided p of the test that decided (bootstrap or McNemar).
    `dropped_baseline` / `dropped_candidate` count cases only that side had.
    """

    metric: str
    baseline_mean: float | None
    candidate_mean: float | None
    delta: float | None
    interval: Interval | None
    p_value: float | None
    n: int
    verdict: Verdict
    reason: str
    rule: GateRule
    dropped_baseline: int = 0
    dropped_candidate: int = 0


@dataclass(frozen=True, slots=True)
class GateReport:
    """All rule results; `passed` only when every rule passed (`no_data` counts as a failure)."""

    passed: bool
    results: list[RuleResult]

    @property
    def failures(self) -> list[RuleResult]:
        """Results whose verdict is not `pass`."""
        return [result for result in self.results if result.verdict != "pass"]


def gate(
    baseline: RunScores,
    candidate: RunScores,
    rules: Sequence[GateRule],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> GateReport:
    """Check `candidate` against `baseline` under each rule (deterministic for a given `seed`)."""
    if not rules:
        raise ValueError("no gate rules: a gate that checks nothing would pass any change")
    results = [_check(baseline, candidate, rule, resamples=resamples, seed=seed) for rule in rules]
    return GateReport(passed=all(result.verdict == "pass" for result in results), results=results)


def _values(scores: Mapping[str, float], metric: str, side: str, kind: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for case_id, value in scores.items():
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{side} metric {metric!r}, case {case_id!r}: value must be finite, got {value!r}")
        if kind == "pass" and not 0.0 <= number <= 1.0:
            raise ValueError(
                f"{side} metric {metric!r}, case {case_id!r}: a pass metric holds the fraction of passing trials "
                f"(0..1), got {value!r}"
            )
        out[case_id] = number
    return out


def _no_data(rule: GateRule, reason: str, n_base: int = 0, n_cand: int = 0) -> RuleResult:
    return RuleResult(
        metric=rule.metric,
        baseline_mean=None,
        candidate_mean=None,
        delta=None,
        interval=None,
        p_value=None,
        n=0,
        verdict="no_data",
        reason=reason,
        rule=rule,
        dropped_baseline=n_base,
        dropped_candidate=n_cand,
    )


def _check(baseline: RunScores, candidate: RunScores, rule: GateRule, *, resamples: int, seed: int) -> RuleResult:
    missing = [side for side, run in (("baseline", baseline), ("candidate", candidate)) if rule.metric not in run]
    if missing:
        return _no_data(rule, f"metric {rule.metric!r} missing from the {' and '.join(missing)} run")
    base = _values(baseline[rule.metric], rule.metric, "baseline", rule.kind)
    cand = _values(candidate[rule.metric], rule.metric, "candidate", rule.kind)
    shared = [case_id for case_id in base if case_id in cand]
    dropped_base, dropped_cand = len(base) - len(shared), len(cand) - len(shared)
    if not shared:
        return _no_data(
            rule,
            f"no case is scored in both runs (baseline {len(base)} cases, candidate {len(cand)})",
            dropped_base,
            dropped_cand,
        )
    a = [base[case_id] for case_id in shared]
    b = [cand[case_id] for case_id in shared]
    if rule.kind == "pass":
        a = [1.0 if value >= CASE_PASS_FRACTION else 0.0 for value in a]
        b = [1.0 if value >= CASE_PASS_FRACTION else 0.0 for value in b]
    paired = paired_bootstrap(a, b, resamples=resamples, seed=seed, confidence=rule.confidence)
    if rule.kind == "pass":
        failed, p_value, reason = _pass_verdict(rule, a, b, paired.delta)
    else:
        failed, p_value, reason = _score_verdict(rule, paired)
    if dropped_base or dropped_cand:
        reason += f"; dropped {dropped_base} baseline-only and {dropped_cand} candidate-only cases"
    return RuleResult(
        metric=rule.metric,
        baseline_mean=math.fsum(a) / len(a),
        candidate_mean=math.fsum(b) / len(b),
        delta=paired.delta,
        interval=paired.interval,
        p_value=p_value,
        n=paired.n,
        verdict="fail" if failed else "pass",
        reason=reason,
        rule=rule,
        dropped_baseline=dropped_base,
        dropped_candidate=dropped_cand,
    )


def _score_verdict(rule: GateRule, paired: PairedResult) -> tuple[bool, float, str]:
    """Fail when even the favourable end of the paired interval is worse than the tolerance."""
    higher = rule.direction == "higher_is_better"
    # The interval end nearest "better": its upper end when higher is better, its lower end otherwise.
    end = paired.interval.high if higher else paired.interval.low
    failed = end < -rule.tolerance if higher else end > rule.tolerance
    level = f"{rule.confidence * 100:g}%"
    if failed:
        reason = (
            f"worse by {abs(paired.delta):.4g}: even the {'upper' if higher else 'lower'} end of the {level} "
            f"interval ({end:+.4g}) is worse than tolerance {rule.tolerance:g}"
        )
    else:
        reason = (
            f"change {paired.delta:+.4g} is within noise or tolerance {rule.tolerance:g} "
            f"({level} interval {paired.interval.low:+.4g}..{paired.interval.high:+.4g})"
        )
    return failed, paired.p_value, reason


def _pass_verdict(rule: GateRule, a: Sequence[float], b: Sequence[float], delta: float) -> tuple[bool, float, str]:
    """Fail when McNemar finds a significant change AND the observed change is worse than the tolerance."""
    test = mcnemar([x >= CASE_PASS_FRACTION for x in a], [y >= CASE_PASS_FRACTION for y in b])
    worsening = -delta if rule.direction == "higher_is_better" else delta
    alpha = 1.0 - rule.confidence
    failed = test.p_value < alpha and worsening > rule.tolerance
    evidence = f"McNemar p={test.p_value:.3g}, {test.b10} cases newly failing, {test.b01} newly passing"
    if failed:
        reason = f"pass rate worse by {worsening:.3g} (tolerance {rule.tolerance:g}); {evidence} (< {alpha:.3g})"
    else:
        reason = f"no significant worsening beyond tolerance {rule.tolerance:g}: change {delta:+.3g}; {evidence}"
    return failed, test.p_value, reason
