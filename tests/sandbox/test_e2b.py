"""The e2b backend, against a FAKE of the e2b SDK, and for real where E2B can be reached.

No test here but the last talks to E2B. ``conch.testing.fake_e2b.FakeE2B`` implements only
the SDK surface the backend uses, as the SDK documents it (notably: command output reaches
``on_stdout`` as UTF-8-decoded text with replacement characters), and runs commands locally
under bubblewrap. docs/sandboxes.md says what this does and does not verify.
"""

from __future__ import annotations

import hashlib
import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.errors import ConfigurationError, SandboxError, SnapshotError
from conch.sandbox import Capability, ExecutionContext
from conch.sandbox.bwrap import bwrap_works
from conch.sandbox.e2b import E2BEnvironment, _TextFrames, e2b_works
from conch.sandbox.worker import protocol
from conch.testing.fake_e2b import FakeE2B

needs_bwrap = pytest.mark.skipif(
    not bwrap_works()[0],
    reason=f"the fake E2B SDK runs commands under bubblewrap: {bwrap_works()[1]}",
)
CTX = ExecutionContext(session_id="s1", timeout_s=30)


@pytest.fixture
async def make_e2b(tmp_path):
    fakes: list[FakeE2B] = []
    created: list[E2BEnvironment] = []

    async def make(**options):
        fake = FakeE2B(tmp_path / f"fake-e2b-{len(fakes)}")
        fakes.append(fake)
        options.setdefault("root", tmp_path / f"env{len(created)}")
        options.setdefault("interrupt_grace_s", 1.0)
        env = E2BEnvironment(sdk=fake, python=sys.executable, **options)
        created.append(env)
        return env, fake

    yield make
    for env in created:
        await env.cleanup()
    for fake in fakes:
        fake.cleanup()


# --- the text channel ------------------------------------------------------------------


async def test_text_frames_are_reassembled_from_chunks_split_anywhere():
    frames = _TextFrames()
    frame = protocol.encode_frame({"op": "res", "id": 1}, bytes(range(256)))
    text = ("motd: welcome\n" + protocol.encode_text_frame(frame).decode() + "\n").encode()
    for index in range(0, len(text), 7):  # 7-byte pieces split lines and base64 alike
        frames.feed(text[index : index + 7].decode())
    frames.end()
    assert await frames.reader.read() == frame
    assert frames.noise == ["motd: welcome"]  # a line that is not a frame is set aside


async def test_a_garbled_text_frame_is_a_frame_error():
    frames = _TextFrames()
    frames.feed(protocol.TEXT_FRAME_PREFIX.decode() + "not base64!\n")
    with pytest.raises(protocol.FrameError, match="base64"):
        await frames.reader.read(1)


# --- through the fake SDK ----------------------------------------------------------------


@needs_bwrap
async def test_code_runs_in_an_e2b_sandbox_over_the_text_channel(make_e2b):
    env, fake = await make_e2b()
    result = await env.execute_code("import os\nx = 41\nprint(os.getcwd())\nx + 1", CTX)
    assert result.stdout == "/home/user/session\n42\n"
    assert fake.calls == ["create"]
    command = await env.execute_command("echo $HOME; pwd", CTX)
    assert command.stdout == "/home/user/session\n/home/user/session\n"


@needs_bwrap
async def test_binary_output_crosses_the_text_only_stream_intact(make_e2b):
    env, _ = await make_e2b()
    result = await env.execute_code(
        "import sys\n_ = sys.stdout.buffer.write(bytes(range(256)) * 64)",
        ExecutionContext(session_id="s1", timeout_s=30, max_output_bytes=100),
    )
    assert result.truncated and result.stdout_bytes == 256 * 64
    with open(result.output_path, "rb") as spilled:
        assert spilled.read() == bytes(range(256)) * 64


@needs_bwrap
async def test_host_callbacks_work_in_e2b(make_e2b):
    env, _ = await make_e2b()
    result = await env.execute_code(
        "host_call('double', 21)",
        ExecutionContext(session_id="s1", host_functions={"double": lambda v: v * 2}),
    )
    assert result.stdout == "42\n"


@needs_bwrap
async def test_inputs_are_written_into_the_sandbox(make_e2b):
    env, _ = await make_e2b()
    path = await env.upload("s1", "context.txt", "the context")
    assert path == "/home/user/inputs/context.txt"
    assert (await env.execute_code(f"open({path!r}).read()", CTX)).stdout == "'the context'\n"


@needs_bwrap
@pytest.mark.parametrize("size", [0, 999, 1000, 10_500])
async def test_an_input_goes_over_in_pieces_and_arrives_whole(
    make_e2b, tmp_path, monkeypatch, size
):
    from conch.sandbox import _remote

    monkeypatch.setattr(_remote, "_PUT_PIECE_BYTES", 1000)  # a 1 GB context, scaled down
    env, _ = await make_e2b()
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
    inside = await env.upload("s1", "big.bin", source)
    result = await env.execute_code(
        f"import hashlib\nprint(hashlib.sha256(open({inside!r}, 'rb').read()).hexdigest())", CTX
    )
    assert result.stdout.strip() == hashlib.sha256(source.read_bytes()).hexdigest()


@needs_bwrap
async def test_a_snapshot_restores_state_and_files_in_the_sandbox(make_e2b):
    env, fake = await make_e2b()
    assert Capability.VM_SNAPSHOT not in env.capabilities()
    await env.execute_code("kept = {'a': 1}\nopen('notes.txt', 'w').write('saved')", CTX)
    snapshot = await env.create_snapshot("s1", "point")
    await env.execute_code("kept = None\nopen('notes.txt', 'w').write('changed')", CTX)
    report = await env.restore_snapshot(snapshot)
    assert "kept" in report.restored
    result = await env.execute_code("print(kept, open('notes.txt').read())", CTX)
    assert result.stdout == "{'a': 1} saved\n"
    assert "create_snapshot" not in fake.calls


@needs_bwrap
async def test_a_sandbox_snapshot_is_taken_and_restored_through_e2b(make_e2b):
    env, fake = await make_e2b(vm_snapshots=True)
    assert Capability.VM_SNAPSHOT in env.capabilities()
    await env.execute_code("kept = 'at snapshot'\nopen('notes.txt', 'w').write('saved')", CTX)
    snapshot = await env.create_snapshot("s1", "whole")
    assert fake.calls == ["create", "create_snapshot"]
    assert (await env.execute_code("kept", CTX)).stdout == "'at snapshot'\n"  # reattached
    await env.execute_code("kept = 'changed'", CTX)
    await env.restore_snapshot(snapshot)
    # A sandbox was started from the E2B snapshot, the old one killed. The fake keeps no
    # process memory, so the worker was started afresh and the pickled state loaded into it.
    assert fake.calls[2:] == ["create", "kill"]
    result = await env.execute_code("print(kept, open('notes.txt').read())", CTX)
    assert result.stdout == "at snapshot saved\n"
    await env.delete_snapshot(snapshot)
    assert fake.calls[-1] == "delete_snapshot" and fake.snapshots == {}


@needs_bwrap
async def test_a_failed_sandbox_snapshot_leaves_the_session_running(make_e2b):
    env, fake = await make_e2b(vm_snapshots=True)
    await env.execute_code("kept = 'still here'", CTX)
    fake.fail_next["create_snapshot"] = fake.SandboxException("quota exceeded")
    with pytest.raises(SnapshotError, match="quota exceeded"):
        await env.create_snapshot("s1", "fails")
    assert (await env.execute_code("kept", CTX)).stdout == "'still here'\n"


@needs_bwrap
async def test_a_paused_session_resumes_with_its_variables(make_e2b):
    env, fake = await make_e2b()
    await env.execute_code("kept = 'across a pause'", CTX)
    await env.pause_session("s1")
    assert fake.calls[-1] == "pause"
    result = await env.execute_code("kept", CTX)
    assert result.stdout == "'across a pause'\n" and not result.state_lost
    assert fake.calls[-1] == "connect"


@needs_bwrap
async def test_a_sandbox_killed_mid_cell_is_a_clear_error_and_the_next_call_gets_a_new_one(
    make_e2b,
):
    env, fake = await make_e2b()
    await env.execute_code("kept = 'lost'", CTX)
    (sandbox_id,) = fake.sandboxes

    def kill_it(_payload):
        fake.kill_from_outside(sandbox_id)
        return None

    result = await env.execute_code(
        "host_call('kill')\nimport time\ntime.sleep(30)",
        ExecutionContext(session_id="s1", timeout_s=30, host_functions={"kill": kill_it}),
    )
    assert result.state_lost and not result.ok
    assert "E2B sandbox" in result.error
    after = await env.execute_code("print('fresh')", CTX)
    assert after.stdout == "fresh\n" and after.state_lost
    assert fake.calls.count("create") == 2
    assert "NameError" in (await env.execute_code("kept", CTX)).stderr


@needs_bwrap
async def test_end_session_kills_the_sandbox(make_e2b):
    env, fake = await make_e2b()
    await env.execute_code("1", CTX)
    await env.end_session("s1")
    assert fake.calls[-1] == "kill"
    assert all(state.lost.is_set() for state in fake.sandboxes.values())


@needs_bwrap
@pytest.mark.parametrize("network", [False, True])
async def test_no_network_unless_asked(make_e2b, network):
    env, fake = await make_e2b(network=network)
    assert (Capability.NETWORK_ISOLATION in env.capabilities()) is not network
    await env.execute_code("1", CTX)
    (sandbox,) = fake.sandboxes.values()
    assert sandbox.options["allow_internet_access"] is network


@needs_bwrap
async def test_the_worker_is_not_bound_by_the_sdks_command_timeout(make_e2b):
    env, fake = await make_e2b()
    await env.execute_code("1", CTX)
    (sandbox,) = fake.sandboxes.values()
    # The SDK ends a command after 60 s unless told otherwise: the worker lives for the session.
    assert sandbox.command_timeouts and set(sandbox.command_timeouts) == {0}


@needs_bwrap
async def test_e2b_unreachable_is_a_clear_error_and_the_next_call_tries_again(make_e2b):
    env, fake = await make_e2b()
    fake.fail_next["create"] = fake.SandboxException("connection refused by api.e2b.app")
    failed = await env.execute_code("1", CTX)
    assert not failed.ok
    assert "E2B could not create a sandbox" in failed.error
    assert "connection refused by api.e2b.app" in failed.error
    assert (await env.execute_code("print('up')", CTX)).stdout == "up\n"


@needs_bwrap
async def test_a_sandbox_snapshot_gone_from_e2b_is_refused_and_the_session_unchanged(make_e2b):
    env, fake = await make_e2b(vm_snapshots=True)
    await env.execute_code("kept = 'at snapshot'", CTX)
    snapshot = await env.create_snapshot("s1", "whole")
    await env.execute_code("kept = 'current'", CTX)
    fake.snapshots.clear()  # deleted on E2B's side (its dashboard, its retention)
    with pytest.raises(SandboxError, match="not found"):
        await env.restore_snapshot(snapshot)
    assert (await env.execute_code("kept", CTX)).stdout == "'current'\n"


def test_without_a_key_the_backend_refuses_clearly(monkeypatch, tmp_path):
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    pytest.importorskip("e2b", reason="the e2b SDK is not installed (pip install 'conch[e2b]')")
    with pytest.raises(ConfigurationError, match="E2B_API_KEY"):
        E2BEnvironment(root=tmp_path)


def test_the_probe_says_why_not(monkeypatch):
    if os.environ.get("E2B_API_KEY"):
        pytest.skip("E2B_API_KEY is set here")
    works, reason = e2b_works()
    assert not works
    assert "E2B_API_KEY is not set" in reason or "not installed" in reason


# --- the real service ------------------------------------------------------------------


@pytest.mark.integration
async def test_a_real_e2b_sandbox_runs_code_pauses_and_snapshots(tmp_path):
    works, reason = e2b_works()
    if not works:
        pytest.skip(f"E2B cannot be used from here: {reason}")
    env = E2BEnvironment(root=tmp_path / "real")
    try:
        assert (await env.execute_code("6 * 7", CTX)).stdout == "42\n"
        result = await env.execute_code(
            "import sys\n_ = sys.stdout.buffer.write(bytes(range(256)))",
            ExecutionContext(session_id="s1", max_output_bytes=10),
        )
        with open(result.output_path, "rb") as spilled:
            assert spilled.read() == bytes(range(256))
        await env.execute_code("kept = [1, 2]\nopen('f.txt', 'w').write('saved')", CTX)
        snapshot = await env.create_snapshot("s1", "real")
        await env.execute_code("kept = None", CTX)
        await env.restore_snapshot(snapshot)
        assert (await env.execute_code("kept", CTX)).stdout == "[1, 2]\n"
        await env.pause_session("s1")
        assert (await env.execute_code("kept", CTX)).stdout == "[1, 2]\n"
    finally:
        await env.cleanup()


async def test_a_line_that_is_no_frame_after_the_first_frame_garbles_the_channel():
    frames = _TextFrames()
    hello = protocol.encode_frame({"op": "hello"})
    frames.feed(protocol.encode_text_frame(hello).decode())
    assert await frames.reader.readexactly(len(hello)) == hello
    frames.feed("garbage that user code wrote into the channel\n")
    with pytest.raises(protocol.FrameError, match="no frame"):
        await frames.reader.read(1)


@given(st.binary(max_size=4000))
def test_a_text_frame_is_one_ascii_line_that_decodes_to_its_bytes(data):
    line = protocol.encode_text_frame(data)
    assert line.isascii() and line.count(b"\n") == 1 and line.endswith(b"\n")
    assert protocol.decode_text_frame(line) == data
    assert protocol.decode_text_frame(b"a login banner\n") is None
