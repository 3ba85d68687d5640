"""The recursive loop, driven by scripted models: how answers are given, and how runs end."""

from __future__ import annotations

import asyncio
import json

import pytest

from conch.errors import ConfigurationError, ModelResponseError
from conch.lm import Completion, ScriptedModel, Usage
from conch.rlm import RLM, Budget, TerminationReason
from conch.trace import MemoryTraceSink, RecordType


def repl(code: str) -> str:
    return f"Let me run this.\n```repl\n{code}\n```"


def last_prompt(model: ScriptedModel, call: int = -1) -> str:
    return model.calls[call].messages[-1]["content"]


def rlm_for(env, model, **options) -> RLM:
    return RLM(model, sandbox=env, **options)


# --- how an answer is given ------------------------------------------------------------


async def test_final_called_in_code_is_the_answer(any_env):
    model = ScriptedModel([repl("words = context.split()\nFINAL(len(words))")])
    result = await rlm_for(any_env, model).acompletion("one two three", "How many words?")
    assert result.answer == "3"
    assert result.termination_reason is TerminationReason.FINAL
    assert result.answer_source == "FINAL"
    assert result.iterations == 1


async def test_final_var_names_a_repl_variable(env):
    model = ScriptedModel([repl("total = sum(context)"), repl('FINAL_VAR("total")')])
    result = await rlm_for(env, model).acompletion([1, 2, 3], "Sum?")
    assert (result.answer, result.answer_source) == ("6", "FINAL_VAR")


async def test_final_var_of_an_unknown_name_is_an_error_the_model_sees(env):
    model = ScriptedModel([repl('FINAL_VAR("nope")'), repl("FINAL('recovered')")])
    result = await rlm_for(env, model).acompletion("x", "q")
    assert result.answer == "recovered"
    assert "no variable named 'nope'" in last_prompt(model)


async def test_an_answer_dict_marked_ready_is_the_answer(env):
    model = ScriptedModel(
        [repl('answer = {"content": "draft", "ready": False}'), repl('answer["ready"] = True')]
    )
    result = await rlm_for(env, model).acompletion("x", "q")
    assert (result.answer, result.answer_source, result.iterations) == ("draft", "answer", 2)


async def test_non_string_answers_become_json_or_str(env):
    model = ScriptedModel([repl("FINAL({'a': [1, 2]})")])
    result = await rlm_for(env, model).acompletion("x", "q")
    assert json.loads(result.answer) == {"a": [1, 2]}


async def test_plain_text_final_counts_in_a_reply_without_code(env):
    model = ScriptedModel(["I know it already.\nfinal(Paris)"])
    result = await rlm_for(env, model).acompletion("The capital of France is Paris.", "Capital?")
    assert (result.answer, result.answer_source) == ("Paris", "plain_text")


async def test_plain_text_final_var_is_read_from_the_repl(env):
    model = ScriptedModel([repl("city = context.split()[-1].strip('.')"), "FINAL_VAR(city)"])
    result = await rlm_for(env, model).acompletion("It is Paris.", "Capital?")
    assert result.answer == "Paris"


async def test_plain_text_final_beside_code_is_ignored(env):
    model = ScriptedModel(["```repl\nx = 6 * 7\nprint(x)\n```\nFINAL(1000)", repl("FINAL(x)")])
    result = await rlm_for(env, model).acompletion("x", "q")
    assert result.answer == "42"


async def test_the_cells_after_the_final_one_do_not_run(env):
    model = ScriptedModel(["```repl\nFINAL('first')\n```\n```repl\nFINAL('second')\n```"])
    result = await rlm_for(env, model).acompletion("x", "q")
    assert result.answer == "first"


async def test_fake_output_is_cut_by_the_stop_sequences(env):
    model = ScriptedModel(["```repl\nx = 1\n```\n```output\n99\n```\nFINAL(99)", repl("FINAL(x)")])
    result = await rlm_for(env, model).acompletion("x", "q")
    assert result.answer == "1"
    assert "```output" in model.calls[0].options["stop"]


async def test_fake_output_is_never_trusted_when_the_provider_ignores_stop(env):
    # A Completion is returned as given: like a provider that does not honour `stop`.
    ignoring_stop = Completion(
        text="```repl\nx = 1\n```\n```output\n1\n```\nFINAL(99)\n```repl\nFINAL('fake')\n```",
        model="m",
    )
    model = ScriptedModel([ignoring_stop, repl("FINAL(x + 1)")])
    result = await rlm_for(env, model).acompletion("x", "q")
    assert result.answer == "2"
    assert "FINAL(99)" not in model.calls[1].messages[2]["content"]


# --- what the model sees ----------------------------------------------------------------


async def test_the_model_sees_metadata_never_the_whole_context(env):
    secret = "NEEDLE-7f3a"
    context = "a" * 50_000 + secret + "b" * 50_000
    model = ScriptedModel([repl("FINAL(context.index('NEEDLE'))")])
    result = await rlm_for(env, model).acompletion(context, "Where is the needle?")
    assert result.answer == "50000"
    prompt = "\n".join(m["content"] for m in model.calls[0].messages)
    assert secret not in prompt
    assert "100,011 characters" in prompt


async def test_long_output_is_truncated_with_a_marker(env):
    model = ScriptedModel([repl("print('x' * 5000)"), repl("FINAL('done')")])
    await rlm_for(env, model, max_output_chars=1000).acompletion("c", "q")
    seen = last_prompt(model)
    assert "[output truncated: 1,000 of 5,00" in seen
    assert "x" * 1001 not in seen


async def test_errors_in_a_cell_are_shown_and_variables_persist(env):
    model = ScriptedModel([repl("kept = 5\nraise ValueError('bad row')"), repl("FINAL(kept)")])
    result = await rlm_for(env, model).acompletion("c", "q")
    assert result.answer == "5"
    assert "ValueError: bad row" in last_prompt(model)


async def test_show_vars_lists_user_variables(env):
    model = ScriptedModel([repl("rows = [1, 2]\nSHOW_VARS()"), repl("FINAL('ok')")])
    await rlm_for(env, model).acompletion("c", "q")
    assert "rows: list (len 2)" in last_prompt(model)
    assert "llm_query" not in last_prompt(model).split("rows")[0]


# --- how runs end without an answer -------------------------------------------------------


async def test_max_iterations_ends_the_run_then_asks_for_a_best_answer(env):
    model = ScriptedModel([repl("x = 1"), repl("x = 2"), "FINAL(my best guess)"])
    result = await rlm_for(env, model, max_iterations=2).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.MAX_ITERATIONS
    assert (result.answer, result.answer_source) == ("my best guess", "best_answer")
    assert "cannot run more code" in last_prompt(model)


async def test_code_that_raises_every_time_hits_the_consecutive_error_limit(env):
    model = ScriptedModel([repl("1 / 0")] * 3)
    result = await rlm_for(env, model, max_consecutive_errors=3).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.CONSECUTIVE_ERRORS
    assert result.answer is None  # the best-answer request found no reply left
    assert result.iterations == 3


async def test_empty_replies_are_nudged_and_count_as_errors(env):
    model = ScriptedModel(["", "   ", "no code here"])
    result = await rlm_for(env, model, max_consecutive_errors=3).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.CONSECUTIVE_ERRORS
    assert "Your reply was empty" in model.calls[1].messages[-1]["content"]
    assert "no ```repl block" in model.calls[3].messages[-2]["content"]


async def test_a_cell_that_never_ends_is_interrupted_and_the_run_goes_on(env):
    model = ScriptedModel([repl("import time\nx = 1\ntime.sleep(60)"), repl("FINAL(x)")])
    result = await rlm_for(env, model, cell_timeout_s=0.5).acompletion("c", "q")
    assert result.answer == "1"
    assert "timeout" in last_prompt(model)


async def test_the_token_budget_ends_the_run(env):
    model = ScriptedModel([repl("x = 1")] * 5)
    result = await rlm_for(env, model, budget=Budget(max_tokens=50)).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.TOKEN_BUDGET
    assert result.iterations == 1
    assert len(model.calls) == 1  # no best-answer request: nothing may be spent
    assert "token budget" in result.error


async def test_the_cost_budget_ends_the_run(env):
    def priced(text: str) -> Completion:
        return Completion(text=text, model="m", usage=Usage(10, 10), cost_usd=0.6, cost_known=True)

    model = ScriptedModel([priced(repl("x = 1"))] * 5)
    result = await rlm_for(env, model, budget=Budget(max_cost_usd=1.0)).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.COST_BUDGET
    assert result.cost_usd == pytest.approx(1.2)
    assert result.iterations == 2


async def test_the_time_budget_interrupts_a_running_cell(env):
    model = ScriptedModel([repl("import time\ntime.sleep(30)")] * 3)
    rlm = rlm_for(env, model, budget=Budget(max_time_s=0.5), cell_timeout_s=30)
    result = await rlm.acompletion("c", "q")
    assert result.termination_reason is TerminationReason.TIME_BUDGET
    assert result.answer is None
    assert result.duration_s < 15  # the 30 s cell was cut short, not left to run out


async def test_the_sub_call_budget_ends_the_run_with_a_best_answer(env):
    code = "got = []\nfor i in range(5):\n    got.append(llm_query(f'q{i}'))"
    model = ScriptedModel([repl(code), "FINAL(partial)"])
    sub = ScriptedModel(lambda messages: "ok")
    rlm = RLM(model, sub, sandbox=env, budget=Budget(max_sub_calls=2))
    result = await rlm.acompletion("c", "q")
    assert result.termination_reason is TerminationReason.SUB_CALL_BUDGET
    assert (result.answer, result.answer_source) == ("partial", "best_answer")
    assert len(sub.calls) == 2 and result.sub_calls == 2


async def test_a_model_error_ends_the_run_with_its_message(env):
    model = ScriptedModel([ModelResponseError("the provider sent nonsense")])
    result = await rlm_for(env, model).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.MODEL_ERROR
    assert result.error == "the provider sent nonsense"


async def test_a_cancelled_run_is_traced_as_cancelled_and_releases_its_session(env):
    started = asyncio.Event()

    async def slow(messages):
        started.set()
        await asyncio.sleep(30)
        return "never"

    sink = MemoryTraceSink()
    task = asyncio.create_task(
        RLM(ScriptedModel(slow), sandbox=env, trace=sink).acompletion("c", "q")
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (end,) = sink.of_type(RecordType.RUN_END)
    assert end.data["termination_reason"] == "cancelled"
    assert env._sessions == {}


# --- sub-calls ------------------------------------------------------------------------------


async def test_llm_query_uses_the_sub_model_and_is_counted(env):
    model = ScriptedModel([repl("FINAL(llm_query('capital of France?'))")])
    sub = ScriptedModel(lambda messages: "Paris")
    result = await RLM(model, sub, sandbox=env).acompletion("c", "q")
    assert result.answer == "Paris"
    assert sub.calls[0].messages == ({"role": "user", "content": "capital of France?"},)
    assert result.sub_calls == 1


async def test_llm_query_batched_keeps_order_and_one_failure_stays_in_its_slot(env):
    def answer(messages):
        prompt = messages[-1]["content"]
        return ModelResponseError("bad item") if prompt == "p2" else prompt.upper()

    code = "got = llm_query_batched([f'p{i}' for i in range(5)])\nFINAL(got)"
    result = await RLM(ScriptedModel([repl(code)]), ScriptedModel(answer), sandbox=env).acompletion(
        "c", "q"
    )
    got = json.loads(result.answer)
    assert got[:2] == ["P0", "P1"] and got[3:] == ["P3", "P4"]
    assert got[2].startswith("Error:") and "bad item" in got[2]


async def test_llm_query_batched_runs_at_most_the_configured_number_at_once(env):
    running, peak = 0, 0

    async def answer(messages):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return "ok"

    code = "FINAL(len(llm_query_batched(['x'] * 20)))"
    rlm = RLM(ScriptedModel([repl(code)]), ScriptedModel(answer), sandbox=env, batch_concurrency=4)
    result = await rlm.acompletion("c", "q")
    assert result.answer == "20"
    assert peak == 4


async def test_rlm_query_runs_a_child_whose_spending_counts_in_the_root_ledger(any_env):
    root_reply = Completion(
        text=repl("FINAL(rlm_query(context[:5], 'Upper-case it'))"),
        model="root",
        usage=Usage(100, 10),
    )
    child_reply = Completion(text=repl("FINAL(context.upper())"), model="child", usage=Usage(7, 3))
    sink = MemoryTraceSink()
    rlm = RLM(
        ScriptedModel([root_reply]),
        ScriptedModel([child_reply]),
        sandbox=any_env,
        trace=sink,
    )
    result = await rlm.acompletion("hello world", "q")
    assert result.answer == "HELLO"
    assert result.usage == Usage(107, 13)
    assert result.max_depth_reached == 1
    starts = sink.of_type(RecordType.RUN_START)
    assert [s.data["depth"] for s in starts] == [0, 1]
    (sub_call,) = sink.of_type(RecordType.SUB_CALL)
    assert sub_call.data["child_run_id"] == starts[1].run_id
    assert starts[1].parent_id == starts[0].span_id


async def test_rlm_query_at_max_depth_is_a_plain_sub_model_call(env):
    model = ScriptedModel([repl("FINAL(rlm_query('some text', 'Summarise'))")])
    sub = ScriptedModel(lambda messages: "a summary")
    result = await RLM(model, sub, sandbox=env, max_depth=0).acompletion("c", "q")
    assert result.answer == "a summary"
    (call,) = sub.calls
    assert [m["role"] for m in call.messages] == ["user"]
    assert "Summarise" in call.messages[0]["content"]
    assert "some text" in call.messages[0]["content"]
    assert "plain llm_query" in model.calls[0].messages[0]["content"]


async def test_a_child_without_an_answer_is_an_error_in_the_parents_cell(env):
    model = ScriptedModel([repl("r = rlm_query('piece', 'q')"), repl("FINAL('went on')")])
    child = ScriptedModel([repl("x = 1"), repl("x = 2")])  # no answer, no best answer left
    rlm = RLM(model, child, sandbox=env, max_iterations=2)
    result = await rlm.acompletion("c", "q")
    assert result.answer == "went on"
    assert "sub-agent ended without an answer (max_iterations" in last_prompt(model)


async def test_user_tools_are_host_callables_by_name(any_env):
    seen = []

    def lookup(key: str) -> dict:
        """Find a record by key."""
        seen.append(key)
        return {"key": key, "value": 42}

    async def add(a: int, b: int) -> int:
        return a + b

    model = ScriptedModel([repl("FINAL(lookup('k')['value'] + add(1, b=2))")])
    rlm = RLM(model, sandbox=any_env, tools={"lookup": lookup, "add": add})
    result = await rlm.acompletion("c", "q")
    assert result.answer == "45"
    assert seen == ["k"]
    assert (
        "lookup(key: str) -> dict: Find a record by key." in model.calls[0].messages[0]["content"]
    )


def test_a_tool_may_not_take_a_reserved_name():
    with pytest.raises(ConfigurationError, match="reserved"):
        RLM(ScriptedModel([]), sandbox="local", tools={"llm_query": print})


# --- concurrency ----------------------------------------------------------------------------


async def test_twenty_concurrent_runs_each_get_their_own_answer(env, capsys):
    def reply(messages):
        return repl("print('noise'); FINAL(context[::-1])")

    rlm = RLM(ScriptedModel(reply), sandbox=env)
    contexts = [f"run-{number:02d}" for number in range(20)]
    results = await asyncio.gather(*(rlm.acompletion(c, "Reverse it") for c in contexts))
    assert [r.answer for r in results] == [c[::-1] for c in contexts]
    assert len({r.run_id for r in results}) == 20
    assert capsys.readouterr().out == ""  # nothing leaked into the host's stdout


def test_completion_runs_without_an_event_loop():
    result = RLM(ScriptedModel([repl("FINAL(len(context))")]), sandbox="local").completion(
        "abc", "Length?"
    )
    assert result.answer == "3"


def test_bad_settings_are_refused_with_their_name():
    with pytest.raises(ConfigurationError, match="max_iterations"):
        RLM(ScriptedModel([]), max_iterations=0)
    with pytest.raises(ConfigurationError, match="stop"):
        RLM(ScriptedModel([]), model_options={"stop": ["x"]})
