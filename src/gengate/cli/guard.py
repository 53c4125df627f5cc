"""`gengate guard explain|scan`."""

from __future__ import annotations

import json
import sys

import click

from gengate.app.guard_routes import scan_view
from gengate.cli.common import config_option, settings_or_exit
from gengate.guard.base import Stage
from gengate.guard.pipeline import Guard


def _guard(config_path: str | None) -> Guard:
    settings = settings_or_exit(config_path)
    try:
        return Guard(settings.guard)
    except ValueError as exc:
        raise click.ClickException(f"guard: {exc}") from None


@click.group()
def guard() -> None:
    """Inspect and try the guard pipeline."""


@guard.command("explain")
@config_option
def explain(config_path: str | None) -> None:
    """Print every guard profile exactly as built."""
    click.echo(_guard(config_path).explain())


@guard.command("scan")
@config_option
@click.option("--profile", "-p", default=None, help="Profile (default: the default profile).")
@click.option("--stage", "-s", type=click.Choice([s.value for s in Stage]), default="input")
@click.argument("text", required=False)
def scan(config_path: str | None, profile: str | None, stage: str, text: str | None) -> None:
    """Scan TEXT (or standard input) and print the decision and findings as JSON; exit 2 when blocked."""
    g = _guard(config_path)
    name = profile or g.settings.default_profile
    if name is None or name not in g.pipelines:
        known = ", ".join(sorted(g.pipelines)) or "none configured"
        raise click.ClickException(f"choose a profile with --profile (known: {known})")
    pipeline = g.pipelines[name]
    content = text if text is not None else sys.stdin.read()
    result = pipeline.scan(Stage(stage), content)
    click.echo(json.dumps(scan_view(pipeline, result), indent=2, ensure_ascii=False))
    if result.blocked:
        sys.exit(2)
