"""Fixtures for the RLM suites: sandboxes (local by default, bwrap where it works) and servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conch import sandbox
from conch.sandbox import ExecutionEnvironment
from conch.testing.fixtures import openai_server  # noqa: F401
from tests._required import require_backend


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[ExecutionEnvironment]:
    """A local sandbox: the fast default for loop tests."""
    environment = sandbox.create("local", root=tmp_path / "sandbox")
    yield environment
    await environment.cleanup()


@pytest.fixture(params=["local", "bwrap", "gvisor"])
async def any_env(request, tmp_path) -> AsyncIterator[ExecutionEnvironment]:
    """Each backend that works here; the key behaviours (recursion and tools through the
    worker's channel among them) must hold on all of them. (docker's run in its suite.)"""
    require_backend(request.param)
    # No warm gVisor pool: each test's environment is used once.
    options = {"pool_size": 0} if request.param == "gvisor" else {}
    environment = sandbox.create(request.param, root=tmp_path / request.param, **options)
    yield environment
    await environment.cleanup()
