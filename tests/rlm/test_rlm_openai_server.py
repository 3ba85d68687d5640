"""Runs against a real loopback server speaking OpenAI's chat-completions protocol."""

from __future__ import annotations

import socket

import pytest

from conch.lm import OpenAIModel, RetryPolicy
from conch.rlm import RLM, Budget, TerminationReason
from conch.rlm._parsing import STOP_SEQUENCES
from conch.testing._loopback import Reply


async def no_wait(_seconds: float) -> None:
    return None


FAST_RETRIES = RetryPolicy(max_attempts=3, sleep=no_wait)


def model_for(url: str, **options) -> OpenAIModel:
    options.setdefault("retry", FAST_RETRIES)
    return OpenAIModel("test-model", base_url=url, **options)


def root_then_sub(request) -> str:
    """The root writes code that asks a sub-call; the sub-call answers in words."""
    if request.messages[0]["role"] != "system":
        return "forty-two"
    if len(request.messages) == 2:
        return "```repl\nn = len(context.splitlines())\nword = llm_query('the number?')\n```"
    return "```repl\nFINAL(f'{n} lines, {word}')\n```"


async def test_a_run_answers_through_a_real_http_server(openai_server, env):
    openai_server.replies = root_then_sub
    result = await RLM(model_for(openai_server.base_url), sandbox=env).acompletion(
        "a\nb\nc", "How many lines?"
    )
    assert result.answer == "3 lines, forty-two"
    assert result.usage.total_tokens > 0
    root_requests = [r for r in openai_server.requests if r.messages[0]["role"] == "system"]
    assert root_requests[0].body["stop"] == list(STOP_SEQUENCES)
    assert "```output" in STOP_SEQUENCES


async def test_the_time_budget_ends_a_run_whose_provider_hangs(openai_server, env):
    openai_server.replies = lambda request: Reply.hanging(8)  # then hangs up; retried, hangs again
    model = model_for(openai_server.base_url, timeout=60)
    rlm = RLM(model, sandbox=env, budget=Budget(max_time_s=0.5))
    result = await rlm.acompletion("c", "q")
    assert result.termination_reason is TerminationReason.TIME_BUDGET
    assert result.duration_s < 6  # not the provider's 8 s, nor the client's 60 s timeout


async def test_a_401_ends_the_run_with_model_error_naming_the_server(openai_server, env):
    openai_server.api_key = "the-right-key"
    model = model_for(openai_server.base_url, api_key="a-wrong-key")
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.MODEL_ERROR
    assert openai_server.base_url in result.error
    assert "401" in result.error


@pytest.mark.parametrize("status", [500, 429])
async def test_transient_errors_are_retried_and_the_run_answers(openai_server, env, status):
    openai_server.queue_replies(Reply.error(status), Reply.error(status))
    openai_server.replies = ["```repl\nFINAL('fine')\n```"]
    result = await RLM(model_for(openai_server.base_url), sandbox=env).acompletion("c", "q")
    assert result.answer == "fine"
    assert len(openai_server.requests) == 3


async def test_a_hanging_server_is_a_model_error(openai_server, env):
    openai_server.replies = lambda request: Reply.hanging(5)
    model = model_for(openai_server.base_url, timeout=0.3, retry=RetryPolicy.never())
    result = await RLM(model, sandbox=env).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.MODEL_ERROR
    assert openai_server.base_url in result.error


async def test_a_refused_connection_is_a_model_error_naming_the_url(env):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = await RLM(model_for(url), sandbox=env).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.MODEL_ERROR
    assert url in result.error


async def test_null_content_is_an_empty_reply_the_model_is_told_about(openai_server, env):
    openai_server.queue_replies(Reply.null_content())
    openai_server.replies = ["```repl\nFINAL('second try')\n```"]
    result = await RLM(model_for(openai_server.base_url), sandbox=env).acompletion("c", "q")
    assert result.answer == "second try"
    assert "Your reply was empty" in openai_server.requests[1].last_user_text


async def test_a_failing_sub_call_is_an_error_inside_the_cell(openai_server, env):
    def replies(request):
        if request.messages[0]["role"] != "system":
            return Reply.error(500, "sub-model down")
        if len(request.messages) == 2:
            code = "try:\n    llm_query('x')\nexcept HostCallError as e:\n    err = str(e)"
            return f"```repl\n{code}\n```"
        return "```repl\nFINAL(err)\n```"

    openai_server.replies = replies
    result = await RLM(model_for(openai_server.base_url), sandbox=env).acompletion("c", "q")
    assert result.termination_reason is TerminationReason.FINAL
    assert "sub-model down" in result.answer
