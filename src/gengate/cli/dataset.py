"""`gengate dataset import|list|show|diff`: evaluation datasets, versioned by content hash."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.cli.drift import parse_since
from gengate.eval.datasets import Case, DatasetError, check_name, content_hash, diff, parse_dataset
from gengate.outer.payloads import Redactor
from gengate.outer.traces import TraceOptions, TraceSelection, cases_from_traces
from gengate.settings import Settings
from gengate.store.db import Store
from gengate.store.evals import EvalStore
from gengate.store.outer_runs import OuterRunsStore, TraceQuery

T = TypeVar("T")


@click.group()
def dataset() -> None:
    """Manage evaluation datasets (JSONL, CSV or YAML cases)."""


def _with_evals(settings: Settings, action: Callable[[EvalStore], Awaitable[T]]) -> T:
    async def run(store: Store) -> T:
        return await action(EvalStore(store.engine))

    return with_store(settings, run)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _summary(case: Case) -> str:
    text = case.question if case.question is not None else (case.messages or [{"content": ""}])[-1]["content"]
    return " ".join(text.split())[:100]


@dataset.command("import")
@config_option
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_dataset(config_path: str | None, name: str, file: Path) -> None:
    """Import FILE as the next version of NAME. Bad rows are reported by line; the rest still import."""
    settings = settings_or_exit(config_path)
    try:
        parsed = parse_dataset(file)
        check_name(name)
    except DatasetError as exc:
        raise click.ClickException(exc.message) from None
    rejected = f" ({len(parsed.errors)} rows rejected)" if parsed.errors else ""
    if parsed.cases:
        digest = content_hash(parsed.cases)
        version, created = _with_evals(
            settings, lambda evals: evals.import_dataset(name, parsed.cases, digest, source=file.name)
        )
        if created:
            click.echo(f"{name} v{version}: {len(parsed.cases)} cases{rejected}")
        else:
            click.echo(f"{name} is unchanged (v{version}){rejected}")
    else:
        click.echo(f"{name}: no valid cases in {file.name}{rejected}; nothing imported", err=True)
    for error in parsed.errors:
        click.echo(f"  line {error.line}: {error.message}", err=True)
    if not parsed.cases:
        sys.exit(1)


@dataset.command("list")
@config_option
def list_datasets(config_path: str | None) -> None:
    """Datasets with their latest version and case count."""
    settings = settings_or_exit(config_path)
    versions = _with_evals(settings, lambda evals: evals.list())
    click.echo(f"{'NAME':<32} {'VERSION':>7} {'CASES':>7}  {'CREATED':<19}  SOURCE")
    for v in versions:
        click.echo(f"{v.name:<32} {'v' + str(v.version):>7} {v.case_count:>7}  {_when(v.created_at):<19}  {v.source}")


@dataset.command("show")
@config_option
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(min=1), default=None, help="Version (default: latest).")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Cases to show (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the version and its cases as JSON.")
def show(config_path: str | None, name: str, version: int | None, limit: int, as_json: bool) -> None:
    """A dataset version and its cases."""
    settings = settings_or_exit(config_path)

    async def run(evals: EvalStore) -> tuple[Any, list[Case]]:
        record = await evals.get(name, version)
        return record, await evals.cases(name, record.version)

    record, cases = _with_evals(settings, run)
    shown = cases[:limit] if limit else cases
    if as_json:
        body = {
            "name": record.name, "version": record.version, "content_hash": record.content_hash,
            "created_at": record.created_at, "source": record.source, "case_count": record.case_count,
            "cases": [c.to_dict() for c in shown],
        }  # fmt: skip
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
        return
    click.echo(f"{record.name} v{record.version}: {record.case_count} cases from {record.source or '?'}")
    click.echo(f"  sha256 {record.content_hash} · created {_when(record.created_at)}")
    for case in shown:
        extras = [f"as {case.identity.subject}"] if case.identity is not None else []
        extras += [f"{k}={v}" for k, v in sorted(case.expected.items())]
        extras += [f"#{t}" for t in case.tags]
        click.echo(f"  {case.case_id}  {_summary(case)}" + (f"  [{' '.join(extras)}]" if extras else ""))
    if len(shown) < len(cases):
        click.echo(f"  … {len(cases) - len(shown)} more (--limit 0 shows all)")


@dataset.command("diff")
@config_option
@click.argument("name")
@click.argument("v1", type=click.IntRange(min=1))
@click.argument("v2", type=click.IntRange(min=1))
def diff_versions(config_path: str | None, name: str, v1: int, v2: int) -> None:
    """Case ids added, removed and changed from version V1 to version V2."""
    settings = settings_or_exit(config_path)

    async def run(evals: EvalStore) -> tuple[list[Case], list[Case]]:
        return await evals.cases(name, v1), await evals.cases(name, v2)

    old, new = _with_evals(settings, run)
    changes = diff(old, new)
    click.echo(
        f"{name} v{v1} → v{v2}: {len(changes.added)} added, {len(changes.removed)} removed, "
        f"{len(changes.changed)} changed"
    )
    for mark, ids in (("+", changes.added), ("-", changes.removed), ("~", changes.changed)):
        for case_id in ids:
            click.echo(f"  {mark} {case_id}")


@dataset.command("from-traces")
@config_option
@click.argument("name")
@click.option("--app", "app", required=True, help="The app whose recorded answers become cases.")
@click.option("--since", default=None, help="Answers since: 7d, 12h or an ISO date.")
@click.option("--until", default=None, help="Answers before: 1d or an ISO date.")
@click.option("--feedback", type=click.Choice(["down", "up", "any", "none"]), default="any", show_default=True,
              help="Latest thumbs: down, up, any (no filter) or none (no thumbs).")  # fmt: skip
@click.option("--with-findings", is_flag=True, help="Only answers with guard findings.")
@click.option("--outcome", type=click.Choice(["answered", "no_answer", "blocked"]), default=None)
@click.option("--tag", "tags", multiple=True, help="Extra tag on every case (repeatable).")
@click.option(
    "--group", "groups", multiple=True, help="Group for every identity (added to the groups answers recorded)."
)
@click.option("--no-identity", is_flag=True, help="Run cases as nobody instead of the caller that asked.")
@click.option("--gold-from-citations", is_flag=True, help="Cited documents as gold ids (thumbs-up answers only).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Keep the newest N distinct questions.")
@click.option("--sample", type=click.IntRange(min=1), default=None, help="Then draw N at random (with --seed).")
@click.option("--seed", type=int, default=0, show_default=True)
def from_traces(
    config_path: str | None, name: str, app: str, since: str | None, until: str | None, feedback: str,
    with_findings: bool, outcome: str | None, tags: tuple[str, ...], groups: tuple[str, ...], no_identity: bool,
    gold_from_citations: bool, limit: int | None, sample: int | None, seed: int,
) -> None:  # fmt: skip
    """Build the next version of NAME from an app's recorded answers, redacted (production answers as metadata)."""
    settings = settings_or_exit(config_path)
    try:
        check_name(name)
    except DatasetError as exc:
        raise click.ClickException(exc.message) from None
    query = TraceQuery(
        app=app, since=parse_since(since) if since else None, until=parse_since(until) if until else None,
        feedback=feedback, with_findings=with_findings, outcome=outcome,  # type: ignore[arg-type]
    )  # fmt: skip
    options = TraceOptions(tags=tags, identity=not no_identity, groups=groups,
                           gold_from_citations=gold_from_citations, limit=limit, sample=sample, seed=seed)  # fmt: skip

    async def run(store: Store) -> tuple[TraceSelection, tuple[int, bool] | None]:
        traces = await OuterRunsStore(store.engine).traces(query)
        selection = cases_from_traces(traces, options, Redactor().redact)
        if not selection.cases:
            return selection, None
        digest = content_hash(selection.cases)
        imported = await EvalStore(store.engine).import_dataset(name, selection.cases, digest, f"traces-{app}")
        return selection, imported

    selection, imported = with_store(settings, run)
    click.echo(
        f"selected {selection.selected} answers of app {app}: {selection.skipped_payload_none} skipped (payloads "
        f"none), {selection.skipped_no_question} without a question, {selection.duplicates} duplicate questions "
        f"merged, {selection.left_out} left out by --limit/--sample"
    )
    for note in selection.notes:
        click.echo(f"note: {note}", err=True)
    if imported is None:
        click.echo(f"{name}: no cases; nothing imported", err=True)
        sys.exit(1)
    version, created = imported
    if created:
        click.echo(f"{name} v{version}: {len(selection.cases)} cases from traces")
    else:
        click.echo(f"{name} is unchanged (v{version})")
