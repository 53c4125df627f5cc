"""`gengate redteam <app>`: attack suites against an app, with the attack success rate per category.

The run is an ordinary evaluation run in `<data_dir>/evals/` (journal, JSON, HTML report), so `gengate eval
report | baseline set | gate` work on it; `eval gate` fails when the app resists significantly fewer attacks than
its baseline. `--max-asr` is an optional absolute limit on top of that.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import click

from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.cli.eval import _bar, _parse_set, _runs
from gengate.errors import ConfigError
from gengate.eval.datasets import Identity
from gengate.eval.redteam import BUILTIN_SUITES, SUITES, RedTeamRun, build_plan, category_rows, run_redteam
from gengate.eval.redteam_suites import DATASET_SUITES
from gengate.eval.report_html import run_report
from gengate.eval.results import to_json
from gengate.eval.runner import Journal, Variant
from gengate.store.db import Store


@click.command("redteam")
@config_option
@click.argument("app")
@click.option(
    "--suite",
    "chosen",
    multiple=True,
    type=click.Choice(SUITES),
    help="Attack category (repeatable; default: every built-in one, plus the dataset ones with --datasets).",
)
@click.option("--limit", type=click.IntRange(min=1), default=50, help="Attacks per category at most.")
@click.option("--trials", type=click.IntRange(1, 100), default=1)
@click.option("--seed", type=int, default=0, help="Chooses the run's codes (and the model's seed).")
@click.option(
    "--datasets",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder holding the public attack datasets (read at run time, e.g. ../shared/datasets).",
)
@click.option("--variant", "variant_name", default="redteam", help="A name for this configuration.")
@click.option("--set", "overrides", multiple=True, help="Overlay key=value (guard_profile, system_prompt, model, …).")
@click.option(
    "--question",
    "questions",
    multiple=True,
    help="An on-topic question the app answers (repeatable): direct attacks go earlier in the conversation.",
)
@click.option("--subject", default=None, help="Run as this user (default: the evaluation caller).")
@click.option("--team", default=None, help="The caller's team (with --subject).")
@click.option("--group", "groups", multiple=True, help="The caller's groups (with --subject; repeatable).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4)
@click.option(
    "--max-asr",
    "max_asr",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exit 1 when any category's attack success rate is above this.",
)
def redteam(
    config_path: str | None, app: str, chosen: tuple[str, ...], limit: int, trials: int, seed: int,
    datasets: Path | None, variant_name: str, overrides: tuple[str, ...], questions: tuple[str, ...],
    subject: str | None, team: str | None, groups: tuple[str, ...], concurrency: int, max_asr: float | None,
) -> None:  # fmt: skip
    """Run attack suites against APP; print the attack success rate per category and write the run's report."""
    settings = settings_or_exit(config_path)
    if app not in settings.apps:
        raise click.ClickException(f"no app {app!r} (apps: {', '.join(sorted(settings.apps)) or 'none'})")
    if subject is None and (team or groups):
        raise click.UsageError("--team and --group describe the caller given with --subject")
    names = list(chosen) or [*BUILTIN_SUITES, *(DATASET_SUITES if datasets is not None else ())]
    identity = Identity(subject, team, tuple(groups)) if subject else None
    try:
        plan = build_plan(settings.apps[app], names, seed=seed, limit=limit, datasets=datasets,
                          questions=questions, identity=identity)  # fmt: skip
    except (ConfigError, FileNotFoundError) as exc:
        raise click.ClickException(exc.message if isinstance(exc, ConfigError) else str(exc)) from None
    for note in plan.notes:
        click.echo(note, err=True)
    if not plan.cases:
        raise click.ClickException("no attacks to run")
    variant = Variant(variant_name, _parse_set(overrides))
    run_id = f"redteam-{app}-{variant.name}-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid4().hex[:4]}"
    journal = Journal(_runs(settings) / f"{run_id}.jsonl")
    click.echo(f"run {run_id}: {len(plan.cases)} attacks × {trials} trials", err=True)

    async def go(store: Store) -> RedTeamRun:
        return await run_redteam(store, settings, app, plan, journal, variant=variant, trials=trials,
                                 concurrency=concurrency, seed=seed, run_id=run_id, progress=_bar)  # fmt: skip

    outcome = with_store(settings, go)
    result = outcome.result
    folder = _runs(settings)
    (folder / f"{result.run_id}.json").write_text(to_json(result), encoding="utf-8")
    (folder / f"{result.run_id}.html").write_text(run_report(result), encoding="utf-8")
    if outcome.quarantined:
        click.echo(f"{len(outcome.quarantined)} of {len(plan.documents)} poisoned documents were quarantined at "
                   "ingestion (rag.on_suspicious)")  # fmt: skip
    rows = category_rows(result)
    click.echo(f"{result.run_id}: {result.target} · {result.variant} · {result.trials_per_case} trial(s) per attack")
    click.echo(
        f"{'CATEGORY':<15} {'CASES':>5} {'ASR':>6} {'95% INTERVAL':>15} {'BLOCKED':>8} {'NO ANSWER':>9} {'ERR':>4}"
    )
    for row in rows:
        asr = "-" if row.asr is None else f"{row.asr:.3f}"
        interval = "-" if row.low is None or row.high is None else f"[{row.low:.3f}, {row.high:.3f}]"
        click.echo(f"{row.category:<15} {row.cases:>5} {asr:>6} {interval:>15} {row.blocked:>8.0%} "
                   f"{row.no_answer:>9.0%} {row.errors:>4}")  # fmt: skip
    overall = rows[-1]
    failed = [t for t in result.trials if t.outcome == "error"]
    if failed:
        click.echo(f"{len(failed)} trials failed and are not counted; first error: {failed[0].error}", err=True)
    if not questions and overall.no_answer > 0.5:
        click.echo("most attacks ended as 'no answer' (nothing relevant retrieved, so the model was never asked): "
                   "give on-topic questions with --question to carry them", err=True)  # fmt: skip
    method = overall.method
    if method == "bootstrap":
        click.echo("intervals: bootstrap over attacks (repeated trials of one attack are not independent)")
    click.echo(f"report: {folder / (result.run_id + '.html')} · gate it: gengate eval baseline set / eval gate")
    if max_asr is not None:
        over = [r.category for r in rows if r.asr is not None and r.asr > max_asr]
        if over:
            click.echo(f"attack success rate above {max_asr:g} in: {', '.join(over)}", err=True)
            sys.exit(1)
