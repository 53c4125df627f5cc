"""Evaluations: runs from the runs folder (`<data_dir>/evals`), their metrics, the gate against the baseline, and
each run's own HTML report embedded in a sandboxed frame (served with a CSP that forbids scripts and network)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse, Response

from gengate.dashboard.html import Html, join, link, meta, notice, page, render, table
from gengate.dashboard.web import Ctx, secure_headers
from gengate.errors import NotFound
from gengate.eval.gate import GateRule, gate
from gengate.eval.results import RunResult, run_from_json, run_scores, summarise

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")
MAX_RUNS = 100
REPORT_CSP = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def runs_folder(ctx: Ctx) -> Path:
    """Where `gengate eval run` writes runs (as `gengate.cli.eval` does)."""
    return Path(ctx.gateway.settings.storage.data_dir) / "evals"


def _baselines(folder: Path) -> dict[str, str]:
    try:
        data = json.loads((folder / "baselines.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _file(folder: Path, name: str, suffix: str) -> Path:
    if not _NAME.match(name):
        raise NotFound("no such run")
    path = folder / f"{name}{suffix}"
    if not path.is_file():
        raise NotFound("no such run")
    return path


def _load(folder: Path, run_id: str) -> RunResult:
    try:
        return run_from_json(_file(folder, run_id, ".json").read_text(encoding="utf-8"))
    except ValueError:
        raise NotFound(f"run {run_id!r} could not be read") from None


async def evaluations(ctx: Ctx) -> Response:
    """Finished runs, newest first, and the comparison reports beside them."""
    folder = runs_folder(ctx)
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    baselines = set(_baselines(folder).values())
    rows = []
    for path in [p for p in files if p.name != "baselines.json"][:MAX_RUNS]:
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        run_id = str(data.get("run_id", path.stem))
        rows.append([
            link(f"{ctx.plane.prefix}/evals/{path.stem}", run_id), data.get("dataset", "—"),
            data.get("dataset_version", "—"), data.get("target", "—"), data.get("variant", "—"),
            len(data.get("trials", [])), str(data.get("finished_at", "—"))[:19],
            "baseline" if run_id in baselines else "",
        ])  # fmt: skip
    comparisons = sorted(folder.glob("compare-*.html")) if folder.is_dir() else []
    comp_rows = [[link(f"{ctx.plane.prefix}/evals/report/{p.stem}", p.stem)] for p in comparisons[-50:]]
    body = render(
        "{runs}<h2>Comparisons</h2>{comps}",
        runs=table(["Run", "Dataset", "Version", "Target", "Variant", "Trials", "Finished", ""], rows, numeric=(5,),
                   caption="Runs", empty="No finished run yet: gengate eval run writes them here."),
        comps=table(["Comparison report"], comp_rows, empty="No comparison: gengate eval compare A B writes one."),
    )  # fmt: skip
    return page("Evaluations", body, ctx.shell, active="/evals")


def _gate(folder: Path, run: RunResult) -> Html:
    base_id = _baselines(folder).get(f"{run.dataset}|{run.target}")
    if base_id is None:
        return notice("No baseline for this dataset and target (gengate eval baseline set RUN).")
    if base_id == run.run_id:
        return notice("This run is the baseline.")
    base = _load(folder, base_id)
    base_scores = run_scores(base)
    names = [m for m in run.metric_kinds if m.split("@")[0] not in ("latency", "cost") and base_scores.get(m)]
    if not names:
        return notice("The baseline has no metric in common with this run.")
    rules = [GateRule(metric=m, tolerance=0.02, kind=run.metric_kinds.get(m, "score"), direction=run.direction(m))
             for m in names]  # fmt: skip
    report = gate(base_scores, run_scores(run), rules)
    rows = [[r.metric, _f(r.baseline_mean), _f(r.candidate_mean), _f(r.delta), r.n, _verdict(r.verdict), r.reason]
            for r in report.results]  # fmt: skip
    verdict = render(
        '<p class="{c}">{t}</p>',
        c="ok" if report.passed else "bad",
        t=f"Gate {'passed' if report.passed else 'failed'} against baseline {base_id} (tolerance 0.02)",
    )
    return join([verdict, table(["Metric", "Baseline", "This run", "Δ", "Cases", "Verdict", "Why"], rows,
                                numeric=(1, 2, 3, 4))])  # fmt: skip


def _verdict(verdict: str) -> Html:
    return render('<span class="{c}">{v}</span>', c="ok" if verdict == "pass" else "bad", v=verdict)


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


async def evaluation(ctx: Ctx) -> Response:
    """One run: summary, gate result, and its report."""
    folder = runs_folder(ctx)
    run_id = ctx.request.path_params["run"]
    run = _load(folder, run_id)
    summary = summarise(run, resamples=500)
    rows = [
        [name, _f(m.value), "—" if m.interval is None else f"[{m.interval.low:.3f}, {m.interval.high:.3f}]", m.n_cases]
        for name, m in summary.metrics.items()
    ]  # fmt: skip
    t = summary.totals
    has_report = (folder / f"{run_id}.html").is_file()
    frame = (
        render('<iframe class="report" title="Evaluation report {r}" sandbox src="{src}"></iframe>', r=run_id,
               src=f"{ctx.plane.prefix}/evals/report/{run_id}")
        if has_report else notice("This run has no HTML report beside it.")
    )  # fmt: skip
    body = render(
        '<p><a href="{back}">← Evaluations</a></p>{meta}<h2>Metrics</h2>{metrics}<h2>Regression gate</h2>{gate}'
        "<h2>Report</h2>{frame}",
        back=f"{ctx.plane.prefix}/evals",
        meta=meta([("Dataset", f"{run.dataset}@{run.dataset_version}"), ("Target", run.target),
                   ("Variant", run.variant), ("Trials", f"{t.trials:,} ({t.errors:,} errors)"),
                   ("Cost", f"${t.cost_usd:.4f}"), ("Finished", run.finished_at.isoformat())]),
        metrics=table(["Metric", "Value", "95% interval", "Cases"], rows, numeric=(1, 3)),
        gate=_gate(folder, run), frame=frame,
    )  # fmt: skip
    return page(f"Run {run_id}", body, ctx.shell, active="/evals")


async def report(ctx: Ctx) -> Response:
    """A run's (or comparison's) HTML report, sandboxed: no scripts, no network, framed only by the dashboard."""
    path = _file(runs_folder(ctx), ctx.request.path_params["name"], ".html")
    return secure_headers(HTMLResponse(path.read_text(encoding="utf-8")), csp=REPORT_CSP)
