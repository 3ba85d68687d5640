"""Tracing: what happened in a run, as a stream of records.

A ``TraceContext`` carries the run, session, turn, span and parent ids; a ``TraceRecord``
is one event stamped with them (and ``schema_version``). Records go to a ``TraceSink``:
``JsonlTraceSink`` (append-only file, one record a line), ``MemoryTraceSink``, or a
``MultiSink`` fan-out. ``read_trace`` reads a file back, reporting a line torn by a crash
instead of failing. ``TraceLevel.EXTENDED`` adds the raw model requests and replies.
"""

from conch.trace._context import TraceContext, new_trace_id
from conch.trace._reader import BadLine, TraceLog, read_trace
from conch.trace._records import (
    EXTENDED_ONLY,
    SCHEMA_VERSION,
    RecordType,
    TraceLevel,
    TraceRecord,
)
from conch.trace._sinks import JsonlTraceSink, MemoryTraceSink, MultiSink, TraceSink

__all__ = [
    "EXTENDED_ONLY",
    "SCHEMA_VERSION",
    "BadLine",
    "JsonlTraceSink",
    "MemoryTraceSink",
    "MultiSink",
    "RecordType",
    "TraceContext",
    "TraceLevel",
    "TraceLog",
    "TraceRecord",
    "TraceSink",
    "new_trace_id",
    "read_trace",
]
