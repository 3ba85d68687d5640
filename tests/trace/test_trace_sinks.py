"""Sinks: JSONL on disk, memory, fan-out."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import enum
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from conch.errors import ConfigurationError
from conch.trace import (
    SCHEMA_VERSION,
    JsonlTraceSink,
    MemoryTraceSink,
    MultiSink,
    RecordType,
    TraceContext,
    TraceRecord,
    TraceSink,
    read_trace,
)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_record_is_one_line_with_the_schema_version(
    jsonl_sink: JsonlTraceSink, trace_path: Path, context: TraceContext
) -> None:
    jsonl_sink.emit(TraceRecord.create(RecordType.RUN_START, context, {"query": "q"}))
    jsonl_sink.emit(TraceRecord.create(RecordType.RUN_END, context, {"text": "a\nb"}))

    lines = _lines(trace_path)  # readable before close: nothing is buffered
    assert [line["type"] for line in lines] == ["run_start", "run_end"]
    assert all(line["schema_version"] == SCHEMA_VERSION for line in lines)
    assert lines[1]["data"] == {"text": "a\nb"}


def test_a_reopened_file_is_appended_to(trace_path: Path, context: TraceContext) -> None:
    for record_type in ("first", "second"):
        with JsonlTraceSink(trace_path) as sink:
            sink.emit(TraceRecord.create(record_type, context))

    assert [line["type"] for line in _lines(trace_path)] == ["first", "second"]


def test_concurrent_writers_never_interleave_lines(trace_path: Path, context: TraceContext) -> None:
    """Threads share one sink; two sinks on one file stand in for two processes."""
    sinks = [JsonlTraceSink(trace_path), JsonlTraceSink(trace_path)]
    payload = "x" * 20_000  # far beyond any stdio buffer, so torn writes would show

    def write(writer: int) -> None:
        for n in range(50):
            sinks[writer % 2].emit(
                TraceRecord.create("cell", context, {"w": writer, "n": n, "p": payload})
            )

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for sink in sinks:
        sink.close()

    log = read_trace(trace_path)
    assert log.bad_lines == [] and log.torn_tail is None
    assert sorted((r.data["w"], r.data["n"]) for r in log.records) == [
        (w, n) for w in range(6) for n in range(50)
    ]


async def test_many_tasks_can_emit(
    jsonl_sink: JsonlTraceSink, trace_path: Path, context: TraceContext
) -> None:
    async def task(n: int) -> None:
        await asyncio.sleep(0)
        jsonl_sink.emit(TraceRecord.create("sub_call", context.child(), {"n": n}))

    await asyncio.gather(*(task(n) for n in range(100)))

    assert sorted(line["data"]["n"] for line in _lines(trace_path)) == list(range(100))


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (Point(1, 2), {"x": 1, "y": 2}),
        (Color.RED, "red"),
        (Path("/tmp/x"), "/tmp/x"),
        ({3, 1, 2}, [1, 2, 3]),
        (b"bytes\xff", "bytes\\xff"),
        (datetime.datetime(2025, 1, 2, 3, 4, 5), "2025-01-02T03:04:05"),
        (ValueError("bad"), "ValueError: bad"),
        (Opaque(), "<Opaque>"),
        (float("inf"), float("inf")),
    ],
)
def test_values_json_cannot_hold_are_converted(
    jsonl_sink: JsonlTraceSink,
    trace_path: Path,
    context: TraceContext,
    value: object,
    stored: object,
) -> None:
    jsonl_sink.emit(TraceRecord.create("x", context, {"value": value}))

    assert _lines(trace_path)[0]["data"]["value"] == stored


def test_unencodable_data_is_replaced_by_its_repr_not_raised(
    jsonl_sink: JsonlTraceSink, trace_path: Path, context: TraceContext
) -> None:
    loop: dict[str, object] = {}
    loop["self"] = loop

    jsonl_sink.emit(TraceRecord.create("x", context, {"loop": loop}))
    jsonl_sink.emit(TraceRecord.create("y", context, {(1, 2): "tuple key"}))

    first, second = _lines(trace_path)
    assert "Circular" in first["data"]["reason"]
    assert "tuple key" in second["data"]["unencodable"]
    assert (first["run_id"], second["type"]) == ("run-1", "y")  # the envelope survives


def test_records_after_close_are_dropped_and_counted(
    jsonl_sink: JsonlTraceSink, trace_path: Path, context: TraceContext
) -> None:
    jsonl_sink.close()

    jsonl_sink.emit(TraceRecord.create("late", context))
    jsonl_sink.close()  # closing twice is harmless

    assert jsonl_sink.dropped == 1
    assert trace_path.read_text() == ""


def test_an_unwritable_path_is_a_configuration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")

    with pytest.raises(ConfigurationError, match="cannot open trace file"):
        JsonlTraceSink(blocker / "trace.jsonl")


def test_fsync_mode_writes_the_same_lines(trace_path: Path, context: TraceContext) -> None:
    with JsonlTraceSink(trace_path, fsync=True) as sink:
        sink.emit(TraceRecord.create("x", context))

    assert len(_lines(trace_path)) == 1


def test_memory_sink_keeps_records_in_order(context: TraceContext) -> None:
    sink = MemoryTraceSink()
    for record_type in ("run_start", "model_call", "model_call", "run_end"):
        sink.emit(TraceRecord.create(record_type, context))

    assert [r.type for r in sink.records] == ["run_start", "model_call", "model_call", "run_end"]
    assert len(sink.of_type(RecordType.MODEL_CALL)) == 2
    sink.clear()
    assert sink.records == []


class BrokenSink:
    closed = False

    def emit(self, record: TraceRecord) -> None:
        raise RuntimeError("disk on fire")

    def close(self) -> None:
        self.closed = True
        raise RuntimeError("still on fire")


def test_multi_sink_fans_out_past_a_broken_sink(context: TraceContext) -> None:
    broken, memory = BrokenSink(), MemoryTraceSink()
    sink = MultiSink([broken, memory])

    sink.emit(TraceRecord.create("x", context))
    sink.close()

    assert [r.type for r in memory.records] == ["x"]
    assert broken.closed


@pytest.mark.parametrize("factory", [MemoryTraceSink, lambda: MultiSink([])])
def test_sinks_satisfy_the_protocol(factory: Any) -> None:
    assert isinstance(factory(), TraceSink)
