"""Provider failures → conch errors, with messages that name the endpoint and say what to do."""

from __future__ import annotations

from collections.abc import Mapping

from conch.errors import (
    ModelAuthError,
    ModelBadRequestError,
    ModelConnectionError,
    ModelNotFoundError,
    ModelRateLimitError,
    ModelResponseError,
)
from conch.lm._retry import AttemptFailure, parse_retry_after

# 408 (request timeout) and 409 (conflict/lock) are transient for the providers we speak to.
_RETRYABLE_4XX = frozenset({408, 409, 429})


def describe_endpoint(base_url: str, model: str) -> str:
    return f"{base_url} (model {model!r})"


def error_detail(body: object, text: str) -> str:
    """The provider's own words from an error answer: ``error.message`` when the body has the
    usual ``{"error": {"message": ...}}`` shape (or ``{"error": "..."}``), else the start of
    the raw text, else ``""``."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str):
            return inner
    return text[:300]


def status_failure(
    status: int,
    detail: str,
    headers: Mapping[str, str],
    *,
    endpoint: str,
    key_hint: str,
) -> AttemptFailure:
    """Classify an HTTP error answer. ``key_hint`` says where the API key comes from."""
    detail = detail.strip() or "no detail given"
    retry_after = parse_retry_after(headers)
    if status in (401, 403):
        return AttemptFailure(
            ModelAuthError,
            f"{endpoint} refused the credentials (HTTP {status}: {detail}). "
            f"Check the API key: {key_hint}.",
            retryable=False,
        )
    if status == 404:
        return AttemptFailure(
            ModelNotFoundError,
            f"{endpoint} answered HTTP 404 ({detail}). Check the model name, and that base_url "
            "points at the API root (for OpenAI-compatible servers it usually ends in /v1).",
            retryable=False,
        )
    if status in (400, 413, 422):
        return AttemptFailure(
            ModelBadRequestError,
            f"{endpoint} rejected the request (HTTP {status}: {detail}). Check the messages "
            "and options: this server may not support one of them, or the prompt is too long.",
            retryable=False,
        )
    if status == 429:
        return AttemptFailure(
            ModelRateLimitError,
            f"{endpoint} kept rate-limiting (HTTP 429: {detail}). Lower the concurrency, "
            "wait, or allow more attempts in the RetryPolicy.",
            retryable=True,
            retry_after=retry_after,
        )
    retryable = status >= 500 or status in _RETRYABLE_4XX
    return AttemptFailure(
        ModelResponseError,
        f"{endpoint} failed with HTTP {status} ({detail}). "
        + (
            "The provider may be overloaded or down: try again later."
            if retryable
            else "This is not an error conch knows how to recover from."
        ),
        retryable=retryable,
        retry_after=retry_after if retryable else None,
    )


def timeout_failure(endpoint: str, timeout: float | None) -> AttemptFailure:
    within = f"within {timeout:g} s" if timeout is not None else "in time"
    return AttemptFailure(
        ModelConnectionError,
        f"{endpoint} did not answer {within}. If the model is just slow (a long prompt on a "
        "local server), raise timeout=; otherwise check that the server is not stuck.",
        retryable=True,
    )


def connection_failure(endpoint: str, cause: BaseException) -> AttemptFailure:
    reason = _root_cause(cause)
    return AttemptFailure(
        ModelConnectionError,
        f"could not talk to {endpoint}: {reason}. Check that the server is running and that "
        "base_url is right.",
        retryable=True,
    )


def _root_cause(exc: BaseException) -> str:
    """The innermost cause's text: the SDKs wrap 'Connection refused' in 'Connection error.'"""
    seen: set[int] = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
