"""The retry policy on its own: backoff, Retry-After, and the attempt loop."""

from __future__ import annotations

import email.utils

import pytest

from conch.errors import ConfigurationError, ModelConnectionError, ModelNotFoundError
from conch.lm import RetryPolicy
from conch.lm._retry import AttemptFailure, call_with_retries, parse_retry_after
from conch.testing import RecordingSleep


@pytest.mark.parametrize(
    ("random_value", "expected"),
    [(0.0, [0.5, 1.0, 2.0, 4.0, 5.0]), (1.0, [0.375, 0.75, 1.5, 3.0, 3.75])],
)
def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens(
    random_value: float, expected: list[float]
) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=5.0, jitter=0.25, random=lambda: random_value)

    assert [policy.delay(n) for n in range(1, 6)] == expected


@pytest.mark.parametrize(("retry_after", "expected"), [(3.0, 3.0), (500.0, 60.0), (-1.0, 0.0)])
def test_retry_after_replaces_backoff_within_the_cap(retry_after: float, expected: float) -> None:
    assert RetryPolicy(max_retry_after=60.0).delay(1, retry_after) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"retry-after": email.utils.formatdate(1_000_030, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(999_000, usegmt=True)}, 0.0),  # in the past
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=1_000_000) == expected


@pytest.mark.parametrize("bad", [{"max_attempts": 0}, {"jitter": 1.5}])
def test_nonsense_policies_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def _classify(exc: Exception) -> AttemptFailure | None:
    if isinstance(exc, ConnectionError):
        return AttemptFailure(ModelConnectionError, "flaky", retryable=True, retry_after=0.1)
    if isinstance(exc, LookupError):
        return AttemptFailure(ModelNotFoundError, "missing", retryable=False)
    return None


def _failing(times: int, error: Exception) -> object:
    calls = {"n": 0}

    async def attempt() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "done"

    return attempt


async def test_transient_failures_are_retried_until_success() -> None:
    sleep = RecordingSleep()
    policy = RetryPolicy(max_attempts=4, sleep=sleep)

    result = await call_with_retries(_failing(2, ConnectionError()), _classify, policy)  # type: ignore[arg-type]

    assert result == ("done", 3)
    assert sleep.waits == [0.1, 0.1]


async def test_giving_up_chains_the_cause_and_counts_attempts() -> None:
    policy = RetryPolicy(max_attempts=2, sleep=RecordingSleep())

    with pytest.raises(ModelConnectionError, match=r"flaky \(gave up after 2 attempts\)") as caught:
        await call_with_retries(_failing(9, ConnectionError("x")), _classify, policy)  # type: ignore[arg-type]

    assert isinstance(caught.value.__cause__, ConnectionError)


async def test_permanent_failures_are_not_retried() -> None:
    sleep = RecordingSleep()

    with pytest.raises(ModelNotFoundError, match=r"^missing$"):
        await call_with_retries(_failing(9, KeyError()), _classify, RetryPolicy(sleep=sleep))  # type: ignore[arg-type]

    assert sleep.waits == []


async def test_unclassified_exceptions_propagate_untouched() -> None:
    with pytest.raises(ZeroDivisionError):
        await call_with_retries(_failing(1, ZeroDivisionError()), _classify, RetryPolicy())  # type: ignore[arg-type]
