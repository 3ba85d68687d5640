"""Fixtures for tracing tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conch.trace import JsonlTraceSink, TraceContext


@pytest.fixture
def trace_path(tmp_path: Path) -> Path:
    return tmp_path / "traces" / "run.jsonl"  # the parent does not exist yet


@pytest.fixture
def jsonl_sink(trace_path: Path) -> Iterator[JsonlTraceSink]:
    with JsonlTraceSink(trace_path) as sink:
        yield sink


@pytest.fixture
def context() -> TraceContext:
    return TraceContext(run_id="run-1", session_id="session-1", turn_id="turn-1")
