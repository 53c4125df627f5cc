"""`gengate drift questions|knowledge|watch`: is the evaluation still about what users ask and what the app knows?"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import click

from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.errors import ConfigError
from gengate.outer.drift_service import (
    DAY,
    QuestionDriftReport,
    knowledge_drift,
    question_drift_report,
    rerun_command,
)
from gengate.outer.knowledge_drift import KnowledgeDrift
from gengate.rag.embedder import Embedder
from gengate.settings import Settings


@click.group()
def drift() -> None:
    """Question drift against a dataset, knowledge changes since the last evaluation, re-evaluation."""


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def parse_since(value: str, now: float | None = None) -> float:
    """`7d`, `12h`, `30m` (before now) or an ISO date/time (UTC unless it says otherwise) as a timestamp."""
    now = time.time() if now is None else now
    text = value.strip()
    units = {"d": DAY, "h": 3600.0, "m": 60.0, "s": 1.0}
    if text and text[-1] in units:
        try:
            return now - float(text[:-1]) * units[text[-1]]
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{value!r}: give a duration like 7d, 12h, 30m or an ISO date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _app(settings: Settings, app: str) -> None:
    if app not in settings.apps:
        known = ", ".join(sorted(settings.apps)) or "none"
        raise click.ClickException(f"no app {app!r} in the configuration (apps: {known})")


@drift.command("questions")
@config_option
@click.option("--app", "app", required=True, help="The app whose recent questions are compared.")
@click.option("--dataset", "dataset", default=None, help="Evaluation dataset (default: drift.datasets[app]).")
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="Dataset version (latest).")
@click.option("--since", "since", default=None, help="Recent means since: 7d, 12h or an ISO date (drift.window_days).")
@click.option("--min-recent", "min_recent", type=click.IntRange(min=2), default=None, help="Fewer: no verdict.")
@click.option("--seed", type=int, default=0, help="Seed of the permutation test and subsampling.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--fail-on-drift", is_flag=True, help="Exit 1 when the questions drifted.")
def questions(
    config_path: str | None, app: str, dataset: str | None, version: int | None, since: str | None,
    min_recent: int | None, seed: int, as_json: bool, fail_on_drift: bool,
) -> None:  # fmt: skip
    """Recent production questions of an app against a dataset's questions: a two-sample test and new topics."""
    settings = settings_or_exit(config_path)
    _app(settings, app)
    dataset = dataset or settings.drift.datasets.get(app)
    if dataset is None:
        raise click.ClickException(f"give --dataset (or set drift.datasets.{app})")
    start = parse_since(since) if since else time.time() - settings.drift.window_days * DAY
    if settings.rag.embeddings == "none":
        raise click.ClickException("question drift needs the MiniLM embedding model (rag.embeddings is 'none')")
    try:
        embedder = Embedder("minilm")
    except ConfigError as exc:
        raise click.ClickException(f"question drift needs embeddings: {exc.message}") from None
    needed = min_recent if min_recent is not None else settings.drift.min_recent
    report = with_store(
        settings,
        lambda store: question_drift_report(
            store, app, dataset, embedder.encode, since=start, min_recent=needed, version=version, seed=seed
        ),
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_questions(report)
    sys.exit(1 if fail_on_drift and report.drifted else 0)


def _print_questions(report: QuestionDriftReport) -> None:
    click.echo(
        f"app {report.app}: {report.n_recent} questions since {_when(report.since)} vs dataset "
        f"{report.dataset} v{report.dataset_version} ({report.n_reference} questions)"
    )
    result = report.result
    if result is None or result.status != "ok":
        click.echo(f"decision: no verdict — {report.message}")
        return
    subsampled = result.subsampled or result.n_recent < report.n_recent
    used = f" (compared {result.reference_used} vs {result.recent_used}, subsampled)" if subsampled else ""
    click.echo(f"statistic (energy distance) {result.statistic:.4f}{used}")
    click.echo(f"p-value {result.p_value:.4f} (alpha {result.options.alpha:g}, {result.options.permutations} "
               "permutations)")  # fmt: skip
    click.echo(f"effect (H) {result.effect:.4f} (drift needs ≥ {result.options.min_effect:g})")
    click.echo(f"decision: {'DRIFTED' if result.drifted else 'no drift'} — {result.message}")
    if not result.topics:
        click.echo("new topics: none")
        return
    click.echo(
        f"new topics ({result.novel_count} recent questions unlike the dataset, {result.unclustered} in no topic):"
    )
    click.echo(f"  {'#':>2} {'COUNT':>5} {'SHARE':>6}  {'KEYWORDS':<36} REPRESENTATIVE QUESTIONS")
    for i, topic in enumerate(result.topics, 1):
        keywords = ", ".join(topic.keywords) or "-"
        first, *rest = topic.representatives or ("-",)
        click.echo(f"  {i:>2} {topic.count:>5} {topic.share:>6.0%}  {keywords:<36.36} {_short(first)}")
        for text in rest:
            click.echo(f"  {'':>2} {'':>5} {'':>6}  {'':<36} {_short(text)}")


def _short(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@drift.command("knowledge")
@config_option
@click.option("--app", "app", required=True, help="The app whose knowledge bases are checked.")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="Documents listed (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the changes as JSON.")
@click.option("--fail-on-drift", is_flag=True, help="Exit 1 when anything changed since the last evaluation run.")
def knowledge(config_path: str | None, app: str, limit: int, as_json: bool, fail_on_drift: bool) -> None:
    """Documents added, changed, retired or access-changed since the app's last evaluation run."""
    settings = settings_or_exit(config_path)
    _app(settings, app)
    changes = with_store(settings, lambda store: knowledge_drift(store, settings, app))
    if as_json:
        click.echo(json.dumps(changes.to_dict(), indent=2))
    else:
        _print_knowledge(changes, limit)
    sys.exit(1 if fail_on_drift and changes.drifted else 0)


def _print_knowledge(changes: KnowledgeDrift, limit: int) -> None:
    if changes.run_id is None:
        click.echo(f"app {changes.app} has no finished evaluation run: every document counts as a change")
    else:
        click.echo(
            f"app {changes.app}: since evaluation run {changes.run_id} (finished {_when(changes.run_finished_at)})"
        )
    counts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in changes.counts.items())
    click.echo(f"{len(changes.documents)} documents changed: {counts}")
    for kb in changes.rechunked:
        click.echo(f"knowledge base {kb} was rechunked: every chunk changed")
    for kb in changes.new_kbs:
        click.echo(f"knowledge base {kb} was not read by that run (or was created again since)")
    shown = changes.documents[:limit] if limit else changes.documents
    if shown:
        click.echo(f"  {'CHANGE':<15} {'KB':<16} {'VERSION':>7}  {'WHEN':<19}  DOCUMENT")
    for doc in shown:
        version = f"v{doc.version}" if doc.version is not None else "-"
        click.echo(f"  {doc.change:<15} {doc.kb:<16.16} {version:>7}  {_when(doc.ts):<19}  {doc.doc_id}")
    if len(shown) < len(changes.documents):
        click.echo(f"  … {len(changes.documents) - len(shown)} more (--limit 0 shows all)")
    click.echo("drift: yes — re-run the evaluation" if changes.drifted else "drift: none")


def _knowledge(settings: Settings, app: str) -> KnowledgeDrift:
    return with_store(settings, lambda store: knowledge_drift(store, settings, app))


@drift.command("watch")
@config_option
@click.option("--once", is_flag=True, help="Check once and exit (for cron), instead of every interval.")
@click.option("--interval", type=click.FloatRange(min=1), default=None, help="Seconds (drift.interval_seconds).")
def watch(config_path: str | None, once: bool, interval: float | None) -> None:
    """Re-run an app's evaluation when its knowledge changed since the last run (drift.rerun_on_knowledge_change).

    Each evaluation is `gengate eval run` in its own process, which records the run and the knowledge it saw."""
    settings = settings_or_exit(config_path)
    plans = settings.drift.rerun_on_knowledge_change
    if not plans:
        raise click.ClickException("nothing to watch: set drift.rerun_on_knowledge_change (app: {dataset, variant})")
    attempted: dict[str, tuple[str | None, int]] = {}
    failures = 0
    while True:
        for app, plan in plans.items():
            changes = _knowledge(settings, app)
            state = (changes.run_id, changes.total)
            if not changes.drifted or attempted.get(app) == state:
                click.echo(f"{app}: no knowledge change since run {changes.run_id or '-'}")
                continue
            attempted[app] = state  # a failing evaluation is not retried until something else changes
            click.echo(f"{app}: {changes.total} knowledge changes since run {changes.run_id or '-'}: "
                       f"running dataset {plan.dataset} ({plan.variant})")  # fmt: skip
            code = subprocess.call(rerun_command(app, plan, config_path))
            if code != 0:
                failures += 1
                click.echo(f"{app}: the evaluation failed (exit {code})", err=True)
        if once:
            sys.exit(1 if failures else 0)
        time.sleep(interval or settings.drift.interval_seconds)
