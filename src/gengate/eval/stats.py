"""Statistics for evaluation runs: confidence intervals, pass@k, and paired comparisons on the same cases.

Owns:

- intervals for one run: `wilson_interval` (a pass rate) and `bootstrap_interval` (any per-case statistic);
- repeated trials: `aggregate_trials` folds each case's trials into a `CaseAggregate`; `pass_at_k` / `pass_hat_k`
  (and their `mean_*` forms over cases) say how likely k tries give at least one / only passes;
- paired comparisons of two variants on the same cases: `paired_bootstrap` for per-case scores, `mcnemar` (exact
  binomial test on the discordant pairs) for per-case pass/fail.

Resampling is over *cases*, never over trials: trials of one case are correlated (same question, same difficulty),
so callers pass one value per case (the mean over its trials) and the case is the unit of independence.

Every function is pure and deterministic (bootstraps take a `seed`). Inputs are validated and bad ones raise
`ValueError` naming the problem.

Must not: do I/O, keep state between calls, or depend on anything beyond numpy and the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = [
    "CaseAggregate",
    "Interval",
    "McNemarResult",
    "PairedResult",
    "Statistic",
    "aggregate_trials",
    "bootstrap_interval",
    "mcnemar",
    "mean_pass_at_k",
    "mean_pass_hat_k",
    "paired_bootstrap",
    "pass_at_k",
    "pass_hat_k",
    "row_mean",
    "row_median",
    "wilson_interval",
]

FloatArray = npt.NDArray[np.float64]

Statistic = Callable[[FloatArray], FloatArray]
"""Reduces each row of a 2-D array (one bootstrap resample per row) to one number: shape (r, n) -> (r,)."""

# Bootstrap resamples are drawn in blocks so memory stays near this many index cells, whatever the number of cases.
_BLOCK_CELLS = 1 << 21
# Exact integer binomial tails up to this many discordant pairs; log-space above (big ints get slow).
_EXACT_BINOMIAL_MAX = 1000


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence interval `[low, high]` around a point `estimate`."""

    low: float
    high: float
    estimate: float

    def contains(self, value: float) -> bool:
        """True when `value` lies within the interval (ends included)."""
        return self.low <= value <= self.high

    @property
    def width(self) -> float:
        """`high - low`."""
        return self.high - self.low


@dataclass(frozen=True, slots=True)
class CaseAggregate:
    """One case's trials folded together: mean score, passing trials and trial count."""

    case_id: str
    mean: float
    passes: int
    trials: int

    @property
    def pass_rate(self) -> float:
        """Fraction of trials that passed."""
        return self.passes / self.trials


@dataclass(frozen=True, slots=True)
class PairedResult:
    """Paired comparison of per-case scores: `delta = mean(b - a)`, its bootstrap interval and two-sided p-value."""

    delta: float
    interval: Interval
    p_value: float
    n: int


@dataclass(frozen=True, slots=True)
class McNemarResult:
    """Exact McNemar test on paired pass/fail outcomes.

    `b01`: cases failing under A and passing under B (improvements); `b10`: passing under A, failing under B
    (regressions). `delta` is B's pass rate minus A's, `(b01 - b10) / n`.
    """

    b01: int
    b10: int
    p_value: float
    delta: float
    n: int


# -- validation ---------------------------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, int | float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _finite_array(values: Iterable[float], name: str) -> FloatArray:
    try:
        array = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers: {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: at least one value is needed")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} must be finite, but position {int(bad[0])} is {array[bad[0]]!r}")
    return array


def _check_resamples(resamples: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")


def _check_counts(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if n < 1:
        raise ValueError(f"n (trials) must be at least 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (passing trials) must be between 0 and n={n}, got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n={n} (cannot estimate pass@{k} from {n} trials)")


# -- one run ------------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a binomial proportion (good coverage even near 0, 1 and for small `n`).

    `estimate` is the observed proportion `successes / n`. With `n == 0` nothing is known: the interval is
    `(0, 1)` with estimate 0.
    """
    _check_confidence(confidence)
    if isinstance(successes, bool) or isinstance(n, bool) or not isinstance(successes, int) or not isinstance(n, int):
        raise ValueError(f"successes and n must be integers, got {successes!r} and {n!r}")
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return Interval(0.0, 1.0, 0.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    return Interval(max(0.0, centre - half), min(1.0, centre + half), p)


def row_mean(rows: FloatArray) -> FloatArray:
    """Mean of each row (the default bootstrap statistic)."""
    return np.asarray(rows.mean(axis=1), dtype=np.float64)


def row_median(rows: FloatArray) -> FloatArray:
    """Median of each row."""
    return np.median(rows, axis=1)


def _bootstrap_distribution(
    values: FloatArray, resamples: int, seed: int, statistic: Statistic = row_mean
) -> FloatArray:
    """`statistic` of `resamples` resamples (with replacement) of `values`, drawn in memory-bounded blocks."""
    rng = np.random.default_rng(seed)
    n = values.size
    block = max(1, _BLOCK_CELLS // n)
    out = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = statistic(values[idx])
    return out


def _percentile_interval(distribution: FloatArray, estimate: float, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(distribution, [alpha / 2, 1 - alpha / 2])
    return Interval(float(low), float(high), estimate)


def bootstrap_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    *,
    resamples: int = 2000,
    seed: int = 0,
    statistic: Statistic = row_mean,
) -> Interval:
    """Percentile bootstrap interval of `statistic` over `values` (one value per case; cases are resampled).

    Deterministic for a given `seed`. The estimate is the statistic of the values themselves. Percentile intervals
    are somewhat too narrow for very few cases (below ~20); they need no distributional assumption otherwise.
    """
    _check_confidence(confidence)
    _check_resamples(resamples)
    array = _finite_array(values, "values")
    estimate = float(statistic(array[np.newaxis, :])[0])
    distribution = _bootstrap_distribution(array, resamples, seed, statistic)
    return _percentile_interval(distribution, estimate, confidence)


# -- repeated trials ----------------------------------------------------------------------------------------------


def aggregate_trials(
    scores_by_case: Mapping[str, Sequence[float]], *, pass_threshold: float = 0.5
) -> list[CaseAggregate]:
    """Fold each case's trial scores into a `CaseAggregate`, in the mapping's order.

    Booleans count as 1.0 / 0.0. A trial passes when its score is at least `pass_threshold`.
    """
    if not math.isfinite(pass_threshold):
        raise ValueError(f"pass_threshold must be finite, got {pass_threshold!r}")
    out = []
    for case_id, trials in scores_by_case.items():
        array = _finite_array(trials, f"trials of case {case_id!r}")
        out.append(
            CaseAggregate(
                case_id=case_id,
                mean=float(array.mean()),
                passes=int(np.count_nonzero(array >= pass_threshold)),
                trials=int(array.size),
            )
        )
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from `c` passes in `n` trials: `1 - C(n-c, k) / C(n, k)` (Chen et al., 2021).

    The probability that at least one of `k` trials drawn without replacement from the `n` passes.
    """
    _check_counts(n, c, k)
    if n - c < k:
        return 1.0
    # Python's int / int true division is correctly rounded even for huge binomials.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass^k from `c` passes in `n` trials: `C(c, k) / C(n, k)`.

    The probability that all `k` trials drawn without replacement pass (reliability rather than capability).
    """
    _check_counts(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


def _mean_over_cases(cases: Iterable[CaseAggregate], k: int, estimator: Callable[[int, int, int], float]) -> float:
    values = [estimator(case.trials, case.passes, k) for case in cases]
    if not values:
        raise ValueError("no cases: at least one case is needed")
    return math.fsum(values) / len(values)


def mean_pass_at_k(cases: Iterable[CaseAggregate], k: int) -> float:
    """`pass_at_k` averaged over cases (each case may have its own trial count, all at least `k`)."""
    return _mean_over_cases(cases, k, pass_at_k)


def mean_pass_hat_k(cases: Iterable[CaseAggregate], k: int) -> float:
    """`pass_hat_k` averaged over cases (each case may have its own trial count, all at least `k`)."""
    return _mean_over_cases(cases, k, pass_hat_k)


# -- paired comparisons -------------------------------------------------------------------------------------------


def _paired(a: Iterable[float], b: Iterable[float]) -> tuple[FloatArray, FloatArray]:
    left, right = _finite_array(a, "a"), _finite_array(b, "b")
    if left.size != right.size:
        raise ValueError(
            f"paired samples must have equal lengths (one value per case), got {left.size} and {right.size}"
        )
    return left, right


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedResult:
    """Compare per-case scores of variant B against variant A on the same cases (position i is case i in both).

    Method: the per-case differences `d = b - a` are resampled with replacement (cases, not trials, are the unit),
    giving the bootstrap distribution of `mean(d)`.

    - `interval`: percentile interval of that distribution at `confidence`, around `delta = mean(d)`.
    - `p_value`: two-sided, from the same distribution shifted to the null (centred on 0):
      `(1 + #{|m* - delta| >= |delta|}) / (1 + resamples)`, i.e. how often a resampled mean strays from the
      observed one by at least the observed effect. The `+1` keeps it from being 0 (the smallest p is
      `1 / (1 + resamples)`).

    Pairing removes the case-difficulty variance both variants share, which is why it detects much smaller changes
    than comparing two independent intervals.
    """
    _check_confidence(confidence)
    _check_resamples(resamples)
    left, right = _paired(a, b)
    diff = right - left
    delta = float(diff.mean())
    distribution = _bootstrap_distribution(diff, resamples, seed)
    exceed = int(np.count_nonzero(np.abs(distribution - delta) >= abs(delta)))
    p_value = (1 + exceed) / (1 + resamples)
    return PairedResult(delta, _percentile_interval(distribution, delta, confidence), p_value, int(diff.size))


def _binomial_lower_tail_half(n: int, m: int) -> float:
    """P(X <= m) for X ~ Binomial(n, 1/2)."""
    if m >= n:
        return 1.0
    if n <= _EXACT_BINOMIAL_MAX:
        return sum(math.comb(n, i) for i in range(m + 1)) / (1 << n)
    # log C(n, i) by the ratio C(n, i+1) / C(n, i) = (n - i) / (i + 1), then log-sum-exp.
    i = np.arange(m, dtype=np.float64)
    log_comb = np.concatenate(([0.0], np.cumsum(np.log(n - i) - np.log(i + 1))))
    top = float(log_comb.max())
    log_tail = top + math.log(float(np.exp(log_comb - top).sum())) - n * math.log(2.0)
    return min(1.0, math.exp(log_tail))


def _as_bools(values: Iterable[bool], name: str) -> list[bool]:
    out = []
    for position, value in enumerate(values):
        if isinstance(value, bool | np.bool_) or value in (0, 1):
            out.append(bool(value))
        else:
            raise ValueError(f"{name} must hold pass/fail booleans, but position {position} is {value!r}")
    if not out:
        raise ValueError(f"{name} is empty: at least one case is needed")
    return out


def mcnemar(a_pass: Sequence[bool], b_pass: Sequence[bool]) -> McNemarResult:
    """Exact McNemar test: did B's pass/fail outcomes change from A's on the same cases?

    Only discordant cases carry information. Under the null (no difference) each of the `b01 + b10` discordant
    cases is equally likely to go either way, so `b01 ~ Binomial(b01 + b10, 1/2)`; the two-sided p-value is twice
    the smaller tail, capped at 1 (no discordant pairs: p = 1). Exact, so valid for any number of cases.
    """
    left, right = _as_bools(a_pass, "a_pass"), _as_bools(b_pass, "b_pass")
    if len(left) != len(right):
        raise ValueError(
            f"paired samples must have equal lengths (one value per case), got {len(left)} and {len(right)}"
        )
    b01 = sum(1 for x, y in zip(left, right, strict=True) if not x and y)
    b10 = sum(1 for x, y in zip(left, right, strict=True) if x and not y)
    discordant = b01 + b10
    p_value = 1.0 if discordant == 0 else min(1.0, 2.0 * _binomial_lower_tail_half(discordant, min(b01, b10)))
    return McNemarResult(b01=b01, b10=b10, p_value=p_value, delta=(b01 - b10) / len(left), n=len(left))
