"""Contexts: what each kind becomes in the REPL, what the model is told, and bad input."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from conch.errors import ConfigurationError
from conch.lm import ScriptedModel
from conch.rlm import RLM

DESCRIBE = "FINAL(type(context).__name__ + ':' + repr(context))"


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


async def run(env, context, code=DESCRIBE, **options):
    model = ScriptedModel([repl(code)])
    result = await RLM(model, sandbox=env, **options).acompletion(context, "Describe it")
    return result, model.calls[0].messages[1]["content"]


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ("plain text", "str:'plain text'"),
        (b"\x00\x01raw", "bytes:b'\\x00\\x01raw'"),
        ([1, "two", {"three": 3}], "list:[1, 'two', {'three': 3}]"),
        ({"k": [1, 2]}, "dict:{'k': [1, 2]}"),
        (None, "NoneType:None"),
    ],
)
async def test_each_python_value_arrives_as_the_same_type(env, context, expected):
    result, _ = await run(env, context)
    assert result.answer == expected


async def test_a_text_file_becomes_a_str_and_is_described_by_lines(env, tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("first line\nsecond line\nthird\n")
    result, first_message = await run(env, path)
    assert result.answer == "str:'first line\\nsecond line\\nthird\\n'"
    assert "It has 3 lines." in first_message
    assert "file log.txt" in first_message


async def test_a_file_context_is_hard_linked_and_never_read_by_the_host(env, tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_bytes(b"line\n" * 200_000)
    opened: list[str] = []
    real_open = builtins.open

    def watching_open(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, str | os.PathLike) else repr(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watching_open)
    links_while_running = []

    def links() -> int:
        links_while_running.append(os.stat(path).st_nlink)
        return links_while_running[-1]

    result, first_message = await run(env, path, code="FINAL(len(context))", tools={"links": links})
    monkeypatch.undo()
    assert result.answer == "1000000"
    assert str(path) not in opened
    assert "1,000,000 characters" in first_message
    assert "200,000 lines" in first_message


async def test_the_hard_link_is_visible_inside_the_run(env, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("x")
    seen = []
    model = ScriptedModel([repl("FINAL(links())")])
    rlm = RLM(model, sandbox=env, tools={"links": lambda: seen.append(os.stat(path).st_nlink)})
    await rlm.acompletion(path, "q")
    assert seen == [2]  # the original and the session's input: one copy of the bytes
    assert os.stat(path).st_nlink == 1  # the session was released after the run


async def test_a_directory_becomes_a_dict_of_relative_paths(env, tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("alpha")
    (tmp_path / "docs" / "sub" / "b.md").write_text("beta")
    result, first_message = await run(env, tmp_path / "docs", code="FINAL(sorted(context.items()))")
    assert result.answer == '[["a.md", "alpha"], ["sub/b.md", "beta"]]'
    assert "dict of 2 files" in first_message


async def test_non_utf8_text_is_replaced_and_the_model_is_told(env, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    result, first_message = await run(env, path, code="FINAL(context)")
    assert result.answer == "caf\ufffd au lait"
    assert "not valid UTF-8 (first bad byte at offset 3)" in first_message


async def test_non_utf8_bytes_stay_bytes_and_the_model_is_told(env):
    result, first_message = await run(env, b"\xff\xfe", code="FINAL(len(context))")
    assert result.answer == "2"
    assert "not UTF-8" in first_message


async def test_long_text_shows_head_and_tail_only(env):
    context = "HEAD" + "m" * 10_000 + "TAIL"
    _, first_message = await run(env, context, code="FINAL(1)")
    assert "Head:\nHEAD" in first_message and first_message.rstrip().endswith(
        "You have 30 replies. Start by looking at `context` in a ```repl block."
    )
    assert "TAIL" in first_message
    assert "m" * 1000 not in first_message


@pytest.mark.parametrize("empty", ["", b"", [], {}])
async def test_an_empty_context_is_refused_before_anything_runs(env, empty):
    model = ScriptedModel([])
    with pytest.raises(ConfigurationError, match="empty"):
        await RLM(model, sandbox=env).acompletion(empty, "q")
    assert model.calls == []


async def test_an_empty_file_and_a_missing_path_are_refused_with_the_path(env, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    rlm = RLM(ScriptedModel([]), sandbox=env)
    with pytest.raises(ConfigurationError, match=r"empty\.txt is empty"):
        await rlm.acompletion(empty, "q")
    with pytest.raises(ConfigurationError, match=r"nowhere\.txt does not exist"):
        await rlm.acompletion(Path(tmp_path / "nowhere.txt"), "q")


async def test_a_context_that_is_not_json_is_refused(env):
    with pytest.raises(ConfigurationError, match="JSON-serialisable"):
        await RLM(ScriptedModel([]), sandbox=env).acompletion([object()], "q")


async def test_an_empty_query_is_refused(env):
    with pytest.raises(ConfigurationError, match="query is empty"):
        await RLM(ScriptedModel([]), sandbox=env).acompletion("c", "  ")
