"""Shared counters for rate limits and budgets: in-process by default, Redis when configured.

Both backends offer the same atomic operations, so several gateway processes sharing one Redis enforce
limits exactly:
- `hit`: add one request to each sliding 60 s log, all-or-nothing, only if every log stays within its limit;
- `tokens_used` / `add_tokens`: a sliding-window token estimate for TPM;
- `reserve` / `settle`: budget reservations in integer nano-dollars, all-or-nothing across scopes.

Owns: the atomicity. Must not: decide policy (that is `policy/engine.py`).
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

WINDOW = 60.0
Loader = Callable[[str], Awaitable[int]]


class Counters(Protocol):
    """The atomic operations policy needs."""

    async def hit(self, limits: Sequence[tuple[str, int]], now: float) -> float | None:
        """Record one request in every log if all are below their limit; else return seconds to retry."""
        ...

    async def tokens_used(self, key: str, now: float) -> int:
        """Tokens counted in the trailing window (sliding estimate)."""
        ...

    async def add_tokens(self, key: str, tokens: int, now: float) -> None:
        """Count tokens used."""
        ...

    async def reserve(self, budgets: Sequence[tuple[str, int, int]], amount: int, loader: Loader) -> bool:
        """Reserve `amount` against every (key, limit, ttl) if none would exceed its limit."""
        ...

    async def settle(self, keys: Sequence[tuple[str, int]], reserved: int, actual: int) -> None:
        """Replace a reservation by the actual amount, for each (key, ttl)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


def _token_window(now: float) -> tuple[int, float]:
    index = int(now // WINDOW)
    return index, (now - index * WINDOW) / WINDOW


class LocalCounters:
    """In-process counters: exact within one process (asyncio is single-threaded)."""

    def __init__(self) -> None:
        self._logs: dict[str, deque[float]] = {}
        self._tokens: dict[tuple[str, int], int] = {}
        self._budgets: dict[str, list[int]] = {}  # key -> [spent, reserved]
        self._load_lock = asyncio.Lock()

    async def hit(self, limits: Sequence[tuple[str, int]], now: float) -> float | None:
        retry: float | None = None
        for key, limit in limits:
            log = self._logs.setdefault(key, deque())
            while log and log[0] <= now - WINDOW:
                log.popleft()
            if len(log) >= limit:
                wait = (log[0] + WINDOW - now) if log else WINDOW
                retry = max(retry or 0.0, wait)
        if retry is not None:
            return retry
        for key, _ in limits:
            self._logs[key].append(now)
        return None

    async def tokens_used(self, key: str, now: float) -> int:
        index, frac = _token_window(now)
        prev = self._tokens.get((key, index - 1), 0)
        return math.ceil(prev * (1 - frac)) + self._tokens.get((key, index), 0)

    async def add_tokens(self, key: str, tokens: int, now: float) -> None:
        index, _ = _token_window(now)
        self._tokens[(key, index)] = self._tokens.get((key, index), 0) + tokens
        for stale in [k for k in self._tokens if k[1] < index - 1]:
            del self._tokens[stale]

    async def reserve(self, budgets: Sequence[tuple[str, int, int]], amount: int, loader: Loader) -> bool:
        for key, _, _ in budgets:
            if key not in self._budgets:
                async with self._load_lock:
                    if key not in self._budgets:
                        self._budgets[key] = [await loader(key), 0]
        if any(sum(self._budgets[key]) + amount > limit for key, limit, _ in budgets):
            return False
        for key, _, _ in budgets:
            self._budgets[key][1] += amount
        return True

    async def settle(self, keys: Sequence[tuple[str, int]], reserved: int, actual: int) -> None:
        for key, _ in keys:
            entry = self._budgets.get(key)
            if entry is None:
                # Never reserved here: an entry made now would hold only this call and hide the stored spend
                # from the loader; the request log has the cost, and the first reserve loads it.
                continue
            entry[1] = max(0, entry[1] - reserved)
            entry[0] += actual

    async def aclose(self) -> None:
        return None


_HIT = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local retry = -1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local limit = tonumber(ARGV[3 + i])
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local wait = window
    if oldest[2] then wait = tonumber(oldest[2]) + window - now end
    if wait > retry then retry = wait end
  end
end
if retry >= 0 then return tostring(retry) end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('EXPIRE', key, math.ceil(window) + 1)
end
return false
"""

_RESERVE = """
local amount = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then return -1 - i end
end
for i, key in ipairs(KEYS) do
  local spent = tonumber(redis.call('HGET', key, 'spent') or '0')
  local reserved = tonumber(redis.call('HGET', key, 'reserved') or '0')
  if spent + reserved + amount > tonumber(ARGV[1 + i]) then return 0 end
end
for i, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, 'reserved', ARGV[1])
end
return 1
"""

# A budget hash that no longer exists (evicted, Redis restarted) is left absent, never re-created holding only
# this call's cost: the next reserve then reloads the whole period's spend from the store.
_SETTLE = """
local reserved = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local left = redis.call('HINCRBY', key, 'reserved', -reserved)
    if left < 0 then redis.call('HSET', key, 'reserved', 0) end
    redis.call('HINCRBY', key, 'spent', ARGV[2])
    local ttl = tonumber(ARGV[2 + i])
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  end
end
return 1
"""


class RedisCounters:
    """Counters in Redis, each operation one Lua script (atomic across processes)."""

    def __init__(self, url: str, prefix: str = "gengate") -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            from gengate.errors import ConfigError

            raise ConfigError("redis.url is set but redis is not installed: pip install 'gengate[redis]'") from None
        self._redis: Any = aioredis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._hit = self._redis.register_script(_HIT)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        # Concurrent first calls in this process load a budget's spend once, not once each.
        self._load_lock = asyncio.Lock()

    def _k(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def hit(self, limits: Sequence[tuple[str, int]], now: float) -> float | None:
        if not limits:
            return None
        member = f"{now:.6f}:{uuid.uuid4().hex[:12]}"
        keys = [self._k("rpm:" + k) for k, _ in limits]
        result = await self._hit(keys=keys, args=[now, WINDOW, member, *[lim for _, lim in limits]])
        return None if result is None else max(0.0, float(result))

    async def tokens_used(self, key: str, now: float) -> int:
        index, frac = _token_window(now)
        prev, cur = await self._redis.mget(self._k(f"tpm:{key}:{index - 1}"), self._k(f"tpm:{key}:{index}"))
        return math.ceil(int(prev or 0) * (1 - frac)) + int(cur or 0)

    async def add_tokens(self, key: str, tokens: int, now: float) -> None:
        index, _ = _token_window(now)
        name = self._k(f"tpm:{key}:{index}")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(name, tokens)
            pipe.expire(name, int(WINDOW * 2) + 1)
            await pipe.execute()

    async def reserve(self, budgets: Sequence[tuple[str, int, int]], amount: int, loader: Loader) -> bool:
        keys = [self._k("budget:" + k) for k, _, _ in budgets]
        args = [amount, *[limit for _, limit, _ in budgets]]
        for _ in range(len(keys) + 1):
            result = int(await self._reserve(keys=keys, args=args))
            if result >= 0:
                return result == 1
            missing = -result - 2
            name, _, ttl = budgets[missing]
            await self._initialise(keys[missing], name, ttl, loader)
        return False

    async def _initialise(self, redis_key: str, name: str, ttl: int, loader: Loader) -> None:
        async with self._load_lock:
            if await self._redis.exists(redis_key):
                return
            spent = await loader(name)
            # HSETNX: if another process initialised it meanwhile, its value stands.
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hsetnx(redis_key, "spent", spent)
                pipe.hsetnx(redis_key, "reserved", 0)
                if ttl > 0:
                    pipe.expire(redis_key, ttl)
                await pipe.execute()

    async def settle(self, keys: Sequence[tuple[str, int]], reserved: int, actual: int) -> None:
        if keys:
            names = [self._k("budget:" + k) for k, _ in keys]
            await self._settle(keys=names, args=[reserved, actual, *[ttl for _, ttl in keys]])

    async def aclose(self) -> None:
        await self._redis.aclose()
