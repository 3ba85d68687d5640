"""Reading replies: code blocks, plain-text FINAL, and the cut before fake output."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from conch.rlm._parsing import (
    STOP_SEQUENCES,
    cut_at_fake_output,
    extract_code_blocks,
    find_plain_final,
)


def codes(text: str) -> list[str]:
    return [block.code for block in extract_code_blocks(text)]


def test_repl_and_python_blocks_run_in_order():
    reply = "First:\n```repl\na = 1\n```\nthen\n```python\nb = a + 1\n```\n"
    assert codes(reply) == ["a = 1", "b = a + 1"]


def test_python3_py_and_tilde_fences_are_code_too():
    reply = "~~~python3\nx = 1\n~~~\n```py\ny = 2\n```\n~~~~repl\nz = 3\n~~~~"
    assert codes(reply) == ["x = 1", "y = 2", "z = 3"]


def test_other_languages_and_bare_fences_are_not_code():
    reply = "```text\nnot code\n```\n```\nalso not\n```\n```bash\nls\n```\n```repl\nrun()\n```"
    assert codes(reply) == ["run()"]


def test_a_missing_closing_fence_at_the_end_runs_to_the_end():
    blocks = extract_code_blocks("Here:\n```repl\nx = 1\nFINAL(x)")
    assert [(b.code, b.closed) for b in blocks] == [("x = 1\nFINAL(x)", False)]


def test_a_fence_inside_a_triple_quoted_string_is_part_of_the_code():
    code = 'doc = """\n```\nnot the end\n"""\nprint(doc)'
    assert codes(f"```repl\n{code}\n```\nafter") == [code]


def test_a_string_that_never_closes_does_not_swallow_later_blocks():
    reply = '```repl\nbroken = """\n```\ntext\n```repl\nok = 1\n```'
    assert codes(reply) == ['broken = """', "ok = 1"]


def test_a_longer_closing_fence_closes_and_a_shorter_one_does_not():
    assert codes("````repl\na\n```\nb\n`````\n") == ["a\n```\nb"]


def test_plain_final_is_found_on_its_own_line_in_any_case():
    assert find_plain_final("Done.\nFINAL(42)").value == "42"
    assert find_plain_final("final(the answer is (a) and (b))").value == "the answer is (a) and (b)"
    assert find_plain_final('FINAL("quoted")').value == "quoted"


def test_plain_final_var_names_a_variable():
    found = find_plain_final("FINAL_VAR(result)")
    assert found is not None and found.is_variable and found.value == "result"


def test_final_mentioned_in_prose_is_not_an_answer():
    assert find_plain_final("I will call FINAL(x) once I know x.") is None


def test_everything_after_a_fake_output_block_is_dropped():
    reply = "```repl\nprint(1)\n```\n```output\n1\n```\nFINAL(1)\n```repl\nFINAL('x')\n```"
    assert cut_at_fake_output(reply) == "```repl\nprint(1)\n```\n"


def test_stop_sequences_are_what_the_cut_looks_for():
    for stop in STOP_SEQUENCES:
        assert cut_at_fake_output(f"before{stop}after") == "before"


_code_lines = st.lists(
    st.text(alphabet=string.ascii_letters + string.digits + " =+()'.,_", max_size=30).filter(
        # never a triple quote: a fence inside an unfinished string is code by design
        # (test_a_fence_inside_a_triple_quoted_string_is_part_of_the_code)
        lambda line: not line.lstrip().startswith(("```", "~~~")) and "'" * 3 not in line
    ),
    min_size=1,
    max_size=6,
)


@given(
    st.lists(_code_lines, min_size=1, max_size=4),
    st.sampled_from(["repl", "python", "python3", "py"]),
    st.sampled_from(["```", "~~~", "````"]),
)
def test_any_code_in_well_formed_blocks_comes_back_exactly(blocks, language, fence):
    reply = "\n".join(
        f"prose {number}\n{fence}{language}\n" + "\n".join(lines) + f"\n{fence}"
        for number, lines in enumerate(blocks)
    )
    assert codes(reply) == ["\n".join(lines) for lines in blocks]


@given(st.text(max_size=300))
def test_parsing_never_fails_on_any_text(text):
    extract_code_blocks(text)
    find_plain_final(text)
    assert len(cut_at_fake_output(text)) <= len(text)
