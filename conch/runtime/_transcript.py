"""A turn as graph nodes, and the graph's active path as what the next turn's model reads.

A committed turn is a chain hanging from the previous leaf: ``user_input``, then per model
reply a ``model_reply``, per cell a ``code_cell`` and its ``cell_output``, per sub-call a
``sub_call``, and last an ``answer`` (or an ``error`` for a failed turn) that carries the
turn's REPL snapshot. The chain is built from the turn's own trace records, so the graph
and the trace tell the same story.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conch.lm import Message
from conch.store import Node, NodeKind
from conch.trace import RecordType, TraceRecord

#: Earlier turns the next turn's model sees (as query and answer pairs), at most.
DEFAULT_HISTORY_TURNS = 20
_HISTORY_ANSWER_CHARS = 4_000

_CELL_FIELDS = ("iteration", "index", "code", "blocked", "original_code", "rewrite_reason")
_OUTPUT_FIELDS = ("output", "exit_code", "timed_out", "duration_ms", "state_lost")


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """How a turn ended, as its last node records it."""

    answer: str | None
    termination_reason: str
    failed: bool
    iterations: int = 0
    usage: Mapping[str, int] | None = None
    cost_usd: float = 0.0
    duration_s: float = 0.0
    error: str | None = None
    answer_source: str | None = None
    snapshot_error: str | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "answer": self.answer,
            "termination_reason": self.termination_reason,
            "failed": self.failed,
            "iterations": self.iterations,
            "usage": dict(self.usage or {}),
            "cost_usd": self.cost_usd,
            "duration_s": round(self.duration_s, 3),
        }
        for name in ("error", "answer_source", "snapshot_error"):
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        return data


def turn_nodes(
    session_id: str,
    parent_id: str | None,
    *,
    text: str,
    context_description: str | None,
    context_loaded: bool,
    records: Sequence[TraceRecord],
    run_id: str,
    end: TurnEnd,
    snapshot_id: str | None,
) -> list[Node]:
    """The chain of nodes one turn commits, parent first."""
    nodes: list[Node] = []

    def add(kind: NodeKind, payload: Mapping[str, Any], snapshot: str | None = None) -> None:
        parent = nodes[-1].id if nodes else parent_id
        nodes.append(Node.new(session_id, kind, payload, parent_id=parent, snapshot_id=snapshot))

    add(
        NodeKind.USER_INPUT,
        {"text": text, "context": context_description, "context_loaded": context_loaded},
    )
    for record in records:
        if record.run_id != run_id:
            continue  # a child run's records: the sub_call record of this run stands for it
        data = record.data
        if record.type == RecordType.MODEL_CALL:
            add(
                NodeKind.MODEL_REPLY,
                {
                    "iteration": data.get("iteration"),
                    "kind": data.get("kind"),
                    "text": data.get("reply", ""),
                    "model": data.get("model"),
                    "usage": data.get("usage"),
                    "cost_usd": data.get("cost_usd"),
                },
            )
        elif record.type == RecordType.CODE_CELL:
            add(NodeKind.CODE_CELL, _pick(data, _CELL_FIELDS))
            add(NodeKind.CELL_OUTPUT, _pick(data, _OUTPUT_FIELDS))
        elif record.type == RecordType.SUB_CALL:
            add(NodeKind.SUB_CALL, dict(data))
    kind = NodeKind.ERROR if end.failed else NodeKind.ANSWER
    add(kind, end.payload(), snapshot_id)
    return nodes


def turn_end_of(node: Node) -> TurnEnd:
    """Read back the ``TurnEnd`` a turn's last node recorded."""
    data = node.payload
    return TurnEnd(
        answer=data.get("answer"),
        termination_reason=str(data.get("termination_reason", "")),
        failed=bool(data.get("failed", node.kind is NodeKind.ERROR)),
        iterations=int(data.get("iterations", 0)),
        usage=data.get("usage") or {},
        cost_usd=float(data.get("cost_usd", 0.0)),
        duration_s=float(data.get("duration_s", 0.0)),
        error=data.get("error"),
        answer_source=data.get("answer_source"),
        snapshot_error=data.get("snapshot_error"),
    )


def history_messages(
    path: Sequence[Node], *, max_turns: int = DEFAULT_HISTORY_TURNS
) -> list[Message]:
    """Earlier turns on the active path as alternating query and answer messages, newest
    ``max_turns`` only. The code and outputs of those turns are left out: what they
    computed is still in the REPL's variables."""
    turns: list[tuple[str, str]] = []
    query: str | None = None
    for node in path:
        if node.kind is NodeKind.USER_INPUT:
            query = str(node.payload.get("text", ""))
        elif node.kind in (NodeKind.ANSWER, NodeKind.ERROR) and query is not None:
            turns.append((query, _answer_text(node)))
            query = None
    messages: list[Message] = []
    for asked, answered in turns[-max_turns:] if max_turns > 0 else []:
        messages.append({"role": "user", "content": f"Query: {asked}"})
        messages.append({"role": "assistant", "content": answered})
    return messages


def loaded_context(path: Sequence[Node]) -> str | None:
    """The description of the newest context an earlier turn on the path loaded (None: no
    turn loaded one)."""
    for node in reversed(path):
        if node.kind is NodeKind.USER_INPUT and node.payload.get("context_loaded"):
            return node.payload.get("context")
    return None


def turn_count(path: Sequence[Node]) -> int:
    return sum(1 for node in path if node.kind is NodeKind.USER_INPUT)


def _answer_text(node: Node) -> str:
    end = turn_end_of(node)
    if end.answer is not None:
        answer = end.answer
        if len(answer) > _HISTORY_ANSWER_CHARS:
            answer = answer[:_HISTORY_ANSWER_CHARS] + f"… ({len(end.answer):,} chars)"
        return f"FINAL({answer})"
    why = end.error or end.termination_reason
    return f"(This turn ended without an answer: {why}.)"


def _pick(data: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {name: data[name] for name in names if name in data}
