"""Judge calibration statistics: Spearman with ties, Cohen's kappa, precision/recall of flags, the report."""

from __future__ import annotations

import math

import pytest

from gengate.eval.calibrate import (
    best_threshold,
    calibrate,
    cohen_kappa,
    precision_recall_at,
    rank_average,
    spearman,
    spearman_difference,
)


def test_ties_share_the_average_rank() -> None:
    assert rank_average([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_without_ties_matches_the_textbook_formula() -> None:
    # d = (0, -1, 1, -1, 1): 1 - 6 * 4 / (5 * 24) = 0.8
    assert spearman([10, 20, 30, 40, 50], [1, 3, 2, 5, 4]) == pytest.approx(0.8)


def test_spearman_with_ties_uses_average_ranks() -> None:
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): r = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_of_a_constant_is_nan_and_bad_input_raises() -> None:
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="differ in length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        spearman([1, math.nan], [1, 2])


def test_cohen_kappa_wikipedia_example() -> None:
    # 50 proposals: both yes 20, A yes / B no 5, A no / B yes 10, both no 15 → p_o 0.7, p_e 0.5, kappa 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_after_binarising_numbers() -> None:
    metric = [0.1, 0.2, 0.8, 0.9, 0.6]
    human = [1.0, 2.5, 3.5, 4.0, 2.0]
    assert cohen_kappa(metric, [h / 4 for h in human], threshold=0.7) == pytest.approx(
        cohen_kappa([True, True, False, False, True], [True, True, False, False, True])
    )
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    assert cohen_kappa(["a", "a"], ["a", "a"]) == 1.0
    with pytest.raises(ValueError, match="numbers"):
        cohen_kappa(["a"], ["b"], threshold=0.5)


def test_precision_and_recall_of_flags() -> None:
    scores = [0.1, 0.4, 0.6, 0.9]
    unfaithful = [True, True, False, False]
    exact = precision_recall_at(scores, unfaithful, 0.5)
    assert (exact.precision, exact.recall, exact.f1) == (1.0, 1.0, 1.0)
    loose = precision_recall_at(scores, unfaithful, 0.7)
    assert loose.precision == pytest.approx(2 / 3) and loose.recall == 1.0 and loose.f1 == pytest.approx(0.8)
    silent = precision_recall_at(scores, unfaithful, 0.0)
    assert (silent.precision, silent.recall, silent.f1) == (0.0, 0.0, 0.0)
    above = precision_recall_at(scores, [False, False, True, True], 0.5, flag="above")
    assert above.true_positives == 2 and above.false_positives == 0


def test_best_threshold_maximises_f1() -> None:
    scores = [0.1, 0.3, 0.35, 0.7, 0.8, 0.9]
    labels = [True, True, False, False, False, False]
    assert best_threshold(scores, labels) == pytest.approx(0.325)


def test_calibration_report() -> None:
    metric = [0.9, 0.8, None, 0.2, 0.4, 0.95, 0.1, 0.7]
    human = [4.0, 3.5, 4.0, 1.5, 2.5, 4.0, 1.0, 3.0]
    report = calibrate(metric, human, threshold=0.5, human_threshold=3.0, resamples=200, seed=1)
    assert report.n == 7 and report.skipped == 1
    assert report.spearman == pytest.approx(spearman([0.9, 0.8, 0.2, 0.4, 0.95, 0.1, 0.7], [4, 3.5, 1.5, 2.5, 4, 1, 3]))
    low, high = report.spearman_ci
    assert low <= report.spearman <= high <= 1.0
    assert report.flagged_by_humans == 3 and report.kappa == 1.0
    assert (report.precision, report.recall, report.f1) == (1.0, 1.0, 1.0)
    assert calibrate(metric, human, resamples=200, seed=1) == calibrate(metric, human, resamples=200, seed=1)
    assert calibrate(metric, human, resamples=200).kappa is None


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        calibrate([0.1], [1.0, 2.0])
    with pytest.raises(ValueError, match="both threshold and human_threshold"):
        calibrate([0.1, 0.2, 0.3], [1, 2, 3], threshold=0.5)
    with pytest.raises(ValueError, match="at least 3 scored cases"):
        calibrate([None, 0.2, 0.3], [1, 2, 3])


def test_paired_spearman_difference() -> None:
    human = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    good = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    noisy = [0.3, 0.1, 0.2, 0.6, 0.4, 0.8, 0.5, 0.7]
    diff, (low, high) = spearman_difference(good, noisy, human, resamples=300, seed=3)
    assert diff == pytest.approx(1.0 - spearman(noisy, human))
    assert 0 <= low <= diff <= high
    same, interval = spearman_difference(good, good, human, resamples=50)
    assert same == 0.0 and interval == (0.0, 0.0)
