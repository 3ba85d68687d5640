"""A validator checks each cell before it runs; a blocked cell gets feedback, a rejection ends
the run."""

from __future__ import annotations

import hashlib
import json

from conch.lm import ScriptedModel
from conch.rlm import RLM, TerminationReason
from conch.sandbox import ValidationResult
from conch.trace import MemoryTraceSink, RecordType


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


async def test_every_validation_is_recorded_in_the_trace_without_the_code(env):
    sink = MemoryTraceSink()
    model = ScriptedModel([repl("delete_all = 1"), repl("FINAL('kept')")])
    await RLM(model, sandbox=env, validator=NoDeletes(), trace=sink).acompletion("c", "q")
    records = sink.of_type(RecordType.VALIDATION)
    assert [(r.data["decision"], r.data["passed"]) for r in records] == [
        ("retry", False),
        ("run", True),
    ]
    assert records[0].data["unknown"] == ["delete"]
    assert records[0].data["input_sha256"] == hashlib.sha256(b"delete_all = 1").hexdigest()
    assert all("delete_all" not in json.dumps(r.data) for r in records)
