"""OutputBudgetPlugin: caps each cell's output and a turn's total, with an explicit marker."""

from __future__ import annotations

import pytest

from conch.errors import ConfigurationError
from conch.runtime import OutputBudgetPlugin, PluginHost, PluginSession, PromptSlot, TurnInfo


def session_with(**limits: int | None) -> PluginSession:
    return PluginHost([OutputBudgetPlugin.factory(**limits)]).build_session("s")


def budget(session: PluginSession) -> OutputBudgetPlugin:
    [plugin] = session.plugins
    assert isinstance(plugin, OutputBudgetPlugin)
    return plugin


def turn(key: str) -> TurnInfo:
    return TurnInfo("s", key, "q")


async def test_output_within_the_budget_passes_unchanged() -> None:
    session = session_with(max_chars_per_cell=10, max_chars_per_turn=100)

    assert await session.on_cell_output("0123456789") == "0123456789"
    assert budget(session).shown_this_turn == 10


async def test_a_long_cell_is_cut_to_the_cell_limit_with_a_marker() -> None:
    session = session_with(max_chars_per_cell=10, max_chars_per_turn=None)

    shown = await session.on_cell_output("x" * 25)

    head, marker = shown.split("\n", 1)
    assert head == "x" * 10
    assert marker.startswith("[output budget: 15 of 25 characters not shown;")
    assert "at most 10 characters" in marker


async def test_the_turn_budget_is_shared_by_the_turns_cells() -> None:
    session = session_with(max_chars_per_cell=None, max_chars_per_turn=30)

    first = await session.on_cell_output("a" * 20)
    second = await session.on_cell_output("b" * 20)
    third = await session.on_cell_output("c" * 5)

    assert first == "a" * 20
    assert second.startswith("b" * 10 + "\n[output budget: 10 of 20")
    assert (
        third.startswith("[output budget: 5 of 5") and "budget of 30 characters is spent" in third
    )


async def test_a_new_turn_starts_with_a_full_budget() -> None:
    session = session_with(max_chars_per_cell=None, max_chars_per_turn=5)
    await session.before_turn(turn("t1"))
    await session.on_cell_output("12345678")

    await session.before_turn(turn("t2"))

    assert await session.on_cell_output("12345") == "12345"


async def test_usage_is_kept_in_the_saved_state() -> None:
    session = session_with(max_chars_per_cell=4, max_chars_per_turn=None)
    await session.on_cell_output("123456")

    resumed = PluginHost([OutputBudgetPlugin.factory(max_chars_per_cell=4)]).build_session(
        "s", session.save_state()
    )

    assert (budget(resumed).shown_this_turn, budget(resumed).cells_cut) == (4, 1)
    assert budget(resumed).chars_cut == 2


async def test_the_model_is_told_the_limits() -> None:
    session = session_with(max_chars_per_cell=2_000, max_chars_per_turn=None)

    [hint] = session.prompt_layer().contributions(PromptSlot.EXECUTION)

    assert "2,000 characters per cell" in hint.text
    assert hint.source == "output_budget"


def test_the_class_itself_is_a_factory_with_default_limits() -> None:
    plugin = budget(PluginHost([OutputBudgetPlugin]).build_session("s"))

    assert (plugin.max_chars_per_cell, plugin.max_chars_per_turn) == (4_000, 20_000)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_a_limit_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_chars_per_cell must be a positive int"):
        OutputBudgetPlugin.factory(max_chars_per_cell=bad)  # type: ignore[arg-type]
