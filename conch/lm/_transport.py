"""The lean ways ``OpenAIModel`` can send a chat completion, besides the official SDK.

The SDK spends two to three milliseconds of host CPU on every call (building typed request
and response models, and httpx's connection pool under it). A fan-out of many concurrent
sub-calls on a small machine is bound by exactly that, so ``OpenAIModel`` can skip it:

- ``"httpx"``: one shared ``httpx.AsyncClient`` (keep-alive, connection limit), JSON by the
  stdlib. Honours the environment's proxies and a lent ``http_client``.
- ``"asyncio"``: conch's own HTTP/1.1 client on asyncio streams (``conch.lm._http``): the
  leanest, about a tenth of a millisecond a call; no proxies.

Both post the same JSON body the SDK would to ``{base_url}/chat/completions`` and hand back
the parsed JSON object; ``OpenAIModel`` turns that into a ``Completion`` with the same code,
and failures into conch errors with the same policy (``classify``), as for the SDK.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from conch.errors import ConfigurationError
from conch.lm._failures import (
    connection_failure,
    error_detail,
    status_failure,
    timeout_failure,
)
from conch.lm._http import AsyncioHTTPClient, ServerDisconnected, proxy_for, split_url
from conch.lm._retry import AttemptFailure

Transport = Literal["sdk", "httpx", "asyncio"]
TRANSPORTS: tuple[str, ...] = ("sdk", "httpx", "asyncio")
DEFAULT_MAX_CONNECTIONS = 100
"""Per model, for the lean transports; all of them are kept alive between requests."""

_USER_AGENT = "conch (OpenAI-compatible client)"


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


def check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ConfigurationError(
            f"unknown transport {transport!r}; use one of {', '.join(map(repr, TRANSPORTS))}"
        )


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
    origin, target = split_url(url)
    proxy = proxy_for(origin)
    if proxy is not None:
        raise ConfigurationError(
            f"the environment routes {origin.scheme}://{origin.host_header} through the proxy "
            f"{_without_credentials(proxy)}, and transport='asyncio' connects directly; use "
            "transport='httpx' "
            "(which uses the proxy), or add the host to NO_PROXY"
        )
    headers["Accept-Encoding"] = "gzip, deflate"
    return _AsyncioPoster(
        AsyncioHTTPClient(origin, headers=headers, max_connections=max_connections), target
    )


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


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


class _AsyncioPoster(JsonPoster):
    def __init__(self, client: AsyncioHTTPClient, target: str) -> None:
        self._client = client
        self._target = target

    async def post(self, body: Mapping[str, Any], timeout: float | None) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            response = await self._client.post(self._target, _encode(body))
        return _decode(response.status, response.headers, response.body)

    async def aclose(self) -> None:
        await self._client.aclose()


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
    if isinstance(exc, OSError | EOFError | httpx.TransportError | ServerDisconnected):
        return connection_failure(endpoint, exc)
    return None
