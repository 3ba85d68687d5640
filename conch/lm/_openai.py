"""A client for any server speaking OpenAI's chat-completions API.

That covers OpenAI itself, vLLM, Ollama, llama.cpp's server, LM Studio and OpenRouter.
Requests go through the official ``openai`` SDK by default; ``transport="httpx"`` or
``"aiohttp"`` send the same request more cheaply (see ``conch.lm._transport``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai

from conch.errors import ConfigurationError, ModelResponseError
from conch.lm._pricing import PriceTable
from conch.lm._retry import AttemptFailure, RetryPolicy
from conch.lm._sdk import DEFAULT_TIMEOUT_S, SdkChatModel
from conch.lm._transport import (
    DEFAULT_MAX_CONNECTIONS,
    DEPRECATED_TRANSPORTS,
    JsonPoster,
    Transport,
    check_transport,
    classify,
    make_poster,
)
from conch.lm._types import Completion, CompletionOptions, Message, Usage

OPENAI_BASE_URL = "https://api.openai.com/v1"

# Local servers accept any key, but the SDK refuses to start without one.
_PLACEHOLDER_KEY = "not-needed"
_KEY_HINT = "pass api_key=, or set CONCH_API_KEY or OPENAI_API_KEY"


class OpenAIModel(SdkChatModel):
    """An OpenAI-compatible chat model.

    ``base_url`` comes from the argument, else ``CONCH_BASE_URL``, else ``OPENAI_BASE_URL``,
    else OpenAI's own endpoint. ``api_key`` comes from the argument, else ``CONCH_API_KEY``,
    else ``OPENAI_API_KEY``; a server other than OpenAI's may be used without one.

    Pass ``http_client`` to share one connection pool between many models; it is then
    lent, not owned: ``aclose`` leaves it open.

    ``transport`` says how requests are sent; every choice sends the same body, gives the
    same ``Completion`` and fails the same way (same retries, same errors):

    - ``"sdk"`` (the default): the official ``openai`` SDK.
    - ``"httpx"``: one ``httpx.AsyncClient`` (the lent ``http_client``, or one of its own
      with ``max_connections`` kept alive, default 100) and the stdlib's JSON, skipping
      the SDK's typed request and response models. Honours proxies from the environment.
    - ``"aiohttp"``: one ``aiohttp.ClientSession`` per event loop, with up to
      ``max_connections`` keep-alive connections (default 100) and the stdlib's JSON: the
      least host CPU per call, for fan-outs of many concurrent sub-calls. Honours proxies
      from the environment. Needs ``pip install 'conch[fast]'``. (``"asyncio"``, the name
      of conch's former hand-written client, is a deprecated alias for it.)

    The lean transports do not follow redirects (a 3xx says where base_url should point).
    Size ``max_connections`` to the concurrency you use (``RLM(batch_concurrency=...)``
    times concurrent runs sharing the model); calls beyond it wait for a free connection.
    """

    _key_hint = _KEY_HINT
    _not_a_reply = "a chat completion ({error}). Is base_url an OpenAI-compatible API?"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: Transport = "sdk",
        max_connections: int | None = None,
    ) -> None:
        if not model:
            raise ConfigurationError("OpenAIModel needs a model name, e.g. 'gpt-4o-mini'")
        canonical = check_transport(transport)
        if canonical != transport:
            warnings.warn(
                f"transport={transport!r} is deprecated; use "
                f"transport={DEPRECATED_TRANSPORTS[transport]!r}",
                DeprecationWarning,
                stacklevel=2,
            )
            transport = canonical  # type: ignore[assignment]
        if max_connections is not None and (transport == "sdk" or http_client is not None):
            raise ConfigurationError(
                "max_connections= sizes the connection pool of transport='httpx' or "
                "'aiohttp'; with the SDK or a lent http_client, set the limits on that "
                "httpx client instead"
            )
        self.base_url = (
            base_url
            or os.environ.get("CONCH_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
            or OPENAI_BASE_URL
        ).rstrip("/")
        is_openai = urlsplit(self.base_url).hostname == "api.openai.com"
        key = api_key or os.environ.get("CONCH_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key is None:
            if is_openai:
                raise ConfigurationError(
                    f"no API key for {self.base_url}: {_KEY_HINT}, or point base_url at "
                    "another OpenAI-compatible server"
                )
            key = _PLACEHOLDER_KEY
        # OpenAI's reasoning models reject max_tokens; llama.cpp's server ignores
        # max_completion_tokens. Each endpoint gets the name it honours.
        self._max_tokens_field = "max_completion_tokens" if is_openai else "max_tokens"
        self.transport = transport
        self._poster: JsonPoster | None = None
        if transport == "sdk":
            self._connect(
                openai,
                openai.AsyncOpenAI,
                model=model,
                base_url=self.base_url,
                api_key=key,
                timeout=timeout,
                retry=retry,
                prices=prices,
                http_client=http_client,
            )
        else:
            self._configure(
                openai,
                model=model,
                base_url=self.base_url,
                timeout=timeout,
                retry=retry,
                prices=prices,
            )
            self._poster = make_poster(
                transport,
                base_url=self.base_url,
                api_key=key,
                http_client=http_client,
                max_connections=(
                    DEFAULT_MAX_CONNECTIONS if max_connections is None else max_connections
                ),
            )

    def __repr__(self) -> str:
        transport = "" if self.transport == "sdk" else f", transport={self.transport!r}"
        return f"OpenAIModel({self._model!r}, base_url={self.base_url!r}{transport})"

    async def aclose(self) -> None:
        if self._poster is None:
            await super().aclose()
        else:
            await self._poster.aclose()

    def _request_body(
        self, messages: Sequence[Message], options: CompletionOptions
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        }
        if "stop" in options:
            stop = options["stop"]
            body["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if "max_tokens" in options:
            body[self._max_tokens_field] = options["max_tokens"]
        if "temperature" in options:
            body["temperature"] = options["temperature"]
        if "extra_body" in options:
            extra = dict(options["extra_body"])
            if self._poster is None:
                body["extra_body"] = extra  # the SDK merges it into the body it sends
            else:
                body.update(extra)
        return body

    async def _send(self, request: dict[str, Any], timeout: float | None) -> Any:
        if self._poster is not None:
            return await self._poster.post(request, timeout)
        return await self._client.chat.completions.create(**request, timeout=timeout)

    def _classify(self, exc: Exception, timeout: float | None) -> AttemptFailure | None:
        if self._poster is not None:
            failure = classify(
                exc, endpoint=self._endpoint, timeout=timeout, key_hint=self._key_hint
            )
            if failure is not None:
                return failure
        return super()._classify(exc, timeout)

    def _completion(self, response: Any, latency: float, attempts: int) -> Completion:
        """From the SDK's response object or, for the lean transports, the parsed JSON:
        the same fields either way, read with ``_field``."""
        choices = _field(response, "choices")
        if not isinstance(choices, list) or not choices:
            raise ModelResponseError(
                f"{self._endpoint} answered without any choice (no completion text at all). "
                "The server may have filtered the reply or failed silently; check its logs."
            )
        choice = choices[0]
        text = _text(_field(_field(choice, "message"), "content"))
        model = _field(response, "model")
        model = model if isinstance(model, str) and model else self._model
        finish_reason = _field(choice, "finish_reason")
        usage = _usage(_field(response, "usage"))
        cost, known = self.prices.cost(model, usage)
        if not known and model != self._model:
            cost, known = self.prices.cost(self._model, usage)
        return Completion(
            text=text,
            model=model,
            usage=usage,
            cost_usd=cost,
            cost_known=known,
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            latency_s=latency,
            attempts=attempts,
            raw=response,
        )


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of parsed JSON, or the attribute of an SDK object; ``None`` if absent."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _text(content: Any) -> str:
    """Message content as text: ``None`` (some servers send it) is ``""``; a list of content
    parts is their text joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (_field(part, "text") for part in content)
        return "".join(part for part in parts if isinstance(part, str))
    return ""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    return Usage(
        input_tokens=_count(_field(usage, "prompt_tokens")),
        output_tokens=_count(_field(usage, "completion_tokens")),
        cached_tokens=_count(_field(_field(usage, "prompt_tokens_details"), "cached_tokens")),
        reasoning_tokens=_count(
            _field(_field(usage, "completion_tokens_details"), "reasoning_tokens")
        ),
    )
