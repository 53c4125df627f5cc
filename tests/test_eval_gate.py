"""The CI regression gate (real regressions fail, noise does not) and its Markdown / JUnit renderings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from pydantic import ValidationError

from gengate.eval.gate import GateReport, GateRule, RunScores, gate
from gengate.eval.report_ci import junit_xml, markdown_summary

CASES = 100


def judged_run(
    quality: np.ndarray, shift: float, seed: int, *, noise: float = 0.15, trials: int = 3
) -> dict[str, float]:
    """Per-case means over `trials` noisy judge scores around each case's true quality (+ `shift`), in [0, 1]."""
    rng = np.random.default_rng(seed)
    scores = np.clip(quality[:, None] + shift + rng.normal(0, noise, (quality.size, trials)), 0, 1)
    return {f"case-{i}": float(value) for i, value in enumerate(scores.mean(axis=1))}


def true_quality(seed: int) -> np.ndarray:
    """How good the system is on each case (cases differ a lot in difficulty)."""
    return np.random.default_rng(seed).uniform(0.3, 0.9, CASES)


def pass_run(failing: set[int], n: int = CASES) -> dict[str, float]:
    return {f"case-{i}": 0.0 if i in failing else 1.0 for i in range(n)}


FAITHFULNESS = GateRule(metric="faithfulness")


def test_real_regression_fails_the_gate() -> None:
    quality = true_quality(1)
    report = gate(
        {"faithfulness": judged_run(quality, 0.0, seed=2)},
        {"faithfulness": judged_run(quality, -0.15, seed=3)},
        [FAITHFULNESS],
    )
    assert not report.passed
    [result] = report.results
    assert result.verdict == "fail"
    assert result.delta == pytest.approx(-0.15, abs=0.03)
    assert result.interval is not None and result.interval.high < 0
    assert result.n == CASES and result.p_value is not None and result.p_value < 0.01
    assert "worse by" in result.reason


def test_real_regression_is_caught_for_every_noise_seed() -> None:
    caught = 0
    seeds = 40
    for seed in range(seeds):
        quality = true_quality(seed)
        baseline = {"faithfulness": judged_run(quality, 0.0, seed=10_000 + seed)}
        candidate = {"faithfulness": judged_run(quality, -0.15, seed=20_000 + seed)}
        caught += not gate(baseline, candidate, [FAITHFULNESS], resamples=1000, seed=seed).passed
    assert caught == seeds


def test_rerun_with_fresh_noise_rarely_fails_the_gate() -> None:
    """Same system, fresh judge noise: at confidence 0.95 at most 5% of reruns may fail.

    Only one tail of the two-sided 95% interval can fail the gate: 2.5% nominal; about 3% measured over 4,000
    reruns (percentile intervals run slightly narrow); 16 of these 400.
    """
    false_failures = 0
    seeds = 400
    for seed in range(seeds):
        quality = true_quality(seed)
        baseline = {"faithfulness": judged_run(quality, 0.0, seed=30_000 + seed)}
        candidate = {"faithfulness": judged_run(quality, 0.0, seed=40_000 + seed)}
        false_failures += not gate(baseline, candidate, [FAITHFULNESS], resamples=1000, seed=seed).passed
    assert false_failures / seeds <= 0.05


def test_tolerance_lets_a_small_real_regression_through() -> None:
    quality = true_quality(4)
    baseline = {"faithfulness": judged_run(quality, 0.0, seed=5, noise=0.05)}
    candidate = {"faithfulness": judged_run(quality, -0.05, seed=6, noise=0.05)}
    strict = gate(baseline, candidate, [FAITHFULNESS])
    lenient = gate(baseline, candidate, [GateRule(metric="faithfulness", tolerance=0.1)])
    assert strict.results[0].verdict == "fail"
    assert lenient.results[0].verdict == "pass" and lenient.passed
    assert "tolerance 0.1" in lenient.results[0].reason


def test_lower_is_better_fails_when_latency_rises_and_passes_when_it_falls() -> None:
    rng = np.random.default_rng(8)
    base_ms = rng.uniform(200, 2000, CASES)

    def latency(shift: float, seed: int) -> RunScores:
        noise = np.random.default_rng(seed).normal(0, 30, CASES)
        return {"latency_ms": {f"case-{i}": float(v) for i, v in enumerate(base_ms + shift + noise)}}

    rule = GateRule(metric="latency_ms", direction="lower_is_better", tolerance=10)
    slower = gate(latency(0, 1), latency(80, 2), [rule])
    faster = gate(latency(0, 1), latency(-80, 2), [rule])
    within = gate(latency(0, 1), latency(5, 2), [rule])
    assert slower.results[0].verdict == "fail" and "lower end" in slower.results[0].reason
    assert faster.passed and within.passed
    # The same faster run read as higher-is-better would be a regression: the direction matters.
    assert not gate(latency(0, 1), latency(-80, 2), [GateRule(metric="latency_ms")]).passed


def test_pass_kind_fails_on_a_significant_drop_in_pass_rate() -> None:
    rule = GateRule(metric="answered", kind="pass")
    report = gate({"answered": pass_run(set())}, {"answered": pass_run(set(range(15)))}, [rule])
    [result] = report.results
    assert result.verdict == "fail"
    assert result.baseline_mean == 1.0 and result.candidate_mean == pytest.approx(0.85)
    assert result.delta == pytest.approx(-0.15)
    assert result.p_value == pytest.approx(2 / 2**15)
    assert "McNemar" in result.reason and "15 cases newly failing" in result.reason


def test_pass_kind_does_not_fail_on_a_few_discordant_cases() -> None:
    """4 of 100 cases newly failing: the bootstrap interval excludes 0, but the exact test (p = 0.125) does not."""
    report = gate(
        {"answered": pass_run(set())}, {"answered": pass_run({1, 2, 3, 4})}, [GateRule(metric="answered", kind="pass")]
    )
    [result] = report.results
    assert result.interval is not None and result.interval.high < 0
    assert result.p_value == pytest.approx(0.125)
    assert result.verdict == "pass" and report.passed


def test_pass_kind_rarely_fails_on_reruns_of_the_same_system() -> None:
    """Each case passes with its own fixed probability in both runs: McNemar is exact, so false failures stay rare."""
    false_failures = 0
    seeds = 200
    rule = GateRule(metric="answered", kind="pass")
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        pass_probability = rng.uniform(0.5, 1.0, CASES)
        baseline, candidate = (
            {"answered": {f"case-{i}": float(x) for i, x in enumerate(rng.random(CASES) < pass_probability)}}
            for _ in range(2)
        )
        false_failures += not gate(baseline, candidate, [rule], resamples=200).passed
    assert false_failures / seeds <= 0.05


def test_pass_kind_treats_a_case_as_passing_when_most_trials_pass() -> None:
    baseline = {"answered": {f"case-{i}": 2 / 3 for i in range(30)}}
    candidate = {"answered": {f"case-{i}": 1 / 3 for i in range(30)}}
    [result] = gate(baseline, candidate, [GateRule(metric="answered", kind="pass")]).results
    assert (result.baseline_mean, result.candidate_mean) == (1.0, 0.0)
    assert result.verdict == "fail"


def test_pass_kind_rejects_values_outside_zero_to_one() -> None:
    with pytest.raises(ValueError, match=r"candidate metric 'answered', case 'case-0'.*fraction"):
        gate({"answered": {"case-0": 1.0}}, {"answered": {"case-0": 3.0}}, [GateRule(metric="answered", kind="pass")])


def test_non_finite_scores_are_rejected_with_the_case_named() -> None:
    with pytest.raises(ValueError, match=r"baseline metric 'faithfulness', case 'q7'.*finite"):
        gate({"faithfulness": {"q7": float("nan")}}, {"faithfulness": {"q7": 0.5}}, [FAITHFULNESS])


def test_cases_missing_from_one_side_are_dropped_and_reported() -> None:
    quality = true_quality(9)
    baseline = judged_run(quality, 0.0, seed=1)
    candidate = judged_run(quality, 0.0, seed=2)
    for i in range(5):
        del candidate[f"case-{i}"]
    candidate["new-case-a"] = 0.5
    candidate["new-case-b"] = 0.5
    [result] = gate({"faithfulness": baseline}, {"faithfulness": candidate}, [FAITHFULNESS]).results
    assert result.n == CASES - 5
    assert (result.dropped_baseline, result.dropped_candidate) == (5, 2)
    assert "dropped 5 baseline-only and 2 candidate-only cases" in result.reason


def test_no_shared_cases_is_no_data_and_fails_the_gate() -> None:
    report = gate({"faithfulness": {"a": 0.9}}, {"faithfulness": {"b": 0.9}}, [FAITHFULNESS])
    [result] = report.results
    assert result.verdict == "no_data" and not report.passed
    assert (result.n, result.delta, result.interval) == (0, None, None)
    assert (result.dropped_baseline, result.dropped_candidate) == (1, 1)
    assert "no case is scored in both runs" in result.reason


def test_metric_missing_from_a_run_is_no_data() -> None:
    report = gate({"faithfulness": {"a": 0.9}}, {"relevance": {"a": 0.9}}, [FAITHFULNESS])
    assert report.results[0].verdict == "no_data"
    assert "missing from the candidate run" in report.results[0].reason
    assert report.failures == report.results


def test_gate_reports_every_rule_and_is_deterministic() -> None:
    quality = true_quality(12)
    baseline = {"faithfulness": judged_run(quality, 0.0, seed=1), "relevance": judged_run(quality, 0.0, seed=2)}
    candidate = {"faithfulness": judged_run(quality, -0.2, seed=3), "relevance": judged_run(quality, 0.0, seed=4)}
    rules = [FAITHFULNESS, GateRule(metric="relevance", tolerance=0.02)]
    report = gate(baseline, candidate, rules)
    assert [(r.metric, r.verdict) for r in report.results] == [("faithfulness", "fail"), ("relevance", "pass")]
    assert [r.metric for r in report.failures] == ["faithfulness"]
    assert gate(baseline, candidate, rules) == report


def test_gate_without_rules_is_an_error() -> None:
    with pytest.raises(ValueError, match="no gate rules"):
        gate({}, {}, [])


@pytest.mark.parametrize(
    "fields",
    [
        {"metric": "m", "tolerance": -0.1},
        {"metric": "m", "confidence": 1.0},
        {"metric": "m", "direction": "up"},
        {"metric": "m", "kind": "judge"},
        {"metric": "m", "threshold": 0.5},
        {"metric": ""},
        {"metric": "m", "tolerance": float("inf")},
    ],
)
def test_gate_rule_rejects_bad_settings(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GateRule.model_validate(fields)


def test_gate_rule_is_frozen() -> None:
    with pytest.raises(ValidationError):
        FAITHFULNESS.tolerance = 0.5  # type: ignore[misc]


# -- CI renderings ------------------------------------------------------------------------------------------------


def mixed_report() -> GateReport:
    quality = true_quality(3)
    baseline: RunScores = {
        "faithfulness": judged_run(quality, 0.0, seed=1),
        "relevance": judged_run(quality, 0.0, seed=2),
        "a<b & c>|d": {"x": 1.0},
    }
    candidate: RunScores = {
        "faithfulness": judged_run(quality, -0.2, seed=3),
        "relevance": judged_run(quality, 0.0, seed=4),
        "a<b & c>|d": {"y": 1.0},
    }
    rules = [FAITHFULNESS, GateRule(metric="relevance", tolerance=0.05), GateRule(metric="a<b & c>|d")]
    return gate(baseline, candidate, rules)


def parse_junit(text: str) -> ET.Element:
    return ET.fromstring(text.encode())  # noqa: S314 - our own output, no DTDs or entities


def test_markdown_summary_lists_each_metric_with_its_verdict() -> None:
    text = markdown_summary(mixed_report(), title="RAG eval")
    assert text.startswith("## RAG eval\n")
    assert "❌ **Failed**: 2 of 3 rules failed." in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 3
    assert rows[0].startswith("| ❌ | `faithfulness`") and "| fail |" in rows[0]
    assert rows[1].startswith("| ✅ | `relevance`") and "| pass |" in rows[1]
    assert rows[2].startswith("| ❌ | `a<b & c>\\|d`") and "| no data |" in rows[2]
    # Every row has as many cells as the header (escaped pipes do not split cells).
    header = next(line for line in text.splitlines() if line.startswith("| | Metric"))
    cells = header.count(" | ")
    assert all(row.replace("\\|", "").count(" | ") == cells for row in rows)


def test_markdown_summary_of_a_passing_gate() -> None:
    quality = true_quality(3)
    report = gate({"m": judged_run(quality, 0, seed=1)}, {"m": judged_run(quality, 0, seed=2)}, [GateRule(metric="m")])
    assert "✅ **Passed**" in markdown_summary(report, title="t")


def test_junit_xml_parses_counts_failures_and_escapes_names() -> None:
    text = junit_xml(mixed_report(), suite="eval <nightly> & more")
    root = parse_junit(text)
    suite = root.find("testsuite")
    assert suite is not None
    assert suite.get("name") == "eval <nightly> & more"
    assert (suite.get("tests"), suite.get("failures")) == ("3", "2")
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == ["faithfulness", "relevance", "a<b & c>|d"]
    failures = {case.get("name"): case.find("failure") for case in cases}
    assert failures["relevance"] is None
    regression, no_data = failures["faithfulness"], failures["a<b & c>|d"]
    assert regression is not None and regression.get("type") == "regression"
    assert "worse by" in (regression.get("message") or "")
    assert no_data is not None and no_data.get("type") == "no_data"
    assert "&lt;" in text and "&amp;" in text


def test_junit_xml_survives_control_characters_in_metric_names() -> None:
    report = gate({"bad\x01name": {"a": 1.0}}, {"bad\x01name": {"b": 1.0}}, [GateRule(metric="bad\x01name")])
    root = parse_junit(junit_xml(report, suite="s"))
    case = root.find("testsuite/testcase")
    assert case is not None and case.get("name") == "bad\ufffdname"
