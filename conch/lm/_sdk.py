"""What the clients built on an official provider SDK share.

The ``openai`` and ``anthropic`` SDKs are generated from the same template: the same client
options and the same exception classes. So one base class owns the client's settings, the
call with conch's retry policy, the mapping of SDK failures to conch errors, and closing; a
subclass says only how a request body is built, which endpoint it goes to, and how a reply
becomes a ``Completion``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any, Self, Unpack

import httpx

from conch.errors import ModelResponseError
from conch.lm._failures import (
    connection_failure,
    describe_endpoint,
    error_detail,
    status_failure,
    timeout_failure,
)
from conch.lm._pricing import PriceTable
from conch.lm._retry import AttemptFailure, RetryPolicy, call_with_retries
from conch.lm._types import Completion, CompletionOptions, Message, check_messages, check_options

DEFAULT_TIMEOUT_S = 300.0
"""Per attempt. Generous because a local server can take minutes to read a long prompt."""


class SdkChatModel:
    """Base of ``OpenAIModel`` and ``AnthropicModel``; not used on its own."""

    _key_hint: str
    """How to provide a key, for error messages."""
    _not_a_reply: str
    """Finishes "<endpoint> answered with a body that is not ...": what was expected, with
    ``{error}`` where the SDK's complaint goes, and what to check."""

    def _connect(
        self,
        sdk: ModuleType,
        client_class: Any,
        *,
        model: str,
        base_url: str,
        api_key: str,
        timeout: float,
        retry: RetryPolicy | None,
        prices: PriceTable | None,
        http_client: httpx.AsyncClient | None,
    ) -> None:
        self._configure(
            sdk, model=model, base_url=base_url, timeout=timeout, retry=retry, prices=prices
        )
        self._owns_http_client = http_client is None
        self._client = client_class(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=0,  # retries are ours: see RetryPolicy
            http_client=http_client,
        )

    def _configure(
        self,
        sdk: ModuleType,
        *,
        model: str,
        base_url: str,
        timeout: float,
        retry: RetryPolicy | None,
        prices: PriceTable | None,
    ) -> None:
        """The settings every request uses, without an SDK client (for a subclass that
        sends some requests its own way)."""
        self._sdk = sdk
        self._model = model
        self.base_url = base_url
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.prices = prices or PriceTable()
        self._endpoint = describe_endpoint(base_url, model)

    @property
    def model(self) -> str:
        return self._model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._model!r}, base_url={self.base_url!r})"

    async def complete(
        self, messages: Sequence[Message], **options: Unpack[CompletionOptions]
    ) -> Completion:
        check_messages(messages)
        check_options(options)
        timeout = options.get("timeout", self.timeout)
        request = self._request_body(messages, options)
        started = time.perf_counter()

        async def attempt() -> Any:
            return await self._send(request, timeout)

        def classify(exc: Exception) -> AttemptFailure | None:
            return self._classify(exc, timeout)

        response, attempts = await call_with_retries(attempt, classify, self.retry)
        return self._completion(response, time.perf_counter() - started, attempts)

    async def aclose(self) -> None:
        if self._owns_http_client:  # a lent client belongs to whoever lent it
            await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- what a provider says ---------------------------------------------------------

    def _request_body(
        self, messages: Sequence[Message], options: CompletionOptions
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def _send(self, request: dict[str, Any], timeout: float | None) -> Any:
        raise NotImplementedError

    def _completion(self, response: Any, latency: float, attempts: int) -> Completion:
        raise NotImplementedError

    # --- failures -----------------------------------------------------------------------

    def _classify(self, exc: Exception, timeout: float | None) -> AttemptFailure | None:
        sdk = self._sdk
        # APITimeoutError is a kind of APIConnectionError: test it first.
        if isinstance(exc, sdk.APITimeoutError):
            return timeout_failure(self._endpoint, timeout)
        if isinstance(exc, sdk.APIConnectionError):
            return connection_failure(self._endpoint, exc)
        if isinstance(exc, sdk.APIStatusError):
            return status_failure(
                exc.status_code,
                _error_detail(exc),
                exc.response.headers,
                endpoint=self._endpoint,
                key_hint=self._key_hint,
            )
        if isinstance(exc, sdk.APIResponseValidationError | ValueError):
            return AttemptFailure(
                ModelResponseError,
                f"{self._endpoint} answered with a body that is not "
                + self._not_a_reply.format(error=exc),
                retryable=False,
            )
        return None


def _error_detail(exc: Any) -> str:
    """The provider's own error message when it sent one in the usual shape."""
    text = exc.response.text if exc.response is not None else ""
    return error_detail(exc.body, text) or exc.message
