"""One string names a model: what the CLI and configuration files use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from conch.errors import ConfigurationError
from conch.lm._anthropic import AnthropicModel
from conch.lm._local import LocalModel
from conch.lm._openai import OpenAIModel
from conch.lm._pricing import PriceTable
from conch.lm._protocol import LanguageModel
from conch.lm._retry import RetryPolicy
from conch.lm._scripted import ReplyFunction, ScriptedModel, ScriptedReply
from conch.lm._transport import Transport, check_transport
from conch.lm._weights import DEFAULT_LOCAL_MODEL

PROVIDERS = ("openai", "anthropic", "scripted", "local")


def create_model(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    retry: RetryPolicy | None = None,
    prices: PriceTable | None = None,
    http_client: httpx.AsyncClient | None = None,
    replies: Sequence[ScriptedReply] | ReplyFunction | None = None,
    transport: Transport | None = None,
    max_connections: int | None = None,
) -> LanguageModel:
    """Build a model from ``"provider:name"`` or a bare name.

    - ``"openai:gpt-4o-mini"`` or just ``"gpt-4o-mini"``: an OpenAI-compatible server
      (``base_url`` picks which: vLLM, Ollama, llama.cpp, LM Studio, OpenRouter...).
      A bare name may contain colons (Ollama's ``"qwen2.5:1.5b"``): only the provider
      names above are read as prefixes.
    - ``"anthropic:claude-sonnet-4-5"``: Anthropic's Messages API.
    - ``"scripted"`` (or ``"scripted:NAME"``) with ``replies=``: a ScriptedModel.
    - ``"local"`` (the default embedded model), ``"local:qwen2.5-coder-0.5b"`` or
      ``"local:/path/to/file.gguf"``: a LocalModel run in-process by llama.cpp.

    ``transport`` (``"sdk"``, the default, ``"httpx"`` or ``"aiohttp"``) and
    ``max_connections`` apply to OpenAI-compatible models only: see ``OpenAIModel``.
    """
    provider, _, name = spec.partition(":")
    if provider not in PROVIDERS:
        provider, name = "openai", spec
    if transport is not None:
        check_transport(transport)
    if provider != "openai" and (transport not in (None, "sdk") or max_connections is not None):
        raise ConfigurationError(
            f"transport= and max_connections= apply to OpenAI-compatible models, not {spec!r}"
        )
    if provider == "scripted":
        if replies is None:
            raise ConfigurationError("the 'scripted' model needs replies=[...] or a function")
        return ScriptedModel(replies, model=name or "scripted")
    if provider == "local":
        if replies is not None or base_url is not None or api_key is not None:
            raise ConfigurationError(
                f"{spec!r} runs in this process: replies=, base_url= and api_key= do not apply"
            )
        return LocalModel(name or DEFAULT_LOCAL_MODEL)
    if not name:
        raise ConfigurationError(
            f"model spec {spec!r} names no model; write e.g. 'openai:gpt-4o-mini', "
            "'anthropic:claude-sonnet-4-5', or a bare model name with base_url="
        )
    if replies is not None:
        raise ConfigurationError(f"replies= only applies to the 'scripted' model, not {spec!r}")
    common: dict[str, Any] = {
        "base_url": base_url,
        "api_key": api_key,
        "retry": retry,
        "prices": prices,
        "http_client": http_client,
    }
    if timeout is not None:
        common["timeout"] = timeout
    if provider == "anthropic":
        return AnthropicModel(name, **common)
    if transport is not None:
        common["transport"] = transport
    if max_connections is not None:
        common["max_connections"] = max_connections
    return OpenAIModel(name, **common)
