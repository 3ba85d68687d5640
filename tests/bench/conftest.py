"""Fixtures for the benchmark suites: the loopback OpenAI-compatible server."""

from conch.testing.fixtures import openai_server  # noqa: F401
