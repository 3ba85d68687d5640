"""The budget ledger one call tree shares: tokens, cost, wall time and sub-calls.

A root run creates the ledger; every child run (``rlm_query``) and every sub-call
(``llm_query``) charges the same object, so a child's spending counts against the root's
limits. Limits are checked before each model call: calls already in flight when a limit
is reached finish and are counted, so a total may pass its limit by what they used.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from conch.errors import BudgetExceededError, ConfigurationError
from conch.lm import Completion, Usage


class TerminationReason(enum.StrEnum):
    """Why a run ended. Only ``FINAL`` guarantees an answer; others may carry a best answer."""

    FINAL = "final"
    MAX_ITERATIONS = "max_iterations"
    TOKEN_BUDGET = "token_budget"
    COST_BUDGET = "cost_budget"
    TIME_BUDGET = "time_budget"
    SUB_CALL_BUDGET = "sub_call_budget"
    CONSECUTIVE_ERRORS = "consecutive_errors"
    """Every cell of ``max_consecutive_errors`` replies in a row failed."""
    MODEL_ERROR = "model_error"
    VALIDATION_REJECTED = "validation_rejected"
    CANCELLED = "cancelled"

    @property
    def is_budget(self) -> bool:
        """A shared limit of the call tree ran out (nothing more may be spent)."""
        return self in _SPENT


_SPENT = frozenset(
    {
        TerminationReason.TOKEN_BUDGET,
        TerminationReason.COST_BUDGET,
        TerminationReason.TIME_BUDGET,
    }
)


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for a whole call tree (the root run, its sub-calls and child runs). None: unlimited.

    Iterations and depth are limits of each run, set on ``RLM`` (``max_iterations``,
    ``max_depth``).
    """

    max_tokens: int | None = None
    """Input plus output tokens of every model call in the tree."""
    max_cost_usd: float | None = None
    max_time_s: float | None = None
    """Wall time from the root run's start; a running cell is interrupted when it passes."""
    max_sub_calls: int | None = None
    """``llm_query`` prompts (each batched prompt counts) plus ``rlm_query`` calls."""

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_sub_calls"):
            check_limit("Budget", name, getattr(self, name), integer=True)
        for name in ("max_cost_usd", "max_time_s"):
            check_limit("Budget", name, getattr(self, name), integer=False)


def check_limit(owner: str, name: str, value: object, *, integer: bool) -> None:
    """Refuse a limit that is neither None nor a positive number (an int where ``integer``):
    ``nan`` would compare false with everything and silently mean "unlimited"."""
    if value is None:
        return
    if integer:
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    else:
        fits = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value > 0
        )
    if not fits:
        kind = "int" if integer else "number"
        raise ConfigurationError(f"{owner}.{name} must be a positive {kind} or None, got {value!r}")


class BudgetExhausted(BudgetExceededError):
    """A limit of the shared ledger was reached; ``reason`` names which."""

    def __init__(self, reason: TerminationReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BudgetLedger:
    """What a call tree has spent, against its ``Budget``. Safe from any thread or task."""

    def __init__(
        self, budget: Budget | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.budget = budget or Budget()
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.usage = Usage()
        self.cost_usd = 0.0
        self.cost_known = True
        self.model_calls = 0
        self.sub_calls = 0
        self.deepest = 0
        """The deepest run depth reached in the tree (0: only the root ran)."""
        self._refused: BudgetExhausted | None = None

    # --- spending ---------------------------------------------------------------------

    def charge(self, completion: Completion) -> None:
        """Count a finished model call (root, sub-call or child: all charge here)."""
        with self._lock:
            self.usage = self.usage + completion.usage
            self.cost_usd += completion.cost_usd
            self.cost_known = self.cost_known and completion.cost_known
            self.model_calls += 1

    def reserve_sub_call(self, count: int = 1) -> None:
        """Claim ``count`` sub-calls, or raise ``BudgetExhausted`` without claiming any."""
        with self._lock:
            limit = self.budget.max_sub_calls
            if limit is not None and self.sub_calls + count > limit:
                # Once refused, the tree is out of sub-calls: every run in it ends.
                self._refused = BudgetExhausted(
                    TerminationReason.SUB_CALL_BUDGET,
                    f"the sub-call budget is spent ({self.sub_calls} of {limit} used, "
                    f"{count} more asked); answer with what you have",
                )
                raise self._refused
            self.sub_calls += count

    def enter_depth(self, depth: int) -> None:
        with self._lock:
            self.deepest = max(self.deepest, depth)

    # --- checking ---------------------------------------------------------------------

    def exhausted(self) -> BudgetExhausted | None:
        """The first shared limit that is used up, or None while all have room."""
        budget = self.budget
        with self._lock:
            tokens, cost = self.usage.total_tokens, self.cost_usd
        if budget.max_tokens is not None and tokens >= budget.max_tokens:
            return BudgetExhausted(
                TerminationReason.TOKEN_BUDGET,
                f"the token budget is spent ({tokens:,} of {budget.max_tokens:,} tokens)",
            )
        if budget.max_cost_usd is not None and cost >= budget.max_cost_usd:
            return BudgetExhausted(
                TerminationReason.COST_BUDGET,
                f"the cost budget is spent (${cost:.4f} of ${budget.max_cost_usd:.4f})",
            )
        if self.time_left() <= 0:
            return BudgetExhausted(
                TerminationReason.TIME_BUDGET,
                f"the time budget is spent ({budget.max_time_s:g} s of wall time)",
            )
        return self._refused

    def check(self) -> None:
        """Raise ``BudgetExhausted`` when a shared limit is used up."""
        problem = self.exhausted()
        if problem is not None:
            raise problem

    def time_left(self) -> float:
        """Seconds of wall time left (``inf`` without a time limit)."""
        if self.budget.max_time_s is None:
            return math.inf
        return self.budget.max_time_s - (self._clock() - self.started)

    def elapsed(self) -> float:
        return self._clock() - self.started
