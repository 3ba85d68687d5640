"""Reading traces back, including what a crash leaves behind, and rebuilding the call tree."""

from __future__ import annotations

from pathlib import Path

from conch.trace import JsonlTraceSink, RecordType, TraceContext, TraceRecord, read_trace


def _write(path: Path, context: TraceContext, *types: str) -> None:
    with JsonlTraceSink(path) as sink:
        for record_type in types:
            sink.emit(TraceRecord.create(record_type, context, {"text": "line\u2028separator"}))


def test_a_torn_last_line_is_reported_and_the_rest_read(
    trace_path: Path, context: TraceContext
) -> None:
    _write(trace_path, context, "run_start", "model_call")
    with trace_path.open("a") as file:
        file.write('{"schema_version": 1, "type": "code_ce')  # the writer died here

    log = read_trace(trace_path)

    assert [r.type for r in log.records] == ["run_start", "model_call"]
    assert log.records[0].data["text"] == "line\u2028separator"  # not split at U+2028
    assert log.bad_lines == []
    assert log.torn_tail is not None
    assert log.torn_tail.line_number == 3
    assert "unfinished" in log.torn_tail.reason


def test_a_whole_last_record_without_its_newline_is_kept(
    trace_path: Path, context: TraceContext
) -> None:
    _write(trace_path, context, "run_start")
    trace_path.write_bytes(trace_path.read_bytes().rstrip(b"\n"))

    log = read_trace(trace_path)

    assert [r.type for r in log.records] == ["run_start"]
    assert log.torn_tail is None


def test_bad_lines_in_the_middle_are_skipped_and_reported(
    trace_path: Path, context: TraceContext
) -> None:
    _write(trace_path, context, "first")
    with trace_path.open("a") as file:
        file.write("garbage\n[1, 2]\n\n")
    _write(trace_path, context, "last")

    log = read_trace(trace_path)

    assert [r.type for r in log.records] == ["first", "last"]
    assert [(b.line_number, b.excerpt) for b in log.bad_lines] == [(2, "garbage"), (3, "[1, 2]")]
    assert log.torn_tail is None


def test_an_empty_file_has_no_records(trace_path: Path) -> None:
    trace_path.parent.mkdir(parents=True)
    trace_path.write_bytes(b"")

    log = read_trace(trace_path)

    assert (log.records, log.bad_lines, log.torn_tail) == ([], [], None)


def test_the_call_tree_is_rebuilt_from_parent_ids(trace_path: Path) -> None:
    """The shape the RLM loop will write: a root run whose code cell makes a sub-call
    that runs a child RLM with its own model call."""
    root = TraceContext(run_id="run", session_id="s")
    cell = root.child()
    sub = cell.child()
    with JsonlTraceSink(trace_path) as sink:
        sink.emit(TraceRecord.create(RecordType.RUN_START, root))
        sink.emit(TraceRecord.create(RecordType.MODEL_CALL, root))
        sink.emit(TraceRecord.create(RecordType.CODE_CELL, cell))
        sink.emit(TraceRecord.create(RecordType.SUB_CALL, sub, {"depth": 1}))
        sink.emit(TraceRecord.create(RecordType.MODEL_CALL, sub))
        sink.emit(TraceRecord.create(RecordType.FINAL, root))
        sink.emit(TraceRecord.create(RecordType.RUN_END, root))

    records = read_trace(trace_path).records
    children: dict[str | None, set[str]] = {}
    for record in records:
        children.setdefault(record.parent_id, set()).add(record.span_id)

    assert children == {
        None: {root.span_id},
        root.span_id: {cell.span_id},
        cell.span_id: {sub.span_id},
    }
    sub_records = [r.type for r in records if r.span_id == sub.span_id]
    assert sub_records == ["sub_call", "model_call"]
    assert {r.run_id for r in records} == {"run"}
