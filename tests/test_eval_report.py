"""Run results: per-case aggregation, run summaries, paired comparison, JSON export and the HTML reports."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import numpy as np
import pytest

from gengate.eval.report_html import comparison_report, run_report
from gengate.eval.results import (
    Retrieved,
    RunResult,
    TrialResult,
    case_deltas,
    case_passes,
    case_scores,
    compare,
    run_from_json,
    summarise,
    to_data,
    to_json,
    worst_cases,
)
from gengate.eval.stats import wilson_interval

START = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
CASES = 80
XSS = "<script>alert(1)</script>"


def make_run(
    trials: list[TrialResult],
    *,
    kinds: dict[str, str] | None = None,
    trials_per_case: int = 1,
    run_id: str = "run-a",
    variant: str = "baseline",
    **extra: object,
) -> RunResult:
    """A run around hand-written trials (metric kinds default to one score and one pass metric)."""
    return RunResult(
        run_id=run_id,
        dataset="hr-faq",
        dataset_version="3",
        target="app/hr",
        variant=variant,
        trials_per_case=trials_per_case,
        seed=7,
        started_at=START,
        finished_at=START + timedelta(seconds=42),
        trials=trials,
        metric_kinds=kinds or {"faithfulness": "score", "exact_match": "pass"},  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def true_quality(seed: int = 1) -> np.ndarray:
    """How good the system is on each case (cases differ a lot in difficulty)."""
    return np.random.default_rng(seed).uniform(0.3, 0.9, CASES)


def synthetic_run(
    quality: np.ndarray, *, seed: int, shift: float = 0.0, trials: int = 3, run_id: str = "run-a", variant: str = "base"
) -> RunResult:
    """Noisy judged trials around each case's quality (+ `shift`): a faithfulness score and an exact-match pass."""
    rng = np.random.default_rng(seed)
    results = []
    for i, q in enumerate(quality):
        for t in range(trials):
            p = float(np.clip(q + shift, 0, 1))
            failed = i == 3 and t == 0
            results.append(
                TrialResult(
                    case_id=f"case-{i}",
                    trial=t,
                    answer=XSS if i == 0 else f"Answer {i}.{t}",
                    outcome="error" if failed else "answered",
                    error="upstream timed out" if failed else None,
                    retrieved=[Retrieved(f"doc-{i}", f"Policy {i}", f"Snippet about <b>policy</b> {i}")],
                    citations=[f"doc-{i}"],
                    latency_ms=float(rng.uniform(100, 900)),
                    cost_usd=0.001,
                    prompt_tokens=100,
                    completion_tokens=20,
                    scores={"faithfulness": float(np.clip(p + rng.normal(0, 0.15), 0, 1)), "latency": 100.0 + i},
                    passed={"exact_match": bool(rng.random() < p)},
                )
            )
    return RunResult(
        run_id=run_id,
        dataset="hr-faq",
        dataset_version="3",
        target="app/hr",
        variant=variant,
        trials_per_case=trials,
        seed=seed,
        started_at=START,
        finished_at=START + timedelta(minutes=3),
        trials=results,
        metric_kinds={"faithfulness": "score", "exact_match": "pass", "latency": "score"},
        metric_directions={"latency": "lower_is_better"},
        case_questions={f"case-{i}": f"What does policy {i} say?" for i in range(CASES)},
        case_tags={
            f"case-{i}": ["leave" if i % 2 else "payroll", *(["hard"] if i % 5 == 0 else [])] for i in range(CASES)
        },
        variant_overrides={"model": "small", "top_k": 4},
    )


# -- aggregation and summaries ------------------------------------------------------------------------------------


def test_case_scores_average_trials_and_ignore_missing_values() -> None:
    run = make_run(
        [
            TrialResult("a", 0, scores={"faithfulness": 1.0}),
            TrialResult("a", 1, scores={"faithfulness": 0.5}),
            TrialResult("b", 0, scores={"faithfulness": None}),
            TrialResult("b", 1, scores={"faithfulness": 0.2}),
            TrialResult("c", 0, scores={"faithfulness": None}),
        ],
        trials_per_case=2,
    )
    assert case_scores(run, "faithfulness") == {"a": 0.75, "b": pytest.approx(0.2)}
    summary = summarise(run).metrics["faithfulness"]
    assert summary.value == pytest.approx((0.75 + 0.2) / 2)
    assert (summary.n_cases, summary.n_trials, summary.interval_method) == (2, 3, "bootstrap")
    assert summary.interval is not None and summary.interval.low <= summary.value <= summary.interval.high


def test_pass_rate_with_one_trial_per_case_has_the_wilson_interval() -> None:
    run = make_run([TrialResult(f"c{i}", 0, passed={"exact_match": i < 8}) for i in range(10)])
    summary = summarise(run).metrics["exact_match"]
    assert summary.value == pytest.approx(0.8)
    assert (summary.passes, summary.n_trials, summary.interval_method) == (8, 10, "wilson")
    assert summary.interval is not None
    assert summary.interval.low == pytest.approx(0.4902, abs=5e-4)
    assert summary.interval.high == pytest.approx(0.9433, abs=5e-4)
    expected = wilson_interval(8, 10)
    assert (summary.interval.low, summary.interval.high) == (expected.low, expected.high)


def test_pass_at_k_and_pass_hat_k_for_known_cases() -> None:
    """Case x passes 3 of 3 trials, case y 1 of 3: pass@1 = (1 + 1/3) / 2, pass@3 = 1, pass^3 = 1/2."""
    verdicts = {"x": [True, True, True], "y": [False, True, False]}
    run = make_run(
        [TrialResult(case, t, passed={"exact_match": v}) for case, vs in verdicts.items() for t, v in enumerate(vs)],
        trials_per_case=3,
    )
    assert case_passes(run, "exact_match") == {"x": (3, 3), "y": (1, 3)}
    summary = summarise(run).metrics["exact_match"]
    assert summary.k == 3
    assert summary.pass_at_1 == pytest.approx(2 / 3) and summary.value == pytest.approx(2 / 3)
    assert summary.pass_at_k == pytest.approx(1.0)
    assert summary.pass_hat_k == pytest.approx(0.5)
    # Repeated trials of a case are correlated: the interval is a bootstrap over cases, not Wilson over trials.
    assert summary.interval_method == "bootstrap"


def test_totals_add_cost_tokens_errors_and_latency_percentiles() -> None:
    latencies = [100.0, 200.0, 300.0, 400.0, 1000.0]
    run = make_run(
        [
            TrialResult(
                f"c{i}",
                0,
                latency_ms=latency,
                cost_usd=0.25,
                prompt_tokens=10,
                completion_tokens=3,
                outcome="error" if i == 4 else "answered",
                error="boom" if i == 4 else None,
            )
            for i, latency in enumerate(latencies)
        ]
    )
    totals = summarise(run).totals
    assert (totals.cases, totals.trials, totals.errors) == (5, 5, 1)
    assert totals.outcomes["answered"] == 4 and totals.outcomes["error"] == 1
    assert totals.cost_usd == pytest.approx(1.25)
    assert (totals.prompt_tokens, totals.completion_tokens) == (50, 15)
    assert totals.latency_p50_ms == pytest.approx(300.0)
    assert totals.latency_p95_ms == pytest.approx(880.0)  # linear interpolation between 400 and 1000
    assert totals.duration_s == pytest.approx(42.0)


def test_per_tag_breakdown_summarises_only_that_tags_cases() -> None:
    run = synthetic_run(true_quality(), seed=2)
    summary = summarise(run, resamples=500)
    assert set(summary.by_tag) == {"hard", "leave", "payroll"}
    assert summary.tag_cases == {"hard": 16, "leave": 40, "payroll": 40}
    scores = case_scores(run, "faithfulness")
    hard = [scores[f"case-{i}"] for i in range(0, CASES, 5)]
    assert summary.by_tag["hard"]["faithfulness"].value == pytest.approx(math.fsum(hard) / len(hard))
    assert summary.by_tag["hard"]["faithfulness"].n_cases == 16


def test_worst_cases_are_lowest_first_and_respect_lower_is_better() -> None:
    run = synthetic_run(true_quality(), seed=3)
    scores = case_scores(run, "faithfulness")
    worst = worst_cases(run, "faithfulness", 3)
    assert [w.case_id for w in worst] == sorted(scores, key=scores.__getitem__)[:3]
    assert worst[0].question == run.case_questions[worst[0].case_id]
    assert len(worst[0].trials) == 3 and worst[0].trials[0].retrieved[0].id == worst[0].case_id.replace("case", "doc")
    # Latency is lower-is-better: the worst cases are the slowest (highest values).
    assert [w.case_id for w in worst_cases(run, "latency", 2)] == [f"case-{CASES - 1}", f"case-{CASES - 2}"]
    # A pass metric's worst cases all failed at least once.
    assert all(w.passes is not None and w.passes < w.n_trials for w in worst_cases(run, "exact_match", 10))


# -- comparisons --------------------------------------------------------------------------------------------------


def test_compare_detects_a_real_drop() -> None:
    quality = true_quality()
    a = synthetic_run(quality, seed=10)
    b = synthetic_run(quality, seed=11, shift=-0.25, run_id="run-b", variant="cheaper")
    comparison = compare(a, b, resamples=1000)
    faith = comparison.metrics["faithfulness"]
    assert faith.test == "paired_bootstrap" and faith.n == CASES
    assert faith.delta == pytest.approx(-0.25, abs=0.05)
    assert faith.interval.high < 0 and faith.p_value < 0.01
    assert faith.change() == "worse"
    passed = comparison.metrics["exact_match"]
    assert passed.test == "mcnemar" and passed.p_value < 0.01
    assert passed.regressed is not None and passed.improved is not None and passed.regressed > passed.improved
    assert passed.change() == "worse"
    assert comparison.same_dataset and not comparison.skipped
    assert set(comparison.by_tag) == {"hard", "leave", "payroll"}
    assert comparison.by_tag["payroll"]["faithfulness"].n == CASES // 2


def test_compare_does_not_flag_fresh_noise_on_the_same_system() -> None:
    flagged = 0
    seeds = 20
    for seed in range(seeds):
        quality = true_quality(seed)
        a = synthetic_run(quality, seed=1000 + seed)
        b = synthetic_run(quality, seed=2000 + seed, run_id="run-b")
        comparison = compare(a, b, resamples=500, seed=seed)
        faith = comparison.metrics["faithfulness"]
        assert abs(faith.delta) < 0.05
        flagged += faith.change() != "unchanged"
    assert flagged <= 3  # about 1 in 20 expected at 95% confidence


def test_compare_skips_metrics_one_run_lacks_and_rejects_kind_mismatch() -> None:
    a = make_run([TrialResult("c", 0, scores={"faithfulness": 0.5})])
    b = make_run([TrialResult("c", 0, scores={"faithfulness": 0.7})], kinds={"faithfulness": "score", "f1": "score"})
    comparison = compare(a, b, resamples=200)
    assert set(comparison.metrics) == {"faithfulness"}
    assert "only run A" in comparison.skipped["exact_match"] and "only run B" in comparison.skipped["f1"]
    mismatched = make_run([TrialResult("c", 0, passed={"faithfulness": True})], kinds={"faithfulness": "pass"})
    with pytest.raises(ValueError, match="faithfulness"):
        compare(a, mismatched)


def test_case_deltas_list_the_biggest_drop_first() -> None:
    a = make_run([TrialResult(c, 0, scores={"faithfulness": 0.8}) for c in "xyz"])
    b = make_run([TrialResult(c, 0, scores={"faithfulness": v}) for c, v in zip("xyz", [0.9, 0.2, 0.6], strict=True)])
    deltas = case_deltas(a, b, "faithfulness")
    assert [d.case_id for d in deltas] == ["y", "z", "x"]
    assert deltas[0].delta == pytest.approx(-0.6)


# -- model validation and JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trials", "message"),
    [
        ([TrialResult("c", 0), TrialResult("c", 0)], "appears twice"),
        ([TrialResult("c", 0, scores={"unknown": 0.5})], "not declared"),
    ],
)
def test_run_rejects_inconsistent_trials(trials: list[TrialResult], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_run(trials)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcome": "exploded"}, "outcome"),
        ({"scores": {"faithfulness": math.nan}}, "finite"),
        ({"passed": {"exact_match": 1}}, "true, false or null"),
        ({"prompt_tokens": -1}, "prompt_tokens"),
    ],
)
def test_trial_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrialResult("c", 0, **kwargs)  # type: ignore[arg-type]


def test_run_survives_a_json_round_trip() -> None:
    run = synthetic_run(true_quality(), seed=4)
    text = to_json(run)
    assert json.loads(text)["format"] == "gengate.eval.run/1"
    assert run_from_json(text) == run
    assert run_from_json(json.loads(text)) == run
    assert run_from_json(text.encode()) == run


def test_summaries_and_comparisons_export_to_plain_json() -> None:
    quality = true_quality()
    a, b = synthetic_run(quality, seed=5), synthetic_run(quality, seed=6, run_id="run-b")
    summary = json.loads(to_json(summarise(a, resamples=200)))
    assert summary["metrics"]["exact_match"]["interval"].keys() == {"low", "high", "estimate"}
    assert summary["totals"]["trials"] == CASES * 3
    comparison = to_data(compare(a, b, resamples=200))
    assert comparison["metrics"]["faithfulness"]["p_value"] > 0
    json.dumps(comparison, allow_nan=False)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("dataset"), "missing key 'dataset'"),
        (lambda d: d.update(format="something/2"), "format"),
        (lambda d: d.update(seed="7"), r"run\.seed: expected int"),
        (lambda d: d["trials"][0].update(outcome="exploded"), "outcome"),
        (lambda d: d["trials"][1].pop("answer"), r"run\.trials\[1\]: missing key 'answer'"),
        (lambda d: d.update(started_at="yesterday"), "ISO 8601"),
        (lambda d: d.update(case_tags={"a": "hr"}), "list of strings"),
        (lambda d: d.update(metric_kinds={"faithfulness": "vibes"}), "kind must be"),
    ],
)
def test_run_from_json_names_what_is_wrong(mutate: object, message: str) -> None:
    data = to_data(make_run([TrialResult("a", 0), TrialResult("b", 0)]))
    mutate(data)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        run_from_json(data)


# -- HTML ---------------------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictHTML(HTMLParser):
    """Collects problems: unbalanced or mis-nested tags, scripts and external resources; keeps the page text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "script" or any(name in {"src", "href", "onload", "onclick"} for name, _ in attrs):
            self.problems.append(f"active or external content: <{tag} {attrs}>")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> StrictHTML:
    parser = StrictHTML()
    parser.feed(page)
    parser.close()
    assert not parser.problems, parser.problems[:5]
    assert not parser.stack, f"unclosed tags: {parser.stack}"
    return parser


def test_run_report_is_a_self_contained_page_with_tables_plots_and_worst_cases() -> None:
    run = synthetic_run(true_quality(), seed=8)
    page = run_report(run, resamples=300)
    parsed = parse(page)
    assert page.startswith("<!DOCTYPE html>")
    assert {"svg", "circle", "rect", "table", "details"} <= parsed.tags
    assert page.count("<svg") >= 3  # the interval plot and two score histograms
    for name in ("faithfulness", "exact_match", "latency", "pass@k", "pass^k", "hr-faq@3", "app/hr", "leave"):
        assert name in page
    worst = worst_cases(run, "faithfulness", 1)[0]
    assert worst.question in page
    assert "Policy 7" in page and "upstream timed out" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_escapes_user_text() -> None:
    run = synthetic_run(true_quality(), seed=9)
    worst = {w.case_id for w in worst_cases(run, "exact_match", CASES)}
    assert "case-0" in worst  # the case whose answer is the script tag is shown
    page = run_report(run, worst=CASES, resamples=200)
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>policy</b>" not in page  # snippets are text too
    parsed = parse(page)
    assert "script" not in parsed.tags
    assert XSS in "".join(parsed.text)


def test_comparison_report_shows_delta_interval_and_p_value() -> None:
    quality = true_quality()
    a = synthetic_run(quality, seed=12)
    b = synthetic_run(quality, seed=13, shift=-0.25, run_id="run-b", variant="cheaper<model>")
    page = comparison_report(a, b, resamples=300)
    parsed = parse(page)
    result = compare(a, b, resamples=300).metrics["faithfulness"]
    assert "Δ (B − A)" in page and "p-value" in page and "McNemar" in page
    assert f"{result.delta:+.3f}" in page
    assert "&lt;0.001" in page or f"{result.p_value:.3f}" in page
    assert "class='worse'" in page and "Cases that got worse" in page
    assert "cheaper&lt;model&gt;" in page and "cheaper<model>" not in page
    assert XSS not in page
    assert {"svg", "line", "circle"} <= parsed.tags
