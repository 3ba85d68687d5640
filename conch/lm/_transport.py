"""The lean ways ``OpenAIModel`` can send a chat completion, besides the official SDK.

The SDK spends two to three milliseconds of host CPU on every call (building typed request
and response models, and httpx's connection pool under it). A fan-out of many concurrent
sub-calls on a small machine is bound by exactly that, so ``OpenAIModel`` can skip it:

- ``"httpx"``: one shared ``httpx.AsyncClient`` (keep-alive, connection limit), JSON by the
  stdlib. Honours the environment's proxies and a lent ``http_client``.
- ``"aiohttp"``: one ``aiohttp.ClientSession`` per event loop (C-accelerated HTTP parser,
  keep-alive pool capped at ``max_connections``), JSON by the stdlib: the leanest. Honours
  the environment's proxies too. Needs ``pip install 'conch[fast]'``. ``"asyncio"`` (the
  name of conch's former hand-written client) is a deprecated alias.

Both post the same JSON body the SDK would to ``{base_url}/chat/completions`` and hand back
the parsed JSON object; ``OpenAIModel`` turns that into a ``Completion`` with the same code,
and failures into conch errors with the same policy (``classify``), as for the SDK.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx

from conch.errors import ConfigurationError
from conch.lm._failures import (
    connection_failure,
    error_detail,
    status_failure,
    timeout_failure,
)
from conch.lm._retry import AttemptFailure

if TYPE_CHECKING:
    import aiohttp

Transport = Literal["sdk", "httpx", "aiohttp", "asyncio"]
TRANSPORTS: tuple[str, ...] = ("sdk", "httpx", "aiohttp")
DEPRECATED_TRANSPORTS: Mapping[str, str] = {"asyncio": "aiohttp"}
"""Old names still accepted (with a DeprecationWarning), and what they now mean."""
DEFAULT_MAX_CONNECTIONS = 100
"""Per model, for the lean transports; all of them are kept alive between requests."""
KEEPALIVE_EXPIRY_S = 4.0
"""aiohttp closes a connection idle this long instead of reusing it: servers drop idle
connections after a few seconds (uvicorn, under vLLM and others, after 5), and a request
sent just as they do would fail (and be retried after a backoff)."""

_USER_AGENT = "conch (OpenAI-compatible client)"
_INSTALL_HINT = "pip install 'conch[fast]'"


class HTTPStatusError(Exception):
    """A lean transport got an answer with an error status (or a redirect, not followed)."""

    def __init__(self, status: int, headers: Mapping[str, str], text: str) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.text = text

    @property
    def detail(self) -> str:
        if 300 <= self.status < 400:
            location = self.headers.get("location")
            where = f" to {location}" if location else ""
            return f"redirected{where}; redirects are not followed, point base_url there"
        try:
            body = json.loads(self.text)
        except ValueError:
            body = None
        return error_detail(body, self.text)


def check_transport(transport: str) -> str:
    """The transport's current name (a deprecated alias mapped to it); unknown names are a
    ConfigurationError."""
    if transport in DEPRECATED_TRANSPORTS:
        return DEPRECATED_TRANSPORTS[transport]
    if transport not in TRANSPORTS:
        raise ConfigurationError(
            f"unknown transport {transport!r}; use one of {', '.join(map(repr, TRANSPORTS))}"
        )
    return transport


class JsonPoster:
    """Posts a chat-completion body and returns the answer's JSON object."""

    async def post(self, body: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


def make_poster(
    transport: str,
    *,
    base_url: str,
    api_key: str,
    http_client: httpx.AsyncClient | None,
    max_connections: int,
) -> JsonPoster:
    if max_connections < 1:
        raise ConfigurationError(f"max_connections must be at least 1, not {max_connections}")
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": _USER_AGENT,
    }
    url = f"{base_url.rstrip('/')}/chat/completions"
    if transport == "httpx":
        return _HttpxPoster(url, headers, http_client, max_connections)
    if http_client is not None:
        raise ConfigurationError(
            f"http_client= lends an httpx client, which transport={transport!r} does not use; "
            "use transport='httpx' to share one, or leave http_client out"
        )
    _check_url(url)
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0"):
            raise ConfigurationError(
                f"the HTTP header {name!r} holds a line break or NUL; check the API key"
            )
    return _AiohttpPoster(url, headers, max_connections)


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{url!r} is not an http:// or https:// URL with a host; "
            "give base_url as e.g. http://127.0.0.1:8000/v1"
        )
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigurationError(f"{url!r} has an invalid port: {exc}") from None


def _import_aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError:
        raise ConfigurationError(
            f"transport='aiohttp' needs the aiohttp package: {_INSTALL_HINT} "
            "(or use transport='httpx')"
        ) from None
    return aiohttp


def _encode(body: Mapping[str, Any]) -> bytes:
    # ASCII (non-ASCII escaped): any str encodes, lone surrogates from undecodable input too.
    return json.dumps(body, separators=(",", ":")).encode()


def _decode(status: int, headers: Mapping[str, str], content: bytes) -> dict[str, Any]:
    """The JSON object of a 2xx answer; anything else raises (and ``classify`` says what)."""
    if not 200 <= status < 300:
        raise HTTPStatusError(status, headers, content.decode("utf-8", errors="replace"))
    data = json.loads(content)  # a ValueError is "not a chat completion"
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data


class _HttpxPoster(JsonPoster):
    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        http_client: httpx.AsyncClient | None,
        max_connections: int,
    ) -> None:
        self._url = url
        self._headers = headers
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            )
        )

    async def post(self, body: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
        response = await self._client.post(
            self._url, content=_encode(body), headers=self._headers, timeout=timeout
        )
        return _decode(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        if self._owns_client:  # a lent client belongs to whoever lent it
            await self._client.aclose()


class _AiohttpPoster(JsonPoster):
    """One ``aiohttp.ClientSession`` per event loop: a session (and its connections)
    belongs to the loop it was made in, and ``RLM.completion`` runs each call in a fresh
    ``asyncio.run``. Sessions of loops that have ended are dropped, never reused."""

    def __init__(self, url: str, headers: dict[str, str], max_connections: int) -> None:
        self._aiohttp = _import_aiohttp()
        self._url = url
        self._headers = headers
        self._max_connections = max_connections
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._proxies: dict[asyncio.AbstractEventLoop, tuple[Any, Any]] = {}
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}

    def _new_session(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        """Without an ``await``, so that tasks starting together share one session."""
        aiohttp = self._aiohttp
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=KEEPALIVE_EXPIRY_S,
            ),
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None),  # per request: see post
            auto_decompress=True,
            # trust_env=True would look the proxy (and .netrc) up again on every request,
            # each in a worker thread: about as much host CPU as the request itself. The
            # environment's proxy is looked up the same way, once per session, instead.
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),  # ours is in headers
        )
        self._proxies[loop] = _env_proxy(self._url)
        self._sessions[loop] = session
        return session

    async def _forget_ended_loops(self) -> None:
        """Drop the sessions of loops that have ended. Closing one only marks it closed
        (its connections cannot be closed through an ended loop; they go with it)."""
        for loop in [loop for loop in self._sessions if loop.is_closed()]:
            self._proxies.pop(loop, None)
            await self._sessions.pop(loop).close()

    def _timeout(self, timeout: float | None) -> aiohttp.ClientTimeout:
        found = self._timeouts.get(timeout)
        if found is None:
            found = self._timeouts[timeout] = self._aiohttp.ClientTimeout(total=timeout)
        return found

    async def post(self, body: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            session = self._new_session(loop)
            await self._forget_ended_loops()
        proxy, proxy_auth = self._proxies[loop]
        async with session.post(
            self._url,
            data=_encode(body),
            timeout=self._timeout(timeout),
            allow_redirects=False,
            proxy=proxy,
            proxy_auth=proxy_auth,
        ) as response:
            content = await response.read()
            return _decode(response.status, response.headers, content)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        self._proxies.pop(loop, None)
        await self._forget_ended_loops()
        if session is not None:
            await session.close()
        # Sessions of loops still running in other threads are forgotten, not closed
        # from here (a session is only usable from its own loop).
        self._sessions.clear()
        self._proxies.clear()


def _env_proxy(url: str) -> tuple[Any, Any]:
    """``(proxy URL, proxy auth)`` the environment (``HTTP(S)_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``, ``.netrc``) routes ``url`` through, as aiohttp's ``trust_env`` reads
    it; ``(None, None)`` for a direct connection."""
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


def classify(
    exc: Exception, *, endpoint: str, timeout: float | None, key_hint: str
) -> AttemptFailure | None:
    """A lean transport's failure as conch's policy sees it; ``None`` for anything else
    (the caller then applies what it does for the SDK: a ValueError is a body that is not
    a chat completion, any other exception a bug that propagates)."""
    if isinstance(exc, HTTPStatusError):
        return status_failure(
            exc.status, exc.detail, exc.headers, endpoint=endpoint, key_hint=key_hint
        )
    # TimeoutError is an OSError, and httpx's timeouts are transport errors: test them first.
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return timeout_failure(endpoint, timeout)
    if isinstance(exc, OSError | EOFError | httpx.TransportError):
        return connection_failure(endpoint, exc)
    aiohttp = sys.modules.get("aiohttp")  # imported only by transport='aiohttp'
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        # Refused, dropped, cut short, or not HTTP at all (a malformed status line or
        # chunk comes as a ClientResponseError: error statuses never do, see _decode).
        return connection_failure(endpoint, exc)
    return None
