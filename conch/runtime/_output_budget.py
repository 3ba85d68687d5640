"""The first-party output budget: caps how much of a cell's output the model reads."""

from __future__ import annotations

from typing import Any

from conch.errors import ConfigurationError
from conch.runtime._plugins import Plugin, PluginContext, PluginFactory, TurnInfo
from conch.runtime._prompt import PromptContribution, PromptSlot


def _limit(value: object, name: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ConfigurationError(
        f"OutputBudgetPlugin {name} must be a positive int or None, got {value!r}"
    )


class OutputBudgetPlugin(Plugin):
    """Shows at most ``max_chars_per_cell`` of each cell's output, and at most
    ``max_chars_per_turn`` over a whole turn (None: no limit).

    What is cut is replaced by one marker line saying how much was cut and why, so the
    model knows it did not see everything. The marker itself is not charged. The state
    (characters shown this turn; cells and characters cut over the session) is saved with
    every commit.
    """

    name = "output_budget"

    def __init__(
        self,
        context: PluginContext | None = None,
        *,
        max_chars_per_cell: int | None = 4_000,
        max_chars_per_turn: int | None = 20_000,
    ) -> None:
        super().__init__(context)
        self.max_chars_per_cell = _limit(max_chars_per_cell, "max_chars_per_cell")
        self.max_chars_per_turn = _limit(max_chars_per_turn, "max_chars_per_turn")
        self.shown_this_turn = 0
        self.cells_cut = 0
        self.chars_cut = 0

    @classmethod
    def factory(
        cls, *, max_chars_per_cell: int | None = 4_000, max_chars_per_turn: int | None = 20_000
    ) -> PluginFactory:
        """A factory for ``PluginHost`` with these limits (checked now, not per session)."""
        limits = {
            "max_chars_per_cell": max_chars_per_cell,
            "max_chars_per_turn": max_chars_per_turn,
        }
        cls(**limits)

        def build(context: PluginContext) -> OutputBudgetPlugin:
            return cls(context, **limits)

        return build

    def allowance(self) -> int | None:
        """How many characters the next cell may show (None: unlimited)."""
        limits = [self.max_chars_per_cell] if self.max_chars_per_cell is not None else []
        if self.max_chars_per_turn is not None:
            limits.append(max(0, self.max_chars_per_turn - self.shown_this_turn))
        return min(limits) if limits else None

    async def before_turn(self, turn: TurnInfo) -> None:
        self.shown_this_turn = 0

    async def on_cell_output(self, output: str) -> str:
        allowance = self.allowance()
        if allowance is None or len(output) <= allowance:
            self.shown_this_turn += len(output)
            return output
        cut = len(output) - allowance
        self.shown_this_turn += allowance
        self.cells_cut += 1
        self.chars_cut += cut
        turn_spent = (
            self.max_chars_per_turn is not None and self.shown_this_turn >= self.max_chars_per_turn
        )
        why = (
            f"this turn's output budget of {self.max_chars_per_turn:,} characters is spent"
            if turn_spent
            else f"a cell shows at most {self.max_chars_per_cell:,} characters"
        )
        marker = (
            f"[output budget: {cut:,} of {len(output):,} characters not shown; {why}. "
            "Print less: summarise, slice, or keep results in variables]"
        )
        return f"{output[:allowance]}\n{marker}" if allowance else marker

    def prompt_contributions(self) -> list[PromptContribution]:
        limits = []
        if self.max_chars_per_cell is not None:
            limits.append(f"{self.max_chars_per_cell:,} characters per cell")
        if self.max_chars_per_turn is not None:
            limits.append(f"{self.max_chars_per_turn:,} characters per turn")
        if not limits:
            return []
        text = (
            f"You are shown at most {' and '.join(limits)} of code output; "
            "print only what you need."
        )
        return [PromptContribution(PromptSlot.EXECUTION, text, source=self.name)]

    def save_state(self) -> dict[str, Any]:
        return {
            "shown_this_turn": self.shown_this_turn,
            "cells_cut": self.cells_cut,
            "chars_cut": self.chars_cut,
        }

    def load_state(self, state: Any) -> None:
        self.shown_this_turn = int(state.get("shown_this_turn", 0))
        self.cells_cut = int(state.get("cells_cut", 0))
        self.chars_cut = int(state.get("chars_cut", 0))
