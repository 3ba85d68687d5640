"""The one interface the rest of conch uses to talk to any model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Unpack, runtime_checkable

from conch.lm._types import Completion, CompletionOptions, Message


@runtime_checkable
class LanguageModel(Protocol):
    """Anything that turns a conversation into a completion.

    Implementations are safe to call from many asyncio tasks at once; they hold no
    per-call state. ``aclose`` releases what the model owns (connections it created),
    never what it was lent (a shared HTTP client).

    A model that knows how many tokens it can read may also say so in an attribute
    ``context_window_tokens`` (an int); the RLM then tells the root model how much text an
    ``llm_query`` on it can take. It is optional: read it with ``getattr(model,
    "context_window_tokens", None)``.
    """

    @property
    def model(self) -> str:
        """The model name requests are sent with."""
        ...

    async def complete(
        self, messages: Sequence[Message], **options: Unpack[CompletionOptions]
    ) -> Completion: ...

    async def aclose(self) -> None: ...
