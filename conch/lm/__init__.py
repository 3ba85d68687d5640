"""Model clients: one ``LanguageModel`` protocol, many providers.

``await model.complete(messages, stop=[...], max_tokens=..., temperature=..., timeout=...)``
returns a ``Completion`` with the text (never ``None``), token usage, cost and latency.

- ``OpenAIModel``: any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp, LM Studio,
  OpenRouter) through the official ``openai`` SDK; ``transport="httpx"`` or ``"aiohttp"``
  send the same requests for a fraction of the SDK's CPU, for fan-outs of many sub-calls.
- ``AnthropicModel``: Anthropic's Messages API (``pip install 'conch[anthropic]'``).
- ``LocalModel``: the embedded default, a GGUF model run in-process by llama.cpp
  (``pip install 'conch[local]'``; weights via ``conch models pull NAME``).
- ``ScriptedModel``: replies from a list or a function, for tests and demos.
- ``create_model("openai:gpt-4o-mini")``: a model from one string.

Transient failures (429, 5xx, timeouts, dropped connections) are retried per a
``RetryPolicy``; everything else raises a ``conch.errors.ModelError`` subclass whose
message names the endpoint and the model and says what to do.
"""

from conch.lm._anthropic import AnthropicModel
from conch.lm._factory import create_model
from conch.lm._local import LocalModel, loaded_local_models, unload_local_models
from conch.lm._openai import OpenAIModel
from conch.lm._pricing import DEFAULT_PRICES, Price, PriceTable
from conch.lm._protocol import LanguageModel
from conch.lm._retry import RetryPolicy
from conch.lm._scripted import ScriptedCall, ScriptedModel
from conch.lm._types import Completion, CompletionOptions, Message, Usage

__all__ = [
    "DEFAULT_PRICES",
    "AnthropicModel",
    "Completion",
    "CompletionOptions",
    "LanguageModel",
    "LocalModel",
    "Message",
    "OpenAIModel",
    "Price",
    "PriceTable",
    "RetryPolicy",
    "ScriptedCall",
    "ScriptedModel",
    "Usage",
    "create_model",
    "loaded_local_models",
    "unload_local_models",
]
