"""A/B statistics under daily peeking: false-positive rate, power and stopping day of the always-valid test.

Simulates many experiments with `gengate.outer.sequential.simulate` / `simulate_continuous`, one look a day, and
compares three ways of reading them:

  always-valid   the mSPRT confidence sequence (`compare`), stopping at the first day it excludes 0;
  naive peeking  a fixed-horizon two-sided z-test at alpha, run every day, stopping at the first rejection;
  fixed horizon  the same z-test run once, on the last day (valid, but nobody may look before then).

A/A rows are the false-positive rate (the goal: always-valid at or below alpha, within a 99% binomial tolerance);
A/B rows are the power (share of runs deciding for the better variant) and the median stopping day of those runs.
A last table shows how the mixture variance tau2 trades early against late detection.

    python bench/ab_simulation.py [--runs 1000] [--days 30] [--users-per-day 200] [--alpha 0.05] [--seed 0]

Prints the tables and writes bench/results/ab_simulation.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from gengate.outer.sequential import DEFAULT_TAU2, SimulationResult, simulate, simulate_continuous

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ab_simulation.json"


BINARY = [
    (0.30, 0.30, "thumbs-up"),
    (0.02, 0.02, "block rate"),
    (0.30, 0.31, "thumbs-up"),
    (0.30, 0.32, "thumbs-up"),
    (0.30, 0.33, "thumbs-up"),
    (0.30, 0.36, "thumbs-up"),
]
LATENCY = [(1.0, 1.0), (1.0, 0.95), (1.0, 0.90)]  # mean seconds, lognormal with sd 1 s: lower is better


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated setting: the two arms' true means, and whether the metric is a rate or a (skewed) latency."""

    metric: str
    mean_a: float
    mean_b: float

    @property
    def latency(self) -> bool:
        """A latency (lower is better) rather than a rate (higher is better)."""
        return self.metric.startswith("latency")

    @property
    def label(self) -> str:
        """`A vs B` as the tables show it."""
        return f"{self.mean_a:.2f} vs {self.mean_b:.2f}" + (" s" if self.latency else "")

    @property
    def null(self) -> bool:
        """An A/A setting: both arms the same."""
        return self.mean_a == self.mean_b

    def run(self, args: argparse.Namespace, seed: int, tau2: float = DEFAULT_TAU2) -> SimulationResult:
        """Simulate this setting with the command line's runs, days, users and alpha."""
        common: dict[str, Any] = {
            "runs": args.runs,
            "days": args.days,
            "users_per_day": args.users_per_day,
            "alpha": args.alpha,
            "tau2": tau2,
            "seed": seed,
        }
        if self.latency:
            return simulate_continuous(self.mean_a, self.mean_b, sd=1.0, distribution="lognormal", **common)
        return simulate(self.mean_a, self.mean_b, **common)


SCENARIOS = [Scenario(metric, a, b) for a, b, metric in BINARY] + [
    Scenario("latency (lognormal, sd 1 s)", a, b) for a, b in LATENCY
]


def progress(message: str) -> None:
    """A progress line (stderr, so the tables on stdout stay clean)."""
    print(f"… {message}", file=sys.stderr, flush=True)


def summarise(scenario: Scenario, result: SimulationResult, seconds: float) -> dict[str, Any]:
    """The figures of one scenario, as the JSON holds them."""
    better = result.direction < 0 if scenario.latency else result.direction > 0
    decided_days = result.decision_day[better] if not scenario.null else result.decision_day[result.decision_day > 0]
    median = float(np.median(decided_days)) if decided_days.size else math.nan
    return {
        "scenario": scenario.label,
        "metric": scenario.metric,
        "null": scenario.null,
        "always_valid_rate": result.decided_rate if scenario.null else float(better.mean()),
        "always_valid_wrong_direction": 0.0 if scenario.null else float(((result.direction != 0) & ~better).mean()),
        "naive_peeking_rate": result.naive_rate,
        "fixed_horizon_rate": result.fixed_rate,
        "median_stop_day": median,
        "seconds": round(seconds, 3),
    }


def fmt(value: float) -> str:
    """A rate to three places, or a dash for nan."""
    return "   -" if math.isnan(value) else f"{value:5.3f}"


def print_tables(
    args: argparse.Namespace, rows: list[dict[str, Any]], tolerance: float, sweep: list[dict[str, Any]]
) -> None:
    print(
        f"\n{args.runs} runs x {args.days} daily looks, {args.users_per_day} users per arm per day, "
        f"alpha {args.alpha}, tau2 {DEFAULT_TAU2}"
    )
    print("\nA/A: false-positive rate (share of runs that ever declared a winner)")
    print(f"  {'scenario':<16}{'metric':<30}{'always-valid':>13}{'naive peek':>12}{'fixed end':>11}")
    for row in (r for r in rows if r["null"]):
        print(
            f"  {row['scenario']:<16}{row['metric']:<30}{fmt(row['always_valid_rate']):>13}"
            f"{fmt(row['naive_peeking_rate']):>12}{fmt(row['fixed_horizon_rate']):>11}"
        )
    print(f"  goal: always-valid <= {args.alpha} (+ 99% binomial tolerance: {tolerance:.3f})")
    print("\nA/B: power (share of runs deciding for the better variant) and median stopping day")
    print(f"  {'scenario':<16}{'metric':<30}{'always-valid':>13}{'wrong way':>11}{'median day':>12}{'fixed end':>11}")
    for row in (r for r in rows if not r["null"]):
        day = "-" if math.isnan(row["median_stop_day"]) else f"{row['median_stop_day']:.0f}"
        print(
            f"  {row['scenario']:<16}{row['metric']:<30}{fmt(row['always_valid_rate']):>13}"
            f"{fmt(row['always_valid_wrong_direction']):>11}{day:>12}{fmt(row['fixed_horizon_rate']):>11}"
        )
    print("\ntau2 sweep (thumbs-up 0.30 vs 0.33): power and median stopping day; A/A false-positive rate")
    print(f"  {'tau2':<10}{'power':>8}{'median day':>12}{'A/A rate':>10}")
    for row in sweep:
        day = "-" if math.isnan(row["median_stop_day"]) else f"{row['median_stop_day']:.0f}"
        print(f"  {row['tau2']:<10g}{fmt(row['power']):>8}{day:>12}{fmt(row['aa_rate']):>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--users-per-day", type=int, default=200, help="new users per arm per day")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = []
    for i, scenario in enumerate(SCENARIOS, 1):
        progress(f"[{i}/{len(SCENARIOS)}] {scenario.metric} {scenario.label}: {args.runs} runs")
        started = time.perf_counter()
        result = scenario.run(args, args.seed + i)
        rows.append(summarise(scenario, result, time.perf_counter() - started))

    sweep = []
    aa, ab = Scenario("thumbs-up", 0.30, 0.30), Scenario("thumbs-up", 0.30, 0.33)
    for tau2 in (0.001, 0.003, 0.01, 0.03, 0.1):
        progress(f"tau2 sweep: {tau2:g}")
        power = summarise(ab, ab.run(args, args.seed + 100, tau2), 0.0)
        null = summarise(aa, aa.run(args, args.seed + 200, tau2), 0.0)
        sweep.append(
            {
                "tau2": tau2,
                "power": power["always_valid_rate"],
                "median_stop_day": power["median_stop_day"],
                "aa_rate": null["always_valid_rate"],
            }
        )

    tolerance = args.alpha + NormalDist().inv_cdf(0.99) * math.sqrt(args.alpha * (1 - args.alpha) / args.runs)
    print_tables(args, rows, tolerance, sweep)
    worst = max(row["always_valid_rate"] for row in rows if row["null"])
    passed = worst <= tolerance
    print(
        f"\ngoal: A/A always-valid false-positive rate {worst:.3f} <= {tolerance:.3f}: {'PASS' if passed else 'FAIL'}"
    )

    report = {
        "settings": {
            "runs": args.runs,
            "days": args.days,
            "users_per_day_per_arm": args.users_per_day,
            "alpha": args.alpha,
            "tau2": DEFAULT_TAU2,
            "seed": args.seed,
        },
        "scenarios": rows,
        "tau2_sweep": sweep,
        "goal": {"what": "A/A always-valid false-positive rate", "limit": tolerance, "worst": worst, "pass": passed},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
