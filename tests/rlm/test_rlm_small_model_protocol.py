"""The protocol as small models write it: FINAL beside code, final() in any case, the prompt."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.lm import ScriptedModel
from conch.rlm import RLM, TerminationReason
from conch.rlm._parsing import (
    STOP_SEQUENCES,
    extract_code_blocks,
    find_plain_final,
    names_a_value,
    text_outside_code,
)
from conch.rlm._prompts import system_prompt
from conch.trace import MemoryTraceSink, RecordType


def last_prompt(model: ScriptedModel, call: int = -1) -> str:
    return model.calls[call].messages[-1]["content"]


# --- a FINAL written beside code ---------------------------------------------------------


async def test_final_of_a_variable_beside_code_runs_the_code_first_then_reads_the_repl(env):
    reply = "```repl\nn = context.count('x')\nprint(n)\n```\nFINAL(n)"
    model = ScriptedModel([reply])
    sink = MemoryTraceSink()
    result = await RLM(model, sandbox=env, trace=sink).acompletion("x.x.x", "How many x?")
    assert (result.answer, result.answer_source, result.iterations) == ("3", "FINAL_after_code", 1)
    cells = [record.data["code"] for record in sink.of_type(RecordType.CODE_CELL)]
    assert cells == ["n = context.count('x')\nprint(n)", "FINAL(n)"]


async def test_final_beside_code_may_read_an_item_or_an_attribute_of_a_variable(env):
    reply = (
        "```repl\nimport re\nm = re.search(r'port (\\d+)', context)\nfound = {'port': m[1]}\n```"
        "\nFINAL(found['port'])"
    )
    result = await RLM(ScriptedModel([reply]), sandbox=env).acompletion("on port 8443.", "Port?")
    assert result.answer == "8443"


@pytest.mark.parametrize(
    "call",
    [
        'os.system("touch {marker}")',
        'subprocess.getoutput("touch {marker}")',
        'pathlib.Path("{marker}").touch()',
        "__import__('os').system('touch {marker}')",
        "m.group(1)",  # harmless here, but a call all the same
    ],
)
async def test_a_call_beside_code_is_never_run_and_the_model_is_told(env, tmp_path, call):
    marker = tmp_path / "ran"
    setup = "import os, pathlib, re, subprocess\nm = re.search('(x)', 'x')"
    final = call.format(marker=marker)
    model = ScriptedModel([f"```repl\n{setup}\n```\nFINAL({final})", "```repl\nFINAL('no')\n```"])
    sink = MemoryTraceSink()
    result = await RLM(model, sandbox=env, trace=sink).acompletion("c", "q")
    assert (result.answer, result.iterations) == ("no", 2)
    assert not marker.exists()
    assert "must name a variable your code set (no calls)" in last_prompt(model)
    assert [r.data["code"] for r in sink.of_type(RecordType.CODE_CELL)] == [setup, "FINAL('no')"]


async def test_what_runs_for_a_final_beside_code_is_rebuilt_not_the_models_text(env):
    sink = MemoryTraceSink()
    reply = "```repl\nn = 3\n```\nFINAL( n  # the count )"
    result = await RLM(ScriptedModel([reply]), sandbox=env, trace=sink).acompletion("c", "q")
    assert result.answer == "3"
    assert sink.of_type(RecordType.CODE_CELL)[-1].data["code"] == "FINAL(n)"


async def test_final_var_beside_code_is_read_after_the_code(env):
    reply = "```repl\nfound = context.upper()\n```\nFINAL_VAR(found)"
    result = await RLM(ScriptedModel([reply]), sandbox=env).acompletion("abc", "q")
    assert (result.answer, result.answer_source) == ("ABC", "FINAL_after_code")


async def test_a_written_out_value_beside_code_is_not_taken_and_the_model_is_told(env):
    model = ScriptedModel(
        ["```repl\nx = 6 * 7\nprint(x)\n```\nFINAL(1000)", "```repl\nFINAL(x)\n```"]
    )
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert (result.answer, result.iterations) == ("42", 2)
    seen = last_prompt(model)
    assert "42" in seen
    assert "FINAL(...) after the code was not taken" in seen
    assert "not a written-out value" in seen


async def test_a_quoted_name_beside_code_is_a_written_out_value(env):
    model = ScriptedModel(['```repl\nx = 1\n```\nFINAL("x")', "```repl\nFINAL('done')\n```"])
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.answer == "done"


async def test_final_beside_code_that_failed_is_not_taken(env):
    model = ScriptedModel(
        ["```repl\nx = 5\nraise ValueError('boom')\n```\nFINAL(x)", "```repl\nFINAL('later')\n```"]
    )
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.answer == "later"
    assert "a cell of this reply failed" in last_prompt(model)


async def test_final_of_a_name_the_code_never_set_is_not_taken(env):
    model = ScriptedModel(["```repl\ny = 1\n```\nFINAL(answer_value)", "```repl\nFINAL(y)\n```"])
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.answer == "1"
    assert "answer_value could not be read" in last_prompt(model)
    assert "NameError" in last_prompt(model)


@pytest.mark.parametrize("empty", ["[]", "''", "None"])
async def test_final_of_an_empty_result_beside_code_is_not_taken(env, empty):
    model = ScriptedModel(
        [f"```repl\nhits = {empty}\n```\nFINAL(hits)", "```repl\nFINAL('searched again')\n```"]
    )
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.answer == "searched again"
    assert "hits is empty" in last_prompt(model)


async def test_final_after_invented_output_is_cut_away_with_it(env):
    reply = "```repl\nx = 1\n```\n```output\n1\n```\nFINAL(x)"
    model = ScriptedModel([reply, "```repl\nFINAL(x + 1)\n```"])
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert (result.answer, result.iterations) == ("2", 2)


async def test_a_final_inside_the_code_wins_over_one_beside_it(env):
    reply = "```repl\na = 'in code'\nb = 'beside'\nFINAL(a)\n```\nFINAL(b)"
    result = await RLM(ScriptedModel([reply]), sandbox=env).acompletion("c", "q")
    assert (result.answer, result.answer_source) == ("in code", "FINAL")


# --- final() in any case -------------------------------------------------------------------


async def test_lower_case_final_works_in_code(any_env):
    model = ScriptedModel(["```repl\nfinal(len(context))\n```"])
    result = await RLM(model, sandbox=any_env).acompletion("abcd", "Length?")
    assert (result.answer, result.termination_reason) == ("4", TerminationReason.FINAL)


async def test_lower_case_final_var_works_in_code(env):
    model = ScriptedModel(["```repl\ntotal = sum(context)\nfinal_var('total')\n```"])
    result = await RLM(model, sandbox=env).acompletion([1, 2, 3], "Sum?")
    assert (result.answer, result.answer_source) == ("6", "FINAL_VAR")


async def test_a_model_may_still_name_its_own_variable_final(env):
    model = ScriptedModel(["```repl\nfinal = 'mine'\nFINAL(final)\n```"])
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.answer == "mine"


def test_plain_text_final_is_case_insensitive():
    for text in ("FINAL(7)", "final(7)", "Final(7)"):
        assert find_plain_final(text).value == "7"
    assert find_plain_final("final_var(x)").is_variable


# --- parsing helpers -------------------------------------------------------------------------


def test_text_outside_code_drops_code_blocks_and_their_fences():
    reply = "Plan.\n```repl\nFINAL(x)\n```\nThen FINAL(y)\n```text\nkept\n```"
    assert text_outside_code(reply) == "Plan.\nThen FINAL(y)\n```text\nkept\n```"
    assert text_outside_code("```repl\nopen block") == ""


def test_find_plain_final_keeps_the_raw_body():
    found = find_plain_final('FINAL("x")')
    assert (found.value, found.raw) == ("x", '"x"')


@pytest.mark.parametrize(
    "expression",
    ["x", "x[0]", "x[-1]", "x['k']", "x[1:3]", "a.b", "a.b[0].c['k']", " hits[0] ", "x  # why"],
)
def test_names_a_value_accepts_reads_of_a_variable(expression):
    assert names_a_value(expression)


@pytest.mark.parametrize(
    "expression",
    [
        *["1234", "'x'", "x + 1", "x[i]", "f'{x}'", "The answer is 4", "", "[x]", "x if y else z"],
        # calls, a method's included: the loop would run them
        *["len(x)", "llm_query(x)", "m.group(1)", "s.strip()", "x[0]()", "(lambda: x)()"],
        *['os.system("touch /tmp/x")', 'shutil.rmtree("/tmp/x")', "subprocess.getoutput('id')"],
        *["__import__('os').system('id')", "x[len(y)]", "getattr(x, 'y')"],
        # reaching into the interpreter
        *["__builtins__", "x.__class__", "x.__class__.__mro__[1]"],
        "a" + ".a" * 100_000,  # too deep to parse: refused, not a crash
    ],
)
def test_names_a_value_refuses_written_values_and_calls(expression):
    assert not names_a_value(expression)


_step = st.one_of(
    st.sampled_from([".a", ".group", ".__class__", "[0]", "[-1]", "['k']", "[1:3]", "[i]"]),
    st.sampled_from(["()", "(1)", "('touch x')", "(x)"]),  # calls
)


@given(root=st.sampled_from(["x", "os", "m", "__import__"]), steps=st.lists(_step, max_size=5))
def test_names_a_value_accepts_exactly_literal_reads_without_calls(root, steps):
    expression = root + "".join(steps)
    tree = ast.parse(expression, mode="eval")
    calls = any(isinstance(node, ast.Call) for node in ast.walk(tree))
    dunders = "__" in expression
    computed_key = "[i]" in steps
    assert names_a_value(expression) is not (calls or dunders or computed_key)


# --- the prompt ------------------------------------------------------------------------------


def test_the_system_prompt_keeps_its_parameters():
    prompt = system_prompt(max_output_chars=1234, can_recurse=False, tool_lines=["lookup(k)"])
    assert "1,234 characters" in prompt
    assert "plain llm_query" in prompt
    assert "Tools:\n- lookup(k)" in prompt


@pytest.mark.parametrize(
    ("window", "promised"),
    [(None, "100,000"), (32_768, "95,000"), (8_192, "21,000"), (2_048, "3,000")],
)
def test_the_prompt_promises_llm_query_only_what_the_sub_model_can_read(window, promised):
    root = ScriptedModel([], context_window_tokens=1_000_000)  # the root's window is not it
    sub = ScriptedModel([], context_window_tokens=window)
    prompt = " ".join(RLM(root, sub, sandbox="local").system_prompt().split())
    assert f"llm_query(prompt) -> str: ask a language model; it can read about {promised} " in (
        prompt
    )


def test_the_prompt_steers_to_searching_with_code_before_sub_calls():
    prompt = system_prompt(max_output_chars=4000, can_recurse=True)
    search, sub_calls = prompt.index("Search first, with code"), prompt.index("Use llm_query only")
    assert search < sub_calls
    assert "magic" not in prompt.lower()  # not tuned to one benchmark's wording


async def test_the_prompts_example_cells_run_and_find_what_they_look_for(env):
    blocks = extract_code_blocks(system_prompt(max_output_chars=4000, can_recurse=True))
    search, final = blocks
    context = "filler " * 500 + "The billing-gateway service listens on port 8443. " + "x " * 500
    # A model that copies the example cells verbatim gets the example's answer.
    model = ScriptedModel([f"```repl\n{search.code}\n```", f"```repl\n{final.code}\n```"])
    result = await RLM(model, sandbox=env).acompletion(context, "Which port?")
    assert result.answer == "8443"
    shown = last_prompt(model)
    assert "1 matches" in shown and "listens on port 8443" in shown


async def test_stop_sequences_against_invented_output_are_sent_with_every_turn(env):
    model = ScriptedModel(["```repl\nx = 1\n```", "```repl\nFINAL(x)\n```"])
    await RLM(model, sandbox=env).acompletion("c", "q")
    for call in model.calls:
        assert list(call.options["stop"]) == list(STOP_SEQUENCES)


async def test_an_imitated_output_label_over_a_plain_fence_is_cut_too(env):
    reply = "```repl\nx = 1\nprint(x)\n```\nOutput:\n```\n99\n```\nFINAL(x)"
    model = ScriptedModel([reply, "```repl\nFINAL(x + 1)\n```"])
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert (result.answer, result.iterations) == ("2", 2)
    assert "99" not in model.calls[1].messages[2]["content"]


def test_no_more_stop_sequences_than_openai_accepts():
    assert len(STOP_SEQUENCES) <= 4
