"""ScriptedModel: deterministic replies for tests and demos."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from conch.errors import ConfigurationError, ModelRateLimitError, ModelResponseError
from conch.lm import Completion, LanguageModel, Message, ScriptedModel, Usage

HELLO: list[Message] = [{"role": "user", "content": "hello"}]


async def test_replies_come_in_order_then_run_out() -> None:
    model = ScriptedModel(["reply 1", "reply 2"])

    first = await model.complete(HELLO)
    second = await model.complete(HELLO)
    with pytest.raises(ModelResponseError, match="no reply left for call 3"):
        await model.complete(HELLO)

    assert [first.text, second.text] == ["reply 1", "reply 2"]


async def test_concurrent_calls_take_each_reply_once() -> None:
    model = ScriptedModel([f"r{i}" for i in range(20)])

    replies = await asyncio.gather(*(model.complete(HELLO) for _ in range(20)))

    assert sorted(r.text for r in replies) == sorted(f"r{i}" for i in range(20))


@pytest.mark.parametrize("is_async", [False, True])
async def test_replies_from_a_function_of_the_messages(is_async: bool) -> None:
    def shout(messages: Sequence[Message]) -> str:
        return messages[-1]["content"].upper()

    async def shout_later(messages: Sequence[Message]) -> str:
        return shout(messages)

    model = ScriptedModel(shout_later if is_async else shout)

    completion = await model.complete([{"role": "user", "content": "abc"}])

    assert completion.text == "ABC"


async def test_a_scripted_completion_or_error_is_returned_or_raised_as_given() -> None:
    given = Completion(text="t", model="m", usage=Usage(5, 7), finish_reason="length")
    model = ScriptedModel([given, ModelRateLimitError("slow down")])

    assert await model.complete(HELLO) is given
    with pytest.raises(ModelRateLimitError, match="slow down"):
        await model.complete(HELLO)


@pytest.mark.parametrize(
    ("options", "text", "finish_reason"),
    [
        ({"stop": ["```"]}, "x = 1\n", "stop"),
        ({"stop": ["nope", "1"]}, "x = ", "stop"),
        ({"max_tokens": 1}, "x = ", "length"),
        ({}, "x = 1\n```\ntail", "stop"),
    ],
)
async def test_stop_sequences_and_max_tokens_cut_like_a_server(
    options: dict[str, object], text: str, finish_reason: str
) -> None:
    model = ScriptedModel(["x = 1\n```\ntail"])

    completion = await model.complete(HELLO, **options)  # type: ignore[arg-type]

    assert (completion.text, completion.finish_reason) == (text, finish_reason)


async def test_usage_is_estimated_and_cost_is_known_zero() -> None:
    model = ScriptedModel(["12345678"], model="demo")

    completion = await model.complete([{"role": "user", "content": "x" * 40}])

    assert completion.usage == Usage(input_tokens=10, output_tokens=2)
    assert (completion.cost_usd, completion.cost_known, completion.model) == (0.0, True, "demo")


async def test_calls_are_recorded_for_assertions() -> None:
    model = ScriptedModel(["a"])

    await model.complete(HELLO, stop=["END"], temperature=0.5)

    assert model.calls[0].messages == tuple(HELLO)
    assert model.calls[0].options == {"stop": ["END"], "temperature": 0.5}


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        ([], "at least one message"),
        ([{"role": "tool", "content": "x"}], "role 'tool'"),
        ([{"role": "user", "content": None}], "content must be a string"),
    ],
)
async def test_bad_messages_are_rejected_with_their_position(
    messages: list[Message], says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says):
        await ScriptedModel(["never"]).complete(messages)


def test_a_bare_string_script_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="wrap a single reply in a list"):
        ScriptedModel("reply")  # type: ignore[arg-type]


def test_it_is_a_language_model() -> None:
    assert isinstance(ScriptedModel([]), LanguageModel)
