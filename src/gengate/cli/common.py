"""Helpers shared by CLI command groups: loading settings, opening the store, clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from gengate.errors import GengateError
from gengate.settings import Settings, load_settings
from gengate.store.db import Store, open_store

T = TypeVar("T")

LOCAL_CONFIG = "gengate.yaml"

config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None, envvar="GENGATE_CONFIG",
    help="gengate.yaml (default: ./gengate.yaml when it exists, else embedded defaults; env GENGATE_CONFIG).",
)  # fmt: skip


def config_path_or_local(config_path: str | None) -> str | None:
    """The configuration file a command uses: the one given (option or GENGATE_CONFIG), else `./gengate.yaml`
    when the current directory has one, else None (the embedded defaults)."""
    if config_path is None and Path(LOCAL_CONFIG).is_file():
        return LOCAL_CONFIG
    return config_path


def settings_or_exit(config_path: str | None) -> Settings:
    """Load settings (see `config_path_or_local`), turning configuration errors into a clear CLI message."""
    try:
        return load_settings(config_path_or_local(config_path))
    except GengateError as exc:
        raise click.ClickException(exc.message) from None


def with_store(settings: Settings, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run an async action, close the store."""

    async def run() -> T:
        store = await open_store(settings.database_url)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except GengateError as exc:
        raise click.ClickException(exc.message) from None
