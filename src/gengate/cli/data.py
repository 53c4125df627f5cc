"""`gengate data purge|forget`: retention and privacy of the outer loop's data.

A running gateway purges on its own (at start and every hour); `purge` is for cron jobs and for checking what
the settings delete. `forget` is the same operation as `DELETE /admin/subjects/{subject}`, for when no gateway
runs; a running gateway may still hold that person's answers in memory for up to half a minute (its answer
cache), so prefer the admin API while one is up.
"""

from __future__ import annotations

import time

import click

from gengate.cli.common import config_option, settings_or_exit, with_store
from gengate.outer.feedback import purge_cutoffs
from gengate.store.feedback import FeedbackStore


@click.group()
def data() -> None:
    """Retention and privacy: purge expired answers and feedback, forget a person."""


@data.command("purge")
@config_option
def purge(config_path: str | None) -> None:
    """Delete answers and their feedback older than each app's `retention_days` (request logs stay)."""
    settings = settings_or_exit(config_path)
    cutoffs, others = purge_cutoffs(settings.apps, time.time())
    counts = with_store(settings, lambda store: FeedbackStore(store.engine).purge(cutoffs, others))
    for name, app in sorted(settings.apps.items()):
        kept = "kept forever" if app.retention_days is None else f"kept {app.retention_days:g} days"
        click.echo(f"app {name}: {kept}", err=True)
    click.echo(f"responses deleted: {counts.responses}")
    click.echo(f"feedback deleted: {counts.feedback}")
    click.echo(f"trace steps deleted: {counts.trace_steps}")


@data.command("forget")
@config_option
@click.option("--subject", required=True, help="The person: a JWT subject, a key's user, or key:<id>.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def forget(config_path: str | None, subject: str, yes: bool) -> None:
    """Delete one person's answers, feedback, guard findings and trace steps; anonymise their request-log rows."""
    settings = settings_or_exit(config_path)
    if not yes:
        click.confirm(f"Delete everything kept about {subject!r}?", abort=True)
    counts = with_store(settings, lambda store: FeedbackStore(store.engine).forget(subject))
    click.echo(f"responses deleted: {counts.responses}")
    click.echo(f"feedback deleted: {counts.feedback}")
    click.echo(f"guard findings deleted: {counts.guard_findings}")
    click.echo(f"trace steps deleted: {counts.trace_steps}")
    click.echo(f"requests anonymised: {counts.requests_anonymised}")
