"""`gengate experiment create|start|pause|stop|ship|list|status|report`: A/B experiments on apps.

Experiments live in the store the gateways share; running gateways pick changes up within
`experiments.refresh_seconds`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.errors import GengateError
from gengate.outer.experiment_analysis import Analysis
from gengate.outer.experiment_service import change_status, create_experiment, load_analysis
from gengate.outer.experiments import (
    describe_variants,
    load_spec_text,
    parse_guardrail,
    parse_variant,
    shipped_yaml,
    spec_from_data,
)
from gengate.outer.report_experiment import experiment_report, report_data, status_text
from gengate.settings import Settings
from gengate.store.db import Store
from gengate.store.experiments import ExperimentRecord, ExperimentStore


@click.group("experiment")
def experiment() -> None:
    """A/B experiments: split an app's traffic between configuration variants and pick a winner."""


def _spec_data(
    name: str | None, file: Path | None, app: str | None, variants: tuple[str, ...], weights: str | None,
    metric: str | None, alpha: float | None, guardrails: tuple[str, ...], no_guardrails: bool, unit: str | None,
    min_units: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The spec from a file and/or options (options win over the file)."""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot read {file}: {exc.strerror}") from None
        data = load_spec_text(text, file.name)
    if name is not None:
        data["name"] = name
    if app is not None:
        data["app"] = app
    if variants:
        data["variants"] = [parse_variant(v) for v in variants]
    if weights is not None:
        parts = [w.strip() for w in weights.split(",")]
        listed = data.get("variants")
        if not isinstance(listed, list) or len(parts) != len(listed):
            count = len(listed) if isinstance(listed, list) else 0
            raise click.ClickException(f"--weights has {len(parts)} values for {count} variants")
        try:
            data["variants"] = [{**v, "weight": float(w)} for v, w in zip(listed, parts, strict=True)]
        except ValueError:
            raise click.ClickException(f"--weights takes numbers separated by commas, got {weights!r}") from None
    if guardrails:
        data["guardrails"] = [parse_guardrail(g) for g in guardrails]
    if no_guardrails:
        data["guardrails"] = []
    for key, value in (("metric", metric), ("alpha", alpha), ("unit", unit), ("min_units", min_units)):
        if value is not None:
            data[key] = value
    return data


@experiment.command("create")
@config_option
@click.argument("name", required=False)
@click.option("--file", "-f", "file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A YAML spec (name, app, variants, metric, alpha, guardrails, unit).")  # fmt: skip
@click.option("--app", default=None, help="The app to experiment on (its name, without app/).")
@click.option("--variant", "variants", multiple=True,
              help="NAME or NAME:key=value,key=value (overlay keys as in `eval run --set`). Repeatable.")  # fmt: skip
@click.option("--weights", default=None, help="Traffic shares in variant order, e.g. 50,50.")
@click.option("--metric", type=click.Choice(["thumbs_up_rate", "copy_rate", "mean_score"]), default=None)
@click.option("--alpha", type=click.FloatRange(0, 0.5, min_open=True, max_open=True), default=None)
@click.option(
    "--guardrail",
    "guardrails",
    multiple=True,
    help="METRIC:BOUND[:ACTION], e.g. cost_per_answer:+20%:stop or block_rate:+2pt (replaces defaults).",
)
@click.option("--no-guardrails", is_flag=True, help="No guardrails at all.")
@click.option("--unit", type=click.Choice(["subject", "team"]), default=None, help="Who is assigned (subject).")
@click.option("--min-units", "min_units", type=click.IntRange(1), default=None,
              help="Users per variant before any evidence counts (100).")  # fmt: skip
@click.option("--start", "start_now", is_flag=True, help="Start it at once.")
def create(
    config_path: str | None, name: str | None, file: Path | None, app: str | None, variants: tuple[str, ...],
    weights: str | None, metric: str | None, alpha: float | None, guardrails: tuple[str, ...], no_guardrails: bool,
    unit: str | None, min_units: int | None, start_now: bool,
) -> None:  # fmt: skip
    """Create an experiment (a draft until started) from options or a YAML spec."""
    settings = settings_or_exit(config_path)
    try:
        data = _spec_data(name, file, app, variants, weights, metric, alpha, guardrails, no_guardrails, unit,
                          min_units)  # fmt: skip
        spec = spec_from_data(data, file.name if file is not None else "experiment")
    except GengateError as exc:
        raise click.ClickException(exc.message) from None

    async def go(store: Store) -> ExperimentRecord:
        experiments = ExperimentStore(store.engine)
        record = await create_experiment(experiments, settings, spec)
        return await change_status(experiments, settings, spec.name, "start") if start_now else record

    record = with_store(settings, go)
    click.echo(f"experiment {record.name} on app {record.app}: {record.status}")
    for line in describe_variants(record.spec.variants):
        click.echo(f"  {line}")
    if record.status == "draft":
        click.echo(f"start it with: gengate experiment start {record.name}")


def _change(config_path: str | None, name: str, action: str, winner: str | None = None) -> ExperimentRecord:
    settings = settings_or_exit(config_path)
    return with_store(
        settings, lambda store: change_status(ExperimentStore(store.engine), settings, name, action, winner=winner)
    )


@experiment.command("start")
@config_option
@click.argument("name")
def start(config_path: str | None, name: str) -> None:
    """Start (or resume) an experiment: its app's traffic is split between the variants."""
    record = _change(config_path, name, "start")
    click.echo(f"experiment {record.name}: running (gateways pick it up within their refresh interval)")


@experiment.command("pause")
@config_option
@click.argument("name")
def pause(config_path: str | None, name: str) -> None:
    """Pause an experiment: everyone gets the control, and nothing counts until it is started again."""
    record = _change(config_path, name, "pause")
    click.echo(f"experiment {record.name}: paused (everyone gets {record.spec.control.name})")


@experiment.command("stop")
@config_option
@click.argument("name")
def stop(config_path: str | None, name: str) -> None:
    """Stop an experiment (or stop serving a shipped winner): the app's configuration serves everyone."""
    record = _change(config_path, name, "stop")
    click.echo(f"experiment {record.name}: stopped (the configuration of app {record.app} serves everyone)")


@experiment.command("ship")
@config_option
@click.argument("name")
@click.argument("variant")
def ship(config_path: str | None, name: str, variant: str) -> None:
    """Mark VARIANT the winner and serve it to everyone; prints the YAML to make it the configuration."""
    record = _change(config_path, name, "ship", winner=variant)
    click.echo(f"experiment {record.name}: shipped {variant} (served to everyone until gengate.yaml changes)")
    click.echo("# paste into gengate.yaml, then restart the gateways:")
    click.echo(shipped_yaml(record.spec, variant), nl=False)


@experiment.command("list")
@config_option
@click.option("--app", default=None)
def list_experiments(config_path: str | None, app: str | None) -> None:
    """Experiments, oldest first."""
    settings = settings_or_exit(config_path)
    records = with_store(settings, lambda store: ExperimentStore(store.engine).list(app=app))
    click.echo(f"{'NAME':<24} {'APP':<16} {'STATUS':<8} {'VARIANTS':<28} {'WINNER':<12} CREATED")
    for r in records:
        variants = ",".join(v.name for v in r.spec.variants)
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.created_at))
        click.echo(f"{r.name:<24} {r.app:<16} {r.status:<8} {variants:<28.28} {r.winner or '-':<12} {created}")


def _analysis(settings: Settings, name: str, buckets: int | None = None) -> tuple[ExperimentRecord, Analysis]:
    async def go(store: Store) -> tuple[ExperimentRecord, Analysis]:
        experiments = ExperimentStore(store.engine)
        record = await experiments.get(name)
        return record, await load_analysis(experiments, record, buckets=buckets)

    return with_store(settings, go)


@experiment.command("status")
@config_option
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The analysis as JSON.")
def status(config_path: str | None, name: str, as_json: bool) -> None:
    """Per variant: users, answers, rates with always-valid intervals, cost, latency; the decision vs control."""
    record, analysis = _analysis(settings_or_exit(config_path), name)
    if as_json:
        click.echo(json.dumps(report_data(record, analysis), indent=2, sort_keys=True))
    else:
        click.echo(status_text(record, analysis))


@experiment.command("report")
@config_option
@click.argument("name")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--buckets", type=click.IntRange(1, 500), default=None,
              help="Looks at N even steps instead of one a day.")  # fmt: skip
def report(config_path: str | None, name: str, html_path: Path | None, json_path: Path | None,
           buckets: int | None) -> None:  # fmt: skip
    """Write a self-contained HTML report (plots of rates, evidence over time, guardrails) and/or JSON."""
    settings = settings_or_exit(config_path)
    record, analysis = _analysis(settings, name, buckets)
    html_path = html_path or (Path(settings.storage.data_dir) / "experiments" / f"{record.name}.html"
                              if json_path is None else None)  # fmt: skip
    if html_path is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(experiment_report(record, analysis), encoding="utf-8")
        click.echo(f"report: {html_path}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report_data(record, analysis), indent=2, sort_keys=True), encoding="utf-8")
        click.echo(f"data: {json_path}")
    click.echo(f"decision: {analysis.decision}")
