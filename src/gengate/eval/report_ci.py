"""Render a `GateReport` for CI: a Markdown job summary and a JUnit XML file.

Owns the two text formats. `markdown_summary` suits `$GITHUB_STEP_SUMMARY` (or any Markdown CI summary);
`junit_xml` gives one testcase per rule so CI systems list regressions as failed tests.

Must not: decide anything (the verdicts come from `gate`) or write files; callers do the I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from gengate.eval.gate import GateReport, RuleResult

__all__ = ["junit_xml", "markdown_summary"]

_ICON = {"pass": "✅", "fail": "❌", "no_data": "❌"}
_LABEL = {"pass": "pass", "fail": "fail", "no_data": "no data"}
# Characters XML 1.0 cannot hold at all (ElementTree would write them and produce an unparsable file).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    sign = "+" if signed else ""
    if abs(value) >= 1000:
        return f"{value:{sign},.0f}"
    return f"{value:{sign}.4g}"


def _interval(result: RuleResult) -> str:
    if result.interval is None:
        return "—"
    return f"[{_number(result.interval.low, signed=True)}, {_number(result.interval.high, signed=True)}]"


def _p_value(value: float | None) -> str:
    if value is None:
        return "—"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def _cell(text: str) -> str:
    """Make text safe inside a Markdown table cell: no line breaks, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _rule_label(result: RuleResult) -> str:
    rule = result.rule
    arrow = "↑" if rule.direction == "higher_is_better" else "↓"
    return f"{arrow} {rule.kind}, tol {rule.tolerance:g}, {rule.confidence * 100:g}%"


def markdown_summary(report: GateReport, *, title: str) -> str:
    """A Markdown summary of the gate: overall status, then one table row per rule with ✅/❌ and the reason."""
    failed = len(report.failures)
    status = (
        "✅ **Passed**: no metric regressed beyond noise and tolerance."
        if report.passed
        else f"❌ **Failed**: {failed} of {len(report.results)} rule{'s' if len(report.results) != 1 else ''} failed."
    )
    lines = [
        f"## {_cell(title)}",
        "",
        status,
        "",
        "| | Metric | Rule | Baseline | Candidate | Δ | Interval | p | Cases | Verdict | Reason |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for result in report.results:
        cases = str(result.n)
        if result.dropped_baseline or result.dropped_candidate:
            cases += f" (−{result.dropped_baseline}/−{result.dropped_candidate})"
        cells = [
            _ICON[result.verdict],
            f"`{_cell(result.metric)}`",
            _rule_label(result),
            _number(result.baseline_mean),
            _number(result.candidate_mean),
            _number(result.delta, signed=True),
            _interval(result),
            _p_value(result.p_value),
            cases,
            _LABEL[result.verdict],
            _cell(result.reason),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if any(result.dropped_baseline or result.dropped_candidate for result in report.results):
        lines += ["", "Cases: compared (−dropped baseline-only / −dropped candidate-only)."]
    return "\n".join(lines) + "\n"


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def junit_xml(report: GateReport, *, suite: str) -> str:
    """JUnit XML with one testcase per rule; failed and no-data rules are failures carrying the reason.

    Built with ElementTree, so names and reasons are escaped; characters XML cannot represent are replaced.
    """
    failures = str(len(report.failures))
    tests = str(len(report.results))
    root = ET.Element("testsuites", name=_xml_text(suite), tests=tests, failures=failures, errors="0")
    testsuite = ET.SubElement(
        root, "testsuite", name=_xml_text(suite), tests=tests, failures=failures, errors="0", skipped="0", time="0"
    )
    for result in report.results:
        case = ET.SubElement(testsuite, "testcase", classname=_xml_text(suite), name=_xml_text(result.metric), time="0")
        details = (
            f"metric: {result.metric}\nrule: {_rule_label(result)}\n"
            f"baseline: {_number(result.baseline_mean)}\ncandidate: {_number(result.candidate_mean)}\n"
            f"delta: {_number(result.delta, signed=True)}\ninterval: {_interval(result)}\n"
            f"p: {_p_value(result.p_value)}\ncases: {result.n} (dropped {result.dropped_baseline} baseline-only, "
            f"{result.dropped_candidate} candidate-only)\nverdict: {_LABEL[result.verdict]}\nreason: {result.reason}\n"
        )
        if result.verdict == "pass":
            ET.SubElement(case, "system-out").text = _xml_text(details)
        else:
            failure = ET.SubElement(
                case,
                "failure",
                message=_xml_text(result.reason),
                type="regression" if result.verdict == "fail" else "no_data",
            )
            failure.text = _xml_text(details)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
