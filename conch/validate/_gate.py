"""``ValidationGate``: what the RLM loop does with a validation, independent of the loop.

Per session, it counts blocked attempts in a row. A passing input resets the count and runs.
A blocked input is not run: the model gets feedback (unknown terms, suggested known terms)
and may retry, until ``max_retries`` blocked attempts in a row; that one is escalated to a
callback which approves (the input runs) or rejects (the turn ends, termination reason
``validation_rejected``). Without a callback, or when the callback fails or answers something
else, the gate rejects: a guardrail fails closed.

Every check yields one ``ValidationEvent``, on the outcome and to ``on_event``: the same
record whoever writes it down. A caller running code in a language with more builtins than
Python's (the RLM's REPL) names them per check (``syntax``); they reach validators whose
``validate`` takes a ``syntax`` keyword (``KnowledgeGraphValidator`` does).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace

from conch.errors import ValidationConfigError
from conch.sandbox import ValidationResult, Validator
from conch.validate._events import Decision, EventSink, ValidationEvent
from conch.validate._validator import DEFAULT_MAX_RETRIES

logger = logging.getLogger(__name__)

#: The termination reason the RLM loop records when the gate rejects.
TERMINATION_REASON = "validation_rejected"
_SUGGESTED_WORDS = 10


@dataclass(frozen=True, slots=True)
class Escalation:
    """What the escalation callback is asked to decide on."""

    session_id: str
    text: str
    kind: str
    result: ValidationResult
    attempts: int
    """Blocked attempts in a row, this one included (equals ``max_retries``)."""


class Approval(enum.StrEnum):
    APPROVE = "approve"
    """Run the input anyway."""
    REJECT = "reject"
    """Do not run it; the turn ends."""


#: Decides an escalation: ``Approval`` (or True to approve, False to reject); may be async.
EscalationCallback = Callable[[Escalation], Approval | bool | Awaitable[Approval | bool]]


@dataclass(frozen=True, slots=True)
class GateOutcome:
    decision: Decision
    result: ValidationResult
    attempt: int
    """Blocked attempts in a row including this one (0 when it passed)."""
    feedback: str | None = None
    """For the model when it must retry or was rejected; None when the input runs."""
    event: ValidationEvent | None = None
    """The audit record of this check (what ``on_event`` received)."""

    @property
    def should_run(self) -> bool:
        return self.decision in (Decision.RUN, Decision.APPROVED)

    @property
    def ends_turn(self) -> bool:
        return self.decision is Decision.REJECTED


class ValidationGate:
    """Applies a validator with retries and escalation. One per runtime; sessions by id."""

    def __init__(
        self,
        validator: Validator,
        *,
        max_retries: int | None = None,
        escalate: EscalationCallback | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        """``max_retries`` defaults to the validator's own (``KnowledgeGraphValidator``'s
        ``max_retries``), else 3."""
        if max_retries is None:
            max_retries = getattr(validator, "max_retries", DEFAULT_MAX_RETRIES)
        if max_retries < 1:
            raise ValidationConfigError(f"max_retries must be at least 1, got {max_retries}")
        self.validator = validator
        self.max_retries = max_retries
        self._takes_syntax = _takes_keyword(validator.validate, "syntax")
        self._escalate = escalate
        self._on_event = on_event
        self._blocked_in_a_row: dict[str, int] = {}

    def blocked_in_a_row(self, session_id: str = "default") -> int:
        return self._blocked_in_a_row.get(session_id, 0)

    def reset(self, session_id: str = "default") -> None:
        """Forget a session's count (a new turn, or the session ended)."""
        self._blocked_in_a_row.pop(session_id, None)

    async def check(
        self,
        text: str,
        kind: str = "code",
        *,
        session_id: str = "default",
        syntax: Collection[str] = (),
    ) -> GateOutcome:
        """Validate ``text`` and decide: run, retry, approved or rejected. ``syntax``: words
        of the language ``text`` runs in besides Python's (for a validator that takes them;
        another one judges the text alone)."""
        if syntax and self._takes_syntax:
            result = self.validator.validate(text, kind, syntax=syntax)  # type: ignore[call-arg]
        else:
            result = self.validator.validate(text, kind)
        before = self._blocked_in_a_row.get(session_id, 0)
        if result.passed:
            self._blocked_in_a_row.pop(session_id, None)
            outcome = GateOutcome(Decision.RUN, result, attempt=0)
        else:
            attempt = before + 1
            if attempt < self.max_retries:
                self._blocked_in_a_row[session_id] = attempt
                feedback = feedback_message(result, attempt, self.max_retries)
                outcome = GateOutcome(Decision.RETRY, result, attempt, feedback)
            else:
                # The count restarts whatever is decided: an approval runs this input, a
                # rejection ends the turn, and either way the next input starts afresh.
                self._blocked_in_a_row.pop(session_id, None)
                escalation = Escalation(session_id, text, kind, result, attempt)
                approved, reason = await self._ask(escalation)
                if approved:
                    outcome = GateOutcome(Decision.APPROVED, result, attempt)
                else:
                    feedback = (
                        f"Not run: blocked {attempt} times in a row and the escalation "
                        f"rejected it ({reason}). {result.message}"
                    )
                    outcome = GateOutcome(Decision.REJECTED, result, attempt, feedback)
        event = ValidationEvent.from_result(
            text,
            kind,
            result,
            outcome.decision,
            retry_count=before,
            strictness=getattr(getattr(self.validator, "strictness", None), "value", None),
            session_id=session_id,
        )
        if self._on_event is not None:
            self._on_event(event)
        return replace(outcome, event=event)

    async def _ask(self, escalation: Escalation) -> tuple[bool, str]:
        if self._escalate is None:
            return False, "no escalation callback is configured"
        try:
            answer = self._escalate(escalation)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as error:  # fail closed, but say why
            logger.warning("validation escalation callback failed: %r; rejecting", error)
            return False, f"the escalation callback failed: {error!r}"
        if answer is True or answer == Approval.APPROVE:
            return True, "approved"
        if answer is False or answer == Approval.REJECT:
            return False, "rejected by the escalation callback"
        logger.warning("escalation callback returned %r, not approve/reject; rejecting", answer)
        return False, f"the escalation callback returned {answer!r} instead of approve/reject"


def _takes_keyword(function: Callable[..., object], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): assume not
        return False
    return any(
        (p.name == name and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def feedback_message(result: ValidationResult, attempt: int, max_retries: int) -> str:
    """Tells the model why its input was not run and which known terms to use instead."""
    lines = [f"Not run: {result.message}."]
    suggested = []
    for word in result.unknown[:_SUGGESTED_WORDS]:
        close = result.suggestions.get(word, ())
        suggested.append(
            f"  {word} -> {', '.join(close)}" if close else f"  {word} -> (none close)"
        )
    if suggested:
        lines.append("Unknown terms, with the closest known terms:")
        lines.extend(suggested)
    if result.matched:
        known = ", ".join(dict.fromkeys(m.term for m in result.matched[:_SUGGESTED_WORDS]))
        lines.append(f"Known terms you used: {known}.")
    left = max_retries - attempt
    lines.append(
        f"Rewrite it with the domain's terms. {left} more blocked attempt"
        f"{'s' if left != 1 else ''} and it goes to an operator."
    )
    return "\n".join(lines)


async def terminal_escalation(escalation: Escalation) -> Approval:
    """The CLI's callback: asks on the terminal when stdin is one, rejects otherwise."""
    if not sys.stdin.isatty():
        return Approval.REJECT
    prompt = (
        f"\nValidation blocked this {escalation.kind} {escalation.attempts} times in a row:\n"
        f"{escalation.result.message}\n---\n{escalation.text}\n---\nRun it anyway? [y/N] "
    )
    # input() blocks; run it in a thread so the event loop (timers, other sessions) goes on.
    try:
        answer = await asyncio.to_thread(input, prompt)
    except EOFError:
        return Approval.REJECT
    return Approval.APPROVE if answer.strip().lower() in ("y", "yes") else Approval.REJECT
