"""Interpreter state through a file of the session's directories, on every backend that shares
them: what goes by file, when the channel takes over, and what the host refuses to read."""

from __future__ import annotations

import errno
import textwrap
from pathlib import Path

import pytest

from conch.errors import SnapshotError
from conch.sandbox import ResourceLimits, _worker_environment
from conch.sandbox._connection import WorkerConnection

STATE = "big = 'x' * 2_000_000\ndef double(v):\n    return 2 * v\n"
CHECK = "len(big), double(21)"
CHECKED = "(2000000, 42)\n"


def _interpreter_snapshots(backend: str) -> dict:
    # gvisor's own default is a whole-sandbox checkpoint; the interpreter's state is tested here.
    return {"full_memory": False} if backend == "gvisor" else {}


@pytest.fixture
async def env(make_env, backend):
    return await make_env(**_interpreter_snapshots(backend))


@pytest.fixture
def exchanges(monkeypatch, tmp_path) -> list[dict]:
    """Every snapshot and restore request of the test: what was sent, what came back, and
    which state files the session directories held when the reply came."""
    seen: list[dict] = []
    request = WorkerConnection.request

    async def recording(self, message, body=b"", **options):
        reply, reply_body = await request(self, message, body, **options)
        if message["op"] in ("snapshot", "restore"):
            seen.append(
                {
                    "op": message["op"],
                    "state_path": message.get("state_path"),
                    "sent": len(body),
                    "reply": reply,
                    "received": len(reply_body),
                    "files": _state_files(tmp_path),
                }
            )
        return reply, reply_body

    monkeypatch.setattr(WorkerConnection, "request", recording)
    return seen


def _state_files(root: Path) -> list[str]:
    """The state files in the scratch and inputs directories of every session under
    ``root`` (the test's environments), as "directory/kind size"."""
    return sorted(
        f"{path.parent.name}/{path.name.split('-')[1]} {path.lstat().st_size}"
        for path in root.glob("env*/sessions/*/*/.conch-*-*")
        if path.parent.name in ("scratch", "inputs")
    )


async def test_state_goes_through_a_file_and_the_file_is_removed(
    env, run, ctx, exchanges, tmp_path
):
    assert env.shares_session_directories
    await run(STATE)
    snapshot = await env.create_snapshot(ctx.session_id, "by file")
    await run("big = None")
    await env.restore_snapshot(snapshot)
    assert (await run(CHECK)).stdout == CHECKED

    saved, loaded = exchanges
    length = sum(entry[2] for entry in saved["reply"]["names"])
    assert length > 2_000_000
    # The worker wrote its pickles to the file the host named and sent none over the channel.
    assert saved["state_path"] and saved["reply"]["state_file"] is True
    assert saved["received"] == 0
    assert saved["files"] == [f"scratch/snapshot {length}"]
    # The restore named a copy in the inputs directory and sent no body either.
    assert loaded["state_path"] and loaded["sent"] == 0
    assert loaded["reply"]["restored"] == ["big", "double"]
    assert loaded["files"] == [f"inputs/restore {length}"]
    assert _state_files(tmp_path) == []  # both removed


async def test_state_too_large_for_the_file_size_limit_goes_over_the_channel(
    make_env, backend, ctx, exchanges, tmp_path
):
    limits = ResourceLimits(max_file_bytes=1_000_000)
    env = await make_env(limits=limits, **_interpreter_snapshots(backend))
    await env.execute_code(STATE, ctx)
    snapshot = await env.create_snapshot(ctx.session_id, "too big for a file")
    await env.execute_code("big = None", ctx)
    await env.restore_snapshot(snapshot)
    assert (await env.execute_code(CHECK, ctx)).stdout == CHECKED

    saved = exchanges[0]
    assert "state_file" not in saved["reply"]
    assert "File too large" in saved["reply"]["state_file_error"]
    assert saved["received"] > 2_000_000 and saved["files"] == []  # the partial file is gone


_write_state_file = _worker_environment._write_state_file


def _no_space(directory: Path, name: str, data) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _one_byte_short(directory: Path, name: str, data) -> None:
    _write_state_file(directory, name, bytes(data)[:-1])


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(_no_space, id="the host cannot write the file"),
        pytest.param(_one_byte_short, id="the worker cannot read it whole"),
    ],
)
async def test_a_restore_whose_file_fails_goes_over_the_channel(
    env, run, ctx, exchanges, monkeypatch, tmp_path, fault
):
    await run(STATE)
    snapshot = await env.create_snapshot(ctx.session_id, "s")
    await run("big = None")
    monkeypatch.setattr(_worker_environment, "_write_state_file", fault)
    await env.restore_snapshot(snapshot)
    assert (await run(CHECK)).stdout == CHECKED

    *tried, sent = [seen for seen in exchanges if seen["op"] == "restore"]
    assert sent["state_path"] is None and sent["sent"] > 2_000_000
    if fault is _one_byte_short:  # the worker said why, having changed nothing
        (tried,) = tried
        assert "does not hold the" in tried["reply"]["state_file_error"]
    else:
        assert tried == []
    assert _state_files(tmp_path) == []


# User code can reach the worker's own functions: here it replaces the one that writes the
# state file, as an attacker inside the sandbox could, so the host meets a lying worker.
TAKE_OVER_THE_WORKER = """
def _take_over():
    import gc, os
    def plant(path, parts):
        data = b''.join(parts)
{plant}
    worker = next(o for o in gc.get_objects() if type(o).__name__ == 'Worker')
    worker.do_snapshot.__globals__['_save_state'] = plant
_take_over()
del _take_over
"""

PLANTS = {
    "a symlink to a host file": (
        "os.symlink('/etc/passwd', path)",
        r"cannot be opened \(Too many levels of symbolic links\)",
    ),
    "a FIFO": ("os.mkfifo(path)", "cannot be opened|is not a regular file"),
    "a directory": ("os.mkdir(path)", "is a directory"),
    "a hard link to another file": (
        "os.link(os.path.join(os.path.dirname(path), '.conch-stdout'), path)",
        "has 2 links",
    ),
    "a file shorter than claimed": (
        "open(path, 'xb').write(data[:-1])",
        r"holds \d+ bytes but the worker's reply claims \d+",
    ),
    "a file longer than claimed": (
        "open(path, 'xb').write(data + b'more')",
        r"holds \d+ bytes but the worker's reply claims \d+",
    ),
}


@pytest.mark.parametrize("plant", PLANTS)
async def test_a_state_file_the_sandbox_tampered_with_is_refused(env, run, ctx, tmp_path, plant):
    code, refusal = PLANTS[plant]
    await run(STATE)
    taken = await run(TAKE_OVER_THE_WORKER.format(plant=textwrap.indent(code, " " * 8)))
    assert taken.ok, taken.stderr
    with pytest.raises(SnapshotError, match=f"state file .*(?:{refusal}).*refused"):
        await env.create_snapshot(ctx.session_id, "tampered")

    # Nothing was saved, the session goes on as it was, and what was planted is gone.
    assert await env.list_snapshots(ctx.session_id) == []
    assert (await run(CHECK)).stdout == CHECKED
    assert _state_files(tmp_path) == []
