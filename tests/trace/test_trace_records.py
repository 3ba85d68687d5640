"""Contexts, records and levels."""

from __future__ import annotations

import pytest

from conch.trace import SCHEMA_VERSION, RecordType, TraceContext, TraceLevel, TraceRecord


def test_a_child_span_points_at_its_parent_and_inherits_ids(context: TraceContext) -> None:
    child = context.child()
    grandchild = child.child(run_id="run-2")

    assert child.parent_id == context.span_id
    assert grandchild.parent_id == child.span_id
    assert len({context.span_id, child.span_id, grandchild.span_id}) == 3
    assert (child.run_id, child.session_id, child.turn_id) == ("run-1", "session-1", "turn-1")
    assert (grandchild.run_id, grandchild.session_id) == ("run-2", "session-1")


def test_a_new_context_starts_a_new_run() -> None:
    first, second = TraceContext(), TraceContext()

    assert first.run_id != second.run_id
    assert first.parent_id is None


def test_a_record_is_stamped_with_its_context(context: TraceContext) -> None:
    record = TraceRecord.create(RecordType.MODEL_CALL, context, {"tokens": 3}, timestamp=12.5)

    assert record.to_dict() == {
        "schema_version": SCHEMA_VERSION,
        "type": "model_call",
        "timestamp": 12.5,
        "run_id": "run-1",
        "session_id": "session-1",
        "turn_id": "turn-1",
        "span_id": context.span_id,
        "parent_id": None,
        "data": {"tokens": 3},
    }
    assert TraceRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ({"type": "x", "timestamp": 1, "run_id": "r", "span_id": "s"}, "schema_version"),
        (
            {
                "schema_version": 1,
                "type": "x",
                "timestamp": 1,
                "run_id": "r",
                "span_id": "s",
                "data": [],
            },
            "data",
        ),
        (
            {"schema_version": "1", "type": "x", "timestamp": 1, "run_id": "r", "span_id": "s"},
            "integer",
        ),
    ],
)
def test_malformed_stored_records_are_refused_with_a_reason(
    stored: dict[str, object], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        TraceRecord.from_dict(stored)


@pytest.mark.parametrize(
    ("level", "record_type", "allowed"),
    [
        (TraceLevel.STANDARD, RecordType.MODEL_CALL, True),
        (TraceLevel.STANDARD, RecordType.MODEL_REQUEST, False),
        (TraceLevel.STANDARD, RecordType.MODEL_REPLY, False),
        (TraceLevel.EXTENDED, RecordType.MODEL_REQUEST, True),
        (TraceLevel.STANDARD, "plugin_event", True),
    ],
)
def test_extended_level_adds_raw_model_traffic(
    level: TraceLevel, record_type: str, allowed: bool
) -> None:
    assert level.allows(record_type) is allowed
