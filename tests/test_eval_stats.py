"""Evaluation statistics: Wilson and bootstrap intervals, pass@k / pass^k, trial aggregation, paired tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gengate.eval.stats import (
    CaseAggregate,
    Interval,
    aggregate_trials,
    bootstrap_interval,
    mcnemar,
    mean_pass_at_k,
    mean_pass_hat_k,
    paired_bootstrap,
    pass_at_k,
    pass_hat_k,
    row_median,
    wilson_interval,
)

# -- Wilson -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "n", "confidence", "low", "high"),
    [
        (8, 10, 0.95, 0.4902, 0.9433),
        (0, 10, 0.95, 0.0, 0.2775),
        (10, 10, 0.95, 0.7225, 1.0),
        (50, 100, 0.95, 0.4038, 0.5962),
        (1, 20, 0.99, 0.0059, 0.3183),
    ],
)
def test_wilson_interval_matches_known_values(
    successes: int, n: int, confidence: float, low: float, high: float
) -> None:
    interval = wilson_interval(successes, n, confidence)
    assert interval.low == pytest.approx(low, abs=5e-4)
    assert interval.high == pytest.approx(high, abs=5e-4)
    assert interval.estimate == pytest.approx(successes / n)


def test_wilson_interval_with_no_trials_is_uninformative() -> None:
    assert wilson_interval(0, 0) == Interval(0.0, 1.0, 0.0)


@pytest.mark.parametrize(("successes", "n", "confidence"), [(11, 10, 0.95), (-1, 10, 0.95), (5, 10, 1.0), (5, 10, 0)])
def test_wilson_interval_rejects_bad_input(successes: int, n: int, confidence: float) -> None:
    with pytest.raises(ValueError, match=r"successes|confidence"):
        wilson_interval(successes, n, confidence)


# -- bootstrap interval -------------------------------------------------------------------------------------------


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(7)
    small = rng.random(30).tolist()
    large = rng.random(600).tolist()
    narrow, wide = bootstrap_interval(large), bootstrap_interval(small)
    assert wide.contains(float(np.mean(small))) and wide.estimate == pytest.approx(np.mean(small))
    assert narrow.contains(float(np.mean(large)))
    assert narrow.width < wide.width / 3  # width shrinks like 1/sqrt(n): sqrt(20) ≈ 4.5


def test_bootstrap_interval_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    values = np.random.default_rng(1).random(50).tolist()
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) != bootstrap_interval(values, seed=4)


def test_bootstrap_interval_widens_with_confidence_and_accepts_other_statistics() -> None:
    values = np.random.default_rng(2).normal(10, 2, 80).tolist()
    assert bootstrap_interval(values, 0.99).width > bootstrap_interval(values, 0.8).width
    median = bootstrap_interval(values, statistic=row_median)
    assert median.estimate == pytest.approx(float(np.median(values)))
    assert median.contains(median.estimate)


def test_bootstrap_interval_of_one_value_is_a_point() -> None:
    assert bootstrap_interval([0.4], resamples=50) == Interval(0.4, 0.4, 0.4)


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "empty"), ([0.1, math.nan], "finite"), ([0.1, math.inf], "finite"), (["x"], "numbers")],
)
def test_bootstrap_interval_rejects_bad_values(values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(values)


def test_bootstrap_interval_rejects_bad_resamples() -> None:
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_interval([0.1, 0.2], resamples=0)


# -- pass@k and pass^k --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 3, 1, 0.3),
        (10, 3, 2, 1 - 21 / 45),  # 1 - C(7,2)/C(10,2)
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3)
        (5, 3, 3, 1.0),  # fewer failures than k: some pass is certain
        (10, 0, 5, 0.0),
        (10, 10, 5, 1.0),
        (4, 1, 4, 1.0),
        (200, 1, 1, 0.005),
    ],
)
def test_pass_at_k_matches_hand_computed_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 3, 1, 0.3),
        (10, 3, 2, 3 / 45),  # C(3,2)/C(10,2)
        (10, 3, 4, 0.0),
        (10, 0, 1, 0.0),
        (10, 10, 10, 1.0),
        (5, 4, 2, 6 / 10),
    ],
)
def test_pass_hat_k_matches_hand_computed_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_hat_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_stays_finite_for_large_trial_counts() -> None:
    assert 0.0 < pass_at_k(5000, 3, 1000) < 1.0
    assert pass_hat_k(5000, 4990, 1000) == pytest.approx(math.comb(4990, 1000) / math.comb(5000, 1000))


@pytest.mark.parametrize(
    ("n", "c", "k", "message"),
    [
        (5, 2, 6, "k must be"),
        (5, 2, 0, "k must be"),
        (5, 6, 1, "c \\(passing"),
        (0, 0, 1, "n \\(trials"),
        (5, -1, 1, "c "),
    ],
)
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=message):
        pass_hat_k(n, c, k)


def test_aggregate_trials_folds_each_case_and_averages_pass_at_k() -> None:
    cases = aggregate_trials({"q1": [True, False, True, True], "q2": [0.2, 0.9, 0.5, 0.1], "q3": [False] * 4})
    assert [(c.case_id, c.passes, c.trials) for c in cases] == [("q1", 3, 4), ("q2", 2, 4), ("q3", 0, 4)]
    assert [c.mean for c in cases] == pytest.approx([0.75, 0.425, 0.0])
    assert cases[0].pass_rate == 0.75
    assert mean_pass_at_k(cases, 1) == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert mean_pass_at_k(cases, 2) == pytest.approx((1.0 + (1 - 1 / 6) + 0.0) / 3)
    assert mean_pass_hat_k(cases, 2) == pytest.approx((3 / 6 + 1 / 6 + 0.0) / 3)
    assert aggregate_trials({"q": [0.6, 0.7]}, pass_threshold=0.7)[0].passes == 1


@pytest.mark.parametrize(
    ("scores", "message"), [({"q1": []}, "case 'q1'.*empty"), ({"q2": [0.5, math.nan]}, "case 'q2'.*finite")]
)
def test_aggregate_trials_rejects_empty_or_non_finite_trials(scores: dict[str, list[float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        aggregate_trials(scores)


def test_mean_pass_at_k_needs_cases_with_enough_trials() -> None:
    with pytest.raises(ValueError, match="no cases"):
        mean_pass_at_k([], 1)
    with pytest.raises(ValueError, match="k must be"):
        mean_pass_at_k([CaseAggregate("q", 1.0, 2, 2)], 3)


# -- McNemar ------------------------------------------------------------------------------------------------------


def _pairs(b01: int, b10: int, both_pass: int = 0, both_fail: int = 0) -> tuple[list[bool], list[bool]]:
    a = [False] * b01 + [True] * b10 + [True] * both_pass + [False] * both_fail
    b = [True] * b01 + [False] * b10 + [True] * both_pass + [False] * both_fail
    return a, b


@pytest.mark.parametrize(
    ("b01", "b10", "expected"),
    [
        (10, 2, 2 * (1 + 12 + 66) / 2**12),  # ≈ 0.0386
        (2, 10, 2 * (1 + 12 + 66) / 2**12),
        (5, 0, 2 / 2**5),
        (3, 3, 1.0),
        (1, 0, 1.0),
        (0, 0, 1.0),
        (7, 1, 2 * (1 + 8) / 2**8),
    ],
)
def test_mcnemar_matches_exact_binomial_p_values(b01: int, b10: int, expected: float) -> None:
    a, b = _pairs(b01, b10, both_pass=20, both_fail=5)
    result = mcnemar(a, b)
    assert (result.b01, result.b10, result.n) == (b01, b10, len(a))
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.delta == pytest.approx((b01 - b10) / len(a))


def test_mcnemar_large_counts_use_log_space_and_agree_with_exact_sums() -> None:
    b01, b10 = 1330, 1200
    n = b01 + b10
    exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(b10 + 1)) / 2**n)
    assert mcnemar(*_pairs(b01, b10)).p_value == pytest.approx(exact, rel=1e-9)
    assert mcnemar(*_pairs(60_000, 40_000)).p_value == 0.0  # underflows honestly, never NaN or negative


def test_mcnemar_rejects_unequal_lengths_and_non_booleans() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar([True, False], [True])
    with pytest.raises(ValueError, match="pass/fail"):
        mcnemar([True, 0.5], [True, False])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        mcnemar([], [])


# -- paired bootstrap ---------------------------------------------------------------------------------------------


def test_paired_bootstrap_detects_a_real_shift() -> None:
    rng = np.random.default_rng(11)
    difficulty = rng.random(200)
    a = np.clip(difficulty + rng.normal(0, 0.1, 200), 0, 1)
    b = np.clip(difficulty + 0.2 + rng.normal(0, 0.1, 200), 0, 1)
    result = paired_bootstrap(a.tolist(), b.tolist(), resamples=2000, seed=0)
    assert result.n == 200
    assert result.delta == pytest.approx(float(np.mean(b - a)))
    assert result.interval.low > 0.1
    assert result.p_value < 0.01


def test_paired_bootstrap_rarely_flags_noise() -> None:
    """Two runs with the same true per-case quality: the interval should contain 0 for ~95% of seeds."""
    misses = 0
    seeds = 50
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        difficulty = rng.random(100)
        a = np.clip(difficulty + rng.normal(0, 0.15, 100), 0, 1)
        b = np.clip(difficulty + rng.normal(0, 0.15, 100), 0, 1)
        result = paired_bootstrap(a.tolist(), b.tolist(), resamples=1000, seed=seed)
        misses += not result.interval.contains(0.0)
    assert misses / seeds <= 0.10


def test_paired_bootstrap_of_identical_runs_has_no_effect() -> None:
    values = [0.1, 0.5, 0.9, 0.3]
    result = paired_bootstrap(values, values, resamples=200)
    assert result.delta == 0.0
    assert result.interval == Interval(0.0, 0.0, 0.0)
    assert result.p_value == 1.0


def test_paired_bootstrap_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.random(40).tolist(), rng.random(40).tolist()
    assert paired_bootstrap(a, b, seed=9) == paired_bootstrap(a, b, seed=9)


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [([0.1, 0.2], [0.1], "equal lengths"), ([0.1, math.nan], [0.1, 0.2], "a must be finite"), ([], [], "empty")],
)
def test_paired_bootstrap_rejects_bad_input(a: list[float], b: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(a, b)
