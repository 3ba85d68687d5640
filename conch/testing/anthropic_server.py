"""A loopback server speaking enough of Anthropic's Messages API for the official SDK.

Route: ``POST /v1/messages`` (non-streaming). ``base_url`` is the root, as the SDK expects.
Replies are the same ``Reply`` values as for ``OpenAIServer``; finish reasons are
translated ("stop" → "end_turn" or "stop_sequence", "length" → "max_tokens"), and
``cached_tokens`` is reported as ``cache_read_input_tokens``. With ``api_key`` set, a
request without that key (as ``x-api-key`` or a bearer token: SDK versions differ) gets
a 401.
"""

from __future__ import annotations

import itertools
from typing import Any

from conch.testing._loopback import (
    LoopbackServer,
    RecordedRequest,
    Reply,
    ReplySource,
    _Handler,
    cut_at_stop,
    estimate_tokens,
    serve_reply,
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


class AnthropicServer(LoopbackServer):
    """A Messages API endpoint on 127.0.0.1; ``base_url`` is the server's root."""

    def __init__(
        self,
        replies: ReplySource | None = None,
        *,
        latency_s: float = 0.0,
        api_key: str | None = None,
        max_hang_s: float = 10.0,
    ) -> None:
        super().__init__(replies, latency_s=latency_s, api_key=api_key, max_hang_s=max_hang_s)
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return self.root_url

    def route(self, handler: _Handler, request: RecordedRequest) -> None:
        if self.api_key is not None and request.api_key != self.api_key:
            handler.send_json(401, _error(401, "invalid x-api-key"))
            return
        if request.method != "POST" or request.path != "/v1/messages":
            handler.send_json(404, _error(404, f"no route {request.method} {request.path}"))
            return
        body = request.body
        if not isinstance(body, dict) or "messages" not in body or "max_tokens" not in body:
            handler.send_json(400, _error(400, "the body needs 'messages' and 'max_tokens'"))
            return
        if body.get("stream"):
            handler.send_json(400, _error(400, "this test server does not stream"))
            return
        serve_reply(self, handler, request, error_payload=_error, success_payload=self._payload)

    def _payload(self, reply: Reply, request: RecordedRequest) -> dict[str, Any]:
        body = request.body
        text = reply.content
        stop_reason = _STOP_REASONS.get(reply.finish_reason, reply.finish_reason)
        matched = None
        if text is not None:
            text, matched = cut_at_stop(text, body.get("stop_sequences") or [])
            if matched is not None:
                stop_reason = "stop_sequence"
        system = body.get("system") or ""
        prompt = str(system) + "".join(str(m.get("content", "")) for m in request.messages)
        prompt_tokens = (
            reply.input_tokens if reply.input_tokens is not None else estimate_tokens(prompt)
        )
        return {
            "id": f"msg_{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or body.get("model"),
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": matched,
            "usage": {
                # Anthropic counts cache reads apart from fresh input.
                "input_tokens": max(prompt_tokens - reply.cached_tokens, 0),
                "cache_read_input_tokens": reply.cached_tokens,
                "cache_creation_input_tokens": 0,
                "output_tokens": reply.output_tokens
                if reply.output_tokens is not None
                else estimate_tokens(text or ""),
            },
        }


def _error(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
    }
