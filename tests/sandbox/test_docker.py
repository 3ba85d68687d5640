"""The docker backend's own promises, on podman's Docker-compatible API: the container's
limits and network, its removal, a container killed from outside, and a missing engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conch import sandbox
from conch.errors import SandboxUnavailableError
from conch.sandbox import Capability, ExecutionContext, ResourceLimits
from conch.sandbox._podman import PodmanService
from conch.sandbox.docker import LABEL, DockerEnvironment, _DemuxedStdout, docker_works
from conch.sandbox.worker import protocol


def multiplexed(*frames: tuple[int, bytes]) -> bytes:
    return b"".join(
        bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data for kind, data in frames
    )


async def test_the_attach_stream_is_demultiplexed_and_stderr_goes_to_the_log(tmp_path):
    stream = asyncio.StreamReader()
    stream.feed_data(
        multiplexed((1, b"CN"), (2, b"a log line\n"), (1, b""), (1, b"CH-rest"), (2, b"more\n"))
    )
    stream.feed_eof()
    stdout = _DemuxedStdout(stream, tmp_path / "worker.log")
    assert await stdout.readexactly(3) == b"CNC"
    assert await stdout.readexactly(6) == b"H-rest"
    with pytest.raises(asyncio.IncompleteReadError) as ended:
        await stdout.readexactly(1)
    assert ended.value.partial == b""
    assert (tmp_path / "worker.log").read_bytes() == b"a log line\nmore\n"


async def test_a_stream_cut_inside_a_frame_or_of_unknown_type_is_an_error(tmp_path):
    cut = asyncio.StreamReader()
    cut.feed_data(multiplexed((1, b"abcdef"))[:-2])
    cut.feed_eof()
    with pytest.raises(asyncio.IncompleteReadError) as ended:
        await _DemuxedStdout(cut, None).readexactly(6)
    assert ended.value.partial == b"abcd"
    odd = asyncio.StreamReader()
    odd.feed_data(multiplexed((7, b"?")))
    with pytest.raises(protocol.FrameError, match="unknown attach stream type 7"):
        await _DemuxedStdout(odd, None).readexactly(1)


@pytest.fixture
def client(docker_engine: str):
    import docker

    engine = docker.DockerClient(base_url=docker_engine, timeout=60)
    yield engine
    engine.close()


@pytest.fixture
async def docker_env(docker_engine: str, tmp_path) -> AsyncIterator[DockerEnvironment]:
    env = DockerEnvironment(root=tmp_path / "root", interrupt_grace_s=1.0)
    yield env
    await env.cleanup()


def session_containers(client, env: DockerEnvironment, session_id: str) -> list:
    """The session's container as the engine lists it (none once it is gone)."""
    container_id = env.container_id(session_id)
    label = {"label": f"{LABEL}={env.environment_id}"}
    return [c for c in client.containers.list(all=True, filters=label) if c.id == container_id]


async def test_the_limits_are_applied_to_the_container(client, docker_engine, tmp_path):
    limits = ResourceLimits(memory_bytes=512 << 20, max_processes=64, open_files=512)
    env = DockerEnvironment(root=tmp_path / "root", limits=limits, cpus=0.5)
    try:
        ctx = ExecutionContext("limited")
        inside = await env.execute_code(
            "import os\n"
            "def first(*paths):\n"
            "    for p in paths:\n"
            "        if os.path.exists(p):\n"
            "            return open(p).read().strip()\n"
            "print(first('/sys/fs/cgroup/pids.max', '/sys/fs/cgroup/pids/pids.max'))\n"
            "print(first('/sys/fs/cgroup/memory.max', "
            "'/sys/fs/cgroup/memory/memory.limit_in_bytes'))\n"
            "print(os.getuid() == 0 or os.getuid(), os.sysconf('SC_OPEN_MAX'))",
            ctx,
        )
        assert inside.ok, inside.stderr
        assert inside.stdout.splitlines() == ["64", str(512 << 20), "True 512"]
        (container,) = session_containers(client, env, "limited")
        host = container.attrs["HostConfig"]
        assert host["Memory"] == 512 << 20
        assert host["MemorySwap"] == 512 << 20  # no swap on top
        assert host["PidsLimit"] == 64
        assert host["NanoCpus"] == 500_000_000
        assert host["ReadonlyRootfs"] is True
        assert host["NetworkMode"] == "none"
        assert any("no-new-privileges" in option for option in host["SecurityOpt"] or [])
        assert env.has_capability(Capability.RESOURCE_LIMITS)
    finally:
        await env.cleanup()


async def test_there_is_no_network_and_no_capability(docker_env):
    result = await docker_env.execute_code(
        "import socket\n"
        "print(sorted(name for _, name in socket.if_nameindex()))\n"
        "status = open('/proc/self/status').read()\n"
        "print([l.split()[1] for l in status.splitlines() if l.startswith('CapEff')][0])",
        ExecutionContext("net"),
    )
    assert result.stdout == "['lo']\n0000000000000000\n"
    assert docker_env.has_capability(Capability.NETWORK_ISOLATION)


async def test_end_session_removes_the_container(client, docker_env):
    ctx = ExecutionContext("ending")
    await docker_env.execute_code("x = 1", ctx)
    container_id = docker_env.container_id("ending")
    assert container_id is not None
    await docker_env.end_session("ending")
    label = {"label": f"{LABEL}={docker_env.environment_id}"}
    assert container_id not in {c.id for c in client.containers.list(all=True, filters=label)}


async def test_cleanup_removes_every_container(client, docker_env):
    await asyncio.gather(
        *(docker_env.execute_code("1", ExecutionContext(f"c{i}")) for i in range(3))
    )
    label = {"label": f"{LABEL}={docker_env.environment_id}"}
    assert len(client.containers.list(all=True, filters=label)) >= 3  # and a warm spare
    await docker_env.cleanup()
    assert client.containers.list(all=True, filters=label) == []


@pytest.mark.parametrize("how", ["kill", "remove"])
async def test_a_container_killed_from_outside_mid_cell_is_a_clear_error_then_fresh(
    client, docker_env, how
):
    ctx = ExecutionContext("victim", timeout_s=60)
    await docker_env.execute_code("kept = 'yes'", ctx)
    (container,) = session_containers(client, docker_env, "victim")
    cell = asyncio.create_task(docker_env.execute_code("import time\ntime.sleep(50)", ctx))
    await asyncio.sleep(0.5)
    if how == "kill":
        await asyncio.to_thread(container.kill)
    else:
        await asyncio.to_thread(container.remove, force=True)
    result = await cell
    assert result.state_lost and not result.timed_out
    # A removal kills first: the inspection may still find it stopped rather than gone.
    assert "from outside conch" in (result.error or ""), result.error
    assert container.id[:12] in (result.error or "")
    after = await docker_env.execute_code("print('fresh')", ctx)
    assert after.stdout == "fresh\n" and after.state_lost
    assert "NameError" in (await docker_env.execute_code("kept", ctx)).stderr
    (replacement,) = session_containers(client, docker_env, "victim")
    assert replacement.id != container.id


async def test_an_engine_that_is_not_there_is_named_in_the_error(tmp_path):
    missing = f"unix://{tmp_path}/no-engine.sock"
    works, reason = docker_works(base_url=missing)
    assert not works and missing in reason and "no Docker-compatible engine" in reason
    with pytest.raises(SandboxUnavailableError, match=r"no-engine\.sock"):
        sandbox.create("docker", base_url=missing)
    env = DockerEnvironment(base_url=missing, root=tmp_path / "root")
    try:
        result = await env.execute_code("1", ExecutionContext("nothing"))
        assert result.exit_code == -1 and result.state_lost
        assert f"cannot reach the Docker engine at {missing}" in (result.error or "")
        assert "DOCKER_HOST" in (result.error or "")
        assert not await env.health_check()
    finally:
        await env.cleanup()


async def test_an_engine_going_away_mid_session_is_a_clear_error(docker_engine, tmp_path):
    service = PodmanService(tmp_path / "second")
    url = await asyncio.to_thread(service.start)
    env = DockerEnvironment(base_url=url, root=tmp_path / "root")
    try:
        ctx = ExecutionContext("orphan", timeout_s=60)
        assert (await env.execute_code("print('up')", ctx)).stdout == "up\n"
        cell = asyncio.create_task(env.execute_code("import time\ntime.sleep(50)", ctx))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(service.stop)
        during = await cell
        assert during.state_lost and url in (during.error or ""), during.error
        after = await env.execute_code("print('again')", ctx)
        assert after.exit_code == -1
        assert f"cannot reach the Docker engine at {url}" in (after.error or "")
    finally:
        service.stop()
        await env.cleanup()  # its container is left to the engine: the session fixture's sweep


def test_a_missing_image_is_reported_with_how_to_build_it(docker_engine):
    works, reason = docker_works(image="conch-no-such-image:never")
    assert not works
    assert "has no image 'conch-no-such-image:never'" in reason
    assert "build-sandbox-image.sh" in reason


def test_the_registry_lists_docker_and_its_engine(docker_engine):
    (status,) = [s for s in sandbox.backend_statuses() if s.name == "docker"]
    assert status.available and docker_engine in status.reason


def test_sandbox_check_passes_on_docker(docker_engine):
    from typer.testing import CliRunner

    from conch.cli import app

    result = CliRunner().invoke(app, ["sandbox", "check", "docker", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 0, report
    names = {probe["name"] for probe in report["probes"]}
    assert {"no network", "system is read-only", "no capabilities"} <= names


async def test_a_new_session_adopts_the_warm_spare_with_what_it_already_holds(docker_env):
    await docker_env.execute_code("1", ExecutionContext("first"))
    assert docker_env._spare is not None
    spare = await docker_env._spare  # created and attached while the first session ran
    path = await docker_env.upload("second", "context.txt", b"uploaded before the first cell")
    result = await docker_env.execute_code(
        f"print(open({path!r}).read())\n_ = open('made.txt', 'w').write('by the adopted one')",
        ExecutionContext("second"),
    )
    assert result.stdout == "uploaded before the first cell\n", result.stderr
    assert docker_env.container_id("second") == spare.prepared[0].id
    made = Path(docker_env.root) / "sessions" / "second" / "work" / "made.txt"
    assert made.read_text() == "by the adopted one"
    assert not spare.root.exists()
