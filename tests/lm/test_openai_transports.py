"""One contract, three transports: OpenAIModel through the SDK, httpx, and aiohttp.

Every test here runs once per transport against the real loopback ``OpenAIServer``: the
lean transports must build the same ``Completion`` and fail the same way (same retries,
same waits, same errors and messages) as the official SDK.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from conch.errors import (
    ConfigurationError,
    ModelAuthError,
    ModelBadRequestError,
    ModelConnectionError,
    ModelError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelResponseError,
)
from conch.lm import AnthropicModel, OpenAIModel, RetryPolicy, Usage, create_model
from conch.testing import OpenAIServer, RecordingSleep, Reply

HELLO = [{"role": "user", "content": "hello"}]
TRANSPORTS = ["sdk", "httpx", "aiohttp"]
ATTEMPT_TIMEOUT_S = 0.3


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def model(
    openai_server: OpenAIServer, retry: RetryPolicy, transport: str
) -> AsyncIterator[OpenAIModel]:
    model = OpenAIModel(
        "gpt-4o-mini",
        base_url=openai_server.base_url,
        api_key="test-key",
        retry=retry,
        timeout=ATTEMPT_TIMEOUT_S,
        transport=transport,  # type: ignore[arg-type]
    )
    yield model
    await model.aclose()


# --- what a completion carries --------------------------------------------------------


async def test_usage_cost_and_finish_reason_are_parsed(
    openai_server: OpenAIServer, model: OpenAIModel
) -> None:
    openai_server.replies = [
        Reply(
            "print(1)",
            finish_reason="length",
            input_tokens=1000,
            output_tokens=200,
            cached_tokens=400,
            reasoning_tokens=50,
        )
    ]

    completion = await model.complete(HELLO)

    assert completion.text == "print(1)"
    assert completion.usage == Usage(
        input_tokens=1000, output_tokens=200, cached_tokens=400, reasoning_tokens=50
    )
    # gpt-4o-mini: 600 fresh input at $0.15/M, 400 cached at $0.075/M, 200 output at $0.60/M
    assert completion.cost_usd == pytest.approx((600 * 0.15 + 400 * 0.075 + 200 * 0.60) / 1e6)
    assert completion.cost_known
    assert completion.model == "gpt-4o-mini"
    assert completion.finish_reason == "length"
    assert completion.attempts == 1
    assert completion.latency_s > 0


async def test_all_transports_build_the_same_completion(openai_server: OpenAIServer) -> None:
    reply = Reply("same", model="gpt-4o-mini-2024-07-18", input_tokens=10**6, output_tokens=7)
    completions = []
    for transport in TRANSPORTS:
        openai_server.queue_replies(reply)
        model = OpenAIModel(
            "gpt-4o-mini",
            base_url=openai_server.base_url,
            transport=transport,  # type: ignore[arg-type]
        )
        completions.append(await model.complete(HELLO))
        await model.aclose()

    def contract(c: object) -> tuple[object, ...]:
        return tuple(
            getattr(c, f)
            for f in ("text", "model", "usage", "cost_usd", "cost_known", "finish_reason")
        )

    assert contract(completions[1]) == contract(completions[0])
    assert contract(completions[2]) == contract(completions[0])
    assert completions[0].cost_usd == pytest.approx(0.15 + 7 * 0.60 / 1e6)  # snapshot priced


async def test_all_transports_send_the_same_body(openai_server: OpenAIServer) -> None:
    for transport in TRANSPORTS:
        model = OpenAIModel(
            "gpt-4o-mini",
            base_url=openai_server.base_url,
            api_key="k",
            transport=transport,  # type: ignore[arg-type]
        )
        await model.complete(
            HELLO, stop="```", max_tokens=9, temperature=0.5, extra_body={"top_k": 3}
        )
        await model.aclose()

    bodies = [request.body for request in openai_server.requests]
    assert bodies[0] == {
        "model": "gpt-4o-mini",
        "messages": HELLO,
        "stop": ["```"],
        "max_tokens": 9,
        "temperature": 0.5,
        "top_k": 3,
    }
    assert bodies[1] == bodies[0]
    assert bodies[2] == bodies[0]
    assert {r.headers["authorization"] for r in openai_server.requests} == {"Bearer k"}


async def test_stop_sequences_cut_the_reply(
    openai_server: OpenAIServer, model: OpenAIModel
) -> None:
    openai_server.replies = ["x = 1\n```\nmore text"]

    completion = await model.complete(HELLO, stop=["```"])

    assert completion.text == "x = 1\n"


@pytest.mark.parametrize(
    "reply", [Reply.null_content(), Reply(""), Reply(content=None, finish_reason="length")]
)
async def test_null_or_empty_content_is_an_empty_text(
    openai_server: OpenAIServer, model: OpenAIModel, reply: Reply
) -> None:
    openai_server.replies = [reply]

    completion = await model.complete(HELLO)

    assert completion.text == ""
    assert completion.finish_reason == reply.finish_reason


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        (Reply.no_choices(), "without any choice"),
        (Reply.garbage(), "not a chat completion"),
        # JSON, but not an object: the SDK finds no choices in it, the lean ones say so.
        (Reply.garbage(b"[1, 2]"), "not a chat completion|without any choice"),
    ],
)
async def test_unusable_answers_raise_response_error_without_retrying(
    openai_server: OpenAIServer, model: OpenAIModel, reply: Reply, says: str
) -> None:
    openai_server.replies = [reply]

    with pytest.raises(ModelResponseError, match=says) as caught:
        await model.complete(HELLO)

    assert openai_server.base_url in str(caught.value)
    assert len(openai_server.requests) == 1


async def test_concurrent_calls_each_get_their_own_reply(
    openai_server: OpenAIServer, model: OpenAIModel
) -> None:
    openai_server.replies = lambda request: request.last_user_text.upper()
    openai_server.latency_s = 0.02

    replies = await asyncio.gather(
        *(model.complete([{"role": "user", "content": f"q{i}"}]) for i in range(24))
    )

    assert [r.text for r in replies] == [f"Q{i}" for i in range(24)]


# --- failures: what is retried, what is not, and what the error says ------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, ModelBadRequestError),
        (401, ModelAuthError),
        (403, ModelAuthError),
        (404, ModelNotFoundError),
        (422, ModelBadRequestError),
    ],
)
async def test_client_errors_fail_at_once_naming_endpoint_and_model(
    openai_server: OpenAIServer,
    model: OpenAIModel,
    sleep: RecordingSleep,
    status: int,
    error_type: type[ModelError],
) -> None:
    openai_server.replies = [Reply.error(status, "the provider's own words")]

    with pytest.raises(error_type) as caught:
        await model.complete(HELLO)

    message = str(caught.value)
    assert openai_server.base_url in message
    assert "'gpt-4o-mini'" in message
    assert f"HTTP {status}" in message
    assert "the provider's own words" in message
    assert len(openai_server.requests) == 1
    assert sleep.waits == []


async def test_a_wrong_key_says_where_the_key_comes_from(
    openai_server: OpenAIServer, model: OpenAIModel
) -> None:
    openai_server.api_key = "the-right-key"

    with pytest.raises(ModelAuthError, match="CONCH_API_KEY") as caught:
        await model.complete(HELLO)

    assert "Incorrect API key provided" in str(caught.value)


async def test_a_wrong_path_is_a_404_that_points_at_base_url(
    openai_server: OpenAIServer, retry: RetryPolicy, transport: str
) -> None:
    model = OpenAIModel(
        "gpt-4o-mini",
        base_url=openai_server.root_url,  # without /v1
        retry=retry,
        transport=transport,  # type: ignore[arg-type]
    )

    with pytest.raises(ModelNotFoundError, match="ends in /v1") as caught:
        await model.complete(HELLO)

    assert openai_server.root_url in str(caught.value)
    await model.aclose()


@pytest.mark.parametrize(
    ("headers", "expected_wait"),
    [
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": "3600"}, 60.0),  # capped by max_retry_after
        ({"retry-after-ms": "150"}, 0.15),  # OpenAI's own header
    ],
)
async def test_429_is_retried_after_the_wait_the_server_asks_for(
    openai_server: OpenAIServer,
    model: OpenAIModel,
    sleep: RecordingSleep,
    headers: dict[str, str],
    expected_wait: float,
) -> None:
    openai_server.queue_replies(Reply(status=429, headers=headers))
    openai_server.replies = ["ok after waiting"]

    completion = await model.complete(HELLO)

    assert completion.text == "ok after waiting"
    assert completion.attempts == 2
    assert sleep.waits == [expected_wait]


async def test_429_every_time_gives_up_after_max_attempts(
    openai_server: OpenAIServer,
    model: OpenAIModel,
    retry: RetryPolicy,
    sleep: RecordingSleep,
) -> None:
    openai_server.replies = lambda _: Reply.error(429, "slow down")

    with pytest.raises(ModelRateLimitError, match=f"gave up after {retry.max_attempts} attempts"):
        await model.complete(HELLO)

    assert len(openai_server.requests) == retry.max_attempts
    assert sleep.waits == [0.5, 1.0]  # exponential backoff (jitter pinned to 0 by the fixture)


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_server_errors_are_retried(
    openai_server: OpenAIServer, model: OpenAIModel, status: int
) -> None:
    openai_server.queue_replies(Reply.error(status), Reply.error(status))

    completion = await model.complete(HELLO)

    assert completion.text == "ok"
    assert completion.attempts == 3


async def test_500_with_retry_after_waits_as_asked(
    openai_server: OpenAIServer, model: OpenAIModel, sleep: RecordingSleep
) -> None:
    openai_server.queue_replies(Reply.error(500, retry_after=1.5))

    completion = await model.complete(HELLO)

    assert completion.attempts == 2
    assert sleep.waits == [1.5]


async def test_500_every_time_raises_response_error(
    openai_server: OpenAIServer, model: OpenAIModel, retry: RetryPolicy
) -> None:
    openai_server.replies = lambda _: Reply.error(500, "boom")

    with pytest.raises(ModelResponseError, match="HTTP 500 \\(boom\\)") as caught:
        await model.complete(HELLO)

    assert openai_server.base_url in str(caught.value)
    assert len(openai_server.requests) == retry.max_attempts


async def test_a_dropped_connection_is_retried(
    openai_server: OpenAIServer, model: OpenAIModel
) -> None:
    await model.complete(HELLO)  # a kept-alive connection first, then it is dropped
    openai_server.queue_replies(Reply.dropped())

    completion = await model.complete(HELLO)

    assert completion.text == "ok"
    assert completion.attempts == 2


async def test_a_connection_dropped_every_time_raises_connection_error(
    openai_server: OpenAIServer, model: OpenAIModel, retry: RetryPolicy
) -> None:
    openai_server.replies = lambda _: Reply.dropped()

    with pytest.raises(ModelConnectionError, match="could not talk to") as caught:
        await model.complete(HELLO)

    message = str(caught.value)
    assert openai_server.base_url in message
    assert "server is running" in message
    assert len(openai_server.requests) == retry.max_attempts


async def test_a_hanging_server_times_out_and_is_retried(
    openai_server: OpenAIServer, model: OpenAIModel
) -> None:
    openai_server.queue_replies(Reply.hanging(5))

    completion = await model.complete(HELLO)

    assert completion.text == "ok"
    # Retried after the hang; under load a healthy attempt may also outlive the short
    # test timeout, so the server's count is the truth, not exactly 2.
    assert completion.attempts >= 2
    assert len(openai_server.requests) == completion.attempts


async def test_a_server_that_always_hangs_raises_connection_error(
    openai_server: OpenAIServer, model: OpenAIModel, retry: RetryPolicy
) -> None:
    openai_server.replies = lambda _: Reply.hanging(5)

    with pytest.raises(ModelConnectionError, match=r"did not answer within 0\.1 s") as caught:
        await model.complete(HELLO, timeout=0.1)  # the per-call timeout wins

    assert openai_server.base_url in str(caught.value)
    assert len(openai_server.requests) == retry.max_attempts


async def test_a_late_answer_to_a_timed_out_call_never_reaches_the_next_call(
    openai_server: OpenAIServer, transport: str
) -> None:
    model = OpenAIModel(
        "m",
        base_url=openai_server.base_url,
        retry=RetryPolicy.never(),
        transport=transport,  # type: ignore[arg-type]
    )
    openai_server.replies = lambda request: request.last_user_text
    openai_server.latency_s = 0.3

    with pytest.raises(ModelConnectionError, match="did not answer"):
        await model.complete([{"role": "user", "content": "first"}], timeout=0.05)
    openai_server.latency_s = 0.0
    completion = await model.complete([{"role": "user", "content": "second"}])

    assert completion.text == "second"
    await model.aclose()


async def test_a_refused_connection_names_the_base_url(
    retry: RetryPolicy, sleep: RecordingSleep, transport: str
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}/v1"
    model = OpenAIModel(
        "gpt-4o-mini",
        base_url=base_url,
        retry=retry,
        transport=transport,  # type: ignore[arg-type]
    )

    with pytest.raises(ModelConnectionError) as caught:
        await model.complete(HELLO)

    message = str(caught.value)
    assert base_url in message
    assert "refused" in message.lower()
    assert "server is running" in message
    assert len(sleep.waits) == retry.max_attempts - 1
    await model.aclose()


# --- choosing and configuring a transport ------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_create_model_passes_the_transport_on(
    openai_server: OpenAIServer, transport: str
) -> None:
    model = create_model(
        "openai:test-model",
        base_url=openai_server.base_url,
        transport=transport,  # type: ignore[arg-type]
        max_connections=None if transport == "sdk" else 4,
    )

    assert isinstance(model, OpenAIModel)
    assert model.transport == transport
    assert (await model.complete(HELLO)).text == "ok"
    await model.aclose()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"transport": "curl"}, "unknown transport 'curl'"),
        ({"transport": "aiohttp", "max_connections": 0}, "at least 1"),
        ({"transport": "httpx", "max_connections": 0}, "at least 1"),
        ({"transport": "aiohttp", "base_url": "ftp://host/v1"}, "not an http"),
        ({"transport": "aiohttp", "api_key": "k\r\nX: y"}, "line break"),
        ({"transport": "sdk", "max_connections": 8}, "sizes the connection pool"),
    ],
)
def test_bad_transport_settings_say_what_to_do(kwargs: dict[str, object], says: str) -> None:
    kwargs = {"base_url": "http://127.0.0.1:9/v1", **kwargs}
    with pytest.raises(ConfigurationError, match=says):
        OpenAIModel("m", **kwargs)  # type: ignore[arg-type]


def test_transport_does_not_apply_to_other_providers() -> None:
    with pytest.raises(ConfigurationError, match="OpenAI-compatible"):
        create_model("anthropic:claude-sonnet-4-5", api_key="k", transport="aiohttp")
    model = create_model("anthropic:claude-sonnet-4-5", api_key="k", transport="sdk")
    assert isinstance(model, AnthropicModel)


async def test_the_aiohttp_transport_refuses_a_lent_httpx_client() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConfigurationError, match="transport='httpx' to share one"):
            OpenAIModel(
                "m", base_url="http://127.0.0.1:9/v1", transport="aiohttp", http_client=client
            )


async def test_the_httpx_transport_uses_a_lent_client_and_leaves_it_open(
    openai_server: OpenAIServer,
) -> None:
    async with httpx.AsyncClient() as shared:
        models = [
            OpenAIModel(
                name, base_url=openai_server.base_url, http_client=shared, transport="httpx"
            )
            for name in ("a", "b")
        ]
        replies = await asyncio.gather(*(m.complete(HELLO) for m in models))
        for model in models:
            await model.aclose()

        assert [r.model for r in replies] == ["a", "b"]
        assert not shared.is_closed


async def test_the_aiohttp_transport_goes_through_the_environment_proxy(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """trust_env: HTTP_PROXY routes the request through the proxy (here the loopback server,
    which sees the absolute-form target a proxy gets, and answers 404 to it)."""
    for name in ("http_proxy", "all_proxy", "ALL_PROXY", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", openai_server.root_url)
    model = OpenAIModel("m", base_url="http://llm.invalid/v1", api_key="k", transport="aiohttp")

    with pytest.raises(ModelNotFoundError, match=r"no route POST http://llm\.invalid/v1/chat"):
        await model.complete(HELLO)

    await model.aclose()


def test_the_aiohttp_transport_works_across_event_loops(openai_server: OpenAIServer) -> None:
    """``RLM.completion`` runs each call in a fresh ``asyncio.run``: a session (and its
    connections) made in an ended loop is replaced, not reused."""
    model = OpenAIModel("m", base_url=openai_server.base_url, transport="aiohttp")

    async def ask() -> str:
        return (await model.complete(HELLO)).text

    assert asyncio.run(ask()) == "ok"
    assert asyncio.run(ask()) == "ok"
    asyncio.run(model.aclose())
    assert asyncio.run(ask()) == "ok"  # usable again after aclose: a new session
    asyncio.run(model.aclose())


def test_asyncio_is_a_deprecated_alias_of_aiohttp() -> None:
    with pytest.warns(DeprecationWarning, match="transport='aiohttp'"):
        model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", transport="asyncio")

    assert model.transport == "aiohttp"


def test_the_aiohttp_transport_without_aiohttp_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp raises ImportError

    with pytest.raises(ConfigurationError, match=r"pip install 'conch\[fast\]'"):
        OpenAIModel("m", base_url="http://127.0.0.1:9/v1", transport="aiohttp")


def test_repr_names_a_lean_transport() -> None:
    model = OpenAIModel("m", base_url="http://127.0.0.1:9/v1", transport="aiohttp")

    assert repr(model) == "OpenAIModel('m', base_url='http://127.0.0.1:9/v1', transport='aiohttp')"
