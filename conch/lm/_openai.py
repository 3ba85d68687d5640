"""A client for any server speaking OpenAI's chat-completions API.

That covers OpenAI itself, vLLM, Ollama, llama.cpp's server, LM Studio and OpenRouter.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai

from conch.errors import ConfigurationError, ModelResponseError
from conch.lm._pricing import PriceTable
from conch.lm._retry import RetryPolicy
from conch.lm._sdk import DEFAULT_TIMEOUT_S, SdkChatModel
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
    ) -> None:
        if not model:
            raise ConfigurationError("OpenAIModel needs a model name, e.g. 'gpt-4o-mini'")
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
            body["extra_body"] = dict(options["extra_body"])
        return body

    async def _send(self, request: dict[str, Any], timeout: float | None) -> Any:
        return await self._client.chat.completions.create(**request, timeout=timeout)

    def _completion(self, response: Any, latency: float, attempts: int) -> Completion:
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise ModelResponseError(
                f"{self._endpoint} answered without any choice (no completion text at all). "
                "The server may have filtered the reply or failed silently; check its logs."
            )
        choice = choices[0]
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) or ""  # some servers send null content
        model = getattr(response, "model", None) or self._model
        usage = _usage(getattr(response, "usage", None))
        cost, known = self.prices.cost(model, usage)
        if not known and model != self._model:
            cost, known = self.prices.cost(self._model, usage)
        return Completion(
            text=text,
            model=model,
            usage=usage,
            cost_usd=cost,
            cost_known=known,
            finish_reason=getattr(choice, "finish_reason", None),
            latency_s=latency,
            attempts=attempts,
            raw=response,
        )


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    return Usage(
        input_tokens=getattr(usage, "prompt_tokens", None) or 0,
        output_tokens=getattr(usage, "completion_tokens", None) or 0,
        cached_tokens=getattr(prompt_details, "cached_tokens", None) or 0,
        reasoning_tokens=getattr(completion_details, "reasoning_tokens", None) or 0,
    )
