"""A loopback server speaking OpenAI's chat-completions protocol (non-streaming).

    with OpenAIServer(["hello"], latency_s=0.1) as server:
        model = OpenAIModel("gpt-4o-mini", base_url=server.base_url)
        ...
        assert server.requests[0].body["stop"] == ["```"]

Routes: ``POST /v1/chat/completions`` and ``GET /v1/models``. Like real servers it cuts the
reply before the first stop sequence, echoes the requested model, and reports usage. With
``api_key`` set, a request without ``Authorization: Bearer <api_key>`` gets a 401.
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
}


class OpenAIServer(LoopbackServer):
    """An OpenAI-compatible endpoint on 127.0.0.1; ``base_url`` ends in ``/v1``."""

    def __init__(
        self,
        replies: ReplySource | None = None,
        *,
        latency_s: float = 0.0,
        api_key: str | None = None,
        models: tuple[str, ...] = ("test-model",),
        max_hang_s: float = 10.0,
    ) -> None:
        super().__init__(replies, latency_s=latency_s, api_key=api_key, max_hang_s=max_hang_s)
        self.models = models
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def route(self, handler: _Handler, request: RecordedRequest) -> None:
        if self.api_key is not None and request.api_key != self.api_key:
            handler.send_json(401, _error(401, "Incorrect API key provided."))
            return
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "conch"} for m in self.models
            ]
            handler.send_json(200, {"object": "list", "data": data})
            return
        if request.method != "POST" or request.path != "/v1/chat/completions":
            handler.send_json(404, _error(404, f"no route {request.method} {request.path}"))
            return
        if not isinstance(request.body, dict) or "messages" not in request.body:
            handler.send_json(400, _error(400, "the body must be JSON with 'messages'"))
            return
        if request.body.get("stream"):
            handler.send_json(400, _error(400, "this test server does not stream"))
            return
        serve_reply(self, handler, request, error_payload=_error, success_payload=self._payload)

    def _payload(self, reply: Reply, request: RecordedRequest) -> dict[str, Any]:
        body = request.body
        content = reply.content
        finish_reason = reply.finish_reason
        if content is not None:
            stop = body.get("stop") or []
            content, _ = cut_at_stop(content, [stop] if isinstance(stop, str) else stop)
        prompt = "".join(str(m.get("content", "")) for m in request.messages)
        usage = {
            "prompt_tokens": reply.input_tokens
            if reply.input_tokens is not None
            else estimate_tokens(prompt),
            "completion_tokens": reply.output_tokens
            if reply.output_tokens is not None
            else estimate_tokens(content or ""),
            "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ]
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": 0,
            "model": reply.model or body.get("model") or self.models[0],
            "choices": [] if reply.omit_choices else choices,
            "usage": usage,
        }


def _error(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
