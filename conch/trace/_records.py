"""What one trace record holds, its record types, and the two trace levels."""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from conch.trace._context import TraceContext

SCHEMA_VERSION = 1
"""Written into every record; bumped when a field changes meaning or is removed."""


class RecordType(enum.StrEnum):
    """The record types the RLM loop emits. Other components may use their own strings."""

    RUN_START = "run_start"
    MODEL_CALL = "model_call"
    CODE_CELL = "code_cell"
    SUB_CALL = "sub_call"
    FINAL = "final"
    RUN_END = "run_end"
    ERROR = "error"
    VALIDATION = "validation"
    """One knowledge-graph validation of a cell: input hash, terms, decision (no input text)."""
    MODEL_REQUEST = "model_request"
    """Extended level only: the raw request sent to a provider."""
    MODEL_REPLY = "model_reply"
    """Extended level only: the raw reply a provider sent."""


EXTENDED_ONLY: frozenset[str] = frozenset({RecordType.MODEL_REQUEST, RecordType.MODEL_REPLY})


class TraceLevel(enum.Enum):
    """How much a run records. EXTENDED adds raw model requests and replies (large, and
    may hold sensitive prompt text); STANDARD is what a reader needs to follow a run."""

    STANDARD = "standard"
    EXTENDED = "extended"

    def allows(self, record_type: str) -> bool:
        """Whether a record of this type is emitted at this level."""
        return self is TraceLevel.EXTENDED or record_type not in EXTENDED_ONLY


_CONTEXT_FIELDS = ("run_id", "session_id", "turn_id", "span_id", "parent_id")


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One event. On disk it is one JSON object: these fields, flat, ``data`` nested."""

    type: str
    run_id: str
    span_id: str
    session_id: str | None = None
    turn_id: str | None = None
    parent_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    """Seconds since the Unix epoch (UTC)."""
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def create(
        cls,
        type: str,
        context: TraceContext,
        data: Mapping[str, Any] | None = None,
        *,
        timestamp: float | None = None,
    ) -> TraceRecord:
        return cls(
            type=str(type),
            run_id=context.run_id,
            span_id=context.span_id,
            session_id=context.session_id,
            turn_id=context.turn_id,
            parent_id=context.parent_id,
            data=dict(data or {}),
            timestamp=time.time() if timestamp is None else timestamp,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "type": self.type,
            "timestamp": self.timestamp,
            **{name: getattr(self, name) for name in _CONTEXT_FIELDS},
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> TraceRecord:
        """Parse a stored record; raises ``ValueError`` naming what is missing or wrong.

        Records from a newer schema are read as far as these fields go.
        """
        missing = [
            n
            for n in ("schema_version", "type", "timestamp", "run_id", "span_id")
            if n not in value
        ]
        if missing:
            raise ValueError(f"record lacks {', '.join(missing)}")
        data = value.get("data", {})
        if not isinstance(data, Mapping):
            raise ValueError(f"record data is {type(data).__name__}, not an object")
        if not isinstance(value["type"], str) or not isinstance(value["schema_version"], int):
            raise ValueError("record type must be a string and schema_version an integer")
        return cls(
            type=value["type"],
            run_id=value["run_id"],
            span_id=value["span_id"],
            session_id=value.get("session_id"),
            turn_id=value.get("turn_id"),
            parent_id=value.get("parent_id"),
            data=data,
            timestamp=float(value["timestamp"]),
            schema_version=value["schema_version"],
        )
