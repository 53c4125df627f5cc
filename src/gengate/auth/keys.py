"""Virtual API keys: random, shown once, stored as a SHA-256 hash behind a visible prefix.

Format: `sk-gg-<8 hex prefix>-<40 url-safe random characters>`. The prefix is the record id (safe to show
and log); the hash is of the whole key, so a stolen database yields no usable key.

Owns: key generation, hashing, the authenticator with its short cache. Must not: log keys or hashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gengate.errors import AuthenticationError, RequestError
from gengate.store.db import KeyRecord, Store
from gengate.types import Principal

KEY_PATTERN = re.compile(r"^sk-gg-([0-9a-f]{8})-([A-Za-z0-9_-]{40})$")
BUDGET_PERIODS = ("day", "month", "total")


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A freshly created key: `secret` is shown once and never again."""

    secret: str
    record: KeyRecord


@dataclass(frozen=True)
class KeySpec:
    """What a new key is bound to and allowed to do."""

    team: str
    user: str | None = None
    name: str = ""
    models: Sequence[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    expires_in_seconds: float | None = None

    def validate(self) -> None:
        """Raise RequestError naming the bad field."""
        if not self.team or not self.team.strip():
            raise RequestError("team is required", param="team")
        for field in ("team", "user", "name"):  # the columns' width: a longer value is refused, not cut
            text = getattr(self, field)
            if text is not None and (len(text) > 200 or "\x00" in text):
                raise RequestError(f"{field} must be at most 200 characters, without NUL", param=field)
        for model in self.models or ():
            if not model or len(model) > 200:
                raise RequestError("each model pattern must be 1 to 200 characters", param="models")
        if self.expires_in_seconds is not None and self.expires_in_seconds <= 0:
            raise RequestError("expires_in_seconds must be positive", param="expires_in_seconds")
        for field in ("rpm", "tpm", "budget_usd"):
            value = getattr(self, field)
            if value is not None and value < 0:
                raise RequestError(f"{field} must not be negative", param=field)
        if self.budget_period is not None and self.budget_period not in BUDGET_PERIODS:
            raise RequestError(f"budget_period must be one of {', '.join(BUDGET_PERIODS)}", param="budget_period")


async def create_key(store: Store, spec: KeySpec, now: float | None = None) -> NewKey:
    """Generate, hash and store a key; return it with its secret (the only time it exists in clear)."""
    spec.validate()
    now = time.time() if now is None else now
    for _ in range(5):
        prefix = secrets.token_hex(4)
        if await store.get_key(prefix) is None:
            break
    else:  # pragma: no cover - 2^32 prefixes
        raise RuntimeError("could not find a free key prefix")
    secret = f"sk-gg-{prefix}-{secrets.token_urlsafe(30)[:40]}"
    record = KeyRecord(
        id=prefix,
        hash=hash_key(secret),
        name=spec.name,
        team=spec.team.strip(),
        user=spec.user,
        models=tuple(spec.models) if spec.models is not None else None,
        rpm=spec.rpm,
        tpm=spec.tpm,
        budget_usd=spec.budget_usd,
        budget_period=(spec.budget_period or "month") if spec.budget_usd is not None else None,
        created_at=now,
        expires_at=now + spec.expires_in_seconds if spec.expires_in_seconds else None,
        revoked_at=None,
    )
    await store.insert_key(record)
    return NewKey(secret=secret, record=record)


class KeyAuthenticator:
    """Turns a presented key into a Principal, caching records briefly so the hot path skips the database.

    A revocation made through this process takes effect at once; one made elsewhere within `cache_seconds`.
    """

    def __init__(
        self,
        store: Store,
        *,
        admin_keys: Sequence[str] = (),
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._admin_hashes = [hash_key(k) for k in admin_keys]
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}
        self._loading: dict[str, asyncio.Future[KeyRecord | None]] = {}

    def forget(self, key_id: str) -> None:
        """Drop a cached record (after revocation or change)."""
        self._cache.pop(key_id, None)

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[0] < self._cache_seconds:
            return hit[1]
        # One lookup per key id at a time: when a popular key's cache entry expires, concurrent requests
        # share the refresh instead of each querying the database.
        pending = self._loading.get(key_id)
        if pending is None:
            pending = self._loading[key_id] = asyncio.ensure_future(self._store.get_key(key_id))
            pending.add_done_callback(lambda _: self._loading.pop(key_id, None))
        record = await asyncio.shield(pending)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record

    async def authenticate(self, token: str) -> tuple[Principal, KeyRecord | None]:
        """Verify a key; raise AuthenticationError with a reason that never echoes the key."""
        digest = hash_key(token)
        if any(hmac.compare_digest(digest, h) for h in self._admin_hashes):
            return Principal(subject="admin", team="admin", auth="admin", admin=True, token=token), None
        match = KEY_PATTERN.match(token)
        if match is None:
            raise AuthenticationError("invalid API key format")
        record = await self._record(match.group(1))
        if record is None or not hmac.compare_digest(record.hash, digest):
            raise AuthenticationError("invalid API key")
        now = self._clock()
        if record.revoked_at is not None:
            raise AuthenticationError("API key has been revoked")
        if record.expires_at is not None and record.expires_at <= now:
            raise AuthenticationError("API key has expired")
        principal = Principal(
            subject=record.user or f"key:{record.id}",
            team=record.team,
            key_id=record.id,
            auth="key",
            token=token,
        )
        return principal, record
