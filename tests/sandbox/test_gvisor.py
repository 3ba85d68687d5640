"""What only the gvisor backend does: whole-sandbox checkpoints, and its own faults."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from conch import sandbox
from conch.errors import (
    ConfigurationError,
    SandboxUnavailableError,
    SnapshotCorruptedError,
    SnapshotError,
)
from conch.sandbox import Capability, ExecutionContext
from tests._required import require_backend


@pytest.fixture
def backend() -> str:  # overrides the contract suite's parametrized fixture: gvisor only
    require_backend("gvisor")
    return "gvisor"


def _image_blobs(env, snapshot) -> list[Path]:
    (manifest,) = (Path(env.root) / "snapshots" / "manifests").rglob(f"{snapshot.id}.json")
    digest = json.loads(manifest.read_text())["memory"]["digest"]
    return [Path(env.root) / "snapshots" / "blobs" / digest[:2] / digest]


async def test_a_half_consumed_generator_survives_a_snapshot_round_trip(env, run, ctx):
    assert env.has_capability(Capability.VM_SNAPSHOT)
    await run("squares = (n * n for n in range(10))\nfirst = [next(squares), next(squares)]")
    snapshot = await env.create_snapshot(ctx.session_id, "mid-generator")
    assert snapshot.unpicklable == ()
    # The session goes on after the checkpoint, with nothing lost.
    after = await run("next(squares)")
    assert after.stdout == "4\n" and not after.state_lost
    await run("list(squares)")  # exhaust it
    report = await env.restore_snapshot(snapshot)
    assert {"squares", "first"} <= set(report.restored)
    resumed = await run("first, next(squares), list(squares)")
    assert resumed.stdout == "([0, 1], 4, [9, 16, 25, 36, 49, 64, 81])\n"
    assert not resumed.state_lost


async def test_open_files_threads_and_sockets_survive(env, run, ctx):
    await run(
        textwrap.dedent(
            """
            import socket, threading, queue
            with open('lines.txt', 'w') as out:
                out.write('one\\ntwo\\nthree\\n')
            handle = open('lines.txt')
            handle.readline()
            log = open('log.txt', 'a')
            log.write('before\\n')
            log.flush()
            left, right = socket.socketpair()
            left.sendall(b'in flight')
            jobs = queue.Queue()
            worker = threading.Thread(target=lambda: jobs.put(jobs.get() * 2), daemon=True)
            worker.start()
            """
        )
    )
    snapshot = await env.create_snapshot(ctx.session_id, "open things")
    await run("handle.readline(); log.write('after\\n'); log.flush()")
    await env.restore_snapshot(snapshot)
    result = await run(
        textwrap.dedent(
            """
            print(repr(handle.readline()))
            log.write('restored\\n'); log.flush()
            print(open('log.txt').read().split())
            print(right.recv(100))
            jobs.put(21); worker.join(5)
            print(jobs.get(timeout=5))
            """
        )
    )
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "'two\\n'",  # the read position came back with the file
        "['before', 'restored']",  # the file as it was at the snapshot, appended to
        "b'in flight'",
        "42",
    ]


async def test_the_restored_session_can_write_its_files(env, run, ctx):
    await run("open('mine.txt', 'w').write('v1')")
    snapshot = await env.create_snapshot(ctx.session_id, "files")
    await run("open('mine.txt', 'w').write('v2')\nopen('later.txt', 'w').write('x')")
    await env.restore_snapshot(snapshot)
    result = await run(
        "import os\nprint(open('mine.txt').read(), os.path.exists('later.txt'))\n"
        "open('mine.txt', 'w').write('v3')\nprint(open('mine.txt').read())"
    )
    assert result.stdout == "v1 False\nv3\n"
    command = await env.execute_command("echo made >> by-bash.txt && cat by-bash.txt", ctx)
    assert command.stdout == "made\n"
    # The host's view is the sandbox's: a later snapshot packs what the code wrote.
    work = Path(env.root) / "sessions" / ctx.session_id / "work"
    assert (work / "mine.txt").read_text() == "v3"
    assert (work / "by-bash.txt").read_text() == "made\n"


async def test_a_pooled_sandbox_serves_new_sessions_with_their_inputs(env):
    assert env.pool_size >= 1
    for index in range(3):  # the first starts a sandbox; the others take pooled ones
        session = f"pooled-{index}"
        await env.upload(session, "context.txt", f"context {index}")
        result = await env.execute_code(
            "print(open('/inputs/context.txt').read())\n_ = open('out.txt', 'w').write('done')",
            ExecutionContext(session_id=session),
        )
        assert result.stdout == f"context {index}\n" and not result.state_lost
        work = Path(env.root) / "sessions" / session / "work"
        assert (work / "out.txt").read_text() == "done"
        await env._refill  # let the pool fill again, as time between sessions would


@pytest.mark.parametrize("damage", ["flip a byte", "delete", "truncate"])
async def test_a_damaged_checkpoint_image_is_refused_and_the_session_unchanged(
    env, run, ctx, damage
):
    await run("value = 'at snapshot'\ngen = iter(range(5))\nnext(gen)")
    snapshot = await env.create_snapshot(ctx.session_id, "to damage")
    await run("value = 'current'\nnext(gen)")
    for image in _image_blobs(env, snapshot):
        if damage == "delete":
            image.unlink()
        elif damage == "truncate":
            os.truncate(image, image.stat().st_size // 2)
        else:
            data = bytearray(image.read_bytes())
            data[len(data) // 3] ^= 0xFF
            image.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorruptedError, match="damaged"):
        await env.restore_snapshot(snapshot)
    after = await run("value, next(gen)")
    assert after.stdout == "('current', 2)\n"
    assert not after.state_lost


async def test_an_image_from_another_runsc_build_is_refused(env, run, ctx, monkeypatch):
    from conch.sandbox import gvisor

    await run("value = 'at snapshot'")
    snapshot = await env.create_snapshot(ctx.session_id, "old build")
    await run("value = 'current'")
    monkeypatch.setattr(gvisor, "runsc_version", lambda path: "some-other-build")
    with pytest.raises(SnapshotError, match="restores only with the build that made it"):
        await env.restore_snapshot(snapshot)
    assert (await run("value")).stdout == "'current'\n"


async def test_interpreter_snapshots_remain_available(make_env):
    env = await make_env(full_memory=False)
    assert not env.has_capability(Capability.VM_SNAPSHOT)
    assert env.has_capability(Capability.SNAPSHOT)
    ctx = ExecutionContext(session_id="pickled")
    await env.execute_code("pending = (n for n in range(3))\nkept = [1, 2]", ctx)
    snapshot = await env.create_snapshot("pickled", "names")
    assert [u.split(":")[0] for u in snapshot.unpicklable] == ["pending"]
    # The environment's default is overridden per call: this one keeps everything.
    whole = await env.create_snapshot("pickled", "whole", full_memory=True)
    assert whole.unpicklable == ()
    await env.restore_snapshot(snapshot)
    assert "NameError" in (await env.execute_code("pending", ctx)).stderr
    await env.restore_snapshot(whole)
    assert (await env.execute_code("kept, next(pending)", ctx)).stdout == "([1, 2], 0)\n"


async def test_a_failed_checkpoint_leaves_the_session_unchanged(env, run, ctx):
    await run("kept = iter(range(3))\nnext(kept)")
    sandbox_of_session = env._sessions[ctx.session_id].connection.process
    real_cid, sandbox_of_session.cid = sandbox_of_session.cid, "no-such-container"
    try:
        with pytest.raises(SnapshotError, match=r"checkpoint .* the session is unchanged"):
            await env.create_snapshot(ctx.session_id, "fails")
    finally:
        sandbox_of_session.cid = real_cid
    after = await run("next(kept)")
    assert after.stdout == "1\n" and not after.state_lost
    assert await env.list_snapshots(ctx.session_id) == []


async def test_with_the_host_network_snapshots_pickle_variables(make_env):
    with pytest.raises(ConfigurationError, match="cannot checkpoint a sandbox that uses the host"):
        await make_env(network=True, full_memory=True)
    env = await make_env(network=True)
    assert not env.has_capability(Capability.VM_SNAPSHOT)
    ctx = ExecutionContext(session_id="net")
    await env.execute_code("kept = [1]", ctx)
    with pytest.raises(SnapshotError, match="full_memory=False"):
        await env.create_snapshot("net", "whole", full_memory=True)
    snapshot = await env.create_snapshot("net", "pickled")
    await env.execute_code("kept = None", ctx)
    await env.restore_snapshot(snapshot)
    assert (await env.execute_code("kept", ctx)).stdout == "[1]\n"


async def test_a_sandbox_killed_from_outside_mid_cell_is_a_clear_error(env, run, ctx):
    await run("kept = 'yes'")
    sandbox = env._sessions[ctx.session_id].connection.process
    cell = asyncio.create_task(run("import time\ntime.sleep(30)"))
    await asyncio.sleep(0.5)
    os.kill(sandbox.pid, signal.SIGKILL)  # as an operator or the OOM killer would
    result = await cell
    assert result.state_lost and not result.timed_out
    assert "exited unexpectedly" in (result.error or "")
    assert f"the gVisor sandbox {sandbox.cid} ended without conch stopping it" in result.error
    assert "variables were lost" in result.error
    after = await run("print('fresh')")
    assert after.stdout == "fresh\n" and after.state_lost
    assert "NameError" in (await run("kept")).stderr


async def test_a_container_killed_with_runsc_is_replaced(env, run, ctx):
    await run("kept = 'yes'")
    connection = env._sessions[ctx.session_id].connection
    process = await asyncio.create_subprocess_exec(
        *env._global_flags(), "kill", connection.process.cid, "KILL"
    )
    assert await process.wait() == 0
    await connection.process.wait()
    after = await run("print('fresh')")
    assert after.stdout == "fresh\n" and after.state_lost


async def test_no_runsc_is_a_clear_error_naming_it(tmp_path, monkeypatch):
    with pytest.raises(SandboxUnavailableError, match="runsc is not installed at /nowhere"):
        sandbox.gvisor.GVisorEnvironment(runsc_path="/nowhere/runsc", root=tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailableError, match="install the Debian package 'runsc'"):
        sandbox.gvisor.GVisorEnvironment(root=tmp_path)


async def test_runsc_going_away_is_a_clear_error(make_env, tmp_path):
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'runsc: simulated failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = await make_env(runsc_path=str(fake))
    result = await env.execute_code("1", ExecutionContext(session_id="gone"))
    assert result.exit_code == -1 and result.state_lost
    assert "runsc run failed" in (result.error or "")
    assert "simulated failure" in result.error


async def test_the_probe_tries_runsc_for_real(backend):
    from conch.sandbox.gvisor import gvisor_works

    works, reason = gvisor_works()
    assert works, reason
    assert "runsc" in reason
