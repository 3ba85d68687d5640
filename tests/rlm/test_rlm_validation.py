"""A validator checks each cell before it runs; a blocked cell gets feedback, a rejection ends
the run."""

from __future__ import annotations

import hashlib
import json

import pytest

from conch.lm import ScriptedModel
from conch.rlm import RLM, TerminationReason
from conch.rlm._loop import REPL_NAMES
from conch.sandbox import ValidationResult
from conch.trace import MemoryTraceSink, RecordType
from conch.validate import KnowledgeGraphValidator, Thesaurus


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


def last_prompt(model: ScriptedModel) -> str:
    return model.calls[-1].messages[-1]["content"]


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


async def test_a_blocked_cell_has_no_effect_at_all(env, tmp_path):
    marker = tmp_path / "ran"
    blocked = f"deleted = True\nopen({str(marker)!r}, 'w').close()"
    # The second cell lists the REPL's variables without writing the blocked word.
    model = ScriptedModel([repl(blocked), repl("FINAL(' '.join(sorted(globals())))")])
    result = await RLM(model, sandbox=env, validator=NoDeletes()).acompletion("c", "q")
    assert "context" in result.answer.split()  # the listing works...
    assert "deleted" not in result.answer.split()  # ...and the blocked cell set nothing
    assert not marker.exists()


# --- a knowledge-graph validator in the loop ---------------------------------------------

PANDAS = Thesaurus.from_json(
    {
        "name": "pandas",
        "data": {
            term: {"id": 1, "nterm": "pandas"}
            for term in ("pandas", "dataframe", "read_csv", "groupby")
        },
    }
)
# Passes in normal mode: 3 known words of 4 (`result` is unknown). The FINAL(result) written
# after it has no known word at all.
SETS_RESULT = "dataframe = 'pandas'\nresult = dataframe"


def kg_rlm(model, env, strictness="normal", **options) -> RLM:
    return RLM(model, sandbox=env, validator=KnowledgeGraphValidator(PANDAS, strictness), **options)


@pytest.mark.parametrize(
    ("replies", "refused"),
    [
        ([f"{repl(SETS_RESULT)}\nFINAL(result)"], "FINAL(result)"),
        ([repl(SETS_RESULT), "FINAL_VAR(result)"], "FINAL_VAR('result')"),
    ],
    ids=["final-beside-code", "plain-final-var"],
)
async def test_code_the_loop_writes_for_a_final_passes_the_gate_like_a_cell(env, replies, refused):
    model = ScriptedModel([*replies, repl("FINAL(dataframe)")])
    sink = MemoryTraceSink()
    result = await kg_rlm(model, env, trace=sink).acompletion("c", "q")
    assert (result.answer, result.iterations) == ("pandas", len(replies) + 1)
    feedback = last_prompt(model)
    assert f"validation blocked {refused}" in feedback
    assert "Not run: blocked: no term of the knowledge graph appears in it" in feedback
    assert [r.data["decision"] for r in sink.of_type(RecordType.VALIDATION)] == [
        "run",
        "retry",
        "run",
    ]
    blocked = [r.data for r in sink.of_type(RecordType.CODE_CELL) if r.data.get("blocked")]
    assert [record["code"] for record in blocked] == [refused]


@pytest.mark.parametrize(
    "replies",
    [[f"{repl(SETS_RESULT)}\nFINAL(result)"], [repl(SETS_RESULT), "FINAL_VAR(result)"]],
    ids=["final-beside-code", "plain-final-var"],
)
async def test_a_rejected_final_ends_the_run_unanswered(env, replies):
    validator = KnowledgeGraphValidator(PANDAS, max_retries=1)  # the first block escalates
    rlm = RLM(ScriptedModel(replies), sandbox=env, validator=validator)
    result = await rlm.acompletion("c", "q")
    assert (result.termination_reason, result.answer) == (
        TerminationReason.VALIDATION_REJECTED,
        None,
    )


@pytest.mark.parametrize("strictness", [None, "strict"], ids=["no-validator", "strict"])
async def test_the_audited_bypass_runs_nothing(env, tmp_path, strictness):
    marker = tmp_path / "pwned"
    cell = repl("import os\nx = 'pandas dataframe'")
    model = ScriptedModel([f"{cell}\nFINAL(os.system('touch {marker}'))", "FINAL(stopped)"])
    rlm = kg_rlm(model, env, strictness) if strictness else RLM(model, sandbox=env)
    result = await rlm.acompletion("c", "q")
    assert result.answer == "stopped"
    assert not marker.exists()


def test_the_repls_own_names_are_syntax_to_the_validator():
    assert {
        *("context", "answer", "FINAL", "FINAL_VAR", "final", "final_var", "SHOW_VARS"),
        *("llm_query", "llm_query_batched", "rlm_query"),
    } == REPL_NAMES  # and each run adds its tools' names


# REPL names and tools are syntax to the validator, like Python's builtins: cells that read
# `context` or call a tool are judged by their domain words and their own identifiers.
@pytest.mark.parametrize(
    ("strictness", "cell"),
    [
        # 1 known word in 11 without the REPL's names (under 0.1); in 7 with them
        (
            "normal",
            "print(context[:100])\n"
            'summary = llm_query(f"Summarise the dataframe: {context[:1000]}")\n'
            'answer = {"content": summary, "ready": False}',
        ),
        # 2 in 8 without them (under 0.3); 2 in 5 with them
        (
            "strict",
            "print(context[:100], len(context))\nframe = pandas.read_csv(io.StringIO(context))",
        ),
        # a tool: 2 in 7 without its name and `context`; 2 in 5 with them
        ("strict", "rows = fetch_rows(context)\ndf = pandas.DataFrame(rows)"),
    ],
    ids=["normal-llm-query", "strict-context", "strict-tool"],
)
async def test_the_repls_own_names_are_not_unknown_words(env, strictness, cell):
    model = ScriptedModel([repl(cell), "FINAL(done)"])
    sink = MemoryTraceSink()
    rlm = kg_rlm(
        model,
        env,
        strictness,
        sub_model=ScriptedModel(lambda messages: "a summary"),
        tools={"fetch_rows": lambda source: [1, 2]},
        trace=sink,
    )
    result = await rlm.acompletion("a,b\n1,2\n", "q")
    assert result.answer == "done"
    (validation,) = sink.of_type(RecordType.VALIDATION)
    assert validation.data["decision"] == "run"
    assert not {"context", "llm_query", "answer", "fetch_rows"} & set(validation.data["unknown"])
    (ran,) = sink.of_type(RecordType.CODE_CELL)
    assert "blocked" not in ran.data and "exit_code" in ran.data  # it ran (pandas or not)


# The loop's records are the gate's events: 0-based retry count, strictness, matched terms.
async def test_validation_records_count_retries_from_zero_and_name_the_strictness(env):
    blocked = "alpha = beta + gamma + delta + epsilon + zeta + eta + theta + iota + kappa  # pandas"
    model = ScriptedModel(
        [repl(blocked), repl(blocked), repl("dataframe = 'pandas'\nFINAL(dataframe)")]
    )
    sink = MemoryTraceSink()
    await kg_rlm(model, env, trace=sink).acompletion("c", "q")
    records = [r.data for r in sink.of_type(RecordType.VALIDATION)]
    assert [(r["decision"], r["retry_count"], r["strictness"]) for r in records] == [
        ("retry", 0, "normal"),
        ("retry", 1, "normal"),
        ("run", 2, "normal"),  # the third attempt in a row: two blocked before it
    ]
    assert records[0]["matched"] == [{"term": "pandas", "concept": "pandas"}]
    assert records[2]["matched"] == [
        {"term": "dataframe", "concept": "pandas"},
        {"term": "pandas", "concept": "pandas"},
    ]
