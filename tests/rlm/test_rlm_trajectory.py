"""The trajectory: versioned records, messages logged once plus deltas, children nested."""

from __future__ import annotations

from conch.lm import ScriptedModel
from conch.rlm import RLM
from conch.trace import SCHEMA_VERSION, RecordType, read_trace


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


async def test_a_run_writes_every_event_in_order(env, tmp_path):
    path = tmp_path / "trace.jsonl"
    model = ScriptedModel([repl("x = llm_query('hi')"), repl("FINAL(x)")])
    sub = ScriptedModel(lambda messages: "hello")
    result = await RLM(model, sub, sandbox=env, trace=path).acompletion("c", "q")
    assert result.trace_path == str(path)
    records = read_trace(path).records
    assert {r.schema_version for r in records} == {SCHEMA_VERSION}
    assert [r.type for r in records] == [
        RecordType.RUN_START,
        RecordType.MODEL_CALL,
        RecordType.SUB_CALL,
        RecordType.CODE_CELL,
        RecordType.MODEL_CALL,
        RecordType.CODE_CELL,
        RecordType.FINAL,
        RecordType.RUN_END,
    ]
    end = records[-1].data
    assert end["termination_reason"] == "final"
    assert end["tree_usage"]["input_tokens"] == result.usage.input_tokens


def assert_the_deltas_rebuild_every_prompt(path, model: ScriptedModel) -> None:
    calls = [r.data for r in read_trace(path).records if r.type == RecordType.MODEL_CALL]
    assert len(calls) == len(model.calls)
    rebuilt: list[dict] = []
    for number, call in enumerate(calls):
        rebuilt += call["new_messages"]
        assert rebuilt == [dict(m) for m in model.calls[number].messages]
        rebuilt.append({"role": "assistant", "content": call["reply"]})


async def test_messages_are_logged_once_and_the_deltas_rebuild_every_prompt(env, tmp_path):
    path = tmp_path / "trace.jsonl"
    model = ScriptedModel([repl("print(1)"), repl("print(2)"), repl("FINAL(3)")])
    await RLM(model, sandbox=env, trace=path).acompletion("c", "q")
    assert_the_deltas_rebuild_every_prompt(path, model)
    system_prompt = model.calls[0].messages[0]["content"]
    assert path.read_text().count(system_prompt[:80]) == 1


async def test_an_empty_reply_is_recorded_as_the_next_prompt_carries_it(env, tmp_path):
    path = tmp_path / "trace.jsonl"
    model = ScriptedModel(["", repl("print(1)"), "", repl("FINAL(3)")])
    await RLM(model, sandbox=env, trace=path).acompletion("c", "q")
    assert_the_deltas_rebuild_every_prompt(path, model)


async def test_child_runs_carry_their_own_run_id_and_point_at_their_parent(env, tmp_path):
    path = tmp_path / "trace.jsonl"
    model = ScriptedModel([repl("FINAL(rlm_query('piece', 'inner'))")])
    child = ScriptedModel([repl("FINAL(context * 2)")])
    await RLM(model, child, sandbox=env, trace=path).acompletion("c", "outer")
    records = read_trace(path).records
    root_start, child_start = [r for r in records if r.type == RecordType.RUN_START]
    assert child_start.run_id != root_start.run_id
    assert child_start.parent_id == root_start.span_id
    assert child_start.data["query"] == "inner"
    (sub_call,) = [r for r in records if r.type == RecordType.SUB_CALL]
    assert sub_call.run_id == root_start.run_id
    assert sub_call.data["child_run_id"] == child_start.run_id
    assert sub_call.data["answer"] == "piecepiece"
