"""An experiment's analysis for people: the `experiment status` text, a self-contained HTML report, JSON data.

The HTML report reuses the evaluation report's page, tables and interval plot (inline CSS and SVG, no scripts or
external assets) and adds a plot of each treatment's confidence sequence over time. Every name that comes from a
spec (experiment, variants, notes) goes through `html.escape`.

Must not: compute statistics (the numbers come from `experiment_analysis`) or write files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from gengate.eval.report_html import (
    _COLOURS,
    _document,
    _e,
    _fmt,
    _interval_plot,
    _nice_ceiling,
    _PlotRow,
    _table,
    _tick,
)
from gengate.eval.stats import Interval
from gengate.outer.experiment_analysis import LABELS, Analysis, Estimate, to_data
from gengate.outer.experiment_service import record_data
from gengate.outer.experiments import describe_variants
from gengate.store.experiments import ExperimentRecord

__all__ = ["experiment_report", "report_data", "status_text"]

_PALETTE = ("#8c959f", "#0969da", "#bf8700", "#8250df", "#1a7f37", "#cf222e")
_DECISIONS = {"continue": "no decision yet", "b_better": "better", "a_better": "worse"}


def _when(ts: float | None, *, seconds: bool = False) -> str:
    pattern = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return "—" if ts is None else time.strftime(pattern, time.gmtime(ts))


def _p(value: float) -> str:
    return "<0.0001" if value < 0.0001 else f"{value:.4f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ci(e: Estimate, digits: int = 3) -> str:
    if e.value is None:
        return "-"
    if e.interval is None:
        return _num(e.value, digits)
    return f"{e.value:.{digits}f} [{e.interval.low:.{digits}f}, {e.interval.high:.{digits}f}]"


def _diff(interval: Interval) -> str:
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return "(not enough data)"
    return f"[{interval.low:+.3f}, {interval.high:+.3f}]"


# -- text ---------------------------------------------------------------------------------------------------------


def status_text(record: ExperimentRecord, analysis: Analysis) -> str:
    """The `gengate experiment status` output: variants, comparisons, guardrails, the decision."""
    spec = record.spec
    control = spec.control.name
    lines = [
        f"experiment {spec.name} · app {spec.app} · {record.status} (started {_when(record.started_at)}) · "
        f"metric {spec.metric} · alpha {spec.alpha:g} · unit {spec.unit}",
    ]
    primary = [] if spec.metric == "thumbs_up_rate" else [spec.metric.upper().replace("_", "-")]
    headers = ["VARIANT", "USERS", "ANSWERS", *primary, "THUMBS-UP (always-valid CI)", "COPY", "BLOCK",
               "COST/ANSWER", "LATENCY ms"]  # fmt: skip
    rows = []
    for name, v in analysis.variants.items():
        m = v.metrics
        rows.append([
            name + ("*" if name == control else ""), str(v.units), str(v.responses),
            *([_ci(m[spec.metric])] if primary else []), _ci(m["thumbs_up_rate"]), _num(m["copy_rate"].value),
            _num(m["block_rate"].value), "-" if m["cost_per_answer"].value is None
            else f"${m['cost_per_answer'].value:.6f}", _num(m["latency_ms"].value, 1),
        ])  # fmt: skip
    lines += _columns(headers, rows)
    lines.append("(* control; rates and means are per user: each user's share, averaged over users)")
    lines.append("")
    comparisons = [
        [name, f"{c.difference:+.3f}", _diff(c.interval), _p(c.p_value), _DECISIONS.get(c.decision, c.decision)]
        for name, c in analysis.comparisons.items()
    ]
    lines += _columns([f"vs {control}", f"Δ {spec.metric}", "ALWAYS-VALID CI", "P-VALUE", "DECISION"], comparisons)
    if analysis.guardrails:
        lines.append("")
        guard_rows = [
            [g.variant, g.guardrail.metric, g.guardrail.label(), g.guardrail.action, f"{g.treatment:.4g}",
             f"{g.control:.4g}", "BREACHED" if g.breached else "ok"]
            for g in analysis.guardrails
        ]  # fmt: skip
        lines += _columns(["GUARDRAIL", "METRIC", "BOUND", "ACTION", "VARIANT", control.upper(), "STATE"], guard_rows)
    lines.append("")
    lines.append(f"decision: {analysis.decision}")
    if analysis.winner is not None:
        lines.append(f"winner: {analysis.winner}")
        if record.status in ("running", "paused", "stopped") and analysis.winner != control:
            lines.append(f"next: gengate experiment ship {spec.name} {analysis.winner}")
    if record.winner is not None:
        lines.append(f"shipped: {record.winner}")
    if record.note:
        lines.append(f"note: {record.note}")
    return "\n".join(lines)


def _columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


# -- data ---------------------------------------------------------------------------------------------------------


def report_data(record: ExperimentRecord, analysis: Analysis) -> dict[str, Any]:
    """The experiment and its analysis as JSON-ready data (the report's JSON export)."""
    return {**record_data(record), "analysis": to_data(analysis)}


# -- HTML ---------------------------------------------------------------------------------------------------------


def _colour(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _header(record: ExperimentRecord, analysis: Analysis) -> str:
    spec = record.spec
    winner = analysis.winner
    items = [
        ("App", _e(spec.app)),
        ("Status", _e(record.status)),
        ("Metric", f"<code>{_e(spec.metric)}</code> (alpha {spec.alpha:g}, per {_e(spec.unit)})"),
        ("Variants", "<br>".join(_e(line) for line in describe_variants(spec.variants))),
        ("Control", _e(spec.control.name)),
        ("Created / started / stopped", f"{_when(record.created_at)} / {_when(record.started_at)} / "
                                        f"{_when(record.stopped_at)}"),
        ("Looks", str(len(analysis.history))),
        ("Shipped", _e(record.winner) if record.winner else "—"),
        ("Note", _e(record.note) if record.note else "—"),
    ]  # fmt: skip
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    verdict = (
        f"<p class='better'>Winner: {_e(winner)}</p>" if winner else "<p class='unchanged'>No winner yet</p>"
    ) + f"<p>{_e(analysis.decision)}</p>"
    return f"<h1>Experiment: {_e(spec.name)}</h1>{verdict}<dl class='meta'>{meta}</dl>"


def _variant_table(analysis: Analysis) -> str:
    control = analysis.spec.control.name
    metrics = ["thumbs_up_rate", "copy_rate", "mean_score", "block_rate", "no_answer_rate", "cost_per_answer",
               "latency_ms"]  # fmt: skip

    def cell(e: Estimate) -> str:
        if e.value is None:
            return "—"
        interval = (
            f" <span class='muted'>[{_fmt(e.interval.low)}, {_fmt(e.interval.high)}]</span>" if e.interval else ""
        )
        return f"{_fmt(e.value)}{interval}"

    rows = [
        [_e(name) + (" (control)" if name == control else ""), _fmt(v.weight), str(v.units), str(v.responses),
         str(v.rated), *(cell(v.metrics[m]) for m in metrics)]
        for name, v in analysis.variants.items()
    ]  # fmt: skip
    headers = ["Variant", "Weight", "Users", "Answers", "Rated", *(_e(LABELS[m]) for m in metrics)]
    note = (
        "<p class='muted'>Per user: each user's share (or mean) first, then the mean over users, with "
        f"always-valid {100 * (1 - analysis.spec.alpha):g}% intervals (mixture SPRT).</p>"
    )
    return "<h2>Variants</h2>" + _table(headers, rows) + note


def _comparison_table(analysis: Analysis) -> str:
    rows = [
        [_e(name), str(c.n_a), str(c.n_b), _fmt(c.mean_a), _fmt(c.mean_b), _fmt(c.difference, signed=True),
         _e(_diff(c.interval)), _p(c.p_value).replace("<", "&lt;"), _e(_DECISIONS.get(c.decision, c.decision))]
        for name, c in analysis.comparisons.items()
    ]  # fmt: skip
    headers = ["Treatment", "Users counted (control)", "Users counted (treatment)", "Control", "Treatment", "Δ",
               "Always-valid CI", "p-value", "Decision"]  # fmt: skip
    note = (
        f"<p class='muted'>Each treatment against {_e(analysis.spec.control.name)} at alpha / treatments "
        "(Bonferroni); p-values and intervals stay valid however often they are looked at.</p>"
    )
    return f"<h2>Comparisons on <code>{_e(analysis.spec.metric)}</code></h2>" + _table(headers, rows) + note


def _finite(interval: Interval | None) -> bool:
    return interval is not None and math.isfinite(interval.low) and math.isfinite(interval.high)


def _rates_plot(analysis: Analysis) -> str:
    rows = []
    for metric in ("thumbs_up_rate", "copy_rate", "block_rate", "no_answer_rate"):
        for i, (name, v) in enumerate(analysis.variants.items()):
            e = v.metrics[metric]
            if e.value is None or e.interval is None:
                continue
            note = f"{_fmt(e.value)} [{_fmt(e.interval.low)}, {_fmt(e.interval.high)}]"
            rows.append(_PlotRow(f"{name} · {LABELS[metric]}", e.interval, (0.0, 1.0), _colour(i), note))
    if not rows:
        return "<h2>Rates</h2><p class='muted'>No rated answers yet.</p>"
    title = "Rates per variant with always-valid intervals"
    return f"<h2>Rates</h2>{_interval_plot(rows, shared=(0.0, 1.0), reference=None, title=title)}"


def _sequence_plot(analysis: Analysis, treatment: str, colour: str) -> str:
    """The confidence sequence of `treatment − control` at each look: a band, the estimate, and 0."""
    points = [(look.ts, look.comparisons[treatment]) for look in analysis.history if treatment in look.comparisons]
    shown = [(ts, c.interval) for ts, c in points if _finite(c.interval)]
    title = f"{treatment} − {analysis.spec.control.name}: confidence sequence of Δ {analysis.spec.metric} over time"
    if not shown:
        return f"<h3>{_e(title)}</h3><p class='muted'>Not enough users in each variant for an interval yet.</p>"
    width, height, left, right, top, bottom = 820, 240, 70, 20, 24, 40
    t0, t1 = shown[0][0], shown[-1][0]
    if t1 <= t0:
        t0 -= 1.0
    lo = min(0.0, *(iv.low for _, iv in shown))
    hi = max(0.0, *(iv.high for _, iv in shown))
    if hi <= lo:
        hi = lo + 1.0

    def x(ts: float) -> float:
        return left + (ts - t0) / (t1 - t0) * (width - left - right)

    def y(value: float) -> float:
        return top + (hi - value) / (hi - lo) * (height - top - bottom)

    upper = " ".join(f"{x(ts):.1f},{y(iv.high):.1f}" for ts, iv in shown)
    lower = " ".join(f"{x(ts):.1f},{y(iv.low):.1f}" for ts, iv in reversed(shown))
    estimate = " ".join(f"{x(ts):.1f},{y(iv.estimate):.1f}" for ts, iv in shown)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}"><title>{_e(title)}</title>',
        f'<text x="{left}" y="14">{_e(title)}</text>',
        f'<polygon points="{upper} {lower}" fill="{colour}" fill-opacity="0.18" stroke="none"/>',
        f'<polyline points="{estimate}" fill="none" stroke="{colour}" stroke-width="2"/>',
        f'<line x1="{left}" y1="{y(0.0):.1f}" x2="{width - right}" y2="{y(0.0):.1f}" stroke="#57606a" '
        'stroke-dasharray="4,3"/>',
    ]
    for ts, iv in shown:
        tip = f"{_when(ts, seconds=True)}: {iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]"
        parts.append(
            f'<circle cx="{x(ts):.1f}" cy="{y(iv.estimate):.1f}" r="3" fill="{colour}"><title>{tip}</title></circle>'
        )
    for value in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{_tick(value)}</text>')
    base = height - bottom
    parts.append(f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#57606a"/>')
    short = shown[-1][0] - shown[0][0] < 86_400
    for ts, anchor in ((shown[0][0], "start"), (shown[-1][0], "end")):
        label = _when(ts, seconds=short)
        parts.append(f'<text x="{x(ts):.1f}" y="{base + 16}" text-anchor="{anchor}">{_e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _sequences(analysis: Analysis) -> str:
    plots = "".join(_sequence_plot(analysis, name, _colour(i + 1)) for i, name in enumerate(analysis.comparisons))
    note = (
        "<p class='muted'>At each look (one a day, and the last one now) the interval is the running intersection "
        "of the mixture-SPRT intervals so far; a decision is made once it leaves 0 and then stays.</p>"
    )
    return f"<h2>Evidence over time</h2>{plots}{note}"


def _guardrails(analysis: Analysis) -> str:
    if not analysis.guardrails:
        return "<h2>Guardrails</h2><p>None configured.</p>"
    rows = [
        [_e(g.variant), f"<code>{_e(g.guardrail.metric)}</code>", _e(g.guardrail.label()), _e(g.guardrail.action),
         _fmt(g.control), _fmt(g.treatment),
         "<span class='worse'>breached</span>" if g.breached else "<span class='unchanged'>within bound</span>"]
        for g in analysis.guardrails
    ]  # fmt: skip
    table = _table(["Variant", "Metric", "Bound", "Action", "Control", "Variant value", "State"], rows)
    plot_rows = []
    for g in analysis.guardrails:
        if not _finite(g.excess):
            continue
        extent = _nice_ceiling(max(abs(g.excess.low), abs(g.excess.high), 1e-9))
        colour = _COLOURS["worse"] if g.breached else _COLOURS["unchanged"]
        note = f"{g.excess.estimate:+.4g} [{g.excess.low:+.4g}, {g.excess.high:+.4g}]"
        plot_rows.append(
            _PlotRow(f"{g.variant} · {g.guardrail.metric}", g.excess, (-extent, extent), colour, note)
        )  # fmt: skip
    plot = (
        _interval_plot(plot_rows, shared=None, reference=0.0, title="Excess over each guardrail's bound")
        if plot_rows
        else "<p class='muted'>Not enough users in each variant to check the guardrails yet.</p>"
    )
    note = (
        "<p class='muted'>Excess: the variant's value minus the bound applied to the control's (relative bounds "
        "scale the control, bounds in points add to it). Breached when the whole always-valid interval is above 0."
        "</p>"
    )
    return "<h2>Guardrails</h2>" + table + plot + note


def _guardrail_values(analysis: Analysis) -> str:
    rows = []
    for metric in ("cost_per_answer", "latency_ms"):
        estimates = [(name, v.metrics[metric]) for name, v in analysis.variants.items()]
        shown = [(name, e) for name, e in estimates if e.value is not None and _finite(e.interval)]
        if not shown:
            continue
        top = max(max(e.interval.high for _, e in shown if e.interval), 1e-9)
        for i, (name, e) in enumerate(shown):
            assert e.interval is not None and e.value is not None
            note = f"{_fmt(e.value)} [{_fmt(e.interval.low)}, {_fmt(e.interval.high)}]"
            rows.append(_PlotRow(f"{name} · {LABELS[metric]}", e.interval, (min(0.0, e.interval.low), top),
                                 _colour(i), note))  # fmt: skip
    if not rows:
        return ""
    return _interval_plot(rows, shared=None, reference=None, title="Cost and latency per variant")


def experiment_report(record: ExperimentRecord, analysis: Analysis) -> str:
    """One self-contained HTML page: the decision, variants, comparisons, evidence over time and guardrails."""
    body = (
        _header(record, analysis)
        + _variant_table(analysis)
        + _comparison_table(analysis)
        + _rates_plot(analysis)
        + _sequences(analysis)
        + _guardrails(analysis)
        + _guardrail_values(analysis)
    )
    return _document(f"Experiment {record.spec.name} · {record.spec.app}", body)
