"""pytest fixtures for the loopback servers; import them into a conftest.py:

    from conch.testing.fixtures import anthropic_server, openai_server  # noqa: F401

Each test gets a fresh running server; set ``server.replies`` or call
``server.queue_replies(...)`` to script it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conch.testing.anthropic_server import AnthropicServer
from conch.testing.openai_server import OpenAIServer


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(max_hang_s=5.0) as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[AnthropicServer]:
    with AnthropicServer(max_hang_s=5.0) as server:
        yield server
