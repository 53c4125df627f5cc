"""`gengate kb create|ingest|list|show|history|rechunk|search|delete`."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.rag.chunk import ChunkingSettings
from gengate.rag.kb import KnowledgeBases
from gengate.rag.sources import ManifestError, scan_source
from gengate.rag.types import AccessList, access_tokens
from gengate.settings import Settings
from gengate.store.db import Store
from gengate.store.knowledge import KnowledgeStore

T = TypeVar("T")


@click.group()
def kb() -> None:
    """Manage knowledge bases for RAG apps."""


def _with_kbs(settings: Settings, action: Callable[[KnowledgeBases], Awaitable[T]]) -> T:
    async def run(store: Store) -> T:
        return await action(KnowledgeBases(KnowledgeStore(store.engine), settings.rag))

    return with_store(settings, run)


class Bar:
    """A progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, item: str) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        rate = done / max(time.perf_counter() - self.started, 1e-9)
        line = f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:.1f}/s {item[-40:]}"
        if self.tty:
            click.echo("\r" + line.ljust(120), nl=done == total, err=True)
        elif done == total or done % 50 == 0:
            click.echo(line, err=True)


def _access(users: tuple[str, ...], groups: tuple[str, ...], teams: tuple[str, ...]) -> AccessList | None:
    access = AccessList(users=users, groups=groups, teams=teams)
    return None if access.empty else access


def _chunking(settings: Settings, strategy: str | None, size: int | None, overlap: int | None,
              window: int | None) -> ChunkingSettings:  # fmt: skip
    values: dict[str, Any] = settings.rag.chunking.model_dump()
    for key, value in (("strategy", strategy), ("size", size), ("overlap", overlap), ("window", window)):
        if value is not None:
            values[key] = value
    try:
        return ChunkingSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'chunking'}: {e['msg']}" for e in exc.errors())
        raise click.ClickException(f"invalid chunking: {problems}") from None


chunking_options = [
    click.option("--strategy", type=click.Choice(["fixed", "structure", "sentence_window"]), default=None),
    click.option("--size", type=click.IntRange(min=1), default=None, help="Target chunk size in characters."),
    click.option("--overlap", type=click.IntRange(min=0), default=None, help="Overlap (fixed strategy)."),
    click.option("--window", type=click.IntRange(min=0), default=None, help="Sentences around (sentence_window)."),
]
access_options = [
    click.option("--user", "users", multiple=True, help="User who may read (repeatable)."),
    click.option("--group", "groups", multiple=True, help="Group that may read (repeatable)."),
    click.option("--team", "teams", multiple=True, help="Team that may read (repeatable)."),
]


def _apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@kb.command("create")
@config_option
@click.argument("name")
@click.option("--description", default="")
@_apply(chunking_options)
@click.option("--default-user", "users", multiple=True, help="Default reader of documents with no access list.")
@click.option("--default-group", "groups", multiple=True, help="Default group for documents with no access list.")
@click.option("--default-team", "teams", multiple=True, help="Default team for documents with no access list.")
@click.option("--sentence-vectors", is_flag=True,
              help="Also embed every sentence: better ranking, several times slower ingestion.")  # fmt: skip
def create(
    config_path: str | None, name: str, description: str, strategy: str | None, size: int | None,
    overlap: int | None, window: int | None, users: tuple[str, ...], groups: tuple[str, ...], teams: tuple[str, ...],
    sentence_vectors: bool,
) -> None:  # fmt: skip
    """Create a knowledge base. Documents need an access list unless a default is given here."""
    settings = settings_or_exit(config_path)
    chunking = _chunking(settings, strategy, size, overlap, window)
    default = _access(users, groups, teams)
    record = _with_kbs(
        settings,
        lambda kbs: kbs.create(
            name, description=description, chunking=chunking, default_access=default, sentence_vectors=sentence_vectors
        ),
    )
    click.echo(f"created knowledge base {record.name} ({chunking.strategy}, embeddings: {record.embeddings})")


@kb.command("ingest")
@config_option
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, file_okay=True, dir_okay=True, path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML/JSON file giving access lists (and titles, metadata) by path or glob.")  # fmt: skip
@_apply(access_options)
@click.option("--no-prune", is_flag=True, help="Keep documents whose files are gone from PATH.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def ingest(
    config_path: str | None, name: str, path: Path, manifest: Path | None, users: tuple[str, ...],
    groups: tuple[str, ...], teams: tuple[str, ...], no_prune: bool, as_json: bool,
) -> None:  # fmt: skip
    """Ingest a file or folder (Markdown, text, HTML, PDF, DOCX). Changed files get a new version."""
    settings = settings_or_exit(config_path)
    access = _access(users, groups, teams)
    source = str(path.resolve())

    async def run(kbs: KnowledgeBases) -> dict[str, Any]:
        record = await kbs.store.require(name)
        try:
            scan = await asyncio.to_thread(
                scan_source, path, manifest=manifest, access=access, default_access=kbs.default_access(record),
                max_file_bytes=int(settings.rag.max_file_mb * 1024 * 1024), progress=Bar("reading "),
            )  # fmt: skip
        except ManifestError as exc:
            raise click.ClickException(str(exc)) from None
        report = await kbs.ingest(name, scan, source=source, prune=not no_prune, progress=Bar("indexing"))
        return report.as_dict()

    report = _with_kbs(settings, run)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"{name}: {len(report['added'])} added, {len(report['changed'])} changed, {report['unchanged']} unchanged, "
        f"{len(report['access_changed'])} access changed, {len(report['retired'])} retired, "
        f"{report['chunks']} chunks in {report['seconds']:.1f}s"
    )
    for doc in report["suspicious"]:
        verb = "quarantined" if settings.rag.on_suspicious == "quarantine" else "marked"
        click.echo(f"  suspicious ({verb}): {doc} — the injection classifier flagged part of it", err=True)
    for problem in report["problems"]:
        click.echo(f"  skipped {problem['document']}: {problem['error']}", err=True)
    if report["problems"]:
        sys.exit(1 if not (report["added"] or report["changed"] or report["unchanged"]) else 0)


@kb.command("list")
@config_option
def list_kbs(config_path: str | None) -> None:
    """Knowledge bases with their document and chunk counts."""
    settings = settings_or_exit(config_path)
    summaries = _with_kbs(settings, lambda kbs: kbs.store.summaries())
    click.echo(f"{'NAME':<24} {'DOCS':>6} {'CHUNKS':>8} {'SUSPICIOUS':>10}  {'CHUNKING':<16} EMBEDDINGS")
    for s in summaries:
        click.echo(
            f"{s.record.name:<24} {s.documents:>6} {s.chunks:>8} {s.suspicious:>10}  "
            f"{s.record.chunking.get('strategy', '?'):<16} {s.record.embeddings}"
        )


@kb.command("show")
@config_option
@click.argument("name")
def show(config_path: str | None, name: str) -> None:
    """A knowledge base's settings and active documents."""
    settings = settings_or_exit(config_path)

    async def run(kbs: KnowledgeBases) -> tuple[Any, Any]:
        return await kbs.store.require(name), await kbs.store.active_documents(name)

    record, docs = _with_kbs(settings, run)
    click.echo(f"knowledge base {record.name}: {record.description or '(no description)'}")
    click.echo(f"  chunking: {json.dumps(record.chunking)}")
    sentences = " + sentence vectors" if record.sentence_vectors else ""
    click.echo(f"  embeddings: {record.embeddings}{sentences} · generation {record.generation}")
    click.echo(f"  default access: {json.dumps(record.default_access) if record.default_access else 'none'}")
    click.echo(f"  {len(docs)} active documents:")
    for doc in sorted(docs.values(), key=lambda d: d.doc_id):
        flag = "  [suspicious]" if doc.suspicious else ""
        click.echo(f"    {doc.doc_id}  v{doc.version}  {doc.content_hash[:12]}  {','.join(sorted(doc.access))}{flag}")


@kb.command("history")
@config_option
@click.argument("name")
@click.option("--document", default=None, help="Only this document id.")
@click.option("--limit", type=click.IntRange(min=1), default=100)
def history(config_path: str | None, name: str, document: str | None, limit: int) -> None:
    """What changed when: documents added, changed, retired, refused; rechunks."""
    settings = settings_or_exit(config_path)

    async def run(kbs: KnowledgeBases) -> list[dict[str, Any]]:
        await kbs.store.require(name)
        return await kbs.store.history(name, limit=limit, doc_id=document)

    for e in _with_kbs(settings, run):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["ts"]))
        version = f" v{e['version']}" if e["version"] is not None else ""
        click.echo(f"{when}  {e['action']:<14} {e['doc_id'] or '-'}{version}  {e['detail']}")


@kb.command("rechunk")
@config_option
@click.argument("name")
@_apply(chunking_options)
def rechunk(
    config_path: str | None, name: str, strategy: str | None, size: int | None, overlap: int | None,
    window: int | None,
) -> None:  # fmt: skip
    """Rebuild the index under a new chunking strategy from stored document text (versions are kept)."""
    settings = settings_or_exit(config_path)
    chunking = _chunking(settings, strategy, size, overlap, window)
    docs, chunks = _with_kbs(settings, lambda kbs: kbs.rechunk(name, chunking, progress=Bar("rechunk ")))
    click.echo(f"{name}: {docs} documents → {chunks} chunks ({chunking.strategy})")


@kb.command("search")
@config_option
@click.argument("name")
@click.argument("query")
@click.option("--as-user", "user", default="", help="Search as this user.")
@click.option("--as-group", "groups", multiple=True, help="Search with this group (repeatable).")
@click.option("--as-team", "team", default="", help="Search as a member of this team.")
@click.option("-k", "k", type=click.IntRange(min=1, max=100), default=5)
def search(
    config_path: str | None, name: str, query: str, user: str, groups: tuple[str, ...], team: str, k: int
) -> None:
    """Search as a given caller (what would that caller's app see?)."""
    settings = settings_or_exit(config_path)
    allowed = access_tokens(users=(user,), groups=groups, teams=(team,))
    if not allowed:
        raise click.ClickException("give --as-user, --as-group or --as-team: retrieval denies by default")

    async def run(kbs: KnowledgeBases) -> Any:
        await kbs.store.require(name)
        return await kbs.search([name], query, allowed, k=k)

    for i, hit in enumerate(_with_kbs(settings, run), 1):
        text = " ".join(hit.chunk.text.split())
        click.echo(f"{i}. {hit.score:.3f}  {hit.chunk.doc_id} v{hit.chunk.version}  {hit.chunk.title}")
        click.echo(f"   {text[:200]}")


@kb.command("delete")
@config_option
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(config_path: str | None, name: str, yes: bool) -> None:
    """Delete a knowledge base with all its documents and history."""
    settings = settings_or_exit(config_path)
    if not yes:
        click.confirm(f"delete knowledge base {name} and all its documents?", abort=True)
    _with_kbs(settings, lambda kbs: kbs.delete(name))
    click.echo(f"deleted {name}")
