"""`gengate eval run|report|compare|baseline|gate`: experiments over datasets, reports and the CI gate.

Runs live in `<data_dir>/evals/`: `<run>.jsonl` (the journal a run resumes from), `<run>.json` (the whole run) and
`<run>.html` (the report). `baselines.json` maps a dataset and target to the run the gate compares against.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import click
import yaml

from gengate.app.app_routes import PREFIX
from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.eval.calibrate import calibrate
from gengate.eval.gate import GateRule, gate
from gengate.eval.metrics.base import EvalCase, MetricRegistry, Observation, is_async_metric
from gengate.eval.report_ci import junit_xml, markdown_summary
from gengate.eval.report_html import comparison_report, run_report
from gengate.eval.results import RunResult, run_from_json, run_scores, summarise, to_json
from gengate.eval.runner import DEFAULT_METRICS, Experiment, Journal, Variant
from gengate.outer.drift_service import app_knowledge_bases
from gengate.settings import Settings
from gengate.store.db import Store
from gengate.store.evals import EvalStore
from gengate.store.outer_runs import OuterRunsStore


@click.group("eval")
def eval_group() -> None:
    """Run experiments, compare runs and gate CI on regressions."""


def _runs(settings: Settings) -> Path:
    return Path(settings.storage.data_dir) / "evals"


def _load(settings: Settings, run_id: str) -> RunResult:
    path = _runs(settings) / f"{Path(run_id).name}.json"
    if not path.is_file():
        raise click.ClickException(f"no finished run {run_id!r} in {_runs(settings)}")
    try:
        return run_from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:  # not a run, or a damaged file
        raise click.ClickException(f"{path} is not a readable gengate run: {exc}") from None


def _parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.ClickException(f"--set takes key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def _bar(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    end = "\n" if done == total else ""
    click.echo(f"\rtrials [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", nl=False, err=True)
    if end:
        click.echo(err=True)


@eval_group.command("run")
@config_option
@click.argument("dataset")
@click.option("--app", "app", default=None, help="The app to evaluate (its name, without app/).")
@click.option("--model", "model", default=None, help="Or a chat model alias: evaluate the model route itself.")
@click.option("--version", "version", type=int, default=None, help="Dataset version (default: latest).")
@click.option("--variant", "variant_name", default="default", help="A name for this configuration.")
@click.option("--set", "overrides", multiple=True, help="Overlay key=value (system_prompt, top_k, model, …).")
@click.option("--trials", type=click.IntRange(1, 100), default=3)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4)
@click.option("--seed", type=int, default=0)
@click.option("--metric", "metrics", multiple=True, help=f"Metric (repeatable; default: {', '.join(DEFAULT_METRICS)}).")
@click.option("--resume", "resume", default=None, help="Finish an interrupted run by its id.")
@click.option("--judge-model", "judge_model", default=None, help="Chat alias for judge_faithfulness/judge_relevance.")
def run(
    config_path: str | None, dataset: str, app: str | None, model: str | None, version: int | None,
    variant_name: str,
    overrides: tuple[str, ...], trials: int, concurrency: int, seed: int, metrics: tuple[str, ...],
    resume: str | None, judge_model: str | None,
) -> None:  # fmt: skip
    """Run a dataset against an app (or a model route) variant, N trials per case; writes the run and its report."""
    settings = settings_or_exit(config_path)
    if resume is None and (app is None) == (model is None):
        raise click.UsageError("give the target: --app NAME or --model ALIAS (one of them)")

    async def go(store: Store) -> RunResult:
        evals = EvalStore(store.engine)
        record = await evals.get(dataset, version)
        cases = await evals.cases(dataset, record.version)
        journal_dir = _runs(settings)
        judge = judge_model
        target_app, target_model = app, model
        if resume is not None:
            journal = Journal(journal_dir / f"{Path(resume).name}.jsonl")
            header = journal.header()
            if header is None:
                raise click.ClickException(f"no run {resume!r} to resume")
            variant = Variant(header["variant"], header.get("variant_overrides", {}))
            n_trials, run_seed, metric_names = header["trials_per_case"], header["seed"], header["metrics"]
            judge = header.get("judge_model")
            target = str(header.get("target", ""))
            target_app, target_model = (target[len(PREFIX) :], None) if target.startswith(PREFIX) else (None, target)
        else:
            variant = Variant(variant_name, _parse_set(overrides))
            n_trials, run_seed, metric_names = trials, seed, list(metrics or DEFAULT_METRICS)
            journal = None
        experiment = Experiment(
            settings, target_app, dataset, record.version, cases, variant, trials=n_trials, concurrency=concurrency,
            seed=run_seed, metrics=metric_names, judge_model=judge, model=target_model,
        )  # fmt: skip
        if journal is None:
            run_id = f"{dataset}-{variant.name}-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid4().hex[:4]}"
            journal = Journal(journal_dir / f"{run_id}.jsonl")
            click.echo(f"run {run_id} (resume with --resume {run_id})", err=True)
        else:
            run_id = str((journal.header() or {}).get("run_id", ""))
        # Record the run with the knowledge it evaluates, so drift can tell what changed since (eval_runs).
        runs, kbs = OuterRunsStore(store.engine), app_knowledge_bases(settings, target_app, variant.overrides)
        target = PREFIX + target_app if target_app is not None else str(target_model)
        await runs.start_run(run_id, target=target, dataset=dataset, dataset_version=str(record.version),
                             variant=variant.name, kbs=kbs)  # fmt: skip
        result = await experiment.run(journal, run_id=run_id, progress=_bar)
        await runs.finish_run(result.run_id)
        return result

    result = with_store(settings, go)
    folder = _runs(settings)
    (folder / f"{result.run_id}.json").write_text(to_json(result), encoding="utf-8")
    (folder / f"{result.run_id}.html").write_text(run_report(result), encoding="utf-8")
    _print_summary(result)
    click.echo(f"report: {folder / (result.run_id + '.html')}")


def _print_summary(result: RunResult) -> None:
    summary = summarise(result)
    click.echo(f"{result.run_id}: {result.dataset}@{result.dataset_version} · {result.target} · {result.variant}")
    click.echo(f"{'METRIC':<22} {'VALUE':>9} {'95% INTERVAL':>19} {'CASES':>6}")
    for name, m in summary.metrics.items():
        value = "-" if m.value is None else f"{m.value:.3f}"
        interval = "-" if m.interval is None else f"[{m.interval.low:.3f}, {m.interval.high:.3f}]"
        click.echo(f"{name:<22} {value:>9} {interval:>19} {m.n_cases:>6}")
    t = summary.totals
    judge = f" + judge ${t.judge_cost_usd:.4f} ({t.judge_tokens} tokens)" if t.judge_tokens else ""
    click.echo(
        f"trials {t.trials} · errors {t.errors} · cost ${t.cost_usd:.4f}{judge} · "
        f"tokens {t.prompt_tokens}+{t.completion_tokens} · latency p50 {_ms(t.latency_p50_ms)}"
    )


@eval_group.command("report")
@config_option
@click.argument("run_id")
def report(config_path: str | None, run_id: str) -> None:
    """Print a run's summary (its HTML report sits beside it)."""
    _print_summary(_load(settings_or_exit(config_path), run_id))


@eval_group.command("compare")
@config_option
@click.argument("run_a")
@click.argument("run_b")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def compare_runs(config_path: str | None, run_a: str, run_b: str, html_path: Path | None) -> None:
    """Paired comparison of two runs on their shared cases (B − A), with an HTML report."""
    settings = settings_or_exit(config_path)
    a, b = _load(settings, run_a), _load(settings, run_b)
    path = html_path or _runs(settings) / f"compare-{a.run_id}-{b.run_id}.html"
    path.write_text(comparison_report(a, b), encoding="utf-8")
    click.echo(f"comparison report: {path}")


def _baselines(settings: Settings) -> Path:
    return _runs(settings) / "baselines.json"


@eval_group.group("baseline")
def baseline() -> None:
    """The runs the gate compares against."""


@baseline.command("set")
@config_option
@click.argument("run_id")
def baseline_set(config_path: str | None, run_id: str) -> None:
    """Make a finished run the baseline for its dataset and target."""
    settings = settings_or_exit(config_path)
    result = _load(settings, run_id)
    path = _baselines(settings)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[f"{result.dataset}|{result.target}"] = result.run_id
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    click.echo(f"baseline for {result.dataset} on {result.target}: {result.run_id}")


@eval_group.command("gate")
@config_option
@click.argument("run_id")
@click.option("--baseline", "baseline_id", default=None, help="Compare with this run instead of the baseline.")
@click.option("--metric", "metrics", multiple=True, help="Gate only these metrics (default: all but latency/cost).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.02, help="Allowed worsening per metric.")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95)
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def gate_run(
    config_path: str | None, run_id: str, baseline_id: str | None, metrics: tuple[str, ...], tolerance: float,
    confidence: float, junit_path: Path | None, markdown_path: Path | None,
) -> None:  # fmt: skip
    """Exit 1 only when a metric is worse than the baseline beyond the tolerance with statistical confidence."""
    settings = settings_or_exit(config_path)
    candidate = _load(settings, run_id)
    if baseline_id is None:
        path = _baselines(settings)
        known = json.loads(path.read_text()) if path.exists() else {}
        baseline_id = known.get(f"{candidate.dataset}|{candidate.target}")
        if baseline_id is None:
            raise click.ClickException(f"no baseline for {candidate.dataset} on {candidate.target}: eval baseline set")
    base = _load(settings, baseline_id)
    base_scores = run_scores(base)
    # By default: every metric the baseline has values for (a metric that applies to no case cannot regress).
    names = list(metrics) or [
        m for m in candidate.metric_kinds if m.split("@")[0] not in ("latency", "cost") and base_scores.get(m)
    ]
    rules = [
        GateRule(
            metric=m,
            tolerance=tolerance,
            confidence=confidence,
            kind=candidate.metric_kinds.get(m, "score"),
            direction=candidate.direction(m),
        )
        for m in names
    ]
    result = gate(base_scores, run_scores(candidate), rules)
    title = f"gengate eval gate: {candidate.run_id} vs baseline {base.run_id}"
    text = markdown_summary(result, title=title)
    click.echo(text)
    if markdown_path is not None:
        markdown_path.write_text(text, encoding="utf-8")
    if junit_path is not None:
        junit_path.write_text(junit_xml(result, suite=f"gengate-eval-{candidate.dataset}"), encoding="utf-8")
    sys.exit(0 if result.passed else 1)


@eval_group.command("calibrate")
@config_option
@click.argument("labels", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--metric", "metric_name", required=True, help="The metric to calibrate (e.g. faithfulness).")
@click.option("--threshold", type=float, default=None, help="Metric value below which a case is flagged.")
@click.option("--human-threshold", type=float, default=None, help="Human score below which a case is flagged.")
def calibrate_metric(
    config_path: str | None, labels: Path, metric_name: str, threshold: float | None, human_threshold: float | None
) -> None:
    """How far to trust a metric: Spearman, kappa and precision/recall against human labels.

    LABELS is JSONL, one case per line: {"question", "answer", "contexts": [...], "human": <score>} (plus optional
    "reference", "required_facts", "gold_ids", "retrieved_ids")."""
    settings_or_exit(config_path)
    registry = MetricRegistry()
    try:
        metric = registry.build(metric_name)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(f"metric {metric_name!r}: {exc}") from None
    if is_async_metric(metric):
        raise click.ClickException(f"{metric_name} calls a model; calibrate it with `gengate eval run` results")
    values: list[float | None] = []
    humans: list[float] = []
    for number, line in enumerate(labels.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            case = EvalCase(str(number), str(row["question"]), row.get("reference"),
                            tuple(row.get("required_facts", ())), tuple(row.get("gold_ids", ())))  # fmt: skip
            obs = Observation(answer=str(row["answer"]), retrieved_texts=tuple(map(str, row.get("contexts", ()))),
                              retrieved_ids=tuple(map(str, row.get("retrieved_ids", ()))))  # fmt: skip
            human = float(row["human"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise click.ClickException(f"{labels.name}:{number}: {type(exc).__name__}: {exc}") from None
        values.append(metric.score(case, obs).value)  # type: ignore[union-attr]
        humans.append(human)
    if not humans:
        raise click.ClickException(f"{labels.name}: no labelled cases")
    report = calibrate(values, humans, threshold=threshold, human_threshold=human_threshold)
    low, high = report.spearman_ci
    click.echo(f"{metric_name} vs human labels: n={report.n} (skipped {report.skipped})")
    click.echo(f"  Spearman {report.spearman:.3f}  (95% CI {low:.3f} to {high:.3f})")
    if report.kappa is not None:
        click.echo(
            f"  Cohen's kappa {report.kappa:.3f} · precision {report.precision:.3f} · recall {report.recall:.3f} · "
            f"F1 {report.f1:.3f} at metric < {threshold} vs human < {human_threshold}"
        )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms"
