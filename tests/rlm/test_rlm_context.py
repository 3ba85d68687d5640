"""Contexts: what each kind becomes in the REPL, what the model is told, bad input, and what
loading one costs the host (no read of a file context, no second copy of an in-memory one)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.errors import ConfigurationError, SandboxError
from conch.lm import ScriptedModel
from conch.rlm import RLM, _context

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


# Every open of a watched file in this process, by any name: the "open" audit event is raised
# by open(), io.open (Path.read_bytes, read_text), io.FileIO and os.open alike, in any thread.
# An audit hook cannot be removed, so one hook serves every test and idles when nothing is
# watched.
_WATCHED: dict[tuple[int, int], list[str]] = {}
_hook_installed = False


def _on_audit(event: str, args: tuple) -> None:
    if event != "open" or not _WATCHED:
        return
    target = args[0]
    try:
        info = os.fstat(target) if isinstance(target, int) else os.stat(target)
    except (OSError, TypeError, ValueError):
        return  # a file being created, or not a path: not a watched file
    opens = _WATCHED.get((info.st_dev, info.st_ino))
    if opens is not None:
        opens.append(repr(target))


@contextlib.contextmanager
def host_opens(path: Path) -> Iterator[list[str]]:
    """The list of times this process opens ``path``'s file while the block runs."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_on_audit)
        _hook_installed = True
    info = os.stat(path)
    key = (info.st_dev, info.st_ino)
    _WATCHED[key] = opens = []
    try:
        yield opens
    finally:
        del _WATCHED[key]


def test_the_open_guard_sees_every_way_of_reading(tmp_path):
    path = tmp_path / "watched.txt"
    path.write_text("x")
    with host_opens(path) as opens:
        path.read_bytes()
        path.read_text()
        os.close(os.open(tmp_path / "." / "watched.txt", os.O_RDONLY))
        with open(path, "rb"):
            pass
    assert len(opens) == 4
    (tmp_path / "other.txt").write_text("y")
    with host_opens(path) as opens:
        (tmp_path / "other.txt").read_text()
    assert opens == []


async def test_a_file_context_is_hard_linked_and_never_read_by_the_host(env, tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"line\n" * 200_000)
    with host_opens(path) as opens:
        result, first_message = await run(env, path, code="FINAL(len(context))")
    assert result.answer == "1000000"
    assert opens == []
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


# --- in-memory contexts go in through a staged file, without a second copy on the host ---


# Well under one more copy of a 100-200 MB context: a few pieces of a million characters and
# the run's own bookkeeping (about 2-3 MB measured; the whole-copy loading cost 200 MB).
_FEW_PIECES = 10_000_000


@contextlib.contextmanager
def host_peak() -> Iterator[list[int]]:
    """[peak] bytes this process allocated in the block above what it held before."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    measured = [0]
    try:
        yield measured
    finally:
        measured[0] = tracemalloc.get_traced_memory()[1] - before
        if not tracing:
            tracemalloc.stop()


async def test_a_large_str_context_costs_the_host_no_second_copy(env):
    line = "a line of plain context text, about eighty characters long, nothing more.\n"
    context = line * 2_700_000  # 200 MB
    with host_peak() as peak:
        result, first_message = await run(env, context, code="FINAL(len(context))")
    assert result.answer == str(len(context))
    assert "2,700,000 lines" in first_message
    assert peak[0] < _FEW_PIECES, f"the host allocated {peak[0]:,} bytes more"


async def test_a_large_list_context_costs_the_host_no_second_copy(env):
    context = [{"id": n, "text": f"{n:06d} " + "x" * 5_000} for n in range(20_000)]  # 100 MB
    with host_peak() as peak:
        result, first_message = await run(env, context, code="FINAL(context[-1]['id'])")
    assert result.answer == "19999"
    assert "list of 20,000 items" in first_message
    assert peak[0] < _FEW_PIECES, f"the host allocated {peak[0]:,} bytes more"


async def test_a_long_str_arrives_whole_across_pieces(env, monkeypatch):
    monkeypatch.setattr(_context, "_PIECE_CHARS", 7)  # every piece boundary is exercised
    context = "é😀\n" * 50 + "end"
    result, _ = await run(env, context, code="FINAL(context == " + repr(context) + ")")
    assert result.answer == "True"


def test_text_pieces_give_the_bytes_of_the_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(_context, "_PIECE_CHARS", 3)
    text = "é\ud800😀\n" * 10  # a lone surrogate is written as before ("surrogatepass")
    path = tmp_path / "staged.txt"
    _context._write_pieces(path, functools.partial(_context._text_pieces, text), threading.Event())
    assert path.read_bytes() == text.encode("utf-8", "surrogatepass")


_JSON_KEYS = st.text(max_size=6) | st.integers() | st.booleans() | st.none() | st.floats()
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(_JSON_KEYS, inner, max_size=5)
    ),
    max_leaves=40,
)


@given(
    st.lists(_JSON_VALUES, min_size=1, max_size=6)
    | st.dictionaries(_JSON_KEYS, _JSON_VALUES, min_size=1, max_size=6),
    st.sampled_from([1, 3, 16, 1 << 20]),
)
def test_a_list_or_dict_is_streamed_as_json_dumps_writes_it(value, piece_chars):
    saved, _context._PIECE_CHARS = _context._PIECE_CHARS, piece_chars
    try:
        streamed = "".join(_context._json_text(value))
    finally:
        _context._PIECE_CHARS = saved
    assert streamed == json.dumps(value, ensure_ascii=False)


def _cycle() -> list:
    looped: list = [1]
    looped.append({"back": looped})
    return looped


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([1, {"a": object()}], "Object of type object is not JSON serializable"),
        ({"k": {(1, 2): "v"}}, "keys must be str, int, float, bool or None, not tuple"),
        (_cycle(), "Circular reference detected"),
    ],
)
@pytest.mark.parametrize("piece_chars", [2, 1 << 20])
def test_a_value_json_refuses_is_named_in_json_s_words_by_the_check(
    value, reason, piece_chars, monkeypatch
):
    monkeypatch.setattr(_context, "_PIECE_CHARS", piece_chars)
    with pytest.raises(ConfigurationError, match="JSON-serialisable") as raised:
        _context.check_context(value)
    assert reason in str(raised.value)


def test_bytes_go_in_as_the_caller_s_object():
    data = b"\x00" * 1000
    assert _context._plan(data).source is data


def _staging_dirs(env) -> list[Path]:
    return sorted(env.root.glob(".conch-context-*"))


async def test_the_staged_file_is_linked_beside_the_sandbox_and_removed(env, monkeypatch):
    real_upload = env.upload
    staged = []

    async def upload(session_id, name, source):
        inside = await real_upload(session_id, name, source)
        staged.append((Path(source), os.path.samefile(source, inside)))
        return inside

    monkeypatch.setattr(env, "upload", upload)
    result, _ = await run(env, ["a", "b"], code="FINAL(context)")
    assert result.answer == '["a", "b"]'
    [(source, linked)] = staged
    assert source.parent.parent == env.root and linked  # one copy on disk, not two
    assert not source.exists() and _staging_dirs(env) == []


async def test_the_staged_file_is_removed_when_loading_fails(env, monkeypatch):
    async def failing_upload(session_id, name, source):
        assert Path(source).is_file()
        raise SandboxError("no room")

    monkeypatch.setattr(env, "upload", failing_upload)
    with pytest.raises(SandboxError, match="no room"):
        await _context.load_context(env, "s1", "some text")
    assert _staging_dirs(env) == []
    # A value json refuses fails while being written (when no check ran first), as clearly.
    with pytest.raises(ConfigurationError, match="JSON-serialisable"):
        await _context.load_context(env, "s1", [1, object()])
    assert _staging_dirs(env) == []


async def test_the_staged_file_is_removed_when_loading_is_cancelled(env, monkeypatch):
    uploading = asyncio.Event()

    async def stuck_upload(session_id, name, source):
        uploading.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(env, "upload", stuck_upload)
    task = asyncio.create_task(_context.load_context(env, "s1", {"k": "v"}))
    await uploading.wait()
    assert len(_staging_dirs(env)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _staging_dirs(env) == []
