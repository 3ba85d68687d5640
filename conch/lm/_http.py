"""A minimal HTTP/1.1 client on asyncio streams: what ``transport="asyncio"`` posts with.

It does one thing, cheaply: POST a body to one origin over a pool of keep-alive connections
and read the whole answer. A chat completion through it costs 0.1-0.25 ms of host CPU,
against 1.3-2 ms through httpx and 2.2-3 ms through the official SDK (on a busy 2-core
machine; ``benchmarks/fanout.py`` prints the figure), and host CPU per call is what a
fan-out of many concurrent sub-calls is bound by: the event loop is one thread.

What it speaks: ``http`` and ``https`` (certificates checked against ``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` when set, else certifi's bundle when installed, else the system's), answers
delimited by ``Content-Length``, chunked transfer coding or the end of the connection, and
gzip or deflate content coding. What it does not: proxies (the caller refuses to start
when one applies, see ``proxy_for``), redirects (a 3xx is an answer like any other),
HTTP/2, streaming. Failures to connect, read or parse raise ``OSError`` subclasses
(``ConnectionError`` for the ones found here); an answer, whatever its status, is returned.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from conch.errors import ConfigurationError

KEEPALIVE_EXPIRY_S = 4.0
"""An idle connection older than this is closed, not reused: servers drop idle connections
after a few seconds (uvicorn, under vLLM and others, after 5), and a request sent just as
they do would fail (and be retried after a backoff)."""

_LINE_LIMIT = 64 * 1024
"""The longest header block (and chunk-size line) accepted; the stream reader's limit."""


class ServerDisconnected(ConnectionError):
    """The server closed the connection before its answer was complete."""


class HTTPProtocolError(ConnectionError):
    """The server's answer is not well-formed HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    status: int
    reason: str
    headers: Mapping[str, str]
    """Names in lower case; a repeated header's values joined by ", "."""
    body: bytes
    """Decoded: gzip and deflate content coding already undone."""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def split_url(url: str) -> tuple[Origin, str]:
    """``(origin, request target)`` of an absolute http(s) URL; bad URLs are a
    ConfigurationError that says what was wrong."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{url!r} is not an http:// or https:// URL with a host; "
            "give base_url as e.g. http://127.0.0.1:8000/v1"
        )
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigurationError(f"{url!r} has an invalid port: {exc}") from None
    # The request line is ASCII: percent-encode what is not (what is encoded stays so).
    target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~")
    if parts.query:
        target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~?")
    return Origin(scheme, parts.hostname, port), target


def proxy_for(origin: Origin) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, minus
    ``NO_PROXY``) routes ``origin`` through, or ``None``. Loopback is never proxied."""
    if origin.host in ("localhost", "127.0.0.1", "::1"):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(origin.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(origin.host, proxies):
        return None
    return proxy


@functools.cache
def _tls_context() -> ssl.SSLContext:
    cafile = None
    if not (os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")):
        try:
            import certifi  # httpx's dependency, so normally present

            cafile = certifi.where()
        except ImportError:
            pass
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def reusable(self, now: float) -> bool:
        """Still open on both sides and not idle for long. A server that closed it while
        it sat in the pool has fed it EOF already: the loop reads the FIN as it arrives."""
        return (
            now - self.idle_since < KEEPALIVE_EXPIRY_S
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        try:
            self.writer.close()
        except RuntimeError:
            # Its event loop has ended, so the transport cannot close: end the TCP
            # connection at least (the server sees it at once; the file descriptor
            # is released when the transport is garbage-collected).
            sock = self.writer.get_extra_info("socket")
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class AsyncioHTTPClient:
    """POSTs to one origin over at most ``max_connections`` keep-alive connections.

    Safe to share between tasks. Connections belong to the event loop they were opened
    in: used from another loop (``asyncio.run`` again), the client drops the old ones and
    opens new ones. ``aclose`` closes the idle ones; later requests open new ones.
    """

    def __init__(self, origin: Origin, *, headers: Mapping[str, str], max_connections: int) -> None:
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be at least 1, not {max_connections}")
        for name, value in headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ConfigurationError(
                    f"the HTTP header {name!r} holds a line break or NUL; check the API key"
                )
        self.origin = origin
        self.max_connections = max_connections
        self._tls = origin.scheme == "https"
        lines = [f"Host: {origin.host_header}", *(f"{n}: {v}" for n, v in headers.items())]
        self._header_block = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, target: str, body: bytes) -> HTTPResponse:
        head = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            target.encode("latin-1"),
            self._header_block,
            len(body),
        )
        slots = self._bind_loop()
        async with slots:
            connection = self._checkout() or await self._connect()
            keep = False
            try:
                connection.writer.write(head + body)
                await connection.writer.drain()
                response, keep = await _read_response(connection.reader)
            finally:  # cancelled or failed midway: the connection's state is unknown, close it
                if keep:
                    connection.idle_since = time.monotonic()
                    self._idle.append(connection)
                else:
                    connection.close()
            return response

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        if asyncio.get_running_loop() is not self._loop:
            return  # they belong to an ended loop: closed as far as they can be
        for connection in idle:
            try:
                await connection.writer.wait_closed()
            except (OSError, RuntimeError):
                pass

    def _bind_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            for connection in self._idle:  # opened in a loop that has ended
                connection.close()
            self._idle = []
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
        return self._slots

    def _checkout(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely to be stale
            if connection.reusable(now):
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        origin = self.origin
        reader, writer = await asyncio.open_connection(
            origin.host,
            origin.port,
            ssl=_tls_context() if self._tls else None,
            server_hostname=origin.host if self._tls else None,
            limit=_LINE_LIMIT,
        )
        return _Connection(reader, writer)


async def _read_response(reader: asyncio.StreamReader) -> tuple[HTTPResponse, bool]:
    """One whole answer, and whether the connection may carry another request."""
    while True:
        head = await _read_until(reader, b"\r\n\r\n", "its answer's headers", first=True)
        status, reason, version, headers = _parse_head(head)
        if not 100 <= status < 200:  # skip interim answers (100 Continue, 103 Early Hints)
            break
    connection = headers.get("connection", "").lower()
    keep = version == "HTTP/1.1" and "close" not in connection
    if status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = _number(headers["content-length"], 10)
        if length is None or length < 0:
            raise HTTPProtocolError(f"Content-Length {headers['content-length']!r} is not a size")
        body = await _read_exactly(reader, length, "its answer's body")
    else:  # delimited by the end of the connection
        body = await reader.read()
        keep = False
    return HTTPResponse(status, reason, headers, _decode(body, headers)), keep


async def _read_until(
    reader: asyncio.StreamReader, separator: bytes, what: str, *, first: bool = False
) -> bytes:
    """Up to and including ``separator``. ``first``: nothing read yet, so an EOF here means
    the server hung up without answering. (Errors are raised outside the ``except`` so that
    they, not asyncio's, are what the error message quotes.)"""
    try:
        return await reader.readuntil(separator)
    except asyncio.IncompleteReadError as exc:
        got = len(exc.partial)
    except asyncio.LimitOverrunError:
        got = -1
    if got == -1:
        raise HTTPProtocolError(f"{what} run past {_LINE_LIMIT // 1024} KiB")
    if got == 0 and first:
        raise ServerDisconnected("the server closed the connection without answering")
    raise ServerDisconnected(f"the server closed the connection in the middle of {what}")


async def _read_exactly(reader: asyncio.StreamReader, length: int, what: str) -> bytes:
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        got = len(exc.partial)
    raise ServerDisconnected(
        f"the server closed the connection in the middle of {what} ({got} of {length} bytes)"
    )


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        line = await _read_until(reader, b"\r\n", "a chunked body")
        size = _number(line.split(b";", 1)[0].strip().decode("latin-1"), 16)
        if size is None or size < 0:
            raise HTTPProtocolError(f"bad chunk size line {line[:40]!r}")
        if size == 0:
            while await _read_until(reader, b"\r\n", "a chunked body") != b"\r\n":
                pass  # trailer fields: nothing here needs them
            return b"".join(parts)
        parts.append(await _read_exactly(reader, size, "a chunked body"))
        if await _read_exactly(reader, 2, "a chunked body") != b"\r\n":
            raise HTTPProtocolError("a chunk does not end with CRLF")


def _parse_head(head: bytes) -> tuple[int, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise HTTPProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise HTTPProtocolError(f"not a header line: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return int(code), reason, version, headers


def _decode(body: bytes, headers: Mapping[str, str]) -> bytes:
    coding = headers.get("content-encoding", "identity").strip().lower()
    if not body or coding in ("identity", ""):
        return body
    if coding in ("gzip", "x-gzip"):
        attempts = [16 + zlib.MAX_WBITS]
    elif coding == "deflate":  # some servers send raw deflate, without the zlib wrapper
        attempts = [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    else:
        raise HTTPProtocolError(
            f"unsupported Content-Encoding {coding!r} (asked for gzip, deflate)"
        )
    problem = ""
    for wbits in attempts:
        try:
            return zlib.decompress(body, wbits)
        except zlib.error as exc:
            problem = str(exc)
    # Raised here, outside the handler, so the error names this and not zlib's complaint alone.
    raise HTTPProtocolError(f"the {coding} body does not decompress: {problem}")


def _number(text: str, base: int) -> int | None:
    """A size as HTTP writes it: digits only (``int`` would also take "+1", "1_0", " 1")."""
    digits = "0123456789abcdefABCDEF" if base == 16 else "0123456789"
    if not text or any(c not in digits for c in text):
        return None
    return int(text, base)
