"""Messages, options, token usage and completions: the data every model client speaks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from conch.errors import ConfigurationError

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat message; a plain ``{"role": ..., "content": ...}`` dict works too."""

    role: Role
    content: str


class CompletionOptions(TypedDict, total=False):
    """Options every client understands. Unknown keys are rejected, never silently dropped."""

    stop: Sequence[str]
    """Stop sequences: generation ends before the first one (the RLM loop relies on them)."""
    max_tokens: int
    """Upper bound on generated tokens (reasoning included where the provider counts it)."""
    temperature: float
    timeout: float
    """Seconds one attempt may take before it counts as hung (and is retried)."""
    extra_body: Mapping[str, Any]
    """Provider-specific request fields, merged into the request body as given."""


OPTION_NAMES: frozenset[str] = frozenset(CompletionOptions.__annotations__)


def check_options(options: Mapping[str, object]) -> None:
    """Reject option names no client understands, so a typo cannot pass unnoticed."""
    if OPTION_NAMES.issuperset(options):  # the usual case, on every call: keep it cheap
        return
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        raise ConfigurationError(
            f"unknown completion option(s) {', '.join(map(repr, unknown))}; "
            f"known options are {', '.join(sorted(OPTION_NAMES))} "
            "(pass provider-specific fields through extra_body={...})"
        )


def check_messages(messages: Sequence[Message]) -> None:
    """Fail early, with the position, on a message a provider would reject less clearly."""
    if not messages:
        raise ConfigurationError("complete() needs at least one message")
    for index, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ConfigurationError(
                f"message {index} has role {role!r}; use 'system', 'user' or 'assistant'"
            )
        if not isinstance(content, str):
            raise ConfigurationError(
                f"message {index} has content of type {type(content).__name__}; "
                "content must be a string"
            )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one or more calls; ``a + b`` adds them.

    ``input_tokens`` counts the whole prompt, cached tokens included; ``cached_tokens`` is the
    part of it read from the provider's prompt cache. ``output_tokens`` counts everything
    generated, reasoning included; ``reasoning_tokens`` is the hidden part of it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        """The four counts by name, as traces and session nodes store them."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        """Read back ``as_dict()`` (missing counts are 0; other keys are ignored)."""
        return cls(**{name: int(data.get(name, 0)) for name in _USAGE_COUNTS})


_USAGE_COUNTS = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens")


@dataclass(frozen=True, slots=True)
class Completion:
    """A model's reply to one ``complete`` call."""

    text: str
    """The generated text; ``""`` (never ``None``) when the provider returned no content."""
    model: str
    """The model that answered, as the provider named it (may be a dated snapshot name)."""
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    cost_known: bool = False
    """False when the model has no price in the table: ``cost_usd`` is then 0, not a guess."""
    finish_reason: str | None = None
    """Why generation stopped, e.g. "stop" (end or stop sequence), "length" (max_tokens)."""
    latency_s: float = 0.0
    """Wall time of the whole call, retries and their waits included."""
    attempts: int = 1
    """How many requests it took (1 when the first one succeeded)."""
    raw: Any = field(default=None, repr=False, compare=False)
    """The provider's response object, for extended tracing; not part of the contract."""
