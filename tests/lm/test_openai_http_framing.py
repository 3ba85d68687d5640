"""HTTP/1.1 as servers really write it, read by every OpenAIModel transport.

``OpenAIServer`` always answers with Content-Length and plain JSON. Real servers and proxies
also send chunked bodies, compressed bodies, ``Connection: close``, bodies delimited by the
end of the connection, interim ``100 Continue`` answers, and sometimes half an answer. A
small raw server on loopback writes exactly those bytes, and counts connections, so the
lean transports are held to what the SDK handles.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from conch.errors import ModelConnectionError, ModelResponseError
from conch.lm import OpenAIModel, RetryPolicy
from conch.testing import RecordingSleep

HELLO = [{"role": "user", "content": "hello"}]
TRANSPORTS = ["sdk", "httpx", "aiohttp"]


def chat(text: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    ).encode()


def answer(
    body: bytes,
    *,
    headers: tuple[str, ...] = (),
    status: str = "200 OK",
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    lines = [f"{version} {status}", "Content-Type: application/json", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class Script:
    """One answer: the bytes to write, then whether to hang up (and after how long)."""

    data: bytes
    close: bool = False
    close_after_s: float = 0.0
    delay_s: float = 0.0


@dataclass
class RawServer:
    """Answers each request on 127.0.0.1 with the next ``Script`` (or a default answer)."""

    scripts: list[Script] = field(default_factory=list)
    default: Callable[[], Script] = lambda: Script(answer(chat("ok")))
    connections: int = 0
    requests: int = 0
    _server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                self.requests += 1
                script = self.scripts.pop(0) if self.scripts else self.default()
                await asyncio.sleep(script.delay_s)
                writer.write(script.data)
                await writer.drain()
                if script.close:
                    await asyncio.sleep(script.close_after_s)
                    return
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    server = RawServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def make_model(
    server: RawServer, transport: str, retry: RetryPolicy, **kwargs: object
) -> OpenAIModel:
    return OpenAIModel(
        "m",
        base_url=server.base_url,
        retry=retry,
        timeout=2.0,
        transport=transport,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def chunked(body: bytes, *, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(body) + compressor.flush()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            answer(chunked(chat("chunked")), headers=("Transfer-Encoding: chunked",), length=False),
            id="chunked",
        ),
        pytest.param(
            answer(gzip.compress(chat("chunked")), headers=("Content-Encoding: gzip",)),
            id="gzip",
        ),
        pytest.param(
            answer(raw_deflate(chat("chunked")), headers=("Content-Encoding: deflate",)),
            id="raw-deflate",
        ),
        pytest.param(
            answer(
                chunked(gzip.compress(chat("chunked"))),
                headers=("Transfer-Encoding: chunked", "Content-Encoding: gzip"),
                length=False,
            ),
            id="chunked-gzip",
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\n\r\n" + answer(chat("chunked")),
            id="100-continue",
        ),
    ],
)
async def test_bodies_however_framed_and_encoded_are_read(
    raw_server: RawServer, transport: str, retry: RetryPolicy, data: bytes
) -> None:
    raw_server.scripts = [Script(data), Script(answer(chat("next")))]
    model = make_model(raw_server, transport, retry)

    first = await model.complete(HELLO)
    second = await model.complete(HELLO)  # the connection is still in a sane state

    assert (first.text, first.attempts, first.usage.input_tokens) == ("chunked", 1, 3)
    assert (second.text, second.attempts) == ("next", 1)
    await model.aclose()


async def test_a_body_delimited_by_the_end_of_the_connection_is_read(
    raw_server: RawServer, transport: str, retry: RetryPolicy
) -> None:
    raw_server.scripts = [
        Script(answer(chat("until close"), version="HTTP/1.0", length=False), close=True)
    ]
    model = make_model(raw_server, transport, retry)

    completion = await model.complete(HELLO)
    again = await model.complete(HELLO)

    assert (completion.text, completion.attempts) == ("until close", 1)
    assert (again.text, again.attempts) == ("ok", 1)
    assert raw_server.connections == 2
    await model.aclose()


async def test_connections_are_kept_alive_between_calls(
    raw_server: RawServer, transport: str, retry: RetryPolicy
) -> None:
    model = make_model(raw_server, transport, retry)

    for _ in range(5):
        await model.complete(HELLO)

    assert raw_server.connections == 1
    await model.aclose()


async def test_connection_close_is_honoured_without_a_retry(
    raw_server: RawServer, transport: str, retry: RetryPolicy, sleep: RecordingSleep
) -> None:
    raw_server.scripts = [Script(answer(chat("bye"), headers=("Connection: close",)), close=True)]
    model = make_model(raw_server, transport, retry)

    first = await model.complete(HELLO)
    second = await model.complete(HELLO)

    assert (first.text, second.text) == ("bye", "ok")
    assert second.attempts == 1
    assert sleep.waits == []
    assert raw_server.connections == 2
    await model.aclose()


async def test_a_kept_alive_connection_the_server_closed_while_idle_is_not_reused(
    raw_server: RawServer, transport: str, retry: RetryPolicy, sleep: RecordingSleep
) -> None:
    """Servers drop idle keep-alive connections; the next call must not stumble on one."""
    raw_server.scripts = [Script(answer(chat("first")), close=True)]  # no Connection: close
    model = make_model(raw_server, transport, retry)

    await model.complete(HELLO)
    await asyncio.sleep(0.2)  # the server's FIN arrives while the connection sits idle
    completion = await model.complete(HELLO)

    assert (completion.text, completion.attempts) == ("ok", 1)
    assert sleep.waits == []
    await model.aclose()


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_max_connections_bounds_the_connections_opened(
    raw_server: RawServer, retry: RetryPolicy, transport: str
) -> None:
    raw_server.default = lambda: Script(answer(chat("ok")), delay_s=0.02)
    model = make_model(raw_server, transport, retry, max_connections=3)

    replies = await asyncio.gather(*(model.complete(HELLO) for _ in range(12)))

    assert [r.text for r in replies] == ["ok"] * 12
    assert raw_server.connections == 3
    await model.aclose()


async def test_idle_connections_past_their_expiry_are_replaced(
    raw_server: RawServer, retry: RetryPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conch.lm._transport.KEEPALIVE_EXPIRY_S", 0.05)
    model = make_model(raw_server, "aiohttp", retry)

    for _ in range(3):
        assert (await model.complete(HELLO)).attempts == 1
        await asyncio.sleep(0.1)

    assert raw_server.connections == 3
    await model.aclose()


@pytest.mark.parametrize(
    ("script", "says"),
    [
        pytest.param(
            Script(answer(chat("x"))[:-10] + b"", close=True), "could not talk to", id="truncated"
        ),
        pytest.param(Script(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", close=True), "could not talk to"),
        pytest.param(
            Script(answer(b"zz\r\nnot hex", headers=("Transfer-Encoding: chunked",), length=False)),
            "could not talk to",
            id="bad-chunk",
        ),
    ],
)
async def test_broken_answers_are_connection_failures_and_retried(
    raw_server: RawServer,
    transport: str,
    retry: RetryPolicy,
    sleep: RecordingSleep,
    script: Script,
    says: str,
) -> None:
    raw_server.scripts = [script, script, script]

    model = make_model(raw_server, transport, retry)

    with pytest.raises(ModelConnectionError, match=says) as caught:
        await model.complete(HELLO)

    assert raw_server.base_url in str(caught.value)
    assert len(sleep.waits) == retry.max_attempts - 1
    await model.aclose()


async def test_a_cut_short_answer_says_so(raw_server: RawServer, transport: str) -> None:
    raw_server.scripts = [Script(answer(chat("x"))[:-10], close=True)]
    model = make_model(raw_server, transport, RetryPolicy.never())

    cut_short = r"(?i)incomplete|closed|disconnect|not enough data"
    with pytest.raises(ModelConnectionError, match=cut_short):
        await model.complete(HELLO)
    await model.aclose()


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
async def test_lean_transports_do_not_follow_redirects_and_say_where_to_point(
    raw_server: RawServer, retry: RetryPolicy, transport: str
) -> None:
    raw_server.scripts = [
        Script(answer(b"", status="301 Moved", headers=("Location: https://new.example/v1",)))
    ]
    model = make_model(raw_server, transport, retry)

    with pytest.raises(ModelResponseError, match=r"HTTP 301.*new\.example/v1.*base_url"):
        await model.complete(HELLO)

    assert raw_server.requests == 1
    await model.aclose()
