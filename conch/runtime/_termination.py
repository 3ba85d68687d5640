"""The per-turn limits of a runtime, and what counts as a failed turn."""

from __future__ import annotations

from dataclasses import dataclass

from conch.errors import ConfigurationError
from conch.rlm._budget import check_limit


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
        check_limit("TerminationPolicy", "max_iterations", self.max_iterations, integer=True)
        check_limit("TerminationPolicy", "max_tokens", self.max_tokens, integer=True)
        for name in ("max_cost_usd", "max_time_s"):
            check_limit("TerminationPolicy", name, getattr(self, name), integer=False)
        if not isinstance(self.require_final_answer, bool):
            raise ConfigurationError(
                "TerminationPolicy.require_final_answer must be True or False, "
                f"got {self.require_final_answer!r}"
            )

    def turn_failed(self, *, answered: bool) -> bool:
        """Whether a turn that ended with (``answered``) or without a final answer failed."""
        return not answered and self.require_final_answer
