"""The keyed hash recorded for a finding stays the same across restarts and processes sharing a data directory."""

from __future__ import annotations

import asyncio
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from conftest import base_config, merge, settings_from
from gengate.app.gateway import open_gateway
from gengate.guard.hash_key import FILE_NAME, data_dir_key

PROFILE = {"guard": {"profiles": {"p": {"input": [{"detector": "pii", "action": "flag"}]}}, "default_profile": "p"}}


def _fingerprint(config: dict, tmp_path: Path) -> str:
    async def go() -> str:
        gateway = await open_gateway(settings_from(config, tmp_path))
        try:
            return gateway.guard.pipelines["p"].fingerprint("jane.doe@example.com")
        finally:
            await gateway.close()

    return asyncio.run(go())


def test_finding_hashes_survive_a_restart_and_differ_between_data_directories(tmp_path: Path) -> None:
    first = merge(base_config(None, tmp_path / "a"), PROFILE)
    assert _fingerprint(first, tmp_path) == _fingerprint(first, tmp_path)
    key_file = tmp_path / "a" / FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    other = merge(base_config(None, tmp_path / "b"), PROFILE)
    assert _fingerprint(other, tmp_path) != _fingerprint(first, tmp_path)
    # A configured key wins over the file.
    configured = merge(first, {"guard": {"hash_key": "k" * 32}})
    assert _fingerprint(configured, tmp_path) != _fingerprint(first, tmp_path)


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    with ProcessPoolExecutor(4) as pool:
        keys = list(pool.map(data_dir_key, [tmp_path] * 8))
    assert len(set(keys)) == 1 and len(keys[0]) == 32
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temporary files left behind


def test_a_damaged_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("not hex")
    with pytest.raises(ValueError, match="not a hex key"):
        data_dir_key(tmp_path)
