"""One turn of a longer conversation: what a host (the durable runtime) adds to a run.

A plain ``RLM.acompletion`` is a whole conversation: a fresh sandbox session, the default
system prompt, no history. A host that keeps a session across turns runs each turn with a
``TurnSetup``: the sandbox session to continue in (kept after the turn), the earlier turns
as messages, its own system prompt, the description of a context loaded in an earlier turn,
and ``RunHooks`` through which its plugins see and shape the turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conch.lm import Message
from conch.rlm._budget import Budget
from conch.trace import TraceContext, TraceLevel, TraceSink


@dataclass(frozen=True, slots=True)
class CellReview:
    """What a host decided about a code cell: the code to run (possibly rewritten), or
    ``code=None`` with the reason the model is shown instead of output."""

    code: str | None
    reason: str = ""


class RunHooks:
    """Callbacks into a turn's root run; the defaults change nothing.

    Child runs (``rlm_query``) and ``llm_query`` sub-calls do not call them: hooks shape
    the conversation the host owns, not the work it delegates.
    """

    async def on_model_request(self, messages: list[Message]) -> list[Message]:
        """The messages about to be sent to the root model."""
        return messages

    async def on_model_reply(self, text: str) -> str:
        """The root model's reply, before its code is read from it."""
        return text

    async def on_code_cell(self, code: str) -> CellReview:
        """A cell about to run: run it as is, rewrite it, or refuse it."""
        return CellReview(code)

    async def on_cell_output(self, output: str) -> str:
        """A cell's output as the model would see it."""
        return output


@dataclass(frozen=True, slots=True)
class TurnSetup:
    """How to run one turn of a session that outlives the turn."""

    session_id: str
    """The sandbox session to run in; it is kept (not ended) when the turn ends."""
    history: Sequence[Message] = ()
    """Earlier turns, placed between the system prompt and this turn's first message."""
    system_prompt: str | None = None
    """The whole system prompt (None: the default one)."""
    context_description: str | None = None
    """Set when this turn brings no context of its own but one is already in the REPL:
    how to describe it to the model (it is not loaded again)."""
    hooks: RunHooks | None = None
    extra_tools: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    """REPL tools for this turn only (e.g. offered by plugins), besides the RLM's own."""
    budget: Budget | None = None
    """Limits of this turn's call tree (None: the RLM's budget)."""
    max_iterations: int | None = None
    """Replies of this turn's root run (None: the RLM's ``max_iterations``)."""
    trace_context: TraceContext | None = None
    """Ids for the turn's trace records (run, session, turn, parent span)."""
    trace_level: TraceLevel = TraceLevel.STANDARD
    trace_sink: TraceSink | None = None
    """Where the turn's records go besides the RLM's own trace (e.g. a host's sink)."""
