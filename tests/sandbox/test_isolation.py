"""What code in an isolating sandbox must not be able to do, and how it recovers."""

from __future__ import annotations

import os
import textwrap

import pytest

from conch.sandbox import Capability, ExecutionContext, ResourceLimits
from tests._required import require_backend

ISOLATED_BACKENDS = ["bwrap", "gvisor", "docker"]


@pytest.fixture(params=ISOLATED_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:  # overrides the contract suite's fixture
    if request.param == "docker":
        request.getfixturevalue("docker_engine")
    require_backend(request.param)
    return request.param


@pytest.mark.parametrize(
    "path", ["/etc/conch-test", "/usr/conch-test", "/root/conch-test", "/conch-test"]
)
async def test_writing_outside_the_session_is_refused(run, path):
    result = await run(f"open({path!r}, 'w').write('x')")
    assert result.exit_code == 1
    # gVisor checks permissions before the mount: its non-root user gets "Permission denied".
    refusals = ("Read-only file system", "No such file", "Permission denied")
    assert any(refusal in result.stderr for refusal in refusals)
    assert not os.path.exists(path)


async def test_the_session_directory_and_tmp_are_writable(run):
    result = await run("open('/session/a', 'w').write('1')\nopen('/tmp/b', 'w').write('2')")
    assert result.ok


async def test_host_files_are_not_visible(run, backend, tmp_path):
    marker = tmp_path / "host-only.txt"
    marker.write_text("host secret")
    paths = ["/work", os.getcwd(), str(marker)]
    if backend != "docker":  # a container has its image's own /etc and /home, not the host's
        paths += ["/home", "/etc/passwd", "/etc/shadow"]
    visible = await run(f"import os\nprint([p for p in {paths!r} if os.path.exists(p)])")
    assert visible.stdout == "[]\n"


async def test_the_network_is_unreachable(run):
    result = await run(
        "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)", timeout_s=30
    )
    assert result.exit_code == 1
    assert "OSError" in result.stderr or "ConnectionRefused" in result.stderr
    interfaces = await run("import socket\nprint(sorted(n for _, n in socket.if_nameindex()))")
    assert interfaces.stdout == "['lo']\n"


async def test_network_can_be_granted_explicitly(make_env):
    env = await make_env(network=True)
    assert not env.has_capability(Capability.NETWORK_ISOLATION)
    result = await env.execute_code(
        "import socket\nprint(len(socket.if_nameindex()) > 1)", ExecutionContext("n")
    )
    assert result.stdout == "True\n"


async def test_the_sandbox_has_no_capabilities_and_cannot_see_host_processes(run):
    result = await run(
        textwrap.dedent(
            """
            import os
            status = open('/proc/self/status').read()
            print([l.split()[1] for l in status.splitlines() if l.startswith('CapEff')][0])
            print(len([p for p in os.listdir('/proc') if p.isdigit()]) < 10)
            """
        )
    )
    assert result.stdout == "0000000000000000\nTrue\n"


async def test_the_host_process_cannot_be_signalled(run):
    host_pid = os.getpid()
    result = await run(
        f"import os\ntry:\n    os.kill({host_pid}, 9)\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    assert result.stdout == "ProcessLookupError\n"


async def test_a_fork_bomb_is_contained_and_the_session_recovers(make_env):
    env = await make_env(limits=ResourceLimits(max_processes=64, memory_bytes=1 << 30))
    ctx = ExecutionContext(session_id="bomb", timeout_s=3)
    await env.execute_code("survivor = 'here'", ctx)
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = await env.execute_code(bomb, ctx)
    assert result.timed_out
    after = await env.execute_code("print('recovered')", ExecutionContext("bomb", timeout_s=20))
    assert after.stdout == "recovered\n"


FORK_UNTIL_REFUSED = """
import os, time
children, refused = [], None
for _ in range(300):
    try:
        pid = os.fork()
    except OSError as exc:
        refused = exc.strerror
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
print(len(children) < 300, refused)
"""


async def test_processes_past_the_limit_are_refused(make_env):
    env = await make_env(limits=ResourceLimits(max_processes=32, memory_bytes=1 << 30))
    result = await env.execute_code(FORK_UNTIL_REFUSED, ExecutionContext("forks", timeout_s=60))
    assert result.stdout.startswith("True "), result.stderr
    assert "None" not in result.stdout  # a fork failed, with the kernel's reason


async def test_a_memory_bomb_raises_memory_error_and_the_session_keeps_its_state(make_env):
    env = await make_env(limits=ResourceLimits(memory_bytes=512 << 20))
    ctx = ExecutionContext(session_id="mem", timeout_s=60)
    await env.execute_code("survivor = 'here'", ctx)
    result = await env.execute_code(
        "hog = []\nwhile True:\n    hog.append(bytearray(32 << 20))", ctx
    )
    assert result.exit_code == 1 and "MemoryError" in result.stderr
    after = await env.execute_code("del hog\nprint(survivor)", ctx)
    assert after.stdout == "here\n" and not after.state_lost


async def test_files_past_the_size_limit_cannot_be_written(make_env):
    env = await make_env(limits=ResourceLimits(max_file_bytes=1 << 20))
    ctx = ExecutionContext(session_id="fsize")
    result = await env.execute_code("open('big', 'wb').write(b'x' * (2 << 20))", ctx)
    assert result.exit_code == 1 and "File too large" in result.stderr
    assert (await env.execute_code("print('alive')", ctx)).stdout == "alive\n"
