"""The loopback servers themselves, spoken to with plain HTTP (no SDK in between)."""

from __future__ import annotations

import httpx
import pytest

from conch.testing import AnthropicServer, OpenAIServer, Reply

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_lists_its_models(openai_server: OpenAIServer) -> None:
    answer = httpx.get(f"{openai_server.base_url}/models")

    assert answer.status_code == 200
    assert [m["id"] for m in answer.json()["data"]] == ["test-model"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/nothing", None, 404),
        ("POST", "/v1/chat/completions", {"no": "messages"}, 400),
        ("POST", "/v1/chat/completions", {**CHAT, "stream": True}, 400),
    ],
)
def test_answers_what_it_cannot_serve_with_an_openai_error(
    openai_server: OpenAIServer, method: str, path: str, body: object, status: int
) -> None:
    answer = httpx.request(method, openai_server.root_url + path, json=body)

    assert answer.status_code == status
    assert "message" in answer.json()["error"]


def test_a_reply_list_that_runs_out_answers_500_saying_so() -> None:
    with OpenAIServer(["only one"]) as server:
        url = f"{server.base_url}/chat/completions"
        first = httpx.post(url, json=CHAT)
        second = httpx.post(url, json=CHAT)

    assert first.json()["choices"][0]["message"]["content"] == "only one"
    assert second.status_code == 500
    assert "ran out" in second.json()["error"]["message"]


def test_queued_replies_come_before_the_usual_ones_and_requests_are_logged(
    openai_server: OpenAIServer,
) -> None:
    openai_server.queue_replies(Reply.error(429, retry_after=3))
    url = f"{openai_server.base_url}/chat/completions"

    limited = httpx.post(url, json=CHAT)
    normal = httpx.post(url, json={**CHAT, "max_tokens": 7})

    assert (limited.status_code, limited.headers["retry-after"]) == (429, "3")
    assert normal.status_code == 200
    assert [r.body.get("max_tokens") for r in openai_server.requests] == [None, 7]


@pytest.mark.parametrize("server_type", [OpenAIServer, AnthropicServer])
def test_with_an_api_key_it_refuses_requests_without_it(server_type: type) -> None:
    with server_type(api_key="secret") as server:
        path = "/v1/messages" if server_type is AnthropicServer else "/v1/chat/completions"
        answer = httpx.post(server.root_url + path, json={**CHAT, "max_tokens": 5})

    assert answer.status_code == 401
    assert server.requests == []  # refused before it counts as a completion request


def test_closing_ends_a_hang_at_once() -> None:
    server = OpenAIServer([Reply.hanging(60)], max_hang_s=60).start()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=CHAT, timeout=0.1)

    server.close()  # would wait 60 s if the hang ignored shutdown (and hit pytest's timeout)

    assert len(server.requests) == 1
