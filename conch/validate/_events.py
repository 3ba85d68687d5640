"""Audit records: one ``ValidationEvent`` per validation, for a trace sink to keep.

An operator reads them to see what was blocked and why. The input itself is not recorded
(it may be large or sensitive), only its SHA-256; matched and unknown terms are recorded up
to ``MAX_LISTED`` each, with their full counts beside them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conch.sandbox import ValidationResult

SCHEMA_VERSION = 1
MAX_LISTED = 100


class Decision(enum.StrEnum):
    """What happened to the validated input."""

    RUN = "run"
    """It passed and may run."""
    BLOCKED = "blocked"
    """It failed; a bare validator (no gate) reports this."""
    RETRY = "retry"
    """It failed; the model is told why and may try again."""
    APPROVED = "approved"
    """It failed too many times in a row; the escalation approved running it anyway."""
    REJECTED = "rejected"
    """It failed too many times in a row; the escalation rejected it (the turn ends)."""


@dataclass(frozen=True, slots=True)
class ValidationEvent:
    input_sha256: str
    kind: str
    passed: bool
    decision: Decision
    matched: tuple[tuple[str, str], ...]
    """Distinct ``(surface term, concept)`` pairs, at most ``MAX_LISTED``."""
    matched_count: int
    unknown: tuple[str, ...]
    unknown_count: int
    match_ratio: float
    connected: bool | None
    retry_count: int
    """Blocked attempts in a row before this one (0 for a first attempt)."""
    strictness: str | None = None
    session_id: str | None = None
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_result(
        cls,
        text: str,
        kind: str,
        result: ValidationResult,
        decision: Decision,
        *,
        retry_count: int = 0,
        strictness: str | None = None,
        session_id: str | None = None,
    ) -> ValidationEvent:
        pairs = dict.fromkeys((m.term, m.concept) for m in result.matched)
        return cls(
            input_sha256=input_digest(text),
            kind=kind,
            passed=result.passed,
            decision=decision,
            matched=tuple(pairs)[:MAX_LISTED],
            matched_count=len(result.matched),
            unknown=result.unknown[:MAX_LISTED],
            unknown_count=len(result.unknown),
            match_ratio=result.match_ratio,
            connected=result.connected,
            retry_count=retry_count,
            strictness=strictness,
            session_id=session_id,
        )

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (stable keys; ``schema_version`` changes when they do)."""
        return {
            "type": "validation",
            "schema_version": self.schema_version,
            "timestamp": self.timestamp.isoformat(),
            "session_id": self.session_id,
            "input_sha256": self.input_sha256,
            "kind": self.kind,
            "strictness": self.strictness,
            "passed": self.passed,
            "decision": str(self.decision),
            "retry_count": self.retry_count,
            "match_ratio": self.match_ratio,
            "connected": self.connected,
            "matched": [{"term": term, "concept": concept} for term, concept in self.matched],
            "matched_count": self.matched_count,
            "unknown": list(self.unknown),
            "unknown_count": self.unknown_count,
        }


#: Receives every event; a trace sink plugs in here. Exceptions it raises propagate: an
#: audit trail that fails silently is worse than a failed call.
EventSink = Callable[[ValidationEvent], None]


def input_digest(text: str) -> str:
    # surrogatepass: text decoded from arbitrary bytes may hold lone surrogates.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
