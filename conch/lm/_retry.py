"""When and how long to wait before asking a provider again.

The SDKs' own retries are switched off (``max_retries=0``) so this is the only policy:
exponential backoff with jitter and a cap, ``Retry-After`` honoured (capped too), and a
fixed number of attempts. Sleep and randomness are injectable so tests assert the waits
without waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from conch.errors import ConfigurationError, ModelError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries transient failures (429, 5xx, timeouts, dropped connections).

    Before retry ``n`` (1-based) it waits ``min(max_delay, initial_delay * 2**(n-1))``,
    shortened by up to ``jitter`` (a fraction) at random so concurrent callers spread out.
    A ``Retry-After`` from the provider replaces that wait, capped at ``max_retry_after``.
    """

    max_attempts: int = 4
    initial_delay: float = 0.5
    max_delay: float = 20.0
    jitter: float = 0.25
    max_retry_after: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, compare=False)
    random: Callable[[], float] = field(default=random.random, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter is a fraction between 0 and 1, not {self.jitter}")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        backoff = min(self.max_delay, self.initial_delay * 2 ** (retry_number - 1))
        return backoff * (1 - self.jitter * self.random())


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """One failed attempt, classified: what to raise if we give up, and whether to retry."""

    error_type: type[ModelError]
    message: str
    retryable: bool
    retry_after: float | None = None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds a provider asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date; a date in the past means "now" (0).
    Anything unparsable is ignored (``None``): the backoff applies instead.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    classify: Callable[[Exception], AttemptFailure | None],
    policy: RetryPolicy,
) -> tuple[T, int]:
    """Run ``attempt`` until it succeeds or the policy gives up; return ``(result, attempts)``.

    ``classify`` turns an exception into an ``AttemptFailure``, or returns ``None`` for an
    exception that is not a provider failure (a bug): that one propagates untouched.
    """
    for number in range(1, policy.max_attempts + 1):
        try:
            return await attempt(), number
        except Exception as exc:
            failure = classify(exc)
            if failure is None:
                raise
            if not failure.retryable or number == policy.max_attempts:
                message = failure.message
                if number > 1:
                    message += f" (gave up after {number} attempts)"
                raise failure.error_type(message) from exc
            await policy.sleep(policy.delay(number, failure.retry_after))
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover
