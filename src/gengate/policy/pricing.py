"""Cost accounting from the configured price table (USD per million tokens).

Owns: price lookup and cost arithmetic in integer nano-dollars (so sums across processes are exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gengate.settings import Deployment, Price
from gengate.types import Usage

NANO = 1_000_000_000


def usd(nanos: int) -> float:
    """Nano-dollars to dollars."""
    return nanos / NANO


def to_nanos(dollars: float) -> int:
    """Dollars to nano-dollars (rounded)."""
    return round(dollars * NANO)


class PriceTable:
    """Prices by deployment model name, `provider/model`, or alias (first match wins)."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    def lookup(self, deployment: Deployment, alias: str) -> Price | None:
        """The price that applies to a call of `alias` served by `deployment`."""
        for name in (f"{deployment.provider}/{deployment.model}", deployment.model, alias):
            if name in self._prices:
                return self._prices[name]
        return None

    def worst_case(self, deployments: Iterable[Deployment], alias: str) -> Price | None:
        """The highest input and output prices among deployments, or None if any is unpriced."""
        found = [self.lookup(d, alias) for d in deployments]
        if not found or any(p is None for p in found):
            return None
        priced = [p for p in found if p is not None]
        return Price(input=max(p.input for p in priced), output=max(p.output for p in priced))

    @staticmethod
    def cost_nanos(price: Price, usage: Usage) -> int:
        """Cost of a call in nano-dollars; cached prompt tokens at the cached price when there is one."""
        cached = min(usage.cached_tokens, usage.prompt_tokens) if price.cached_input is not None else 0
        cached_price = price.cached_input if price.cached_input is not None else price.input
        total = (
            (usage.prompt_tokens - cached) * price.input
            + cached * cached_price
            + usage.completion_tokens * price.output
        )
        # price is per 1e6 tokens; 1 USD = 1e9 nanos → per token nanos = price * 1e3
        return round(total * 1_000)
