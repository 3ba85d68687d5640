"""The gate the RLM loop calls: retry with feedback, escalate, never run what is blocked."""

from __future__ import annotations

import pytest

from conch.sandbox import ValidationResult
from conch.validate import (
    TERMINATION_REASON,
    Approval,
    Decision,
    Escalation,
    ValidationEvent,
    ValidationGate,
    terminal_escalation,
)

BLOCKED = "curl evil.example"  # no known term
PASSES = "git commit"


class Runner:
    """Stands in for the RLM loop: runs a cell only when the gate says so."""

    def __init__(self, gate: ValidationGate) -> None:
        self.gate = gate
        self.ran: list[str] = []

    async def submit(self, cell: str, session_id: str = "default") -> Decision:
        outcome = await self.gate.check(cell, "command", session_id=session_id)
        if outcome.should_run:
            self.ran.append(cell)
        return outcome.decision


@pytest.fixture
def gate(validator_for) -> ValidationGate:
    return ValidationGate(validator_for("normal"))


async def test_a_passing_input_runs(gate):
    outcome = await gate.check(PASSES, "command")
    assert outcome.decision is Decision.RUN and outcome.should_run and outcome.feedback is None


async def test_a_blocked_input_is_retried_with_feedback_naming_terms(validator_for):
    gate = ValidationGate(validator_for("strict"))  # 1 known word in 5 is under 0.3
    outcome = await gate.check("git comit dokcer curl curl", "command")
    assert outcome.decision is Decision.RETRY and not outcome.should_run
    assert outcome.feedback is not None
    assert "comit -> commit" in outcome.feedback
    assert "dokcer -> docker" in outcome.feedback
    assert "Known terms you used: git" in outcome.feedback
    assert "2 more blocked attempts and it goes to an operator" in outcome.feedback


async def test_without_a_callback_the_third_block_in_a_row_is_rejected(validator_for):
    runner = Runner(ValidationGate(validator_for()))
    decisions = [await runner.submit(BLOCKED) for _ in range(3)]
    assert decisions == [Decision.RETRY, Decision.RETRY, Decision.REJECTED]
    assert runner.ran == []


async def test_blocked_cells_are_never_run(validator_for):
    runner = Runner(ValidationGate(validator_for(), escalate=lambda _: Approval.REJECT))
    cells = [BLOCKED, PASSES, BLOCKED, BLOCKED, BLOCKED, PASSES]
    decisions = [await runner.submit(cell) for cell in cells]
    assert decisions == [
        Decision.RETRY,
        Decision.RUN,  # a pass resets the count
        Decision.RETRY,
        Decision.RETRY,
        Decision.REJECTED,
        Decision.RUN,  # the count restarts after an escalation
    ]
    assert runner.ran == [PASSES, PASSES]


@pytest.mark.parametrize(
    ("answer", "decision"),
    [
        (Approval.APPROVE, Decision.APPROVED),
        (True, Decision.APPROVED),
        (Approval.REJECT, Decision.REJECTED),
        (False, Decision.REJECTED),
        ("maybe", Decision.REJECTED),  # an unclear answer fails closed
    ],
)
async def test_the_escalation_callback_decides(validator_for, answer, decision):
    seen: list[Escalation] = []

    def escalate(escalation: Escalation):
        seen.append(escalation)
        return answer

    gate = ValidationGate(validator_for(), max_retries=2, escalate=escalate)
    await gate.check(BLOCKED, "command", session_id="s")
    outcome = await gate.check(BLOCKED, "command", session_id="s")
    assert outcome.decision is decision
    assert outcome.should_run is (decision is Decision.APPROVED)
    assert [(e.session_id, e.text, e.attempts) for e in seen] == [("s", BLOCKED, 2)]


async def test_an_async_callback_is_awaited(validator_for):
    async def approve(_: Escalation) -> Approval:
        return Approval.APPROVE

    gate = ValidationGate(validator_for(), max_retries=1, escalate=approve)
    assert (await gate.check(BLOCKED, "command")).decision is Decision.APPROVED


async def test_a_failing_callback_rejects_and_says_why(validator_for):
    def broken(_: Escalation) -> Approval:
        raise RuntimeError("operator console down")

    gate = ValidationGate(validator_for(), max_retries=1, escalate=broken)
    outcome = await gate.check(BLOCKED, "command")
    assert outcome.ends_turn
    assert outcome.feedback is not None and "operator console down" in outcome.feedback


async def test_sessions_count_separately(gate):
    await gate.check(BLOCKED, "command", session_id="a")
    await gate.check(BLOCKED, "command", session_id="a")
    assert (await gate.check(BLOCKED, "command", session_id="b")).decision is Decision.RETRY
    assert gate.blocked_in_a_row("a") == 2
    gate.reset("a")
    assert gate.blocked_in_a_row("a") == 0


async def test_max_retries_defaults_to_the_validators(validator_for):
    assert ValidationGate(validator_for(max_retries=5)).max_retries == 5


async def test_every_check_emits_an_event_with_retry_count_and_decision(validator_for):
    events: list[ValidationEvent] = []
    gate = ValidationGate(validator_for(), max_retries=2, on_event=events.append)
    for cell in (PASSES, BLOCKED, BLOCKED):
        await gate.check(cell, "command", session_id="s1")
    records = [event.to_record() for event in events]
    assert [(r["decision"], r["retry_count"], r["passed"]) for r in records] == [
        ("run", 0, True),
        ("retry", 0, False),
        ("rejected", 1, False),
    ]
    assert {r["session_id"] for r in records} == {"s1"}
    assert records[1]["unknown"] == ["curl", "evil", "example"]


async def test_the_outcome_carries_the_event_it_emitted(validator_for):
    events: list[ValidationEvent] = []
    gate = ValidationGate(validator_for("strict"), on_event=events.append)
    outcomes = [await gate.check(cell, "command") for cell in (BLOCKED, PASSES)]
    assert [outcome.event for outcome in outcomes] == events
    assert [(e.retry_count, e.strictness) for e in events] == [(0, "strict"), (1, "strict")]


class TextOnly:
    """A validator whose validate() knows nothing of extra syntax words."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def validate(self, text: str, kind: str = "code") -> ValidationResult:
        self.seen.append(text)
        return ValidationResult(passed=True)


async def test_syntax_words_reach_a_validator_that_takes_them(validator_for):
    gate = ValidationGate(validator_for())
    code = "rows = lookup(context)  # git"
    assert (await gate.check(code)).result.unknown == ("rows", "lookup", "context")
    outcome = await gate.check(code, syntax=frozenset({"lookup", "context"}))
    assert outcome.result.unknown == ("rows",)


async def test_a_validator_without_syntax_words_judges_the_text_alone():
    validator = TextOnly()
    outcome = await ValidationGate(validator).check("x = context", syntax={"context"})
    assert outcome.should_run
    assert validator.seen == ["x = context"]


async def test_terminal_callback_rejects_without_a_terminal(monkeypatch, validator_for):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    escalation = Escalation("s", BLOCKED, "command", validator_for().validate(BLOCKED), 3)
    assert await terminal_escalation(escalation) is Approval.REJECT


@pytest.mark.parametrize(("typed", "answer"), [("y", Approval.APPROVE), ("", Approval.REJECT)])
async def test_terminal_callback_asks_on_a_terminal(monkeypatch, validator_for, typed, answer):
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: typed)
    escalation = Escalation("s", BLOCKED, "command", validator_for().validate(BLOCKED), 3)
    assert await terminal_escalation(escalation) is answer


def test_the_termination_reason_is_named_for_the_loop():
    assert TERMINATION_REASON == "validation_rejected"
