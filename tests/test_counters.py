"""The shared counters behind rate limits and budgets, in-process and in a real Redis: same contract, same table.

Time is passed in explicitly (`now`), so windows are exact. The budget loader stands in for the store: a plain
async function that records its calls.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from gengate.policy.counters import Counters, LocalCounters, RedisCounters

NOW = 1_000_000.0
MakeCounters = Callable[[], Counters]


@dataclass
class StoreSpend:
    """What the durable request log says was spent, per budget counter key; counts the loads."""

    spent: dict[str, int] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    delay: float = 0.0

    async def __call__(self, key: str) -> int:
        self.loads.append(key)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.spent.get(key, 0)


@pytest.fixture(
    params=[
        pytest.param("local", id="local"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_prefix")
    return str(request.param)


@pytest.fixture
async def make_counters(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeCounters]:
    """Counters sharing one state: the same LocalCounters, or new Redis connections on the same prefix."""
    opened: list[Counters] = []
    local = LocalCounters()

    def make() -> Counters:
        if backend == "local":
            return local
        counters = RedisCounters(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
        opened.append(counters)
        return counters

    yield make
    for counters in opened:
        await counters.aclose()


@pytest.fixture
def counters(make_counters: MakeCounters) -> Counters:
    return make_counters()


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


# ---------------------------------------------------------------- requests per minute


async def test_hit_allows_exactly_the_limit_then_gives_the_wait_until_the_oldest_leaves(counters: Counters) -> None:
    for i in range(3):
        assert await counters.hit([("team:a", 3)], NOW + i * 0.1) is None
    retry = await counters.hit([("team:a", 3)], NOW + 0.3)
    assert retry == pytest.approx(59.7, abs=1e-3)
    assert await counters.hit([("team:a", 3)], NOW + 30) == pytest.approx(30.0, abs=1e-3)


async def test_hit_window_slides_so_each_old_request_frees_one_slot(counters: Counters) -> None:
    for i in range(3):
        assert await counters.hit([("team:a", 3)], NOW + i) is None
    assert await counters.hit([("team:a", 3)], NOW + 59.5) is not None
    assert await counters.hit([("team:a", 3)], NOW + 60.0) is None  # the request at NOW has left
    retry = await counters.hit([("team:a", 3)], NOW + 60.5)  # the one at NOW + 1 has not
    assert retry is not None and retry > 0
    assert retry == pytest.approx(0.5, abs=1e-3)


async def test_hit_refused_requests_are_not_counted(counters: Counters) -> None:
    assert await counters.hit([("key:k", 1)], NOW) is None
    for i in range(5):
        assert await counters.hit([("key:k", 1)], NOW + 1 + i) is not None
    assert await counters.hit([("key:k", 1)], NOW + 60.001) is None


async def test_hit_with_a_zero_limit_always_refuses_with_a_positive_wait(counters: Counters) -> None:
    retry = await counters.hit([("team:none", 0)], NOW)
    assert retry is not None and retry > 0


async def test_multi_key_hit_is_all_or_nothing(counters: Counters) -> None:
    both = [("team:a", 5), ("key:b", 1)]
    assert await counters.hit(both, NOW) is None
    assert await counters.hit(both, NOW + 1) is not None  # key:b is full
    # the refusal left team:a's log at one entry: four more fit, not three
    for i in range(4):
        assert await counters.hit([("team:a", 5)], NOW + 2 + i) is None
    assert await counters.hit([("team:a", 5)], NOW + 10) is not None


async def test_hit_keys_are_independent(counters: Counters) -> None:
    assert await counters.hit([("team:a", 1)], NOW) is None
    assert await counters.hit([("team:b", 1)], NOW) is None
    assert await counters.hit([("team:a", 1)], NOW) is not None


async def test_hit_with_no_limits_always_passes(counters: Counters) -> None:
    assert await counters.hit([], NOW) is None


# ---------------------------------------------------------------- tokens per minute


async def test_tokens_add_up_within_a_window(counters: Counters) -> None:
    start = 60.0 * 20_000  # the start of a token window
    assert await counters.tokens_used("team:a", start) == 0
    await counters.add_tokens("team:a", 100, start + 1)
    await counters.add_tokens("team:a", 50, start + 2)
    await counters.add_tokens("team:b", 7, start + 2)
    assert await counters.tokens_used("team:a", start + 3) == 150
    assert await counters.tokens_used("team:b", start + 3) == 7


async def test_tokens_of_the_previous_window_fade_out_linearly(counters: Counters) -> None:
    start = 60.0 * 20_000
    await counters.add_tokens("team:a", 150, start + 10)
    # a quarter into the next window, three quarters of the previous one still count (rounded up)
    assert await counters.tokens_used("team:a", start + 60 + 15) == 113
    await counters.add_tokens("team:a", 10, start + 60 + 15)
    assert await counters.tokens_used("team:a", start + 60 + 15) == 123
    # two windows on, nothing from the first is left; the second's 10 are fading
    assert await counters.tokens_used("team:a", start + 120 + 1) == 10
    assert await counters.tokens_used("team:a", start + 180 + 1) == 0


# ---------------------------------------------------------------- budgets


async def test_reserve_refuses_when_spent_plus_reserved_plus_amount_exceeds_the_limit(counters: Counters) -> None:
    store = StoreSpend({"team:a:total": 100})
    budget = [("team:a:total", 1000, 0)]
    assert await counters.reserve(budget, 500, store) is True  # 100 + 0 + 500
    assert await counters.reserve(budget, 400, store) is True  # 100 + 500 + 400 = exactly the limit
    assert await counters.reserve(budget, 1, store) is False


async def test_settle_replaces_the_reservation_with_the_actual_cost(counters: Counters) -> None:
    store = StoreSpend({"team:a:total": 100})
    budget = [("team:a:total", 1000, 0)]
    assert await counters.reserve(budget, 500, store)
    assert await counters.reserve(budget, 400, store)
    await counters.settle([("team:a:total", 0)], 500, 200)  # spent 300, reserved 400
    assert await counters.reserve(budget, 301, store) is False
    assert await counters.reserve(budget, 300, store) is True  # spent 300, reserved 700
    await counters.settle([("team:a:total", 0)], 400, 0)  # a failed call costs nothing
    await counters.settle([("team:a:total", 0)], 300, 300)  # spent 600, reserved 0
    assert await counters.reserve(budget, 401, store) is False
    assert await counters.reserve(budget, 400, store) is True


async def test_settle_may_cost_more_than_reserved_and_then_blocks_further_calls(counters: Counters) -> None:
    store = StoreSpend()
    budget = [("key:k:total", 1000, 0)]
    assert await counters.reserve(budget, 100, store)
    await counters.settle([("key:k:total", 0)], 100, 1200)
    assert await counters.reserve(budget, 0, store) is False
    assert await counters.reserve(budget, 1, store) is False


async def test_loader_initialises_spend_once_per_budget(counters: Counters) -> None:
    store = StoreSpend({"team:a:2024-05": 900, "key:k:2024-05": 10})
    budgets = [("team:a:2024-05", 1000, 3600), ("key:k:2024-05", 50, 3600)]
    assert await counters.reserve(budgets, 40, store) is True
    assert await counters.reserve(budgets, 1, store) is False  # key: 10 + 40 + 1 > 50
    await counters.settle([(k, ttl) for k, _, ttl in budgets], 40, 40)
    assert await counters.reserve(budgets[:1], 50, store) is True  # team: 940 + 50
    assert sorted(store.loads) == ["key:k:2024-05", "team:a:2024-05"]


async def test_concurrent_first_reserves_load_the_spend_once(counters: Counters) -> None:
    store = StoreSpend({"team:a:total": 10}, delay=0.05)
    budget = [("team:a:total", 100, 0)]
    results = await asyncio.gather(*(counters.reserve(budget, 10, store) for _ in range(50)))
    assert results.count(True) == 9
    assert store.loads == ["team:a:total"]


async def test_multi_key_reserve_is_all_or_nothing(counters: Counters) -> None:
    store = StoreSpend()
    team, key = ("team:a:total", 1000, 0), ("key:k:total", 100, 0)
    assert await counters.reserve([team, key], 150, store) is False  # the key's budget is too small
    # the refusal reserved nothing on the team's budget
    assert await counters.reserve([team], 1000, store) is True
    assert await counters.reserve([key], 100, store) is True
    assert await counters.reserve([team], 1, store) is False
    assert await counters.reserve([key], 1, store) is False


async def test_budgets_are_independent(counters: Counters) -> None:
    store = StoreSpend()
    assert await counters.reserve([("team:a:total", 10, 0)], 10, store)
    assert await counters.reserve([("team:b:total", 10, 0)], 10, store)
    assert not await counters.reserve([("team:a:total", 10, 0)], 1, store)


async def test_settle_of_a_budget_never_reserved_here_does_not_hide_the_stored_spend(counters: Counters) -> None:
    store = StoreSpend({"team:a:total": 90})
    await counters.settle([("team:a:total", 0)], 5, 5)
    assert await counters.reserve([("team:a:total", 100, 0)], 11, store) is False
    assert await counters.reserve([("team:a:total", 100, 0)], 10, store) is True
    assert store.loads == ["team:a:total"]


async def test_reserve_and_settle_from_many_tasks_never_overspend(make_counters: MakeCounters) -> None:
    rng = random.Random(7)
    store = StoreSpend()
    limit = 10_000
    budget = [("team:a:total", limit, 0)]
    sides = [make_counters(), make_counters()]

    async def call(n: int) -> int:
        counters = sides[n % 2]
        reserved = rng.randint(50, 400)
        if not await counters.reserve(budget, reserved, store):
            return 0
        await asyncio.sleep(rng.random() * 0.01)
        actual = rng.randint(0, reserved)
        await counters.settle([("team:a:total", 0)], reserved, actual)
        return actual

    spent = sum(await asyncio.gather(*(call(n) for n in range(200))))
    assert 0 < spent <= limit
    # what the counters believe was spent is exactly what the calls cost
    assert not await sides[0].reserve(budget, limit - spent + 1, store)
    assert await sides[1].reserve(budget, limit - spent, store)


# ---------------------------------------------------------------- Redis only: several processes, one state


@pytest.fixture
async def redis_pair(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[RedisCounters, RedisCounters]]:
    """Two counters on separate connection pools, as two gateway processes would have."""
    first, second = RedisCounters(redis_url, prefix=redis_prefix), RedisCounters(redis_url, prefix=redis_prefix)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.mark.redis
async def test_redis_200_concurrent_reserves_from_two_connections_never_exceed_the_limit(
    redis_pair: tuple[RedisCounters, RedisCounters], raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    store = StoreSpend({"team:a:total": 3_000})
    budget = [("team:a:total", 40_000, 0)]  # room for exactly 37 reservations of 1000
    results = await asyncio.gather(*(redis_pair[n % 2].reserve(budget, 1_000, store) for n in range(200)))
    assert results.count(True) == 37
    state = await raw_redis.hgetall(f"{redis_prefix}:budget:team:a:total")
    assert state == {"spent": "3000", "reserved": "37000"}
    assert 1 <= len(store.loads) <= 2  # once per process at most


@pytest.mark.redis
async def test_redis_concurrent_reserves_of_varied_amounts_stay_within_the_limit(
    redis_pair: tuple[RedisCounters, RedisCounters], raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    rng = random.Random(11)
    amounts = [rng.randint(1, 5_000) for _ in range(200)]
    budgets = [("team:a:total", 100_000, 0), ("key:k:total", 60_000, 0)]
    results = await asyncio.gather(
        *(redis_pair[n % 2].reserve(budgets, amount, StoreSpend()) for n, amount in enumerate(amounts))
    )
    accepted = sum(a for a, ok in zip(amounts, results, strict=True) if ok)
    assert 0 < accepted <= 60_000
    for name in ("team:a:total", "key:k:total"):
        assert await raw_redis.hget(f"{redis_prefix}:budget:{name}", "reserved") == str(accepted)


@pytest.mark.redis
async def test_redis_200_concurrent_hits_from_two_connections_admit_exactly_the_limit(
    redis_pair: tuple[RedisCounters, RedisCounters],
) -> None:
    results = await asyncio.gather(*(redis_pair[n % 2].hit([("team:a", 50)], NOW + n * 0.001) for n in range(200)))
    assert sum(r is None for r in results) == 50
    assert all(r > 0 for r in results if r is not None)


@pytest.mark.redis
async def test_redis_budget_lives_for_its_period_and_a_total_budget_never_expires(
    redis_pair: tuple[RedisCounters, RedisCounters], raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    counters = redis_pair[0]
    store = StoreSpend()
    assert await counters.reserve([("team:a:2024-05-01", 100, 2 * 86400), ("team:a:total", 100, 0)], 10, store)
    assert 0 < await raw_redis.ttl(f"{redis_prefix}:budget:team:a:2024-05-01") <= 2 * 86400
    assert await raw_redis.ttl(f"{redis_prefix}:budget:team:a:total") == -1
    await counters.settle([("team:a:2024-05-01", 2 * 86400), ("team:a:total", 0)], 10, 10)
    assert await raw_redis.ttl(f"{redis_prefix}:budget:team:a:total") == -1


@pytest.mark.redis
async def test_redis_losing_its_state_mid_call_reloads_spend_from_the_store(
    redis_pair: tuple[RedisCounters, RedisCounters], raw_redis: aioredis.Redis, redis_prefix: str
) -> None:
    store = StoreSpend({"team:a:total": 500})
    budget = [("team:a:total", 1000, 0)]
    assert await redis_pair[0].reserve(budget, 100, store)
    await raw_redis.delete(f"{redis_prefix}:budget:team:a:total")  # Redis restarted, or evicted the key
    store.spent["team:a:total"] = 580  # meanwhile the request log recorded more spend, this call included
    await redis_pair[0].settle([("team:a:total", 0)], 100, 80)
    assert await redis_pair[1].reserve(budget, 421, store) is False
    assert await redis_pair[1].reserve(budget, 420, store) is True
    assert store.loads == ["team:a:total", "team:a:total"]
