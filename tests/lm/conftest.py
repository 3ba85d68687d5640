"""Fixtures for the model clients: real loopback servers, and retries that never wait."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conch.lm import AnthropicModel, OpenAIModel, RetryPolicy
from conch.testing import AnthropicServer, OpenAIServer, RecordingSleep
from conch.testing.fixtures import anthropic_server, openai_server

__all__ = ["anthropic_server", "openai_server"]

ATTEMPT_TIMEOUT_S = 0.3  # short, so a hanging server costs the run little


@pytest.fixture(autouse=True)
def _no_provider_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own keys and endpoints must not leak into these tests."""
    for name in (
        "CONCH_API_KEY",
        "CONCH_BASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def retry(sleep: RecordingSleep) -> RetryPolicy:
    return RetryPolicy(max_attempts=3, sleep=sleep, random=lambda: 0.0)


@pytest.fixture
async def openai_model(
    openai_server: OpenAIServer, retry: RetryPolicy
) -> AsyncIterator[OpenAIModel]:
    model = OpenAIModel(
        "gpt-4o-mini",
        base_url=openai_server.base_url,
        api_key="test-key",
        retry=retry,
        timeout=ATTEMPT_TIMEOUT_S,
    )
    yield model
    await model.aclose()


@pytest.fixture
async def anthropic_model(
    anthropic_server: AnthropicServer, retry: RetryPolicy
) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel(
        "claude-opus-4-5",
        base_url=anthropic_server.base_url,
        api_key="test-key",
        retry=retry,
        timeout=ATTEMPT_TIMEOUT_S,
    )
    yield model
    await model.aclose()
