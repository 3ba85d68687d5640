"""Knowledge-graph validation: does code or a command a model wants to run use the domain's
vocabulary? Owns the thesaurus (terms, concepts, role graph), the word-boundary term matcher,
the validator and its strictness levels, the retry/escalation gate the RLM loop calls, and the
audit events every validation emits. It runs nothing itself; execution environments and the
loop consult it before running.
"""

from conch.validate._events import SCHEMA_VERSION, Decision, EventSink, ValidationEvent
from conch.validate._gate import (
    TERMINATION_REASON,
    Approval,
    Escalation,
    EscalationCallback,
    GateOutcome,
    ValidationGate,
    feedback_message,
    terminal_escalation,
)
from conch.validate._matcher import Match, TermMatcher
from conch.validate._thesaurus import Concept, RoleGraph, Thesaurus, ThesaurusError
from conch.validate._validator import KnowledgeGraphValidator, Strictness

__all__ = [
    "SCHEMA_VERSION",
    "TERMINATION_REASON",
    "Approval",
    "Concept",
    "Decision",
    "Escalation",
    "EscalationCallback",
    "EventSink",
    "GateOutcome",
    "KnowledgeGraphValidator",
    "Match",
    "RoleGraph",
    "Strictness",
    "TermMatcher",
    "Thesaurus",
    "ThesaurusError",
    "ValidationEvent",
    "ValidationGate",
    "feedback_message",
    "terminal_escalation",
]
