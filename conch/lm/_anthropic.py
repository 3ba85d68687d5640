"""A client for Anthropic's Messages API (needs the optional ``anthropic`` extra)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import httpx

from conch.errors import ConfigurationError, ModelResponseError
from conch.lm._pricing import PriceTable
from conch.lm._retry import RetryPolicy
from conch.lm._sdk import DEFAULT_TIMEOUT_S, SdkChatModel
from conch.lm._types import Completion, CompletionOptions, Message, Usage

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096
"""The Messages API requires max_tokens on every request; this is sent when none is given."""

_KEY_HINT = "pass api_key=, or set ANTHROPIC_API_KEY"
# One vocabulary for the loop: Anthropic's reasons in OpenAI's words where they mean the same.
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def _import_anthropic() -> Any:
    try:
        import anthropic
    except ImportError as exc:
        raise ConfigurationError(
            "the Anthropic client needs the 'anthropic' package: pip install 'conch[anthropic]'"
        ) from exc
    return anthropic


class AnthropicModel(SdkChatModel):
    """A Claude model over the official ``anthropic`` SDK.

    ``base_url`` comes from the argument, else ``ANTHROPIC_BASE_URL``, else Anthropic's
    endpoint; ``api_key`` from the argument, else ``ANTHROPIC_API_KEY``. System messages
    are sent as the request's ``system`` field, joined by blank lines.
    """

    _key_hint = _KEY_HINT
    _not_a_reply = "a message ({error}). Is base_url Anthropic's Messages API?"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not model:
            raise ConfigurationError("AnthropicModel needs a model name, e.g. 'claude-sonnet-4-5'")
        sdk = _import_anthropic()
        self.base_url = (
            base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_BASE_URL
        ).rstrip("/")
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if key is None:
            raise ConfigurationError(f"no API key for {self.base_url}: {_KEY_HINT}")
        self.max_tokens = max_tokens
        self._connect(
            sdk,
            sdk.AsyncAnthropic,
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
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [
            {"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"
        ]
        if not turns:
            raise ConfigurationError(
                "the Messages API needs at least one user message besides the system prompt"
            )
        body: dict[str, Any] = {
            "model": self._model,
            "messages": turns,
            "max_tokens": options.get("max_tokens", self.max_tokens),
        }
        if system:
            body["system"] = "\n\n".join(system)
        if "stop" in options:
            stop = options["stop"]
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        extra = dict(options.get("extra_body", {}))
        if "temperature" in options:
            # Recent SDKs no longer take temperature as an argument; the API still does.
            extra.setdefault("temperature", options["temperature"])
        if extra:
            body["extra_body"] = extra
        return body

    async def _send(self, request: dict[str, Any], timeout: float | None) -> Any:
        return await self._client.messages.create(**request, timeout=timeout)

    def _completion(self, response: Any, latency: float, attempts: int) -> Completion:
        blocks = getattr(response, "content", None)
        if not isinstance(blocks, list):
            raise ModelResponseError(
                f"{self._endpoint} answered without a content list; check the server's logs."
            )
        # Only text blocks are the answer; thinking and tool blocks are not.
        text = "".join(
            getattr(block, "text", None) or ""
            for block in blocks
            if getattr(block, "type", None) == "text"
        )
        model = getattr(response, "model", None) or self._model
        usage = _usage(getattr(response, "usage", None))
        cost, known = self.prices.cost(model, usage)
        stop_reason = getattr(response, "stop_reason", None)
        return Completion(
            text=text,
            model=model,
            usage=usage,
            cost_usd=cost,
            cost_known=known,
            finish_reason=_FINISH_REASONS.get(stop_reason, stop_reason),
            latency_s=latency,
            attempts=attempts,
            raw=response,
        )


def _usage(usage: Any) -> Usage:
    """Anthropic counts cache reads and writes apart from input; conch counts the whole prompt."""
    if usage is None:
        return Usage()
    fresh = getattr(usage, "input_tokens", None) or 0
    cache_read = getattr(usage, "cache_read_input_tokens", None) or 0
    cache_write = getattr(usage, "cache_creation_input_tokens", None) or 0
    return Usage(
        input_tokens=fresh + cache_read + cache_write,
        output_tokens=getattr(usage, "output_tokens", None) or 0,
        cached_tokens=cache_read,
    )
