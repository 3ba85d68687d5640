"""A model that answers from a script: for tests and demos, with no network and no cost."""

from __future__ import annotations

import inspect
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Unpack

from conch.errors import ConfigurationError, ModelResponseError
from conch.lm._types import (
    Completion,
    CompletionOptions,
    Message,
    Usage,
    check_messages,
    check_options,
)

ScriptedReply = str | Completion | Exception
"""A text, a full completion (usage, finish reason... as given), or an error to raise."""
ReplyFunction = Callable[[Sequence[Message]], ScriptedReply | Awaitable[ScriptedReply]]


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """What one ``complete`` call received, for tests to assert on."""

    messages: tuple[Message, ...]
    options: CompletionOptions


class ScriptedModel:
    """Replies in order from a list, or from a (sync or async) function of the messages.

    ``ScriptedModel(["reply 1", "reply 2"])`` answers "reply 1", then "reply 2", then
    raises ``ModelResponseError``: a script that runs out is a test that did not expect
    another call. Like a real server, the reply is cut before the first ``stop`` sequence
    and at roughly ``max_tokens`` tokens. Usage is estimated at 4 characters per token;
    cost is 0 and known.
    """

    def __init__(
        self,
        replies: Sequence[ScriptedReply] | ReplyFunction,
        *,
        model: str = "scripted",
        context_window_tokens: int | None = None,
    ):
        """``context_window_tokens``: the window to claim (see ``LanguageModel``), for tests
        of what a small model is told; None claims none."""
        if isinstance(replies, str) or not (callable(replies) or isinstance(replies, Sequence)):
            raise ConfigurationError(
                "ScriptedModel takes a list of replies or a function of the messages, "
                f"not {type(replies).__name__} (wrap a single reply in a list)"
            )
        self._model = model
        self.context_window_tokens = context_window_tokens
        self._replies = replies
        self._next = 0
        self._lock = threading.Lock()  # calls may come from several threads' event loops
        self.calls: list[ScriptedCall] = []

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:
        return f"ScriptedModel(model={self._model!r}, calls={len(self.calls)})"

    async def complete(
        self, messages: Sequence[Message], **options: Unpack[CompletionOptions]
    ) -> Completion:
        check_messages(messages)
        check_options(options)
        with self._lock:
            self.calls.append(ScriptedCall(tuple(messages), options))
        reply = await self._reply(messages)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, Completion):
            return reply
        if not isinstance(reply, str):
            raise ConfigurationError(
                "a scripted reply must be a str, Completion or Exception, "
                f"not {type(reply).__name__}"
            )
        return self._completion(messages, reply, options)

    async def aclose(self) -> None:
        """Nothing to release; here so every model closes the same way."""

    async def _reply(self, messages: Sequence[Message]) -> ScriptedReply:
        if callable(self._replies):
            reply = self._replies(messages)
            return await reply if inspect.isawaitable(reply) else reply
        with self._lock:
            index = self._next
            self._next += 1
        if index >= len(self._replies):
            raise ModelResponseError(
                f"ScriptedModel {self._model!r} has no reply left for call {index + 1} "
                f"(it was given {len(self._replies)}); add replies to the script"
            )
        return self._replies[index]

    def _completion(
        self, messages: Sequence[Message], text: str, options: CompletionOptions
    ) -> Completion:
        finish_reason = "stop"
        stop = options.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        max_tokens = options.get("max_tokens")
        if max_tokens is not None and estimate_tokens(text) > max_tokens:
            text = text[: max_tokens * 4]
            finish_reason = "length"
        usage = Usage(
            input_tokens=sum(estimate_tokens(m["content"]) for m in messages),
            output_tokens=estimate_tokens(text),
        )
        return Completion(
            text=text,
            model=self._model,
            usage=usage,
            cost_known=True,
            finish_reason=finish_reason,
        )


def estimate_tokens(text: str) -> int:
    """About four characters per token: the usual rule of thumb for English text."""
    return math.ceil(len(text) / 4)
