"""Judge calibration: how far a metric agrees with human labels, before a team gates on it.

Owns the agreement statistics: `spearman` (rank correlation, average ranks for ties), `cohen_kappa` (chance-
corrected agreement of categorical labels, optionally after binarising numbers at a threshold),
`precision_recall_at` (how well a metric's flags find the cases people flag), `best_threshold` (the flagging
threshold that maximises F1, to be chosen on a train split) and `calibrate`, which folds them into one
`CalibrationReport` with a seeded bootstrap interval for Spearman, and `spearman_difference`, a paired comparison of
two metrics against the same human labels.

By default a metric *flags* a case when its value is below the metric threshold and people flag it when their
score is below the human threshold (an unfaithful answer is the positive class), matching how a gate uses a judge.

Every function is pure and deterministic. Must not: do I/O, call metrics or models, or keep state.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "CalibrationReport",
    "PrecisionRecall",
    "best_threshold",
    "calibrate",
    "cohen_kappa",
    "precision_recall_at",
    "rank_average",
    "spearman",
    "spearman_difference",
]

FloatArray = npt.NDArray[np.float64]
Direction = Literal["below", "above"]


def _floats(values: Sequence[float] | FloatArray, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite numbers")
    return array


def _pair(xs: Sequence[float], ys: Sequence[float]) -> tuple[FloatArray, FloatArray]:
    x, y = _floats(xs, "xs"), _floats(ys, "ys")
    if len(x) != len(y):
        raise ValueError(f"xs and ys differ in length ({len(x)} vs {len(y)})")
    return x, y


def rank_average(values: Sequence[float] | FloatArray) -> FloatArray:
    """1-based ranks of `values`, ties sharing the average of the ranks they span."""
    x = _floats(values, "values")
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    while start < len(x):
        end = start
        while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: FloatArray, y: FloatArray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else math.nan


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's r of average ranks); NaN when either side is constant."""
    x, y = _pair(xs, ys)
    if len(x) < 2:
        raise ValueError("spearman needs at least two pairs")
    return _pearson(rank_average(x), rank_average(y))


def _binarise(values: Sequence[float], threshold: float, flag: Direction) -> list[bool]:
    x = _floats(values, "values")
    return [bool(v < threshold) if flag == "below" else bool(v >= threshold) for v in x]


def _numbers(values: Sequence[Hashable], name: str) -> list[float]:
    out: list[float] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"{name} must hold numbers to binarise at a threshold, got {v!r}")
        out.append(float(v))
    return out


def cohen_kappa(
    a: Sequence[Hashable], b: Sequence[Hashable], *, threshold: float | None = None, flag: Direction = "below"
) -> float:
    """Cohen's kappa between two raters' categorical labels: (observed − chance agreement) / (1 − chance).

    With `threshold`, numeric labels are first binarised (flagged when below it; with `flag="above"`, when at or
    above it). When both raters give one and the same label to every case, kappa is 1.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b differ in length ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError("cohen_kappa needs at least one pair")
    labels_a: Sequence[Hashable] = a
    labels_b: Sequence[Hashable] = b
    if threshold is not None:
        labels_a = _binarise(_numbers(a, "a"), threshold, flag)
        labels_b = _binarise(_numbers(b, "b"), threshold, flag)
    n = len(labels_a)
    observed = sum(x == y for x, y in zip(labels_a, labels_b, strict=True)) / n
    count_a, count_b = Counter(labels_a), Counter(labels_b)
    chance = sum(count_a[label] * count_b.get(label, 0) for label in count_a) / (n * n)
    if chance >= 1.0:
        return 1.0
    return (observed - chance) / (1 - chance)


@dataclass(frozen=True, slots=True)
class PrecisionRecall:
    """How a metric's flags compare with the true flags: counts, precision, recall and F1 (0 when undefined)."""

    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int

    @property
    def precision(self) -> float:
        """Share of the metric's flags that are right (0 when it flags nothing)."""
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 0.0

    @property
    def recall(self) -> float:
        """Share of the true flags the metric raises (0 when there are none)."""
        actual = self.true_positives + self.false_negatives
        return self.true_positives / actual if actual else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall (0 when both are 0)."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def precision_recall_at(
    scores: Sequence[float], labels: Sequence[bool], threshold: float, *, flag: Direction = "below"
) -> PrecisionRecall:
    """The metric flags a case when its score is below `threshold` (at or above it with `flag="above"`);
    `labels` say which cases truly deserve a flag."""
    if len(scores) != len(labels):
        raise ValueError(f"scores and labels differ in length ({len(scores)} vs {len(labels)})")
    predicted = _binarise(scores, threshold, flag)
    tp = sum(p and t for p, t in zip(predicted, labels, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, labels, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, labels, strict=True))
    return PrecisionRecall(tp, fp, fn, len(labels) - tp - fp - fn)


def best_threshold(scores: Sequence[float], labels: Sequence[bool], *, flag: Direction = "below") -> float:
    """The threshold (one of the midpoints between distinct scores) whose flags reach the best F1 against `labels`;
    ties go to the lower threshold with `flag="below"` (fewer flags). Choose it on train data, report on held-out."""
    distinct: list[float] = sorted({float(v) for v in _floats(scores, "scores")})
    if not distinct:
        raise ValueError("best_threshold needs scores")
    candidates = [distinct[0] - 1e-9] + [(a + b) / 2 for a, b in pairwise(distinct)]
    candidates.append(distinct[-1] + 1e-9)
    if flag == "above":
        candidates.reverse()
    best, best_f1 = candidates[0], -1.0
    for t in candidates:
        f1 = precision_recall_at(scores, labels, t, flag=flag).f1
        if f1 > best_f1:
            best, best_f1 = t, f1
    return best


@dataclass(frozen=True, slots=True)
class CalibrationReport:
    """Agreement of one metric with human scores on `n` cases (cases the metric skipped are counted, not used).

    `spearman_ci` is a percentile bootstrap interval over cases. The threshold figures are None unless both
    thresholds were given: `kappa` compares the two binarised labellings, and precision/recall/F1 say how well the
    metric's flags find the cases people flag.
    """

    n: int
    skipped: int
    spearman: float
    spearman_ci: tuple[float, float]
    threshold: float | None = None
    human_threshold: float | None = None
    flagged_by_humans: int | None = None
    kappa: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None


def _check_bootstrap(resamples: int, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")


def _bootstrap_spearman(
    x: FloatArray, y: FloatArray, resamples: int, seed: int, confidence: float
) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        r = _pearson(rank_average(x[idx]), rank_average(y[idx]))
        if not math.isnan(r):
            values.append(r)
    if not values:
        return (math.nan, math.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return (float(low), float(high))


def spearman_difference(
    a_values: Sequence[float],
    b_values: Sequence[float],
    human_values: Sequence[float],
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """How much better metric A agrees with people than metric B on the same cases: Spearman(A) − Spearman(B),
    with a paired percentile bootstrap interval (both metrics see the same resampled cases)."""
    _check_bootstrap(resamples, confidence)
    a, h = _pair(a_values, human_values)
    b, _ = _pair(b_values, human_values)
    if len(a) < 3:
        raise ValueError("spearman_difference needs at least 3 cases")
    estimate = _pearson(rank_average(a), rank_average(h)) - _pearson(rank_average(b), rank_average(h))
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        rh = rank_average(h[idx])
        diff = _pearson(rank_average(a[idx]), rh) - _pearson(rank_average(b[idx]), rh)
        if not math.isnan(diff):
            values.append(diff)
    if not values:
        return estimate, (math.nan, math.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return estimate, (float(low), float(high))


def calibrate(
    metric_values: Sequence[float | None],
    human_values: Sequence[float],
    *,
    threshold: float | None = None,
    human_threshold: float | None = None,
    flag: Direction = "below",
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CalibrationReport:
    """Agreement between a metric and human scores of the same cases (metric None = not applicable, skipped).

    With both thresholds, each side flags a case when below its threshold (`flag="above"`: at or above), and the
    report adds kappa between the flags and the metric's precision/recall/F1 at finding the human flags.
    """
    if len(metric_values) != len(human_values):
        raise ValueError(f"metric and human values differ in length ({len(metric_values)} vs {len(human_values)})")
    _check_bootstrap(resamples, confidence)
    if (threshold is None) != (human_threshold is None):
        raise ValueError("give both threshold and human_threshold, or neither")
    pairs = [(m, h) for m, h in zip(metric_values, human_values, strict=True) if m is not None]
    if len(pairs) < 3:
        raise ValueError(f"calibration needs at least 3 scored cases, got {len(pairs)}")
    x = _floats([m for m, _ in pairs], "metric values")
    y = _floats([h for _, h in pairs], "human values")
    report = CalibrationReport(
        n=len(pairs),
        skipped=len(metric_values) - len(pairs),
        spearman=spearman(x.tolist(), y.tolist()),
        spearman_ci=_bootstrap_spearman(x, y, resamples, seed, confidence),
    )
    if threshold is None or human_threshold is None:
        return report
    metric_flags = _binarise(x.tolist(), threshold, flag)
    human_flags = _binarise(y.tolist(), human_threshold, flag)
    pr = precision_recall_at(x.tolist(), human_flags, threshold, flag=flag)
    return CalibrationReport(
        n=report.n,
        skipped=report.skipped,
        spearman=report.spearman,
        spearman_ci=report.spearman_ci,
        threshold=threshold,
        human_threshold=human_threshold,
        flagged_by_humans=sum(human_flags),
        kappa=cohen_kappa(metric_flags, human_flags),
        precision=pr.precision,
        recall=pr.recall,
        f1=pr.f1,
    )
