"""Fixtures for the sandbox suites: one environment per test, for every backend that works here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conch import sandbox
from conch.sandbox import ExecutionContext, ExecutionEnvironment, ExecutionResult
from conch.sandbox.firecracker import FirecrackerEnvironment
from conch.testing.fake_firecracker import fake_firecracker_argv
from tests._required import require_backend
from tests.sandbox._docker_engine import docker_engine  # noqa: F401 (a session fixture)

BACKENDS = ["local", "bwrap", "docker", "gvisor"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker":  # a private podman API service, DOCKER_HOST pointed at it
        request.getfixturevalue("docker_engine")
    require_backend(request.param)
    return request.param


MakeEnv = Callable[..., Awaitable[ExecutionEnvironment]]


@pytest.fixture
async def make_env(backend: str, tmp_path) -> AsyncIterator[MakeEnv]:
    """Create environments of the test's backend; all are cleaned up after the test."""
    created: list[ExecutionEnvironment] = []

    async def make(**options: Any) -> ExecutionEnvironment:
        options.setdefault("root", tmp_path / f"env{len(created)}")
        options.setdefault("interrupt_grace_s", 1.0)
        env = sandbox.create(backend, **options)
        created.append(env)
        return env

    yield make
    for env in created:
        await env.cleanup()


@pytest.fixture
async def env(make_env: MakeEnv) -> ExecutionEnvironment:
    return await make_env()


@pytest.fixture
def ctx() -> ExecutionContext:
    return ExecutionContext(session_id="s1", timeout_s=20)


Run = Callable[..., Awaitable[ExecutionResult]]


@pytest.fixture
def run(env: ExecutionEnvironment, ctx: ExecutionContext) -> Run:
    """``await run(code)`` executes Python in session s1 of the test's environment."""

    async def run_code(code: str, **context: Any) -> ExecutionResult:
        options = {"session_id": ctx.session_id, "timeout_s": ctx.timeout_s, **context}
        return await env.execute_code(code, ExecutionContext(**options))

    return run_code


# --- the firecracker backend, on conch.testing.fake_firecracker ----------------------------


@pytest.fixture
def guest_files(tmp_path: Path) -> tuple[Path, Path]:
    kernel = tmp_path / "vmlinux"
    rootfs = tmp_path / "rootfs.ext4"
    kernel.write_bytes(b"not a kernel: the fake does not boot one")
    rootfs.write_bytes(b"not a file system: the fake does not mount it")
    return kernel, rootfs


@pytest.fixture
async def make_fc(tmp_path, guest_files):
    """Firecracker environments whose VMs are fakes (the guest is the real worker)."""
    created: list[FirecrackerEnvironment] = []
    kernel, rootfs = guest_files

    async def make(**options):
        options.setdefault("root", tmp_path / f"fc{len(created)}")
        options.setdefault("pool_size", 0)
        options.setdefault("mem_mib", 4)
        options.setdefault("interrupt_grace_s", 1.0)
        env = FirecrackerEnvironment(
            kernel_image=kernel, rootfs=rootfs, firecracker=fake_firecracker_argv(), **options
        )
        created.append(env)
        return env

    yield make
    for env in created:
        await env.cleanup()
