"""Policy decisions for one call: may this principal use this model, within its rate limits and budgets?

Admission is reserve-before-call: the worst-case cost (input upper bound × the dearest deployment's price, plus
max output tokens) is reserved atomically against every budget that applies, then replaced by the real cost
when the call ends (`settle`), streams and disconnects included. So concurrent calls cannot overspend.

Owns: combining team and key limits, budget periods, the reservation lifecycle. Must not: do I/O other than
through `Counters` and the store's spend query.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gengate.errors import BudgetExceeded, PermissionDenied, PricingMissing, RateLimited
from gengate.policy.counters import Counters
from gengate.policy.pricing import PriceTable, to_nanos
from gengate.settings import Deployment, Limits, PolicySettings, Price
from gengate.store.db import KeyRecord, Store
from gengate.types import Principal


def period_start(period: str, now: float) -> tuple[str, float, int]:
    """(period label, start timestamp, TTL seconds for counters) of the period containing `now`, in UTC."""
    label, start, ttl, _ = _period(period, now)
    return label, start, ttl


def _period(period: str, now: float) -> tuple[str, float, int, float]:
    """As `period_start`, plus the timestamp at which the period ends."""
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%d"), start.timestamp(), 2 * 86400, start.timestamp() + 86400
    if period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (
            start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        )
        return start.strftime("%Y-%m"), start.timestamp(), 32 * 86400, following.timestamp()
    return "total", 0.0, 0, math.inf


class PeriodCache:
    """`period_start` memoised until the period ends (it runs on every budgeted request)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, float, int, float]] = {}

    def get(self, period: str, now: float) -> tuple[str, float, int]:
        """(label, start, ttl) for the period containing `now`."""
        hit = self._cache.get(period)
        if hit is None or not hit[1] <= now < hit[3]:
            hit = self._cache[period] = _period(period, now)
        return hit[0], hit[1], hit[2]


def model_allowed(patterns: Sequence[str] | None, alias: str) -> bool:
    """None means any model; otherwise exact names or shell-style patterns (`gpt-*`)."""
    if patterns is None:
        return True
    return any(p == alias or fnmatch.fnmatchcase(alias, p) for p in patterns)


@dataclass
class Admission:
    """What was reserved for one call; settle it exactly once."""

    budget_keys: list[tuple[str, int]] = field(default_factory=list)
    tpm_keys: list[str] = field(default_factory=list)
    reserved_nanos: int = 0
    max_output_tokens: int | None = None
    settled: bool = False


class PolicyEngine:
    """Applies team defaults, per-team overrides and per-key limits."""

    def __init__(
        self,
        settings: PolicySettings,
        counters: Counters,
        prices: PriceTable,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._counters = counters
        self._prices = prices
        self._store = store
        self._clock = clock
        self._periods = PeriodCache()
        self._worst: dict[str, Price | None] = {}

    def team_limits(self, team: str) -> Limits:
        """The team's override, or the default limits."""
        return self._settings.teams.get(team, self._settings.default)

    def may_use(self, principal: Principal, key: KeyRecord | None, alias: str) -> bool:
        """Both the team's and the key's model lists allow this alias (admins may use any)."""
        if principal.is_admin:
            return True
        if not model_allowed(self.team_limits(principal.team).models, alias):
            return False
        return key is None or model_allowed(key.models, alias)

    def _budgets(self, principal: Principal, key: KeyRecord | None, now: float) -> list[tuple[str, int, int]]:
        """(counter key, limit in nano-dollars, counter TTL) for every budget that applies."""
        found: list[tuple[str, int, int]] = []
        team_budget = self.team_limits(principal.team).budget
        if team_budget is not None:
            label, _, ttl = self._periods.get(team_budget.period, now)
            found.append((f"team:{principal.team}:{label}", to_nanos(team_budget.usd), ttl))
        if key is not None and key.budget_usd is not None:
            label, _, ttl = self._periods.get(key.budget_period or "month", now)
            found.append((f"key:{key.id}:{label}", to_nanos(key.budget_usd), ttl))
        return found

    def _worst_price(self, alias: str, deployments: Sequence[Deployment]) -> Price | None:
        if alias not in self._worst:
            self._worst[alias] = self._prices.worst_case(deployments, alias)
        return self._worst[alias]

    async def admit(
        self,
        principal: Principal,
        key: KeyRecord | None,
        alias: str,
        deployments: Sequence[Deployment],
        *,
        prompt_tokens_bound: int,
        max_output_tokens: int | None,
        access_checked: bool = False,
    ) -> Admission:
        """Check model access, RPM, TPM and budgets; reserve the worst-case cost. Raises on refusal.

        `access_checked`: the caller already decided access (an app's model is used on the app's grant)."""
        admission = Admission(max_output_tokens=max_output_tokens)
        if principal.is_admin:
            return admission
        if not access_checked and not self.may_use(principal, key, alias):
            raise PermissionDenied(f"team {principal.team!r} may not use model {alias!r}", code="model_not_allowed")
        now = self._clock()
        team = self.team_limits(principal.team)

        rpm_limits: list[tuple[str, int]] = []
        if team.rpm is not None:
            rpm_limits.append((f"team:{principal.team}", team.rpm))
        if key is not None and key.rpm is not None:
            rpm_limits.append((f"key:{key.id}", key.rpm))

        tpm_limits: list[tuple[str, int]] = []
        if team.tpm is not None:
            tpm_limits.append((f"team:{principal.team}", team.tpm))
        if key is not None and key.tpm is not None:
            tpm_limits.append((f"key:{key.id}", key.tpm))
        for name, limit in tpm_limits:
            if await self._counters.tokens_used(name, now) >= limit:
                raise RateLimited(
                    f"tokens-per-minute limit of {limit} reached for {name.split(':')[0]}",
                    retry_after=15.0,
                    code="tokens_per_minute_exceeded",
                )
        admission.tpm_keys = [name for name, _ in tpm_limits]

        budgets = self._budgets(principal, key, now)
        if budgets:
            price = self._worst_price(alias, deployments)
            if price is None:
                raise PricingMissing(
                    f"model {alias!r} has no price in the pricing table and a budget applies to "
                    f"team {principal.team!r}; refusing rather than counting it as $0"
                )
            if max_output_tokens is None:
                max_output_tokens = self._settings.default_max_output_tokens
                admission.max_output_tokens = max_output_tokens
            worst = (prompt_tokens_bound * price.input + max_output_tokens * price.output) / 1e6
            admission.reserved_nanos = max(1, to_nanos(worst)) if worst > 0 else 0

        if rpm_limits:
            retry = await self._counters.hit(rpm_limits, now)
            if retry is not None:
                raise RateLimited(
                    "requests-per-minute limit reached",
                    retry_after=retry,
                    code="requests_per_minute_exceeded",
                )

        if budgets:
            ok = await self._counters.reserve(budgets, admission.reserved_nanos, self._load_spend)
            if not ok:
                raise BudgetExceeded(f"budget for team {principal.team!r} or this key is exhausted for the period")
            admission.budget_keys = [(name, ttl) for name, _, ttl in budgets]
        return admission

    async def _load_spend(self, counter_key: str) -> int:
        """Spend so far in the period, from the durable request log (when counters start empty)."""
        scope, rest = counter_key.split(":", 1)
        ident, label = rest.rsplit(":", 1)
        period = "total" if label == "total" else ("day" if len(label) == 10 else "month")
        _, since, _ = period_start(period, self._clock())
        if scope == "team":
            dollars = await self._store.spend_since(since=since, team=ident)
        else:
            dollars = await self._store.spend_since(since=since, key_id=ident)
        return to_nanos(dollars)

    def has_budget(self, principal: Principal, key: KeyRecord | None) -> bool:
        """Whether any budget applies to this caller."""
        return not principal.is_admin and bool(self._budgets(principal, key, self._clock()))

    async def charge(self, principal: Principal, key: KeyRecord | None, cost_nanos: int) -> None:
        """Add a cost that had no reservation (e.g. a guard judge call) to every budget that applies."""
        if principal.is_admin or cost_nanos <= 0:
            return
        budgets = self._budgets(principal, key, self._clock())
        if budgets:
            await self._counters.settle([(name, ttl) for name, _, ttl in budgets], 0, cost_nanos)

    async def settle(self, admission: Admission, *, cost_nanos: int, tokens: int) -> None:
        """Replace the reservation by the actual cost and count tokens; safe to call twice."""
        if admission.settled:
            return
        admission.settled = True
        if admission.budget_keys:
            await self._counters.settle(admission.budget_keys, admission.reserved_nanos, cost_nanos)
        now = self._clock()
        for name in admission.tpm_keys:
            if tokens:
                await self._counters.add_tokens(name, tokens, now)
