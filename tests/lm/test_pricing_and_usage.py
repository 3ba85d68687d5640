"""Prices, their lookup by model name, and usage arithmetic."""

from __future__ import annotations

import pytest

from conch.lm import DEFAULT_PRICES, Price, PriceTable, Usage


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest key wins, not gpt-4o
        ("openai/gpt-4o-mini", "gpt-4o-mini"),  # OpenRouter's routed names
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("gpt-4o1", None),  # a prefix must end at a dash
        ("qwen2.5:1.5b", None),
    ],
)
def test_lookup_understands_snapshot_and_routed_names(model: str, expected: str | None) -> None:
    price = PriceTable().lookup(model)

    assert price == (None if expected is None else DEFAULT_PRICES[expected])


def test_cached_tokens_are_billed_at_the_cached_rate() -> None:
    price = Price(input=2.0, output=10.0, cached_input=0.5)

    cost = price.cost(Usage(input_tokens=1_000_000, output_tokens=100_000, cached_tokens=400_000))

    assert cost == pytest.approx(0.6 * 2.0 + 0.4 * 0.5 + 0.1 * 10.0)


def test_without_a_cached_rate_cached_tokens_cost_as_input() -> None:
    assert Price(1.0, 0.0).cost(Usage(input_tokens=10**6, cached_tokens=10**6)) == pytest.approx(
        1.0
    )


def test_overrides_replace_and_add_without_touching_the_original() -> None:
    table = PriceTable()

    custom = table.with_prices({"gpt-4o": Price(1.0, 1.0), "my-model": Price(0.1, 0.2)})

    assert custom.cost("my-model", Usage(10**6, 10**6)) == (pytest.approx(0.3), True)
    assert custom["gpt-4o"] == Price(1.0, 1.0)
    assert table["gpt-4o"] == DEFAULT_PRICES["gpt-4o"]
    assert "my-model" not in table


def test_unknown_model_costs_zero_and_is_flagged() -> None:
    assert PriceTable().cost("mystery", Usage(10**6, 10**6)) == (0.0, False)


def test_usage_adds_field_by_field() -> None:
    total = Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40)

    assert total == Usage(11, 22, 33, 44)
    assert total.total_tokens == 33
    assert sum([Usage(1, 1), Usage(2, 2)], Usage()) == Usage(3, 3)
