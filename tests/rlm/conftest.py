"""Fixtures for the RLM suites: sandboxes (local by default, bwrap where it works) and servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conch import sandbox
from conch.sandbox import ExecutionEnvironment
from conch.testing.fixtures import openai_server  # noqa: F401


def _skip_reason(name: str) -> str | None:
    for status in sandbox.backend_statuses():
        if status.name == name and not status.available:
            return f"the {name} backend cannot run on this machine: {status.reason}"
    return None


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[ExecutionEnvironment]:
    """A local sandbox: the fast default for loop tests."""
    environment = sandbox.create("local", root=tmp_path / "sandbox")
    yield environment
    await environment.cleanup()


@pytest.fixture(params=["local", "bwrap"])
async def any_env(request, tmp_path) -> AsyncIterator[ExecutionEnvironment]:
    """Each backend that works here; the key behaviours must hold on all of them."""
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    environment = sandbox.create(request.param, root=tmp_path / request.param)
    yield environment
    await environment.cleanup()
