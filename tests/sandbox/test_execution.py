"""The execution contract every backend keeps: code, commands, output, errors, timeouts."""

from __future__ import annotations

import asyncio
import resource
import textwrap
from pathlib import Path

import pytest

from conch import sandbox
from conch.errors import ConfigurationError, SessionClosedError
from conch.sandbox import Capability, ExecutionContext, ValidationResult


async def test_the_last_expression_is_displayed_like_a_repl(run):
    result = await run("x = 41\nx + 1")
    assert result.ok
    assert result.stdout == "42\n"
    assert (await run("None")).stdout == ""


async def test_variables_persist_within_a_session_and_not_across(env, run):
    await run("counter = 1")
    await run("counter += 1")
    assert (await run("print(counter)")).stdout == "2\n"
    other = await env.execute_code("print(counter)", ExecutionContext(session_id="s2"))
    assert other.exit_code == 1
    assert "NameError" in other.stderr


async def test_a_syntax_error_is_reported_and_nothing_runs(run):
    await run("x = 1")
    result = await run("x = 2\ndef broken(:\n")
    assert result.exit_code == 1
    assert "SyntaxError" in result.stderr
    assert (await run("x")).stdout == "1\n"


async def test_an_exception_gives_a_traceback_of_the_users_code(run):
    result = await run("def inner():\n    return 1 / 0\n\ninner()")
    assert result.exit_code == 1
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "<cell-" in result.stderr and "return 1 / 0" in result.stderr
    assert "agent.py" not in result.stderr  # the worker's own frames are hidden


@pytest.mark.parametrize(
    ("code", "exit_code"), [("raise SystemExit", 0), ("import sys; sys.exit(5)", 5)]
)
async def test_system_exit_ends_the_cell_not_the_session(run, code, exit_code):
    await run("kept = True")
    assert (await run(code)).exit_code == exit_code
    assert (await run("kept")).stdout == "True\n"


async def test_an_infinite_loop_is_interrupted_and_the_state_kept(run):
    await run("kept = 'yes'")
    result = await run("while True:\n    pass", timeout_s=0.5)
    assert result.timed_out and result.exit_code == 124
    assert not result.state_lost
    assert "KeyboardInterrupt" in result.stderr
    assert (await run("kept")).stdout == "'yes'\n"


async def test_code_that_ignores_the_interrupt_is_killed_and_the_loss_reported(run):
    await run("kept = 'yes'")
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    result = await run(code, timeout_s=0.5)
    assert result.timed_out and result.state_lost and result.exit_code == 137
    assert "killed" in (result.error or "")
    after = await run("print('fresh')")
    assert after.stdout == "fresh\n"
    assert after.state_lost  # the first result from the new worker says so, once
    assert not (await run("1")).state_lost
    assert "NameError" in (await run("kept")).stderr


async def test_a_sleeping_cell_is_interrupted(run):
    result = await run("import time\ntime.sleep(60)", timeout_s=0.5)
    assert result.timed_out and not result.state_lost


async def test_a_command_runs_in_the_session_directory_with_its_environment(env, run, ctx):
    await run("open('made-by-python.txt', 'w').write('hello')")
    result = await env.execute_command(
        "cat made-by-python.txt; echo; echo $GREETING; echo err >&2; exit 3",
        ExecutionContext(session_id=ctx.session_id, env={"GREETING": "hi there"}),
    )
    assert result.stdout == "hello\nhi there\n"
    assert result.stderr == "err\n"
    assert result.exit_code == 3


async def test_a_command_that_hangs_is_stopped_with_its_children(env, ctx):
    result = await env.execute_command(
        "sleep 300 & sleep 300", ExecutionContext(session_id=ctx.session_id, timeout_s=0.5)
    )
    assert result.timed_out
    follow_up = await env.execute_command("echo ready", ExecutionContext(ctx.session_id))
    assert follow_up.stdout == "ready\n"


async def test_per_call_environment_variables_do_not_persist(run):
    assert (await run("import os; os.environ['ONE_OFF']", env={"ONE_OFF": "1"})).stdout == "'1'\n"
    assert (await run("import os; os.environ.get('ONE_OFF')")).stdout == ""
    await run("os.environ['SESSION_VAR'] = 'kept'")
    assert (await run("os.environ['SESSION_VAR']")).stdout == "'kept'\n"


async def test_a_large_output_is_spilled_to_a_file_without_growing_host_memory(run):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = 200 * 1024 * 1024
    result = await run(f"print('x' * {size}, end='')", max_output_bytes=1000, timeout_s=120)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert result.truncated
    assert result.stdout == "x" * 1000
    assert result.stdout_bytes == size
    assert result.output_path is not None
    assert Path(result.output_path).stat().st_size == size
    assert grown_kib < 64 * 1024, f"host memory grew by {grown_kib} KiB"


async def test_output_below_the_limit_is_returned_whole(run):
    result = await run("print('a' * 100)", max_output_bytes=101)
    assert not result.truncated and result.output_path is None
    assert result.stdout == "a" * 100 + "\n"


async def test_non_utf8_bytes_on_stdout_are_replaced_not_fatal(run):
    result = await run("import os\n_ = os.write(1, b'ok \\xff\\xfe end')")
    assert result.stdout.startswith("ok ") and result.stdout.endswith(" end")
    assert "\ufffd" in result.stdout


async def test_output_of_child_processes_is_captured(run):
    result = await run("import subprocess\nsubprocess.run(['echo', 'from a child'])")
    assert "from a child\n" in result.stdout


@pytest.mark.parametrize(
    "sabotage",
    ["import sys\nsys.stdout.close()", "import sys, io\nsys.stdout = io.StringIO()"],
    ids=["close", "replace"],
)
async def test_code_that_breaks_sys_stdout_breaks_only_its_own_cell(run, sabotage):
    await run(sabotage)
    assert (await run("print('printing again')")).stdout == "printing again\n"


async def test_code_reading_stdin_gets_end_of_file_and_cannot_touch_the_channel(run):
    result = await run(
        textwrap.dedent(
            """
            import os, sys
            print(repr(sys.stdin.read()))
            print(repr(os.read(0, 100)))
            try:
                input()
            except EOFError:
                print('EOF')
            """
        )
    )
    assert result.stdout == "''\nb''\nEOF\n"
    assert (await run("1 + 1")).stdout == "2\n"


async def test_os_exit_is_a_clear_error_and_the_next_call_gets_a_fresh_worker(run):
    await run("kept = 1")
    result = await run("import os\nos._exit(3)")
    assert result.exit_code == 3
    assert result.state_lost
    assert "exit code 3" in (result.error or "")
    after = await run("print('alive')")
    assert after.stdout == "alive\n" and after.state_lost


@pytest.mark.parametrize(
    ("code", "signal_number"),
    [
        ("import ctypes\nctypes.string_at(0)", 11),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 9),  # as the OOM killer does
    ],
    ids=["segfault", "sigkill"],
)
async def test_a_worker_killed_by_a_signal_is_reported_as_128_plus_the_signal(
    run, code, signal_number
):
    result = await run(code)
    assert result.exit_code == 128 + signal_number
    assert result.state_lost
    assert (await run("print('alive')")).stdout == "alive\n"


async def test_killing_the_parent_process_does_not_kill_the_host(run):
    await run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    # This test process is the host: reaching this line is the assertion that matters.
    assert (await run("print('still here')")).stdout == "still here\n"


async def test_garbage_written_into_the_channel_is_an_error_not_a_hang(run):
    code = textwrap.dedent(
        """
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b'garbage that is not a frame' * 10)
            except OSError:
                pass
        """
    )
    result = await run(code, timeout_s=10)
    assert result.state_lost
    assert not result.timed_out
    assert (await run("print('recovered')")).stdout == "recovered\n"


async def test_code_can_call_host_functions_during_execution(run):
    calls = []

    def echo(payload):
        calls.append(payload)
        return {"echoed": payload}

    async def add(payload):
        await asyncio.sleep(0)
        return payload["a"] + payload["b"]

    def fail(payload):
        raise RuntimeError("the host says no")

    result = await run(
        textwrap.dedent(
            """
            print(host_call('echo', [1, 'two']))
            print(host_call('add', {'a': 2, 'b': 3}))
            try:
                host_call('fail')
            except HostCallError as error:
                print('caught:', error)
            try:
                host_call('missing')
            except HostCallError as error:
                print('caught:', error)
            """
        ),
        host_functions={"echo": echo, "add": add, "fail": fail},
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "{'echoed': [1, 'two']}"
    assert lines[1] == "5"
    assert lines[2] == "caught: RuntimeError: the host says no"
    assert lines[3].startswith("caught: no host function named 'missing'")
    assert calls == [[1, "two"]]


async def test_host_calls_from_threads_in_the_sandbox_are_answered(run):
    result = await run(
        textwrap.dedent(
            """
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(8) as pool:
                print(sorted(pool.map(lambda n: host_call('square', n), range(16))))
            """
        ),
        host_functions={"square": lambda n: n * n},
    )
    assert result.stdout == str(sorted(n * n for n in range(16))) + "\n"


async def test_a_payload_that_is_not_json_is_refused_in_the_sandbox(run):
    result = await run("host_call('echo', object())", host_functions={"echo": lambda p: p})
    assert result.exit_code == 1
    assert "JSON-serialisable" in result.stderr


async def test_a_host_reply_that_is_not_json_is_an_error_in_the_sandbox(run):
    code = "try:\n    host_call('odd')\nexcept HostCallError as error:\n    print(error)"
    result = await run(code, host_functions={"odd": lambda payload: object()})
    assert result.stdout.startswith("TypeError: ")
    assert "not JSON serializable" in result.stdout
    assert (await run("print('still fine')")).stdout == "still fine\n"


async def test_twenty_sessions_run_at_once_without_cross_talk(env):
    async def one(index: int):
        session = ExecutionContext(session_id=f"par-{index}", timeout_s=60)
        await env.execute_code(f"me = {index}", session)
        return index, await env.execute_code("import time\ntime.sleep(0.2)\nprint(me)", session)

    results = await asyncio.gather(*(one(i) for i in range(20)))
    for index, result in results:
        assert result.stdout == f"{index}\n"
        assert result.stderr == ""


async def test_two_executions_in_one_session_are_serialized(run):
    first = asyncio.create_task(run("import time\nvalue = 1\ntime.sleep(0.3)\nvalue = 2"))
    await asyncio.sleep(0.05)
    second = await run("print(value)")
    assert (await first).ok
    assert second.stdout == "2\n"


async def test_helpers_become_builtins_and_survive_a_fresh_worker(env, run, ctx):
    source = "def shout(text):\n    return host_call('upper', text)\n"
    assert await env.define_helpers(ctx.session_id, source) == ["shout"]
    upper = {"upper": lambda text: text.upper()}
    assert (await run("shout('hi')", host_functions=upper)).stdout == "'HI'\n"
    await run("import os\nos._exit(1)")
    assert (await run("shout('again')", host_functions=upper)).stdout == "'AGAIN'\n"
    assert "shout" not in (await run("print(sorted(globals()))")).stdout


async def test_a_validator_blocks_input_before_it_runs(make_env):
    class RefuseDelete:
        def validate(self, text: str, kind: str = "code") -> ValidationResult:
            blocked = "delete" in text
            return ValidationResult(passed=not blocked, unknown=("delete",) if blocked else ())

    env = await make_env(validator=RefuseDelete())
    ctx = ExecutionContext(session_id="v")
    await env.execute_code("marker = 'untouched'", ctx)
    blocked = await env.execute_code("marker = 'delete'", ctx)
    assert blocked.exit_code == 126 and blocked.validation is not None
    assert not blocked.validation.passed
    assert (await env.execute_code("marker", ctx)).stdout == "'untouched'\n"
    assert (await env.execute_command("echo delete", ctx)).exit_code == 126
    assert (await env.validate("print(1)")).passed


async def test_everything_passes_without_a_validator(env):
    assert (await env.validate("rm -rf /", "command")).passed


@pytest.mark.parametrize("session_id", ["", "../escape", "a/b", ".hidden", "x" * 200])
async def test_an_invalid_session_id_is_refused_clearly(env, session_id):
    with pytest.raises(ConfigurationError, match="invalid session id"):
        await env.execute_code("1", ExecutionContext(session_id=session_id))


async def test_health_and_capabilities_are_reported(env):
    assert await env.health_check()
    assert env.has_capability(Capability.PYTHON)
    assert env.has_capability(Capability.SNAPSHOT)
    assert env.has_capability(Capability.HOST_CALLBACKS)
    assert str(env.backend_type()) in sandbox.backend_names()


async def test_end_session_removes_its_directory(env, run, ctx):
    await run("open('file.txt', 'w').write('x')")
    session_dir = Path(env.root) / "sessions" / ctx.session_id
    assert session_dir.exists()
    await env.end_session(ctx.session_id)
    assert not session_dir.exists()
    assert "NameError" in (await run("file_written")).stderr


async def test_a_cleaned_up_environment_refuses_new_work(env, run):
    await run("x = 1")
    await env.cleanup()
    assert not await env.health_check()
    with pytest.raises(SessionClosedError, match="cleaned up"):
        await run("x")


async def test_a_temporary_root_is_removed_by_cleanup(backend):
    env = sandbox.create(backend)
    await env.execute_code("open('f', 'w').write('x')", ExecutionContext(session_id="t"))
    root = Path(env.root)
    assert root.exists()
    await env.cleanup()
    assert not root.exists()


async def test_uploaded_inputs_are_readable_but_not_writable_in_the_sandbox(
    env, run, ctx, tmp_path
):
    host_file = tmp_path / "big.txt"
    host_file.write_text("line\n" * 1000)
    from_file = await env.upload(ctx.session_id, "big.txt", host_file)
    from_bytes = await env.upload(ctx.session_id, "small.bin", b"\x00\x01")
    from_text = await env.upload(ctx.session_id, "note.txt", "héllo")
    result = await run(
        f"print(open({from_file!r}).read().count('line'), open({from_bytes!r}, 'rb').read(), "
        f"open({from_text!r}, encoding='utf-8').read())"
    )
    assert result.stdout == "1000 b'\\x00\\x01' héllo\n"
    if env.has_capability(Capability.FILESYSTEM_ISOLATION):
        refused = await run(f"open({from_file!r}, 'w')")
        assert "Read-only file system" in refused.stderr
    assert host_file.read_text() == "line\n" * 1000


async def test_an_upload_with_a_path_like_name_is_refused(env, ctx):
    with pytest.raises(ConfigurationError, match="invalid input name"):
        await env.upload(ctx.session_id, "../escape", b"x")


async def test_a_cancelled_call_stops_its_code_and_frees_the_session(run):
    await run("kept = 'yes'")
    call = asyncio.create_task(run("import time\nwhile True:\n    time.sleep(0.01)"))
    await asyncio.sleep(0.3)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    after = await run("kept")
    assert after.stdout == "'yes'\n"
    assert not after.state_lost
