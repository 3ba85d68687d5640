"""OpenAIModel against a real loopback server speaking the chat-completions protocol.

The retry, timeout and error contract every transport shares is held once, for each
transport, in test_openai_transports.py; this file covers the rest of the client."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from conch.errors import (
    ConfigurationError,
    ModelAuthError,
    ModelResponseError,
)
from conch.lm import LanguageModel, OpenAIModel, Price, PriceTable, RetryPolicy, Usage
from conch.testing import OpenAIServer, Reply

HELLO = [{"role": "user", "content": "hello"}]


async def test_completion_carries_text_usage_cost_and_finish_reason(
    openai_server: OpenAIServer, openai_model: OpenAIModel
) -> None:
    openai_server.replies = [
        Reply(
            "print(1)", input_tokens=1000, output_tokens=200, cached_tokens=400, reasoning_tokens=50
        )
    ]

    completion = await openai_model.complete(HELLO)

    assert completion.text == "print(1)"
    assert completion.usage == Usage(
        input_tokens=1000, output_tokens=200, cached_tokens=400, reasoning_tokens=50
    )
    # gpt-4o-mini: 600 fresh input at $0.15/M, 400 cached at $0.075/M, 200 output at $0.60/M
    assert completion.cost_usd == pytest.approx((600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6)
    assert completion.cost_known
    assert completion.model == "gpt-4o-mini"
    assert completion.finish_reason == "stop"
    assert completion.attempts == 1
    assert completion.latency_s > 0


async def test_options_reach_the_server_as_chat_completion_fields(
    openai_server: OpenAIServer, openai_model: OpenAIModel
) -> None:
    await openai_model.complete(
        [{"role": "system", "content": "be brief"}, *HELLO],
        stop=["```\n", "FINAL"],
        max_tokens=64,
        temperature=0.2,
        extra_body={"top_k": 5},
    )

    body = openai_server.requests[0].body
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, *HELLO]
    assert body["stop"] == ["```\n", "FINAL"]
    assert body["max_tokens"] == 64  # llama.cpp's server ignores max_completion_tokens
    assert "max_completion_tokens" not in body
    assert body["temperature"] == 0.2
    assert body["top_k"] == 5
    assert openai_server.requests[0].headers["authorization"] == "Bearer test-key"


async def test_a_single_stop_string_is_sent_as_a_list_and_cuts_the_reply(
    openai_server: OpenAIServer, openai_model: OpenAIModel
) -> None:
    openai_server.replies = ["x = 1\n```\nmore text"]

    completion = await openai_model.complete(HELLO, stop="```")  # type: ignore[arg-type]

    assert openai_server.requests[0].body["stop"] == ["```"]
    assert completion.text == "x = 1\n"


async def test_official_endpoint_gets_max_completion_tokens() -> None:
    """OpenAI's reasoning models reject max_tokens. Checked through the real SDK with a
    transport that answers locally, since api.openai.com itself is out of reach."""
    seen: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "o4-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop",
                    }
                ],
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        model = OpenAIModel("o4-mini", api_key="k", http_client=client)
        completion = await model.complete(HELLO, max_tokens=99)

    assert seen[0]["max_completion_tokens"] == 99
    assert "max_tokens" not in seen[0]
    assert completion.usage == Usage()  # no usage in the answer: zeros, not a crash


async def test_auth_error_says_where_the_key_comes_from(
    openai_server: OpenAIServer, openai_model: OpenAIModel
) -> None:
    openai_server.api_key = "the-right-key"

    with pytest.raises(ModelAuthError, match="CONCH_API_KEY"):
        await openai_model.complete(HELLO)


async def test_without_retries_the_first_failure_is_final(openai_server: OpenAIServer) -> None:
    openai_server.queue_replies(Reply.error(503))
    model = OpenAIModel("m", base_url=openai_server.base_url, retry=RetryPolicy.never())

    with pytest.raises(ModelResponseError, match="HTTP 503"):
        await model.complete(HELLO)
    await model.aclose()


async def test_unknown_model_costs_zero_and_says_so(openai_server: OpenAIServer) -> None:
    model = OpenAIModel("my-finetune", base_url=openai_server.base_url)

    completion = await model.complete(HELLO)

    assert (completion.cost_usd, completion.cost_known) == (0.0, False)
    await model.aclose()


async def test_a_dated_snapshot_name_in_the_answer_is_priced(
    openai_server: OpenAIServer, openai_model: OpenAIModel
) -> None:
    openai_server.replies = [
        Reply("hi", model="gpt-4o-mini-2024-07-18", input_tokens=10**6, output_tokens=0)
    ]

    completion = await openai_model.complete(HELLO)

    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.cost_usd == pytest.approx(0.15)


async def test_price_overrides_apply(openai_server: OpenAIServer) -> None:
    openai_server.replies = [Reply("hi", input_tokens=2 * 10**6, output_tokens=10**6)]
    prices = PriceTable().with_prices({"local-qwen": Price(input=1.0, output=3.0)})
    model = OpenAIModel("local-qwen", base_url=openai_server.base_url, prices=prices)

    completion = await model.complete(HELLO)

    assert completion.cost_usd == pytest.approx(5.0)
    assert completion.cost_known
    await model.aclose()


@pytest.mark.parametrize(
    ("environment", "expected_key"),
    [
        ({"CONCH_API_KEY": "conch", "OPENAI_API_KEY": "openai"}, "conch"),
        ({"OPENAI_API_KEY": "openai"}, "openai"),
        ({}, "not-needed"),  # a local server needs no key; the SDK still wants one
    ],
)
async def test_api_key_comes_from_the_environment(
    openai_server: OpenAIServer,
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    expected_key: str,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CONCH_BASE_URL", openai_server.base_url)
    model = OpenAIModel("m")

    await model.complete(HELLO)

    assert model.base_url == openai_server.base_url
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {expected_key}"
    await model.aclose()


def test_openai_itself_without_a_key_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIModel("gpt-4o-mini")


async def test_unknown_options_are_rejected_before_any_request(
    openai_server: OpenAIServer, openai_model: OpenAIModel
) -> None:
    with pytest.raises(ConfigurationError, match="max_completion_tokens"):
        await openai_model.complete(HELLO, max_completion_tokens=5)  # type: ignore[call-arg]

    assert openai_server.requests == []


async def test_a_shared_http_client_is_used_and_left_open(openai_server: OpenAIServer) -> None:
    async with httpx.AsyncClient() as shared:
        models = [
            OpenAIModel(name, base_url=openai_server.base_url, http_client=shared)
            for name in ("a", "b")
        ]
        replies = await asyncio.gather(*(m.complete(HELLO) for m in models))
        for model in models:
            await model.aclose()

        assert [r.model for r in replies] == ["a", "b"]
        assert not shared.is_closed


async def test_it_is_a_language_model(openai_model: OpenAIModel) -> None:
    assert isinstance(openai_model, LanguageModel)
    assert openai_model.model == "gpt-4o-mini"
