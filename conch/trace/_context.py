"""Where a trace record comes from: run, session, turn, and its place in the call tree."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


def new_trace_id() -> str:
    """A random 64-bit id in hex: short enough to read, unique enough for one store."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """The ids every record of one span carries.

    ``span_id`` names this context; ``parent_id`` is the span it was started from, so a
    reader rebuilds the call tree (a sub-call's records point at the model call that made
    it). ``TraceContext()`` starts a new run; ``child()`` opens a nested span.
    """

    run_id: str = field(default_factory=new_trace_id)
    session_id: str | None = None
    turn_id: str | None = None
    span_id: str = field(default_factory=new_trace_id)
    parent_id: str | None = None

    def child(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        turn_id: str | None = None,
    ) -> TraceContext:
        """A nested span under this one; ids not given are inherited.

        A child RLM (``rlm_query``) may take a ``run_id`` of its own and still link back
        through ``parent_id``.
        """
        return TraceContext(
            run_id=run_id or self.run_id,
            session_id=session_id or self.session_id,
            turn_id=turn_id or self.turn_id,
            parent_id=self.span_id,
        )
