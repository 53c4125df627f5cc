"""`gengate keys create|list|revoke`."""

from __future__ import annotations

import time

import click

from gengate.auth.keys import KeySpec, create_key
from gengate.cli.common import config_option, settings_or_exit, with_store


@click.group()
def keys() -> None:
    """Manage virtual API keys."""


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) if ts else "-"


@keys.command("create")
@config_option
@click.option("--team", required=True, help="Team the key belongs to.")
@click.option("--user", default=None, help="User the key is bound to.")
@click.option("--name", default="", help="A label.")
@click.option("--model", "models", multiple=True, help="Allowed model (repeatable; default: the team's).")
@click.option("--rpm", type=click.IntRange(min=0), default=None)
@click.option("--tpm", type=click.IntRange(min=0), default=None)
@click.option("--budget-usd", type=click.FloatRange(min=0), default=None)
@click.option("--budget-period", type=click.Choice(["day", "month", "total"]), default=None)
@click.option("--expires-in-days", type=click.FloatRange(min=0, min_open=True), default=None)
def create(
    config_path: str | None, team: str, user: str | None, name: str, models: tuple[str, ...], rpm: int | None,
    tpm: int | None, budget_usd: float | None, budget_period: str | None, expires_in_days: float | None,
) -> None:  # fmt: skip
    """Create a key; it is printed once and cannot be shown again."""
    settings = settings_or_exit(config_path)
    spec = KeySpec(
        team=team, user=user, name=name, models=list(models) or None, rpm=rpm, tpm=tpm, budget_usd=budget_usd,
        budget_period=budget_period, expires_in_seconds=expires_in_days * 86400 if expires_in_days else None,
    )  # fmt: skip
    new = with_store(settings, lambda store: create_key(store, spec))
    click.echo(new.secret)
    click.echo(f"id {new.record.id} · team {new.record.team} · store it now: it will not be shown again", err=True)


@keys.command("list")
@config_option
@click.option("--team", default=None)
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def list_keys(config_path: str | None, team: str | None, include_revoked: bool) -> None:
    """List keys (prefixes only, never secrets)."""
    settings = settings_or_exit(config_path)
    records = with_store(settings, lambda store: store.list_keys(team=team, include_revoked=include_revoked))
    click.echo(f"{'ID':<10} {'TEAM':<16} {'USER':<16} {'NAME':<16} {'CREATED':<17} {'EXPIRES':<17} STATUS")
    now = time.time()
    for r in records:
        status = "revoked" if r.revoked_at else ("expired" if not r.active(now) else "active")
        click.echo(
            f"{r.id:<10} {r.team:<16} {(r.user or '-'):<16} {(r.name or '-'):<16} "
            f"{_when(r.created_at):<17} {_when(r.expires_at):<17} {status}"
        )


@keys.command("revoke")
@config_option
@click.argument("key_id")
def revoke(config_path: str | None, key_id: str) -> None:
    """Revoke a key by its id (the 8-character prefix)."""
    settings = settings_or_exit(config_path)
    if not with_store(settings, lambda store: store.revoke_key(key_id)):
        raise click.ClickException(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")
