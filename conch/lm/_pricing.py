"""What tokens cost, so a completion's cost is known for known models and honestly 0 otherwise."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from conch.lm._types import Usage


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per one million tokens.

    ``cached_input`` is the price of prompt tokens read from the provider's cache; when
    ``None`` they cost the same as other input tokens.
    """

    input: float
    output: float
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        dollars = (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        )
        return dollars / 1_000_000


# List prices per 1M tokens (standard tier) as published by the providers in 2025.
# Prices change: override with PriceTable(...).with_prices({...}) rather than trusting these.
DEFAULT_PRICES: Mapping[str, Price] = {
    # OpenAI
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "o3": Price(2.00, 8.00, 0.50),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    # Anthropic (cached_input = cache reads)
    "claude-opus-4": Price(15.00, 75.00, 1.50),
    "claude-opus-4-1": Price(15.00, 75.00, 1.50),
    "claude-opus-4-5": Price(5.00, 25.00, 0.50),
    "claude-sonnet-4": Price(3.00, 15.00, 0.30),
    "claude-sonnet-4-5": Price(3.00, 15.00, 0.30),
    "claude-haiku-4-5": Price(1.00, 5.00, 0.10),
    "claude-3-5-haiku": Price(0.80, 4.00, 0.08),
    "claude-3-7-sonnet": Price(3.00, 15.00, 0.30),
}


class PriceTable(Mapping[str, Price]):
    """Model name → price, with lookup that understands dated snapshot and routed names.

    ``lookup`` tries, in order: the exact name; the longest table key that the name
    extends with ``-`` (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``, never ``gpt-4o``);
    the same two for the part after the last ``/`` (``openai/gpt-4o`` on OpenRouter).
    """

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices = dict(DEFAULT_PRICES if prices is None else prices)

    def with_prices(self, overrides: Mapping[str, Price]) -> PriceTable:
        """A copy with some prices added or replaced."""
        return PriceTable({**self._prices, **overrides})

    def lookup(self, model: str) -> Price | None:
        candidates = [model]
        if "/" in model:
            candidates.append(model.rsplit("/", 1)[1])
        for name in candidates:
            if name in self._prices:
                return self._prices[name]
            prefixes = [key for key in self._prices if name.startswith(key + "-")]
            if prefixes:
                return self._prices[max(prefixes, key=len)]
        return None

    def cost(self, model: str, usage: Usage) -> tuple[float, bool]:
        """``(cost_usd, known)``; an unknown model costs 0 and says so with ``known=False``."""
        price = self.lookup(model)
        if price is None:
            return 0.0, False
        return price.cost(usage), True

    def __getitem__(self, model: str) -> Price:
        return self._prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)
