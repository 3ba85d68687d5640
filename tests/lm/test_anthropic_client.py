"""AnthropicModel: the real SDK over real HTTP to a loopback Messages API server."""

from __future__ import annotations

import pytest

from conch.errors import (
    ConfigurationError,
    ModelAuthError,
    ModelBadRequestError,
    ModelConnectionError,
    ModelError,
    ModelNotFoundError,
    ModelResponseError,
)
from conch.lm import AnthropicModel, LanguageModel, RetryPolicy, Usage
from conch.testing import AnthropicServer, RecordingSleep, Reply

HELLO = [{"role": "user", "content": "hello"}]


async def test_system_messages_stop_sequences_and_max_tokens_are_sent_the_anthropic_way(
    anthropic_server: AnthropicServer, anthropic_model: AnthropicModel
) -> None:
    await anthropic_model.complete(
        [{"role": "system", "content": "rule 1"}, {"role": "system", "content": "rule 2"}, *HELLO],
        stop=["```"],
        temperature=0.0,
    )

    request = anthropic_server.requests[0]
    assert request.path == "/v1/messages"
    assert request.api_key == "test-key"
    assert request.body["system"] == "rule 1\n\nrule 2"
    assert request.body["messages"] == HELLO
    assert request.body["stop_sequences"] == ["```"]
    assert request.body["max_tokens"] == 4096  # required by the API: a default is sent
    assert request.body["temperature"] == 0.0


async def test_completion_counts_cache_reads_as_cached_input(
    anthropic_server: AnthropicServer, anthropic_model: AnthropicModel
) -> None:
    anthropic_server.replies = [
        Reply("answer", input_tokens=1000, cached_tokens=600, output_tokens=100)
    ]

    completion = await anthropic_model.complete(HELLO)

    assert completion.text == "answer"
    assert completion.usage == Usage(input_tokens=1000, output_tokens=100, cached_tokens=600)
    # claude-opus-4-5: 400 fresh at $5/M, 600 cache reads at $0.50/M, 100 output at $25/M
    assert completion.cost_usd == pytest.approx((400 * 5 + 600 * 0.50 + 100 * 25) / 1e6)
    assert completion.cost_known


@pytest.mark.parametrize(
    ("reply", "options", "text", "finish_reason"),
    [
        (Reply("done"), {}, "done", "stop"),  # end_turn
        (Reply("a```b"), {"stop": ["```"]}, "a", "stop"),  # stop_sequence
        (Reply("trunc", finish_reason="length"), {}, "trunc", "length"),  # max_tokens
        (Reply.null_content(), {}, "", "stop"),  # no content blocks at all
    ],
)
async def test_finish_reasons_speak_one_vocabulary(
    anthropic_server: AnthropicServer,
    anthropic_model: AnthropicModel,
    reply: Reply,
    options: dict[str, object],
    text: str,
    finish_reason: str,
) -> None:
    anthropic_server.replies = [reply]

    completion = await anthropic_model.complete(HELLO, **options)  # type: ignore[arg-type]

    assert (completion.text, completion.finish_reason) == (text, finish_reason)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, ModelBadRequestError),
        (401, ModelAuthError),
        (403, ModelAuthError),
        (404, ModelNotFoundError),
    ],
)
async def test_client_errors_fail_at_once_naming_endpoint_and_model(
    anthropic_server: AnthropicServer,
    anthropic_model: AnthropicModel,
    status: int,
    error_type: type[ModelError],
) -> None:
    anthropic_server.replies = [Reply.error(status, "the provider's own words")]

    with pytest.raises(error_type) as caught:
        await anthropic_model.complete(HELLO)

    message = str(caught.value)
    assert anthropic_server.base_url in message
    assert "'claude-opus-4-5'" in message
    assert "the provider's own words" in message
    assert len(anthropic_server.requests) == 1


@pytest.mark.parametrize(
    "fault", [Reply.error(429, retry_after=1), Reply.error(529), Reply.dropped()]
)
async def test_transient_failures_are_retried(
    anthropic_server: AnthropicServer,
    anthropic_model: AnthropicModel,
    sleep: RecordingSleep,
    fault: Reply,
) -> None:
    anthropic_server.queue_replies(fault)

    completion = await anthropic_model.complete(HELLO)

    assert completion.attempts == 2
    assert len(sleep.waits) == 1
    if fault.headers:
        assert sleep.waits == [1.0]


async def test_a_server_that_always_hangs_raises_connection_error(
    anthropic_server: AnthropicServer, anthropic_model: AnthropicModel, retry: RetryPolicy
) -> None:
    anthropic_server.replies = lambda _: Reply.hanging(5)

    with pytest.raises(ModelConnectionError, match="did not answer") as caught:
        await anthropic_model.complete(HELLO, timeout=0.1)

    assert anthropic_server.base_url in str(caught.value)
    assert len(anthropic_server.requests) == retry.max_attempts


async def test_a_non_json_answer_is_a_response_error(
    anthropic_server: AnthropicServer, anthropic_model: AnthropicModel
) -> None:
    anthropic_server.replies = [Reply.garbage()]

    with pytest.raises(ModelResponseError, match="not a message"):
        await anthropic_model.complete(HELLO)


async def test_only_a_system_prompt_is_a_configuration_error(
    anthropic_server: AnthropicServer, anthropic_model: AnthropicModel
) -> None:
    with pytest.raises(ConfigurationError, match="user message"):
        await anthropic_model.complete([{"role": "system", "content": "rules"}])

    assert anthropic_server.requests == []


async def test_key_comes_from_the_environment(
    anthropic_server: AnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", anthropic_server.base_url)
    model = AnthropicModel("claude-haiku-4-5")

    await model.complete(HELLO)

    assert anthropic_server.requests[0].api_key == "from-env"
    await model.aclose()


def test_no_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-opus-4-5")


def test_it_is_a_language_model(anthropic_model: AnthropicModel) -> None:
    assert isinstance(anthropic_model, LanguageModel)
