"""A validator checks each cell before it runs; a blocked cell gets feedback, a rejection ends
the run."""

from __future__ import annotations

from conch.lm import ScriptedModel
from conch.rlm import RLM, TerminationReason
from conch.sandbox import ValidationResult


class NoDeletes:
    """Blocks any code that mentions `delete`."""

    def validate(self, text: str, kind: str = "code") -> ValidationResult:
        if "delete" in text:
            return ValidationResult(
                passed=False, unknown=("delete",), message="'delete' is unknown"
            )
        return ValidationResult(passed=True)


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


async def test_a_blocked_cell_is_not_run_and_the_model_gets_feedback(env):
    model = ScriptedModel([repl("delete_all = 1"), repl("FINAL('kept')")])
    result = await RLM(model, sandbox=env, validator=NoDeletes()).acompletion("c", "q")
    assert result.answer == "kept"
    feedback = model.calls[1].messages[-1]["content"]
    assert "Not run: 'delete' is unknown" in feedback


async def test_a_rejected_escalation_ends_the_run(env):
    model = ScriptedModel([repl("delete_all = 1")] * 3)
    rlm = RLM(model, sandbox=env, validator=NoDeletes(), escalate=lambda escalation: False)
    result = await rlm.acompletion("c", "q")
    assert result.termination_reason is TerminationReason.VALIDATION_REJECTED
    assert result.answer is None
    assert "escalation rejected it" in result.error


async def test_an_approved_escalation_runs_the_cell(env):
    model = ScriptedModel(
        [repl("delete_all = 1")] * 2 + [repl("delete_all = 2\nFINAL(delete_all)")]
    )
    rlm = RLM(model, sandbox=env, validator=NoDeletes(), escalate=lambda escalation: True)
    result = await rlm.acompletion("c", "q")
    assert result.answer == "2"
