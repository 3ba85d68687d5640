"""A run's trajectory as trace records: versioned JSONL events, child runs nested by parent id.

Records, in order: ``run_start``; per reply a ``model_call`` (usage, cost, the reply, and only
the messages added since the previous call: the full prompt of call n is the concatenation
of the deltas of calls 1..n); a ``code_cell`` per cell (code, output as the model saw it,
timing); a ``sub_call`` per ``llm_query`` prompt or ``rlm_query`` (with the child's run id);
``final`` when an answer is given; ``run_end``. A child run's records carry its own
``run_id`` and, as ``parent_id``, the span of the run that started it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from conch.lm import Completion, Message
from conch.trace import RecordType, TraceContext, TraceLevel, TraceRecord, TraceSink

_PREVIEW = 500


class Trajectory:
    """Emits one run's records to a sink (or nowhere when the sink is None), at ``level``."""

    def __init__(
        self,
        sink: TraceSink | None,
        context: TraceContext,
        level: TraceLevel = TraceLevel.STANDARD,
    ) -> None:
        self.sink = sink
        self.context = context
        self.level = level
        self._logged_messages = 0

    def child(self, run_id: str, session_id: str) -> Trajectory:
        context = self.context.child(run_id=run_id, session_id=session_id)
        return Trajectory(self.sink, context, self.level)

    def _emit(self, record_type: str, data: Mapping[str, Any]) -> None:
        if self.sink is not None and self.level.allows(record_type):
            self.sink.emit(TraceRecord.create(record_type, self.context, data))

    @property
    def extended(self) -> bool:
        return self.sink is not None and self.level is TraceLevel.EXTENDED

    def run_start(self, **data: Any) -> None:
        self._emit(RecordType.RUN_START, data)

    def model_call(
        self,
        iteration: int,
        messages: Sequence[Message],
        completion: Completion,
        reply: str,
        *,
        kind: str = "turn",
    ) -> None:
        """Log the call; the loop then appends ``reply`` to ``messages`` (already counted)."""
        delta = [dict(m) for m in messages[self._logged_messages :]]
        self._logged_messages = len(messages) + 1
        self._emit(
            RecordType.MODEL_CALL,
            {
                "iteration": iteration,
                "kind": kind,
                "model": completion.model,
                "new_messages": delta,
                "reply": reply,
                "usage": completion.usage.as_dict(),
                "cost_usd": completion.cost_usd,
                "latency_s": completion.latency_s,
                "finish_reason": completion.finish_reason,
                "attempts": completion.attempts,
            },
        )

    def model_request(
        self, model: str, messages: Sequence[Message], options: Mapping[str, Any]
    ) -> None:
        """Extended level: every request exactly as it goes to the client."""
        if self.extended:
            self._emit(
                RecordType.MODEL_REQUEST,
                {"model": model, "messages": [dict(m) for m in messages], "options": options},
            )

    def model_reply(self, completion: Completion) -> None:
        """Extended level: the reply, with the provider's own response where it has one."""
        if self.extended:
            self._emit(
                RecordType.MODEL_REPLY,
                {
                    "model": completion.model,
                    "text": completion.text,
                    "finish_reason": completion.finish_reason,
                    "usage": completion.usage.as_dict(),
                    "raw": _raw(completion.raw),
                },
            )

    def code_cell(self, iteration: int, index: int, code: str, **data: Any) -> None:
        self._emit(
            RecordType.CODE_CELL, {"iteration": iteration, "index": index, "code": code, **data}
        )

    def sub_call(self, kind: str, **data: Any) -> None:
        self._emit(RecordType.SUB_CALL, {"kind": kind, **data})

    def validation(self, record: Mapping[str, Any]) -> None:
        self._emit(RecordType.VALIDATION, record)

    def final(self, answer: str, source: str) -> None:
        self._emit(RecordType.FINAL, {"answer": answer, "source": source})

    def error(self, message: str) -> None:
        self._emit(RecordType.ERROR, {"message": message})

    def run_end(self, **data: Any) -> None:
        self._emit(RecordType.RUN_END, data)


def _raw(response: Any) -> Any:
    """A provider response as JSON data (SDK objects have ``model_dump``), else its repr."""
    if response is None or isinstance(response, dict | list | str | int | float | bool):
        return response
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json")
        except Exception:  # a half-built SDK object: its repr still tells the story
            pass
    return repr(response)


def preview(text: str, limit: int = _PREVIEW) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} chars)"
