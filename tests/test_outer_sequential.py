"""A/B statistics: sticky assignment, always-valid comparisons (mSPRT), guardrails and the peeking simulations."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from statistics import NormalDist

import pytest

from gengate.outer.sequential import (
    BinaryStats,
    Comparison,
    ContinuousStats,
    assign,
    check_guardrails,
    compare,
    compare_variants,
    simulate,
    simulate_continuous,
)

ALPHA = 0.05
RUNS = 1000


def upper_tolerance(rate: float, runs: int) -> float:
    """One-sided 99% upper bound on an observed rate whose true value is `rate`."""
    return rate + NormalDist().inv_cdf(0.99) * math.sqrt(rate * (1 - rate) / runs)


# -- assignment ---------------------------------------------------------------------------------------------------

WEIGHTS = {"control": 0.5, "short": 0.25, "long": 0.25}


def test_assignment_is_pinned_so_a_code_change_cannot_silently_reshuffle_users() -> None:
    got = [assign("exp-42", f"user-{i}", WEIGHTS) for i in range(8)]
    assert got == ["long", "control", "short", "control", "long", "short", "long", "control"]


def test_assignment_is_sticky_and_ignores_the_order_of_the_weights() -> None:
    reordered = dict(reversed(list(WEIGHTS.items())))
    for i in range(200):
        first = assign("exp-42", f"user-{i}", WEIGHTS)
        assert assign("exp-42", f"user-{i}", WEIGHTS) == first
        assert assign("exp-42", f"user-{i}", reordered) == first


def test_assignment_agrees_across_processes_whatever_their_hash_seed() -> None:
    code = "from gengate.outer.sequential import assign; print(assign('exp-7', 'alice', {'a': 1, 'b': 1, 'c': 2}))"
    answers = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert answers == {assign("exp-7", "alice", {"a": 1, "b": 1, "c": 2})}


def test_assignment_follows_the_weights_over_20k_units() -> None:
    units = 20_000
    counts = Counter(assign("exp-dist", f"user-{i}", WEIGHTS) for i in range(units))
    chi2 = sum((counts[name] - units * w) ** 2 / (units * w) for name, w in WEIGHTS.items())
    assert chi2 < 13.82  # chi-square with 2 degrees of freedom, 99.9th percentile


def test_experiments_shuffle_units_independently() -> None:
    units = 4000
    same = sum(
        assign("exp-1", f"u{i}", {"a": 1, "b": 1}) == assign("exp-2", f"u{i}", {"a": 1, "b": 1}) for i in range(units)
    )
    assert abs(same / units - 0.5) < 0.04


def test_a_zero_weight_variant_gets_nobody() -> None:
    assert {assign("exp", f"u{i}", {"a": 1.0, "off": 0.0}) for i in range(500)} == {"a"}


@pytest.mark.parametrize(
    ("experiment", "unit", "weights"),
    [
        ("", "u", {"a": 1.0}),
        ("exp", "", {"a": 1.0}),
        ("exp", "u", {}),
        ("exp", "u", {"a": 0.0}),
        ("exp", "u", {"a": -1.0, "b": 2.0}),
        ("exp", "u", {"a": math.nan}),
        ("exp", "u", {"a": True}),
    ],
)
def test_assignment_rejects_bad_input(experiment: str, unit: str, weights: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        assign(experiment, unit, weights)


# -- summaries ----------------------------------------------------------------------------------------------------


def test_continuous_summary_from_sums_matches_summary_from_values() -> None:
    values = [0.8, 1.3, 2.1, 0.4, 1.9, 1.0]
    direct = ContinuousStats.from_values(values)
    sums = ContinuousStats.from_sums(len(values), sum(values), sum(v * v for v in values))
    assert sums.n == direct.n
    assert sums.mean == pytest.approx(direct.mean)
    assert sums.variance == pytest.approx(direct.variance)


@pytest.mark.parametrize(("n", "successes"), [(10, 11), (-1, 0), (5, -1)])
def test_binary_summary_rejects_impossible_counts(n: int, successes: int) -> None:
    with pytest.raises(ValueError):
        BinaryStats(n, successes)


# -- comparisons --------------------------------------------------------------------------------------------------


def test_finds_the_better_variant_with_a_known_effect() -> None:
    result = compare(BinaryStats(5000, 1500), BinaryStats(5000, 1800))
    assert result.decision == "b_better"
    assert result.p_value < ALPHA
    assert result.difference == pytest.approx(0.06)
    assert 0 < result.interval.low < 0.06 < result.interval.high
    assert result.relative_difference == pytest.approx(0.2)


def test_says_continue_while_the_sequence_still_holds_zero() -> None:
    result = compare(BinaryStats(500, 150), BinaryStats(500, 160))
    assert result.decision == "continue"
    assert result.interval.low < 0 < result.interval.high
    assert result.p_value > ALPHA


def test_says_continue_with_p_one_before_min_n_units_per_arm() -> None:
    result = compare(BinaryStats(50, 5), BinaryStats(50, 45))
    assert (result.decision, result.p_value) == ("continue", 1.0)
    assert (result.interval.low, result.interval.high) == (-1.0, 1.0)


def test_daily_looks_give_a_non_increasing_p_value_and_nested_intervals() -> None:
    looks: list[Comparison] = []
    previous = None
    for day in range(1, 31):
        # A stays at 30%; B drifts in at 35% then settles, so there is noise in the running estimate.
        a = BinaryStats(200 * day, 60 * day + (day % 3))
        b = BinaryStats(200 * day, 70 * day - (day % 4))
        previous = compare(a, b, previous=previous)
        looks.append(previous)
    for before, after in pairwise(looks):
        assert after.p_value <= before.p_value
        assert before.interval.low <= after.interval.low <= after.interval.high <= before.interval.high
    for look in looks:
        assert (look.p_value <= ALPHA) == (look.decision != "continue")
    decided = [look.decision for look in looks if look.decision != "continue"]
    assert decided and set(decided) == {"b_better"}


def test_lower_is_better_metrics_read_the_decision_the_other_way() -> None:
    fast = ContinuousStats(n=4000, mean=0.90, variance=0.25)
    slow = ContinuousStats(n=4000, mean=1.00, variance=0.25)
    assert compare(slow, fast, higher_is_better=False).decision == "b_better"
    assert compare(slow, fast).decision == "a_better"  # by default a higher mean is better
    assert compare(fast, slow, higher_is_better=False).decision == "a_better"


def test_rejects_a_previous_look_from_another_sequence() -> None:
    first = compare(BinaryStats(500, 150), BinaryStats(500, 160))
    with pytest.raises(ValueError, match="alpha"):
        compare(BinaryStats(600, 180), BinaryStats(600, 190), alpha=0.01, previous=first)
    with pytest.raises(ValueError, match="cumulative"):
        compare(BinaryStats(400, 120), BinaryStats(600, 190), previous=first)


def test_rejects_arms_of_different_kinds() -> None:
    with pytest.raises(ValueError, match="same kind"):
        compare(BinaryStats(500, 150), ContinuousStats(500, 0.3, 0.2))


def test_compares_each_treatment_with_the_control_at_a_bonferroni_alpha() -> None:
    arms = {
        "control": BinaryStats(6000, 1800),
        "same": BinaryStats(6000, 1810),
        "better": BinaryStats(6000, 2160),
    }
    results = compare_variants(arms, "control")
    assert set(results) == {"same", "better"}
    assert all(result.alpha == pytest.approx(ALPHA / 2) for result in results.values())
    assert results["better"].decision == "b_better"
    assert results["same"].decision == "continue"
    again = compare_variants(arms, "control", previous=results)
    assert again["better"].p_value <= results["better"].p_value
    with pytest.raises(ValueError, match="control"):
        compare_variants(arms, "missing")


# -- simulations: why peeking needs the always-valid test --------------------------------------------------------


def test_aa_false_positive_rate_stays_nominal_with_daily_peeking_while_a_naive_z_test_inflates() -> None:
    result = simulate(0.30, 0.30, runs=RUNS, days=30, users_per_day=200, alpha=ALPHA, seed=11)
    assert result.decided_rate <= upper_tolerance(ALPHA, RUNS)
    # The same runs, the same daily looks, a fixed-horizon z-test: each look spends alpha again.
    assert result.naive_rate > 3 * ALPHA
    assert result.naive_rate > 2 * result.decided_rate
    # Looked at once, at the end, the z-test is fine: the problem is the peeking, not the z-test.
    assert result.fixed_rate <= upper_tolerance(ALPHA, RUNS)


def test_aa_false_positive_rate_stays_nominal_for_a_rare_block_rate() -> None:
    result = simulate(0.01, 0.01, runs=RUNS, days=30, users_per_day=100, alpha=ALPHA, seed=12)
    assert result.decided_rate <= upper_tolerance(ALPHA, RUNS)


def test_ab_simulation_finds_the_better_variant_and_stops_early() -> None:
    result = simulate(0.30, 0.36, runs=RUNS, days=30, users_per_day=200, alpha=ALPHA, seed=13)
    assert result.b_higher_rate >= 0.95
    assert not (result.direction < 0).any()
    assert result.median_decision_day < 15


def test_continuous_aa_false_positive_rate_stays_nominal_even_for_skewed_latencies() -> None:
    result = simulate_continuous(
        1.0, 1.0, sd=2.0, distribution="lognormal", runs=RUNS, days=30, users_per_day=100, seed=14
    )
    assert result.decided_rate <= upper_tolerance(ALPHA, RUNS)
    assert result.naive_rate > 3 * ALPHA


def test_continuous_ab_simulation_finds_the_cheaper_variant() -> None:
    result = simulate_continuous(1.0, 0.9, sd=0.8, runs=300, days=30, users_per_day=200, seed=15)
    assert (result.direction < 0).mean() >= 0.95


def test_simulation_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="rate_b"):
        simulate(0.3, 1.3)
    with pytest.raises(ValueError, match="runs"):
        simulate(0.3, 0.3, runs=0)
    with pytest.raises(ValueError, match="lognormal"):
        simulate_continuous(0.0, 1.0, distribution="lognormal")


# -- guardrails ---------------------------------------------------------------------------------------------------

BOUNDS = {"cost": 0.10, "latency": 0.10, "blocked": 0.50}


def arm(n: int, cost: float, latency: float, blocked: float) -> dict[str, BinaryStats | ContinuousStats]:
    return {
        "cost": ContinuousStats(n, cost, (0.5 * cost) ** 2),
        "latency": ContinuousStats(n, latency, (0.6 * latency) ** 2),
        "blocked": BinaryStats(n, round(blocked * n)),
    }


def test_flags_the_guardrail_a_treatment_breaches() -> None:
    control = arm(5000, cost=0.002, latency=1.0, blocked=0.02)
    treatment = arm(5000, cost=0.002, latency=1.3, blocked=0.021)
    report = check_guardrails(control, treatment, BOUNDS)
    assert report.breached == ("latency",)
    latency = report.checks[1]
    assert latency.relative_change == pytest.approx(0.3)
    assert latency.excess.low > 0


def test_flags_a_block_rate_that_doubled() -> None:
    report = check_guardrails(arm(8000, 0.002, 1.0, 0.02), arm(8000, 0.002, 1.0, 0.04), BOUNDS)
    assert report.breached == ("blocked",)


def test_does_not_flag_a_worsening_within_the_bound_however_much_data() -> None:
    control = arm(1_000_000, cost=0.002, latency=1.0, blocked=0.02)
    treatment = arm(1_000_000, cost=0.00214, latency=1.05, blocked=0.025)
    assert check_guardrails(control, treatment, BOUNDS).breached == ()


def test_waits_for_enough_evidence_before_flagging() -> None:
    control, treatment = arm(150, 0.002, 1.0, 0.02), arm(150, 0.002, 1.15, 0.02)
    early = check_guardrails(control, treatment, BOUNDS)
    assert early.breached == ()
    later = check_guardrails(arm(20_000, 0.002, 1.0, 0.02), arm(20_000, 0.002, 1.15, 0.02), BOUNDS, previous=early)
    assert later.breached == ("latency",)
    assert later.checks[1].excess.high <= early.checks[1].excess.high


def test_a_constant_metric_is_decided_not_left_open() -> None:
    # A fixed price per answer: no spread at all in either arm. Doubling it is a breach; 5% more is within a 10%
    # bound; the same price is neither.
    def fixed(cost: float) -> dict[str, ContinuousStats]:
        return {"cost": ContinuousStats(200, cost, 0.0)}

    assert check_guardrails(fixed(0.002), fixed(0.004), {"cost": 0.10}).breached == ("cost",)
    assert check_guardrails(fixed(0.002), fixed(0.0021), {"cost": 0.10}).breached == ()
    assert check_guardrails(fixed(0.002), fixed(0.002), {"cost": 0.0}).breached == ()


def test_guardrails_reject_a_missing_metric_or_a_changed_bound() -> None:
    control, treatment = arm(500, 0.002, 1.0, 0.02), arm(500, 0.002, 1.0, 0.02)
    with pytest.raises(ValueError, match="missing"):
        check_guardrails(control, treatment, {"tokens": 0.1})
    first = check_guardrails(control, treatment, BOUNDS)
    with pytest.raises(ValueError, match="changed"):
        check_guardrails(control, treatment, {**BOUNDS, "latency": 0.2}, previous=first)
