"""The machinery shared by the loopback provider servers: threads, replies, faults, the log."""

from __future__ import annotations

import collections
import json
import math
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class _LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib's listen backlog of 5 drops the 6th of 16 simultaneous connections, which
    # the client retries a second later: fan-out tests and benchmarks need a deeper queue.
    request_queue_size = 128


@dataclass(frozen=True)
class Reply:
    """How the server answers one request: a completion, or a fault.

    Build faults with the class methods: ``Reply.error(429, retry_after=2)``,
    ``Reply.null_content()``, ``Reply.no_choices()``, ``Reply.hanging(5)``,
    ``Reply.dropped()``, ``Reply.garbage()``. Token counts left ``None`` are estimated
    from the text (4 characters a token).
    """

    content: str | None = "ok"
    finish_reason: str = "stop"
    """In OpenAI's words ("stop", "length"); the Anthropic server translates."""
    model: str | None = None
    """The model name to answer with; ``None`` echoes the request's."""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    error_message: str | None = None
    omit_choices: bool = False
    hang_s: float = 0.0
    drop_connection: bool = False
    raw_body: bytes | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def error(
        cls, status: int, message: str | None = None, *, retry_after: float | str | None = None
    ) -> Reply:
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls(status=status, error_message=message, headers=headers)

    @classmethod
    def null_content(cls) -> Reply:
        return cls(content=None)

    @classmethod
    def no_choices(cls) -> Reply:
        return cls(omit_choices=True)

    @classmethod
    def hanging(cls, seconds: float = 5.0) -> Reply:
        """Answer nothing for ``seconds`` (bounded by the server's ``max_hang_s``), then hang up."""
        return cls(hang_s=seconds)

    @classmethod
    def dropped(cls) -> Reply:
        """Read the request, then close the connection without a word."""
        return cls(drop_connection=True)

    @classmethod
    def garbage(cls, body: bytes = b"<html>not json</html>") -> Reply:
        """Answer 200 with a body that is not the protocol's JSON."""
        return cls(raw_body=body)


ReplySource = Callable[["RecordedRequest"], "Reply | str"] | Sequence["Reply | str"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    """The parsed JSON body (``None`` for a GET or an unparsable body)."""

    @property
    def api_key(self) -> str | None:
        """The key the client sent, as ``x-api-key`` or as a bearer token (SDKs differ)."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.body or {}).get("messages", []))

    @property
    def last_user_text(self) -> str:
        users = [m for m in self.messages if m.get("role") == "user"]
        content = users[-1].get("content", "") if users else ""
        return content if isinstance(content, str) else json.dumps(content)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """The text before the first stop sequence, and which one matched (as servers do)."""
    hits = [(text.find(s), s) for s in stops if s and s in text]
    if not hits:
        return text, None
    index, stop = min(hits)
    return text[:index], stop


class LoopbackServer:
    """A provider on 127.0.0.1 in a background thread; a context manager.

    Replies come, in this order of precedence, from replies queued with ``queue_replies``
    (one per request), then from ``replies``: a function of the request, or a list used in
    order (when it runs out, the server answers HTTP 500 saying so). Every answer waits
    ``latency_s`` first. Hangs and latency end early when the server closes, so a test
    run never waits on a stuck handler.
    """

    def __init__(
        self,
        replies: ReplySource | None = None,
        *,
        latency_s: float = 0.0,
        api_key: str | None = None,
        max_hang_s: float = 10.0,
    ) -> None:
        self.replies: ReplySource = replies if replies is not None else (lambda _: Reply())
        self.latency_s = latency_s
        self.api_key = api_key
        self.max_hang_s = max_hang_s
        self.requests: list[RecordedRequest] = []
        self._queued: collections.deque[Reply | str] = collections.deque()
        self._next_scripted = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._httpd: _LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        handler = type("Handler", (_Handler,), {"owner": self})
        httpd = _LoopbackHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        self._httpd = httpd
        # A short poll interval makes close() quick: shutdown waits for the next poll.
        self._thread = threading.Thread(
            target=httpd.serve_forever, args=(0.02,), name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._httpd is None:
            return
        self._closing.set()  # wake hanging and sleeping handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the server is not running: call start() or use it in a with block")
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- replies ---------------------------------------------------------------------

    def queue_replies(self, *replies: Reply | str) -> None:
        """Answer the next requests with these, one each, before the usual replies."""
        with self._lock:
            self._queued.extend(replies)

    def _next_reply(self, request: RecordedRequest) -> Reply:
        reply: Reply | str | None = None
        with self._lock:
            self.requests.append(request)
            if self._queued:
                reply = self._queued.popleft()
            elif not callable(self.replies):
                index = self._next_scripted
                self._next_scripted += 1
                reply = (
                    self.replies[index]
                    if index < len(self.replies)
                    else Reply.error(
                        500,
                        f"the test server's reply list ran out after {len(self.replies)} replies",
                    )
                )
        if reply is None:
            assert callable(self.replies)
            reply = self.replies(request)
        return Reply(content=reply) if isinstance(reply, str) else reply

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._closing.wait(min(seconds, self.max_hang_s))

    # --- the protocol, for subclasses ----------------------------------------------

    def route(self, handler: _Handler, request: RecordedRequest) -> None:
        raise NotImplementedError


class _Handler(BaseHTTPRequestHandler):
    owner: LoopbackServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
    disable_nagle_algorithm = True  # without TCP_NODELAY small responses stall ~40 ms

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is in ``owner.requests``."""

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(self.command, self.path.split("?")[0], headers, body)
        self.owner.route(self, request)

    def send_json(self, status: int, payload: Any, headers: Mapping[str, str] = {}) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), headers)

    def send_bytes(self, status: int, data: bytes, headers: Mapping[str, str] = {}) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def hang_up(self) -> None:
        """Close the connection without answering (a crash or a proxy dropping it)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve_reply(
    server: LoopbackServer,
    handler: _Handler,
    request: RecordedRequest,
    *,
    error_payload: Callable[[int, str], Any],
    success_payload: Callable[[Reply, RecordedRequest], Any],
) -> None:
    """Answer a completion request with the next reply, faults included."""
    reply = server._next_reply(request)
    server._wait(server.latency_s)
    if reply.hang_s > 0:
        server._wait(reply.hang_s)
        handler.hang_up()
        return
    if reply.drop_connection:
        handler.hang_up()
        return
    if reply.raw_body is not None:
        handler.send_bytes(reply.status, reply.raw_body, reply.headers)
        return
    if reply.status >= 400:
        message = reply.error_message or f"injected HTTP {reply.status}"
        handler.send_json(reply.status, error_payload(reply.status, message), reply.headers)
        return
    handler.send_json(reply.status, success_payload(reply, request), reply.headers)
