"""Test helpers that speak real protocols on loopback.

Nothing here mocks an SDK: ``OpenAIServer`` and ``AnthropicServer`` are real HTTP servers
on 127.0.0.1 (port chosen by the OS) that answer the way providers do, including the ways
they fail (error statuses, null content, hangs, dropped connections), and log every request
so tests can assert what was sent. Tests and benchmarks use them; conch itself never does.
"""

from conch.testing._loopback import RecordedRequest, Reply
from conch.testing.anthropic_server import AnthropicServer
from conch.testing.openai_server import OpenAIServer
from conch.testing.sleep import RecordingSleep

__all__ = ["AnthropicServer", "OpenAIServer", "RecordedRequest", "RecordingSleep", "Reply"]
