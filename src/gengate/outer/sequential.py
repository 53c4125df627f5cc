"""Always-valid statistics for A/B experiments: sticky assignment, sequential comparisons, guardrails, simulations.

Owns:

- `assign`: sticky weighted assignment of a unit (a user, a session) to a variant, from sha256 of the experiment id
  and the unit, so every process and every restart agrees without storing anything;
- `compare` (binary metrics through `BinaryStats`, continuous ones through `ContinuousStats`) and
  `compare_variants` (each treatment against the control, Bonferroni-adjusted): an always-valid p-value and
  confidence sequence for the difference `B - A`, which may be looked at after every day of traffic;
- `check_guardrails`: which metrics (cost per answer, latency, block rate...) of a treatment are worse than the
  control's by more than a relative bound, with the same sequential confidence;
- `simulate` / `simulate_continuous`: vectorised A/A and A/B traffic with daily looks, for tests and the bench.

Method: the mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis & Walsh, "Always Valid
Inference: Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022 (first as "Peeking at A/B tests",
KDD 2017). With `d = mean_B - mean_A`, its squared standard error `V` and a normal mixture `N(0, tau^2)` over the true
difference, the likelihood ratio against "no difference" is

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 * d^2 / (2 V (V + tau^2))).

Under the null `1 / Lambda` stays below alpha at *every* look with probability at least `1 - alpha` (Ville's
inequality), so the always-valid p-value is the running minimum of `min(1, 1 / Lambda)` and the confidence sequence
is the running intersection of `d +- sqrt(V (V + tau^2) / tau^2 * (log(1 + tau^2 / V) + 2 log(1 / alpha)))`. The two
agree: p <= alpha exactly when the sequence excludes 0, and once it does the decision stays.

`tau2` is the mixture variance in standardised units: `tau^2 = tau2 * sigma^2`, sigma^2 the per-unit variance
implied by `V` (for equal arms, the mean of the two arms' variances). The default 0.01 spreads the mixture over
effects of about 0.1 standard deviations (0.30 vs 0.35 thumbs-up is ~0.11): the boundary is within 5% of its best
from about 500 to 10,000 units per arm; a too-large `tau2` costs power only logarithmically.

Approximations, stated: `V` uses plug-in variances (for proportions, at the Agresti-Caffo adjusted rate
`(x + 1) / (n + 2)`, and for a difference of rates never below the pooled estimate, which guards rare events like
block rates); the normal approximation needs `min_n` units per arm before any evidence counts; values must be one
per assignment unit and independent (a user's many answers are not: aggregate them per user first).

Must not: do I/O, keep state between calls (the running p-value and sequence come back in as `previous`), or
depend on anything beyond numpy and the standard library (scipy is only an extra).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from gengate.eval.stats import Interval

__all__ = [
    "DEFAULT_MIN_N",
    "DEFAULT_TAU2",
    "ArmStats",
    "BinaryStats",
    "Comparison",
    "ContinuousStats",
    "Decision",
    "GuardrailCheck",
    "GuardrailReport",
    "SimulationResult",
    "assign",
    "check_guardrails",
    "compare",
    "compare_variants",
    "simulate",
    "simulate_continuous",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Decision = Literal["continue", "b_better", "a_better"]

DEFAULT_TAU2 = 0.01
"""Mixture variance of the standardised effect: prior effects of about 0.1 per-unit standard deviations."""
DEFAULT_MIN_N = 100
"""Units per arm before the normal approximation is trusted; before that a comparison says `continue`."""


# -- assignment ---------------------------------------------------------------------------------------------------


def assign(experiment_id: str, unit: str, weights: Mapping[str, float]) -> str:
    """The variant of `unit` in `experiment_id`, drawn with probability proportional to its weight.

    sha256 of the length-prefixed experiment id and unit gives a point in [0, 1), laid over the cumulative weights
    of the variants sorted by name (so the mapping's order does not matter). The same inputs give the same variant
    in every process; other experiments shuffle units independently. Changing the weights moves only the units
    whose point falls between the old and new boundaries.
    """
    for name, value in (("experiment_id", experiment_id), ("unit", unit)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    names = sorted(weights)
    if not names:
        raise ValueError("weights is empty: at least one variant is needed")
    for name in names:
        weight = weights[name]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight of variant {name!r} must be a finite number >= 0, got {weight!r}")
    total = math.fsum(weights[name] for name in names)
    if total <= 0:
        raise ValueError("weights must not all be zero")
    key = f"{len(experiment_id)}:{experiment_id}:{unit}".encode()
    point = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64 * total
    cumulative = 0.0
    for name in names:
        cumulative += weights[name]
        if point < cumulative:
            return name
    return next(name for name in reversed(names) if weights[name] > 0)  # float rounding at the very top


# -- per-arm summaries --------------------------------------------------------------------------------------------


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class BinaryStats:
    """Cumulative `successes` out of `n` units for a yes/no metric (thumbs-up, copied, blocked)."""

    n: int
    successes: int

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        _check_count("successes", self.successes)
        if self.successes > self.n:
            raise ValueError(f"successes ({self.successes}) cannot exceed n ({self.n})")

    @property
    def mean(self) -> float:
        """The observed rate (0 when `n` is 0)."""
        return self.successes / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Per-unit variance `p(1 - p)` at the Agresti-Caffo adjusted rate `(x + 1) / (n + 2)`, never 0."""
        return float(_adjusted_variance(np.float64(self.successes), np.float64(self.n)))


@dataclass(frozen=True, slots=True)
class ContinuousStats:
    """Cumulative summary of a numeric metric over `n` units: mean and sample variance (n - 1 denominator)."""

    n: int
    mean: float
    variance: float

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        if not (math.isfinite(self.mean) and math.isfinite(self.variance)) or self.variance < 0:
            raise ValueError(f"mean and variance must be finite, variance >= 0; got {self.mean!r}, {self.variance!r}")

    @classmethod
    def from_values(cls, values: Iterable[float]) -> ContinuousStats:
        """Summary of one value per unit."""
        array = np.asarray(list(values), dtype=np.float64)
        if array.ndim != 1 or not np.all(np.isfinite(array)):
            raise ValueError("values must be a flat sequence of finite numbers")
        variance = float(array.var(ddof=1)) if array.size > 1 else 0.0
        return cls(int(array.size), float(array.mean()) if array.size else 0.0, variance)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> ContinuousStats:
        """Summary from `COUNT(x)`, `SUM(x)` and `SUM(x * x)`, the form a database aggregates cheaply."""
        _check_count("n", n)
        if n == 0:
            return cls(0, 0.0, 0.0)
        variance = _variance_from_sums(np.float64(n), np.float64(total), np.float64(total_sq))
        return cls(n, total / n, float(variance))


ArmStats: TypeAlias = BinaryStats | ContinuousStats


def _adjusted_variance(successes: FloatArray | np.float64, n: FloatArray | np.float64) -> FloatArray:
    rate = (successes + 1.0) / (n + 2.0)
    return np.asarray(rate * (1.0 - rate), dtype=np.float64)


def _pooled_se2(
    xa: FloatArray | np.float64, na: FloatArray | np.float64, xb: FloatArray | np.float64, nb: FloatArray | np.float64
) -> FloatArray:
    rate = (xa + xb) / np.maximum(na + nb, 1.0)
    return np.asarray(rate * (1.0 - rate) * (1.0 / na + 1.0 / nb), dtype=np.float64)


def _variance_from_sums(
    n: FloatArray | np.float64, total: FloatArray | np.float64, total_sq: FloatArray | np.float64
) -> FloatArray:
    centred = np.maximum(total_sq - total * total / n, 0.0)
    return np.asarray(np.where(n > 1, centred / np.maximum(n - 1.0, 1.0), 0.0), dtype=np.float64)


# -- the mSPRT ----------------------------------------------------------------------------------------------------


def _z_bound(r: FloatArray, alpha: float) -> FloatArray:
    """|z| at which Lambda reaches 1 / alpha, for `r = tau^2 / V` (the confidence sequence's half-width over sqrt V)."""
    return np.asarray(np.sqrt((1.0 + 1.0 / r) * (2.0 * math.log(1.0 / alpha) + np.log1p(r))), dtype=np.float64)


def _log_lr(z: FloatArray, r: FloatArray) -> FloatArray:
    """log Lambda in terms of `z = d / sqrt V` and `r = tau^2 / V`."""
    return np.asarray(-0.5 * np.log1p(r) + 0.5 * z * z * r / (1.0 + r), dtype=np.float64)


def _mixture_ratio(tau2: float, na: float, nb: float, scale: float = 1.0) -> float:
    """`tau^2 / V` with `tau^2 = tau2 * sigma^2`: the data's variance cancels, leaving the sample sizes."""
    return tau2 / (1.0 / nb + scale * scale / na)


@dataclass(frozen=True, slots=True)
class _Look:
    """One look at a contrast `mean_B - scale * mean_A`: estimate, squared standard error, mixture ratio, range."""

    estimate: float
    se2: float
    ratio: float
    ready: bool
    span: tuple[float, float]


def _look(a: ArmStats, b: ArmStats, *, tau2: float, min_n: int, scale: float = 1.0) -> _Look:
    if type(a) is not type(b):
        raise ValueError(
            f"both arms must summarise the same kind of metric, got {type(a).__name__} and {type(b).__name__}"
        )
    estimate = b.mean - scale * a.mean
    span = (-scale, 1.0) if isinstance(a, BinaryStats) else (-math.inf, math.inf)
    if min(a.n, b.n) < max(min_n, 1):
        return _Look(estimate, math.nan, math.nan, False, span)
    se2 = b.variance / b.n + scale * scale * a.variance / a.n
    if isinstance(a, BinaryStats) and isinstance(b, BinaryStats) and scale == 1.0:
        pooled = _pooled_se2(np.float64(a.successes), np.float64(a.n), np.float64(b.successes), np.float64(b.n))
        se2 = max(se2, float(pooled))
    if se2 <= 0 and estimate != 0:
        # Every unit of both arms had the same value (a fixed price per answer, say): the difference is not
        # unknowable but certain, so it gets a negligible standard error instead of never being decided.
        se2 = (1e-9 * max(abs(b.mean), abs(scale * a.mean))) ** 2
    ratio = _mixture_ratio(tau2, a.n, b.n, scale)
    return _Look(estimate, se2, ratio, se2 > 0, span)


def _advance(look: _Look, alpha: float, interval: Interval | None, p_value: float) -> tuple[Interval, float]:
    """Fold one look into the running confidence sequence and p-value."""
    low, high = interval.low if interval else look.span[0], interval.high if interval else look.span[1]
    if not look.ready:
        return Interval(low, high, look.estimate), p_value
    se = math.sqrt(look.se2)
    ratio = np.asarray(look.ratio, dtype=np.float64)
    log_lr = float(_log_lr(np.asarray(look.estimate / se), ratio))
    p_value = min(p_value, 1.0, math.exp(-log_lr))
    half = se * float(_z_bound(ratio, alpha))
    now_low, now_high = max(look.span[0], look.estimate - half), min(look.span[1], look.estimate + half)
    if max(low, now_low) > min(high, now_high):
        # An empty intersection has probability <= alpha if the arms are stationary; it signals drift, and the
        # latest interval is the honest report (the p-value keeps its running minimum).
        return Interval(now_low, now_high, look.estimate), p_value
    return Interval(max(low, now_low), min(high, now_high), look.estimate), p_value


def _check_options(alpha: float, tau2: float, min_n: int) -> None:
    if not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
    if not (isinstance(tau2, int | float) and math.isfinite(tau2) and tau2 > 0):
        raise ValueError(f"tau2 must be a finite number > 0, got {tau2!r}")
    _check_count("min_n", min_n)


# -- comparisons --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Comparison:
    """Variant B against variant A after one look: `interval` is the confidence sequence for `mean_b - mean_a`.

    `p_value` is always valid (it may be read after every look and only ever goes down). Pass the comparison back
    as `previous` at the next look; `decision` is `continue` until the sequence excludes 0.
    """

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    interval: Interval
    p_value: float
    decision: Decision
    alpha: float
    tau2: float

    @property
    def difference(self) -> float:
        """`mean_b - mean_a`."""
        return self.interval.estimate

    @property
    def relative_difference(self) -> float:
        """`mean_b / mean_a - 1` (nan when `mean_a` is 0)."""
        return self.mean_b / self.mean_a - 1.0 if self.mean_a else math.nan


def _check_previous(previous: Comparison | None, alpha: float, tau2: float, a: ArmStats, b: ArmStats) -> None:
    if previous is None:
        return
    if previous.alpha != alpha or previous.tau2 != tau2:
        raise ValueError(
            f"previous look used alpha={previous.alpha}, tau2={previous.tau2}; a sequence must keep them "
            f"(got alpha={alpha}, tau2={tau2})"
        )
    if a.n < previous.n_a or b.n < previous.n_b:
        raise ValueError(
            f"counts went down since the previous look ({previous.n_a}, {previous.n_b} -> {a.n}, {b.n}): "
            "pass cumulative totals"
        )


def compare(
    a: ArmStats,
    b: ArmStats,
    *,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    higher_is_better: bool = True,
    min_n: int = DEFAULT_MIN_N,
    previous: Comparison | None = None,
) -> Comparison:
    """Always-valid comparison of B against A (cumulative totals; both `BinaryStats` or both `ContinuousStats`).

    `decision` is `b_better` / `a_better` once the confidence sequence excludes 0 on one side, read through
    `higher_is_better` (False for cost or latency). The chance of any wrong `*_better`, however often one looks
    and whenever one stops, is at most `alpha` when A and B are the same.
    """
    _check_options(alpha, tau2, min_n)
    _check_previous(previous, alpha, tau2, a, b)
    look = _look(a, b, tau2=tau2, min_n=min_n)
    interval, p_value = _advance(
        look, alpha, previous.interval if previous else None, previous.p_value if previous else 1.0
    )
    decision: Decision = "continue"
    if interval.low > 0 or interval.high < 0:
        b_higher = interval.low > 0
        decision = "b_better" if b_higher == higher_is_better else "a_better"
    return Comparison(a.n, b.n, a.mean, b.mean, interval, p_value, decision, alpha, tau2)


def compare_variants(
    arms: Mapping[str, ArmStats],
    control: str,
    *,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    higher_is_better: bool = True,
    min_n: int = DEFAULT_MIN_N,
    previous: Mapping[str, Comparison] | None = None,
) -> dict[str, Comparison]:
    """Each treatment against `control` at `alpha / treatments` (Bonferroni), keyed by treatment name.

    In each result A is the control and B the treatment. The chance of any wrong decision across all of them stays
    at most `alpha`.
    """
    if control not in arms:
        raise ValueError(f"control variant {control!r} is not among the arms {sorted(arms)}")
    treatments = [name for name in arms if name != control]
    if not treatments:
        raise ValueError("at least one treatment besides the control is needed")
    each = alpha / len(treatments)
    before = previous or {}
    return {
        name: compare(
            arms[control],
            arms[name],
            alpha=each,
            tau2=tau2,
            higher_is_better=higher_is_better,
            min_n=min_n,
            previous=before.get(name),
        )
        for name in treatments
    }


# -- guardrails ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    """One guardrail metric (higher is worse) of a treatment against the control.

    `excess` is the confidence sequence for `treatment_mean - (1 + max_increase) * control_mean`; the treatment
    `breached` the guardrail when even its lower end is above 0.
    """

    metric: str
    max_increase: float
    n_control: int
    n_treatment: int
    control_mean: float
    treatment_mean: float
    excess: Interval

    @property
    def breached(self) -> bool:
        """Worse than the bound allows, with sequential confidence."""
        return self.excess.low > 0

    @property
    def relative_change(self) -> float:
        """`treatment_mean / control_mean - 1` (nan when the control's mean is 0)."""
        return self.treatment_mean / self.control_mean - 1.0 if self.control_mean else math.nan


@dataclass(frozen=True, slots=True)
class GuardrailReport:
    """Every guardrail of one treatment; `breached` names those the experiment should stop on."""

    checks: tuple[GuardrailCheck, ...]
    alpha: float
    tau2: float

    @property
    def breached(self) -> tuple[str, ...]:
        """Names of the breached metrics, in the order the bounds were given."""
        return tuple(check.metric for check in self.checks if check.breached)


def check_guardrails(
    control: Mapping[str, ArmStats],
    treatment: Mapping[str, ArmStats],
    bounds: Mapping[str, float],
    *,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    min_n: int = DEFAULT_MIN_N,
    previous: GuardrailReport | None = None,
) -> GuardrailReport:
    """Flag each metric in `bounds` whose treatment mean exceeds `(1 + bound) * control mean`, sequentially.

    `bounds` maps a metric (higher is worse: cost per answer, latency, block rate) to its largest tolerated relative
    increase (0.10: up to 10% worse). Each check is one-sided on the lower end of the two-sided confidence sequence
    for the contrast, so a false breach has probability at most `alpha` per metric (conservative); pass
    `alpha / (metrics * treatments)` for a family-wise guarantee.
    """
    _check_options(alpha, tau2, min_n)
    earlier = {check.metric: check for check in previous.checks} if previous else {}
    if previous and (previous.alpha != alpha or previous.tau2 != tau2):
        raise ValueError("previous guardrail report used a different alpha or tau2; a sequence must keep them")
    checks = []
    for metric, bound in bounds.items():
        if metric not in control or metric not in treatment:
            raise ValueError(f"guardrail metric {metric!r} is missing from the control or the treatment")
        if not (isinstance(bound, int | float) and math.isfinite(bound) and bound >= 0):
            raise ValueError(f"bound of guardrail {metric!r} must be a finite number >= 0, got {bound!r}")
        before = earlier.get(metric)
        if before and before.max_increase != bound:
            raise ValueError(f"bound of guardrail {metric!r} changed since the previous look: start a new sequence")
        a, b = control[metric], treatment[metric]
        look = _look(a, b, tau2=tau2, min_n=min_n, scale=1.0 + bound)
        excess, _ = _advance(look, alpha, before.excess if before else None, 1.0)
        checks.append(GuardrailCheck(metric, float(bound), a.n, b.n, a.mean, b.mean, excess))
    return GuardrailReport(tuple(checks), alpha, tau2)


# -- simulation ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SimulationResult:
    """Many simulated experiments, each looked at daily: when and which way the analyses decided.

    `decision_day` is the 1-based day the always-valid test decided (0: never) and `direction` its sign (+1: B's
    mean higher). `naive_day` is the first day a fixed-horizon z-test at `alpha`, peeked at daily, rejected (0:
    never); `fixed_rejected` is that z-test run once, on the last day, as a fixed-horizon design would.
    """

    runs: int
    days: int
    users_per_day: int
    alpha: float
    decision_day: IntArray
    direction: IntArray
    naive_day: IntArray
    fixed_rejected: BoolArray

    @property
    def decided_rate(self) -> float:
        """Share of runs the always-valid test decided (the false-positive rate when A and B are the same)."""
        return float(np.mean(self.decision_day > 0))

    @property
    def b_higher_rate(self) -> float:
        """Share of runs decided with B's mean higher (the power when B is higher)."""
        return float(np.mean(self.direction > 0))

    @property
    def naive_rate(self) -> float:
        """Share of runs the daily-peeked fixed-horizon z-test ever rejected."""
        return float(np.mean(self.naive_day > 0))

    @property
    def fixed_rate(self) -> float:
        """Share of runs the z-test on the last day only rejected."""
        return float(np.mean(self.fixed_rejected))

    @property
    def median_decision_day(self) -> float:
        """Median decision day over the runs that decided (nan if none did)."""
        days = self.decision_day[self.decision_day > 0]
        return float(np.median(days)) if days.size else math.nan


def _first_day(hits: BoolArray) -> IntArray:
    return np.asarray(np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, 0), dtype=np.int64)


def _decide_paths(
    estimate: FloatArray, se2: FloatArray, ratio: FloatArray, ready: BoolArray, alpha: float, users_per_day: int
) -> SimulationResult:
    """`_advance` over whole (runs, days) arrays: the first crossing is the decision, which the running
    intersection then keeps, so only the first day and its sign are needed."""
    safe = np.where(ready, se2, 1.0)
    z = np.where(ready, estimate / np.sqrt(safe), 0.0)
    crossed = ready & (np.abs(z) >= _z_bound(np.where(ready, ratio, 1.0), alpha))
    decision_day = _first_day(crossed)
    runs = np.arange(estimate.shape[0])
    sign = np.sign(z[runs, np.maximum(decision_day - 1, 0)]).astype(np.int64)
    naive = ready & (np.abs(z) >= NormalDist().inv_cdf(1.0 - alpha / 2.0))
    return SimulationResult(
        runs=estimate.shape[0],
        days=estimate.shape[1],
        users_per_day=users_per_day,
        alpha=alpha,
        decision_day=decision_day,
        direction=np.where(decision_day > 0, sign, 0),
        naive_day=_first_day(naive),
        fixed_rejected=np.asarray(naive[:, -1], dtype=np.bool_),
    )


def _check_simulation(runs: int, days: int, users_per_day: int, alpha: float, tau2: float, min_n: int) -> None:
    for name, value in (("runs", runs), ("days", days), ("users_per_day", users_per_day)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    _check_options(alpha, tau2, min_n)


def simulate(
    rate_a: float,
    rate_b: float,
    *,
    runs: int = 1000,
    days: int = 30,
    users_per_day: int = 200,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    min_n: int = DEFAULT_MIN_N,
    seed: int = 0,
) -> SimulationResult:
    """Simulate `runs` experiments on a binary metric, `users_per_day` new units per arm per day, one look a day.

    Same maths as `compare` on cumulative `BinaryStats`, vectorised; deterministic for a given `seed`.
    """
    _check_simulation(runs, days, users_per_day, alpha, tau2, min_n)
    for name, rate in (("rate_a", rate_a), ("rate_b", rate_b)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {rate!r}")
    rng = np.random.default_rng(seed)
    xa = np.cumsum(rng.binomial(users_per_day, rate_a, size=(runs, days)), axis=1).astype(np.float64)
    xb = np.cumsum(rng.binomial(users_per_day, rate_b, size=(runs, days)), axis=1).astype(np.float64)
    n = np.broadcast_to(users_per_day * np.arange(1.0, days + 1.0), (runs, days))
    se2 = np.maximum(_adjusted_variance(xa, n) / n + _adjusted_variance(xb, n) / n, _pooled_se2(xa, n, xb, n))
    ratio = _mixture_ratio(tau2, 1.0, 1.0) * n  # tau2 / (1/n + 1/n) = tau2 * n / 2
    ready = (n >= max(min_n, 1)) & (se2 > 0)
    return _decide_paths((xb - xa) / n, se2, ratio, ready, alpha, users_per_day)


def simulate_continuous(
    mean_a: float,
    mean_b: float,
    *,
    sd: float = 1.0,
    distribution: Literal["normal", "lognormal"] = "normal",
    runs: int = 1000,
    days: int = 30,
    users_per_day: int = 200,
    alpha: float = 0.05,
    tau2: float = DEFAULT_TAU2,
    min_n: int = DEFAULT_MIN_N,
    seed: int = 0,
) -> SimulationResult:
    """Like `simulate` for a numeric metric, one value per unit, from a normal or (skewed, like latency or cost) a
    lognormal distribution with the given means and standard deviation `sd`; same maths as `compare` on
    `ContinuousStats.from_sums`."""
    _check_simulation(runs, days, users_per_day, alpha, tau2, min_n)
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sd must be a finite number > 0, got {sd!r}")
    if distribution == "lognormal" and min(mean_a, mean_b) <= 0:
        raise ValueError("lognormal means must be > 0")
    if distribution not in ("normal", "lognormal"):
        raise ValueError(f"distribution must be 'normal' or 'lognormal', got {distribution!r}")
    rng = np.random.default_rng(seed)
    sums = np.empty((2, 2, runs, days), dtype=np.float64)  # arm, (sum, sum of squares), run, day
    for day in range(days):
        for arm, mean in enumerate((mean_a, mean_b)):
            if distribution == "normal":
                values = rng.normal(mean, sd, size=(runs, users_per_day))
            else:
                sigma2 = math.log1p((sd / mean) ** 2)
                values = rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), size=(runs, users_per_day))
            sums[arm, 0, :, day] = values.sum(axis=1)
            sums[arm, 1, :, day] = np.square(values).sum(axis=1)
    totals = np.cumsum(sums, axis=3)
    n = np.broadcast_to(users_per_day * np.arange(1.0, days + 1.0), (runs, days))
    var_a = _variance_from_sums(n, totals[0, 0], totals[0, 1])
    var_b = _variance_from_sums(n, totals[1, 0], totals[1, 1])
    se2 = var_a / n + var_b / n
    ratio = _mixture_ratio(tau2, 1.0, 1.0) * n
    ready = (n >= max(min_n, 1)) & (se2 > 0)
    return _decide_paths((totals[1, 0] - totals[0, 0]) / n, se2, ratio, ready, alpha, users_per_day)
