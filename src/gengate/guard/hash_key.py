"""The key behind the keyed hashes recorded for guard findings, kept in the data directory when not configured.

A finding's value is never stored, only an HMAC of it, so that the same leaked value can be recognised across
requests without being readable. That needs one key for every process and every restart: `guard.hash_key` in the
configuration (required when gateways on several hosts share a database), else a random key created once in
`storage.data_dir` with owner-only permissions. Owns: reading and creating that file. Must not: log the key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

FILE_NAME = "guard-hash.key"
KEY_BYTES = 32


def data_dir_key(data_dir: str | Path) -> bytes:
    """The key stored in `data_dir`, created atomically on first use (several processes may start at once)."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    if not path.exists():
        tmp = folder / f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(KEY_BYTES))
            # link() fails if another process got there first: theirs wins, and everyone reads the same file.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(f"{path.name} in the data directory is not a hex key: delete it to create a new one")
    return key
