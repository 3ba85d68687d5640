"""The per-turn limits of a runtime, and what counts as a failed turn."""

from __future__ import annotations

import math
from dataclasses import dataclass

from conch.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class TerminationPolicy:
    """When a turn must stop, and whether ending without a final answer is a failure.

    Limits apply to one turn, sub-calls and child runs included; None means unlimited.
    The names match ``conch.rlm.Budget`` (and ``RLM(max_iterations=...)``) so the turn
    runner passes them through unchanged.
    """

    max_iterations: int | None = 30
    """Model replies of the turn's root run."""
    max_tokens: int | None = None
    """Input plus output tokens of every model call of the turn."""
    max_cost_usd: float | None = None
    max_time_s: float | None = None
    """Wall time of the turn."""
    require_final_answer: bool = True
    """True: a turn that stops without a final answer (a limit ran out) is recorded and
    reported as failed. False: it is a normal turn whose answer is its best partial one."""

    def __post_init__(self) -> None:
        if self.max_iterations is not None and (
            not isinstance(self.max_iterations, int)
            or isinstance(self.max_iterations, bool)
            or self.max_iterations < 1
        ):
            raise ConfigurationError(
                f"TerminationPolicy.max_iterations must be an int of at least 1 or None, "
                f"got {self.max_iterations!r}"
            )
        if self.max_tokens is not None and (
            not isinstance(self.max_tokens, int)
            or isinstance(self.max_tokens, bool)
            or self.max_tokens < 1
        ):
            raise ConfigurationError(
                f"TerminationPolicy.max_tokens must be a positive int or None, "
                f"got {self.max_tokens!r}"
            )
        for name in ("max_cost_usd", "max_time_s"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigurationError(
                    f"TerminationPolicy.{name} must be a positive number or None, got {value!r}"
                )
        if not isinstance(self.require_final_answer, bool):
            raise ConfigurationError(
                "TerminationPolicy.require_final_answer must be True or False, "
                f"got {self.require_final_answer!r}"
            )

    def turn_failed(self, *, answered: bool) -> bool:
        """Whether a turn that ended with (``answered``) or without a final answer failed."""
        return not answered and self.require_final_answer
