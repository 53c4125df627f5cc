"""Self-contained HTML reports: one run (`run_report`) and run B against run A (`comparison_report`).

Owns the rendering. Each report is one HTML string with inline CSS and inline SVG plots, and no scripts or external
assets, so it can be attached to a CI job or mailed as one file. Every piece of text that comes from a dataset, a
model or a run's configuration (questions, answers, snippets, errors, ids, tags, metric names) goes through
`html.escape`: a report shows an answer containing `<script>` as text.

Contents: the run header, metric tables with intervals, an interval plot (a delta plot around 0 for comparisons),
score distributions, per-tag breakdowns, pass@k / pass^k, the worst cases (for comparisons, the cases that got
worst) with their answers per trial and retrieved context, and the errors.

Must not: compute statistics itself (numbers come from `results`, which uses `stats`), decide verdicts beyond
labelling a change better / worse at the report's confidence, or write files.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gengate.eval.results import (
    CaseDelta,
    Comparison,
    MetricComparison,
    MetricSummary,
    RunResult,
    RunSummary,
    TrialResult,
    case_deltas,
    case_scores,
    compare,
    summarise,
    worst_cases,
)
from gengate.eval.stats import Interval

__all__ = ["comparison_report", "run_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1f2328;max-width:1100px;margin:2em auto;
padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #d0d7de}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}dl.meta dt{color:#57606a}dl.meta dd{margin:0}
.better{color:#1a7f37;font-weight:600}.worse{color:#cf222e;font-weight:600}.unchanged{color:#57606a}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:6px;margin:4px 0}
details{margin:.4em 0}summary{cursor:pointer}blockquote{margin:2px 0 6px 1em;color:#57606a}
.muted{color:#57606a}svg.plot{display:block;margin:.6em 0}svg text{font:12px system-ui,sans-serif;fill:#1f2328}
.hists{display:flex;flex-wrap:wrap;gap:1em}
"""

_COLOURS = {"better": "#1a7f37", "worse": "#cf222e", "unchanged": "#57606a", "a": "#8c959f", "b": "#0969da"}
_MAX_ERRORS = 200


# -- formatting ---------------------------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    sign = "+" if signed else ""
    if abs(value) >= 1000:
        return f"{value:{sign},.0f}"
    if abs(value) >= 10:
        return f"{value:{sign}.1f}"
    return f"{value:{sign}.3f}"


def _tick(value: float) -> str:
    """An axis label: short, no trailing zeros."""
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.2g}"


def _p(value: float) -> str:
    return "&lt;0.001" if value < 0.001 else f"{value:.3f}"


def _p_label(value: float) -> str:
    return "p&lt;0.001" if value < 0.001 else f"p={value:.3f}"


def _interval(interval: Interval | None, *, signed: bool = False) -> str:
    if interval is None:
        return "—"
    return f"[{_fmt(interval.low, signed=signed)}, {_fmt(interval.high, signed=signed)}]"


def _arrow(direction: str) -> str:
    return "↓ better" if direction == "lower_is_better" else "↑ better"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric_from: int = 1) -> str:
    """A table whose cells are already HTML (escape before calling); columns from `numeric_from` align right."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


# -- plots --------------------------------------------------------------------------------------------------------


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^k at or above `value` (axis ends people can read)."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if value <= m * base * (1 + 1e-9))


def _bounded(runs: Sequence[RunResult], metric: str) -> bool:
    """True when every value of `metric` lies in [0, 1], so it can share the 0–1 axis."""
    if all(run.metric_kinds.get(metric) == "pass" for run in runs):
        return True
    return all(0.0 <= value <= 1.0 for run in runs for r in run.trials if (value := r.scores.get(metric)) is not None)


@dataclass(frozen=True, slots=True)
class _PlotRow:
    label: str
    interval: Interval
    axis: tuple[float, float]
    colour: str
    note: str


def _interval_plot(
    rows: Sequence[_PlotRow], *, shared: tuple[float, float] | None, reference: float | None, title: str
) -> str:
    """One row per metric: a track over the row's axis, the interval as a bar and the estimate as a dot."""
    width, left, right, top, row_h = 820, 230, 170, 10, 26
    x0, x1 = left, width - right
    shows_shared = any(row.axis == shared for row in rows)
    height = top + row_h * len(rows) + (34 if shows_shared else 8)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
    ]

    def x(value: float, axis: tuple[float, float]) -> float:
        lo, hi = axis
        return x0 + (min(max(value, lo), hi) - lo) / (hi - lo) * (x1 - x0)

    for i, row in enumerate(rows):
        y = top + row_h * i + row_h / 2
        label = row.label if row.axis == shared else f"{row.label} ({_tick(row.axis[0])} to {_tick(row.axis[1])})"
        iv = row.interval
        parts.append(
            f'<text x="{x0 - 10}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>'
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#d0d7de"/>'
        )
        if reference is not None and row.axis[0] <= reference <= row.axis[1]:
            xr = x(reference, row.axis)
            parts.append(
                f'<line x1="{xr:.1f}" y1="{y - 10:.1f}" x2="{xr:.1f}" y2="{y + 10:.1f}" stroke="#57606a" '
                'stroke-dasharray="3,2"/>'
            )
        parts.append(
            f'<line x1="{x(iv.low, row.axis):.1f}" y1="{y:.1f}" x2="{x(iv.high, row.axis):.1f}" y2="{y:.1f}" '
            f'stroke="{row.colour}" stroke-width="4" stroke-linecap="round"/>'
            f'<circle cx="{x(iv.estimate, row.axis):.1f}" cy="{y:.1f}" r="5" fill="{row.colour}">'
            f"<title>{_e(row.label)}: {_e(row.note)}</title></circle>"
            f'<text x="{x1 + 10}" y="{y + 4:.1f}">{_e(row.note)}</text>'
        )
    if shared is not None and shows_shared:
        y = top + row_h * len(rows) + 4
        parts.append(f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#57606a"/>')
        for tick in np.linspace(shared[0], shared[1], 5):
            xt = x(float(tick), shared)
            parts.append(
                f'<line x1="{xt:.1f}" y1="{y}" x2="{xt:.1f}" y2="{y + 5}" stroke="#57606a"/>'
                f'<text x="{xt:.1f}" y="{y + 18}" text-anchor="middle">{_tick(float(tick) + 0.0)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _histogram(series: Sequence[tuple[str, Sequence[float], str]], *, bounded: bool, title: str) -> str:
    """Bars of per-case values in 10 bins (0–1 for bounded metrics), one bar per series in each bin."""
    values = [v for _, vs, _ in series for v in vs]
    lo, hi = (0.0, 1.0) if bounded else (min(values), max(values))
    if hi <= lo:
        hi = lo + 1.0
    bins = 10
    counts = [np.histogram(np.asarray(vs, dtype=np.float64), bins=bins, range=(lo, hi))[0] for _, vs, _ in series]
    peak = max(1, max(int(c.max()) for c in counts))
    width, left, right, bottom = 400, 40, 14, 30
    top = 24 if len(series) == 1 else 40
    height = top + 140 + bottom
    plot_w, plot_h = width - left - right, height - top - bottom
    bin_w = plot_w / bins
    bar_w = max(1.0, bin_w / len(series) - 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>'
        f'<text x="{left}" y="14">{_e(title)}</text>'
    ]
    for s, ((name, _, colour), count) in enumerate(zip(series, counts, strict=True)):
        for i, n in enumerate(count):
            bar_h = plot_h * int(n) / peak
            bx = left + i * bin_w + s * (bar_w + 1) + 0.5
            edge = lo + (hi - lo) * i / bins
            parts.append(
                f'<rect x="{bx:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" '
                f'fill="{colour}"><title>{_e(name)}: {int(n)} cases from {_fmt(edge)}</title></rect>'
            )
    base = top + plot_h
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#57606a"/>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        parts.append(
            f'<text x="{left + plot_w * frac:.1f}" y="{base + 16}" text-anchor="{anchor}">'
            f"{_tick(lo + (hi - lo) * frac)}</text>"
        )
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{base}" text-anchor="end">0</text>')
    if len(series) > 1:
        lx = float(left)
        for name, _, colour in series:
            parts.append(f'<rect x="{lx:.1f}" y="22" width="10" height="10" fill="{colour}"/>')
            parts.append(f'<text x="{lx + 14:.1f}" y="31">{_e(name)}</text>')
            lx += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def _distributions(runs: Sequence[tuple[str, RunResult, str]]) -> str:
    """Histograms of per-case mean scores, one per score metric (overlaid runs side by side)."""
    first = runs[0][1]
    metrics = [
        m for m, kind in first.metric_kinds.items() if kind == "score" and all(m in r.metric_kinds for _, r, _ in runs)
    ]
    plots = []
    for metric in metrics:
        series = [(name, list(case_scores(run, metric).values()), colour) for name, run, colour in runs]
        if any(values for _, values, _ in series):
            bounded = _bounded([run for _, run, _ in runs], metric)
            plots.append(_histogram(series, bounded=bounded, title=f"{metric}: number of cases by mean score"))
    if not plots:
        return ""
    return "<h2>Score distributions</h2>" + f'<div class="hists">{"".join(plots)}</div>'


# -- run sections -------------------------------------------------------------------------------------------------


def _header(run: RunResult, summary: RunSummary) -> str:
    totals = summary.totals
    overrides = json.dumps(dict(run.variant_overrides), sort_keys=True, ensure_ascii=False, default=str)
    outcomes = ", ".join(f"{name} {count}" for name, count in totals.outcomes.items() if count)
    items = [
        ("Dataset", f"{_e(run.dataset)}@{_e(run.dataset_version)}"),
        ("Target", _e(run.target)),
        ("Variant", _e(run.variant)),
        ("Overrides", f"<code>{_e(overrides)}</code>"),
        ("Run id", f"<code>{_e(run.run_id)}</code>"),
        ("Trials per case", str(run.trials_per_case)),
        ("Seed", str(run.seed)),
        ("Started", _e(run.started_at.isoformat())),
        ("Duration", f"{totals.duration_s:,.1f} s"),
        ("Cases / trials", f"{totals.cases} / {totals.trials}"),
        ("Outcomes", _e(outcomes) or "—"),
        (
            "Cost",
            f"${totals.cost_usd:,.4f}" + (f" + judge ${totals.judge_cost_usd:,.4f}" if totals.judge_tokens else ""),
        ),
        (
            "Tokens",
            f"{totals.prompt_tokens:,} prompt + {totals.completion_tokens:,} completion"
            + (f" + {totals.judge_tokens:,} judge" if totals.judge_tokens else ""),
        ),
        ("Latency", f"p50 {_fmt(totals.latency_p50_ms)} ms, p95 {_fmt(totals.latency_p95_ms)} ms"),
    ]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    title = f"{_e(run.dataset)}@{_e(run.dataset_version)} · {_e(run.variant)}"
    return f'<h1>Evaluation run: {title}</h1><dl class="meta">{meta}</dl>'


def _metric_table(summary: RunSummary) -> str:
    level = f"{summary.confidence * 100:g}%"
    rows = [
        [
            f"<code>{_e(m.metric)}</code>",
            m.kind,
            _arrow(m.direction),
            _fmt(m.value),
            f"{_interval(m.interval)} <span class='muted'>{m.interval_method or ''}</span>",
            str(m.n_cases),
            str(m.n_trials),
        ]
        for m in summary.metrics.values()
    ]
    headers = ["Metric", "Kind", "Direction", "Value", f"{level} interval", "Cases", "Trials"]
    note = (
        '<p class="muted">Score metrics: mean of per-case means, bootstrap over cases. Pass metrics: pass rate over '
        "trials (pass@1); Wilson interval with one trial per case, bootstrap over cases otherwise.</p>"
    )
    return "<h2>Metrics</h2>" + _table(headers, rows, numeric_from=3) + note


def _run_plot(run: RunResult, summary: RunSummary) -> str:
    rows = []
    for m in summary.metrics.values():
        if m.interval is None:
            continue
        if _bounded([run], m.metric):
            axis = (0.0, 1.0)
        else:
            lo = min(0.0, m.interval.low)
            hi = _nice_ceiling(max(m.interval.high, m.interval.estimate))
            axis = (lo, hi if hi > lo else lo + 1.0)
        note = f"{_fmt(m.value)} {_interval(m.interval)}"
        rows.append(_PlotRow(m.metric, m.interval, axis, _COLOURS["b"], note))
    if not rows:
        return ""
    title = f"Metric estimates with {summary.confidence * 100:g}% intervals"
    return f"<h2>Intervals</h2>{_interval_plot(rows, shared=(0.0, 1.0), reference=None, title=title)}"


def _pass_table(summary: RunSummary) -> str:
    rows = [
        [
            f"<code>{_e(m.metric)}</code>",
            str(m.n_cases),
            str(m.n_trials),
            str(m.passes),
            str(m.k),
            _fmt(m.pass_at_1),
            _fmt(m.pass_at_k),
            _fmt(m.pass_hat_k),
        ]
        for m in summary.metrics.values()
        if m.kind == "pass" and m.n_cases
    ]
    if not rows:
        return ""
    headers = ["Metric", "Cases", "Trials", "Passing trials", "k", "pass@1", "pass@k", "pass^k"]
    note = '<p class="muted">pass@k: chance at least one of k trials passes; pass^k: chance all k pass.</p>'
    return "<h2>pass@k and pass^k</h2>" + _table(headers, rows) + note


def _tag_table(summary: RunSummary) -> str:
    if not summary.by_tag:
        return ""
    metrics = list(summary.metrics)

    def cell(m: MetricSummary) -> str:
        return "—" if m.value is None else f"{_fmt(m.value)} <span class='muted'>{_interval(m.interval)}</span>"

    rows = [
        [_e(tag), str(summary.tag_cases[tag]), *(cell(by_metric[m]) for m in metrics)]
        for tag, by_metric in summary.by_tag.items()
    ]
    return "<h2>By tag</h2>" + _table(["Tag", "Cases", *(f"<code>{_e(m)}</code>" for m in metrics)], rows)


def _retrieved(result: TrialResult) -> str:
    if not result.retrieved:
        return '<p class="muted">No retrieved context.</p>'
    cited = set(result.citations)
    items = "".join(
        f"<li><b>{_e(item.title or item.id)}</b> <code>{_e(item.id)}</code>"
        + (" <span class='better'>cited</span>" if item.id in cited else "")
        + f"<blockquote>{_e(item.snippet)}</blockquote></li>"
        for item in result.retrieved
    )
    return f"<details><summary>Retrieved context ({len(result.retrieved)})</summary><ol>{items}</ol></details>"


def _trial_block(result: TrialResult, metric: str) -> str:
    value = result.scores.get(metric)
    verdict = result.passed.get(metric)
    judged = [f"{_e(metric)} = {_fmt(value)}"] if value is not None else []
    if verdict is not None:
        judged.append("passed" if verdict else "<span class='worse'>failed</span>")
    error = f"<p class='worse'>Error: {_e(result.error)}</p>" if result.error else ""
    return (
        f"<div><b>Trial {result.trial}</b> · {_e(result.outcome)} · {', '.join(judged) or 'not judged'}"
        f"<pre>{_e(result.answer)}</pre>{error}{_retrieved(result)}</div>"
    )


def _worst_section(run: RunResult, n: int) -> str:
    parts = []
    for metric in run.metric_kinds:
        cases = worst_cases(run, metric, n)
        if not cases:
            continue
        parts.append(f"<h3><code>{_e(metric)}</code></h3>")
        for case in cases:
            score = f"{case.passes}/{case.n_trials} passed" if case.passes is not None else f"mean {_fmt(case.value)}"
            tags = f" <span class='muted'>[{_e(', '.join(case.tags))}]</span>" if case.tags else ""
            trials = "".join(_trial_block(result, metric) for result in case.trials)
            parts.append(
                f"<details><summary><code>{_e(case.case_id)}</code> · {score}{tags} · {_e(case.question)}</summary>"
                f"<p><b>Question:</b> {_e(case.question)}</p>{trials}</details>"
            )
    if not parts:
        return ""
    return f"<h2>Worst cases</h2><p class='muted'>Up to {n} per metric.</p>" + "".join(parts)


def _errors_section(runs: Sequence[tuple[str, RunResult]]) -> str:
    rows = [
        [_e(name), f"<code>{_e(r.case_id)}</code>", str(r.trial), _e(r.outcome), _e(r.error or "")]
        for name, run in runs
        for r in run.trials
        if r.outcome == "error" or r.error
    ]
    if not rows:
        return "<h2>Errors</h2><p>No trial failed.</p>"
    more = f"<p class='muted'>… and {len(rows) - _MAX_ERRORS} more.</p>" if len(rows) > _MAX_ERRORS else ""
    headers = ["Run", "Case", "Trial", "Outcome", "Error"]
    if len(runs) == 1:
        headers, rows = headers[1:], [row[1:] for row in rows]
    return f"<h2>Errors ({len(rows)})</h2>" + _table(headers, rows[:_MAX_ERRORS], numeric_from=99) + more


def run_report(
    run: RunResult, *, worst: int = 5, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> str:
    """One self-contained HTML page for a run: header, metrics, plots, tags, pass@k, worst cases and errors."""
    summary = summarise(run, confidence=confidence, resamples=resamples, seed=seed)
    body = (
        _header(run, summary)
        + _metric_table(summary)
        + _run_plot(run, summary)
        + _distributions([(run.variant, run, _COLOURS["b"])])
        + _pass_table(summary)
        + _tag_table(summary)
        + _worst_section(run, worst)
        + _errors_section([(run.variant, run)])
    )
    return _document(f"{run.dataset}@{run.dataset_version} · {run.variant} · {run.run_id}", body)


# -- comparison sections ------------------------------------------------------------------------------------------


def _comparison_header(a: RunResult, b: RunResult, sa: RunSummary, sb: RunSummary, comparison: Comparison) -> str:
    def row(label: str, value: Callable[[RunResult, RunSummary], object]) -> list[str]:
        return [label, *(_e(value(run, summary)) for run, summary in ((a, sa), (b, sb)))]

    rows = [
        row("Run id", lambda r, s: r.run_id),
        row("Variant", lambda r, s: r.variant),
        row("Dataset", lambda r, s: f"{r.dataset}@{r.dataset_version}"),
        row("Target", lambda r, s: r.target),
        row("Trials per case / seed", lambda r, s: f"{r.trials_per_case} / {r.seed}"),
        row("Started", lambda r, s: r.started_at.isoformat()),
        row("Duration", lambda r, s: f"{s.totals.duration_s:,.1f} s"),
        row("Cases / trials", lambda r, s: f"{s.totals.cases} / {s.totals.trials}"),
        row("Errors", lambda r, s: s.totals.errors),
        row("Cost", lambda r, s: f"${s.totals.cost_usd:,.4f}"),
        row("Tokens", lambda r, s: f"{s.totals.prompt_tokens + s.totals.completion_tokens:,}"),
        row(
            "Latency p50 / p95 (ms)", lambda r, s: f"{_fmt(s.totals.latency_p50_ms)} / {_fmt(s.totals.latency_p95_ms)}"
        ),
    ]
    warn = (
        ""
        if comparison.same_dataset
        else "<p class='warn'>The runs used different datasets or dataset versions; only shared case ids are "
        "compared.</p>"
    )
    title = f"{_e(b.variant)} (B) against {_e(a.variant)} (A)"
    return f"<h1>Comparison: {title}</h1>{warn}" + _table(["", "A", "B"], rows, numeric_from=99)


def _change_cell(result: MetricComparison, confidence: float) -> str:
    change = result.change(confidence)
    return f"<span class='{change}'>{change}</span>"


def _comparison_table(comparison: Comparison) -> str:
    level = f"{comparison.confidence * 100:g}%"
    rows = []
    for m in comparison.metrics.values():
        flips = f"+{m.improved} / −{m.regressed}" if m.improved is not None else "—"
        dropped = f"{m.dropped_a} / {m.dropped_b}" if m.dropped_a or m.dropped_b else "—"
        rows.append(
            [
                f"<code>{_e(m.metric)}</code>",
                "McNemar" if m.test == "mcnemar" else "paired bootstrap",
                str(m.n),
                _fmt(m.a_value),
                _fmt(m.b_value),
                _fmt(m.delta, signed=True),
                _interval(m.interval, signed=True),
                _p(m.p_value),
                _change_cell(m, comparison.confidence),
                flips,
                dropped,
            ]
        )
    headers = ["Metric", "Test", "Cases", "A", "B", "Δ (B − A)", f"{level} interval", "p-value", "Change"]
    headers += ["Fail→pass / pass→fail", "Dropped A / B"]
    skipped = "".join(f"<li><code>{_e(m)}</code>: {_e(why)}</li>" for m, why in comparison.skipped.items())
    note = (
        "<p class='muted'>Score metrics: mean of per-case means, paired bootstrap over shared cases. Pass metrics: "
        "case pass rate (a case passes when most of its trials pass), McNemar's exact test.</p>"
    )
    skipped_html = f"<p>Not compared:</p><ul>{skipped}</ul>" if skipped else ""
    return "<h2>Metrics</h2>" + _table(headers, rows, numeric_from=2) + note + skipped_html


def _runs_table(sa: RunSummary, sb: RunSummary) -> str:
    """Each run's own summary side by side (pass metrics here are pass rates over trials, with pass@k / pass^k)."""

    def cell(m: MetricSummary | None) -> str:
        if m is None or m.value is None:
            return "—"
        text = f"{_fmt(m.value)} <span class='muted'>{_interval(m.interval)}</span>"
        if m.kind == "pass":
            text += f"<br><span class='muted'>pass@{m.k} {_fmt(m.pass_at_k)}, pass^{m.k} {_fmt(m.pass_hat_k)}</span>"
        return text

    metrics = list(dict.fromkeys([*sa.metrics, *sb.metrics]))
    rows = [[f"<code>{_e(m)}</code>", cell(sa.metrics.get(m)), cell(sb.metrics.get(m))] for m in metrics]
    level = f"{sa.confidence * 100:g}%"
    return f"<h2>Each run ({level} intervals)</h2>" + _table(["Metric", "A", "B"], rows)


def _delta_plot(a: RunResult, b: RunResult, comparison: Comparison) -> str:
    metrics = list(comparison.metrics.values())
    if not metrics:
        return ""
    bounded = {m.metric: _bounded([a, b], m.metric) for m in metrics}
    ends = [max(abs(m.interval.low), abs(m.interval.high)) for m in metrics if bounded[m.metric]]
    half = min(1.0, _nice_ceiling(max([0.01, *ends])))
    shared = (-half, half)
    rows = []
    for m in metrics:
        extent = max(abs(m.interval.low), abs(m.interval.high))
        own = _nice_ceiling(extent) if extent > 0 else 1.0
        axis = shared if bounded[m.metric] else (-own, own)
        note = f"{_fmt(m.delta, signed=True)}, p{'<0.001' if m.p_value < 0.001 else f'={m.p_value:.3f}'}"
        rows.append(_PlotRow(m.metric, m.interval, axis, _COLOURS[m.change(comparison.confidence)], note))
    title = f"Change B − A with {comparison.confidence * 100:g}% paired intervals"
    return f"<h2>Changes</h2>{_interval_plot(rows, shared=shared, reference=0.0, title=title)}"


def _tag_deltas(comparison: Comparison) -> str:
    if not comparison.by_tag:
        return ""
    metrics = list(comparison.metrics)

    def cell(result: MetricComparison | None) -> str:
        if result is None:
            return "—"
        return (
            f"{_fmt(result.delta, signed=True)} <span class='muted'>{_p_label(result.p_value)}, n={result.n}</span> "
            f"{_change_cell(result, comparison.confidence)}"
        )

    rows = [[_e(tag), *(cell(by_metric.get(m)) for m in metrics)] for tag, by_metric in comparison.by_tag.items()]
    return "<h2>By tag (Δ B − A)</h2>" + _table(["Tag", *(f"<code>{_e(m)}</code>" for m in metrics)], rows)


def _case_delta_block(delta: CaseDelta, metric: str) -> str:
    sides = "".join(
        f"<h4>{side}: {_fmt(value)}</h4>" + "".join(_trial_block(result, metric) for result in trials)
        for side, value, trials in (("A", delta.a_value, delta.a_trials), ("B", delta.b_value, delta.b_trials))
    )
    return (
        f"<details><summary><code>{_e(delta.case_id)}</code> · {_fmt(delta.a_value)} → {_fmt(delta.b_value)} "
        f"({_fmt(delta.delta, signed=True)}) · {_e(delta.question)}</summary>"
        f"<p><b>Question:</b> {_e(delta.question)}</p>{sides}</details>"
    )


def _regressions(a: RunResult, b: RunResult, comparison: Comparison, n: int) -> str:
    parts = []
    for metric, result in comparison.metrics.items():
        sign = -1.0 if result.direction == "lower_is_better" else 1.0
        worse = [d for d in case_deltas(a, b, metric, n) if sign * d.delta < 0]
        if worse:
            parts.append(f"<h3><code>{_e(metric)}</code></h3>" + "".join(_case_delta_block(d, metric) for d in worse))
    if not parts:
        return "<h2>Cases that got worse</h2><p>No shared case got worse on any metric.</p>"
    return f"<h2>Cases that got worse</h2><p class='muted'>Up to {n} per metric, largest change first.</p>" + "".join(
        parts
    )


def comparison_report(
    a: RunResult, b: RunResult, *, worst: int = 5, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> str:
    """One self-contained HTML page comparing run B against run A on their shared cases."""
    comparison = compare(a, b, confidence=confidence, resamples=resamples, seed=seed)
    sa = summarise(a, confidence=confidence, resamples=resamples, seed=seed)
    sb = summarise(b, confidence=confidence, resamples=resamples, seed=seed)
    body = (
        _comparison_header(a, b, sa, sb, comparison)
        + _comparison_table(comparison)
        + _delta_plot(a, b, comparison)
        + _runs_table(sa, sb)
        + _distributions([(f"A: {a.variant}", a, _COLOURS["a"]), (f"B: {b.variant}", b, _COLOURS["b"])])
        + _tag_deltas(comparison)
        + _regressions(a, b, comparison, worst)
        + _errors_section([("A", a), ("B", b)])
    )
    return _document(f"{b.variant} vs {a.variant} · {a.dataset}@{a.dataset_version}", body)
