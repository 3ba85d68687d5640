"""What a run returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from conch.lm import Usage
from conch.rlm._budget import TerminationReason


@dataclass(frozen=True, slots=True)
class RLMResult:
    """The outcome of one ``RLM.acompletion``.

    ``usage``, ``cost_usd`` and ``sub_calls`` cover the whole call tree (child runs and
    sub-calls included); ``iterations`` counts this run's own model replies.
    """

    answer: str | None
    """None when the run ended without one (see ``termination_reason`` and ``error``)."""
    termination_reason: TerminationReason
    iterations: int
    usage: Usage
    cost_usd: float
    duration_s: float
    run_id: str
    trace_path: str | None = None
    answer_source: str | None = None
    """How the answer was given: FINAL, FINAL_VAR, answer (the dict), plain_text, or
    best_answer (the last request after a limit was hit)."""
    sub_calls: int = 0
    max_depth_reached: int = 0
    cost_known: bool = True
    """False when some model had no price: ``cost_usd`` then undercounts."""
    error: str | None = None
    """Why the run ended early, for people (the model or budget message)."""
    context_description: str | None = None
    """The context as the model was shown it (its metadata and preview)."""

    @property
    def answered(self) -> bool:
        return self.answer is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "termination_reason": str(self.termination_reason),
            "answered": self.answered,
            "answer_source": self.answer_source,
            "iterations": self.iterations,
            "usage": {**self.usage.as_dict(), "total_tokens": self.usage.total_tokens},
            "cost_usd": self.cost_usd,
            "cost_known": self.cost_known,
            "sub_calls": self.sub_calls,
            "max_depth_reached": self.max_depth_reached,
            "duration_s": self.duration_s,
            "run_id": self.run_id,
            "trace_path": self.trace_path,
            "error": self.error,
        }
