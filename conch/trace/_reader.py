"""Reading a JSONL trace back, tolerating what a crash leaves behind."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from conch.trace._records import TraceRecord


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that is not a record: where it is, a bounded excerpt, and why."""

    line_number: int
    excerpt: str
    reason: str


@dataclass(frozen=True, slots=True)
class TraceLog:
    """The records of a trace file and what had to be skipped."""

    records: list[TraceRecord]
    bad_lines: list[BadLine] = field(default_factory=list)
    """Complete lines that are not records (corruption, or a foreign writer)."""
    torn_tail: BadLine | None = None
    """An unfinished last line: the writer stopped mid-record (a crash)."""


def read_trace(path: str | os.PathLike[str]) -> TraceLog:
    """Read every record of a JSONL trace file, in file order.

    Never fails on content: a torn last line is reported in ``torn_tail`` and other bad
    lines in ``bad_lines``, and the rest is returned.
    """
    with open(path, "rb") as file:
        data = file.read()
    # Split on b"\n" only: text splitting would also break at U+2028 inside a JSON string.
    lines = data.split(b"\n")
    unfinished = lines.pop()  # b"" when the file ends with a newline
    records: list[TraceRecord] = []
    bad_lines: list[BadLine] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        record, reason = _parse(raw)
        if record is not None:
            records.append(record)
        else:
            bad_lines.append(BadLine(number, _excerpt(raw), reason))
    torn_tail = None
    if unfinished.strip():
        record, reason = _parse(unfinished)
        if record is not None:  # a whole record that only lacks its newline
            records.append(record)
        else:
            torn_tail = BadLine(len(lines) + 1, _excerpt(unfinished), f"unfinished line: {reason}")
    return TraceLog(records, bad_lines, torn_tail)


def _parse(raw: bytes) -> tuple[TraceRecord | None, str]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        return None, f"not JSON ({exc})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    try:
        return TraceRecord.from_dict(value), ""
    except (ValueError, TypeError) as exc:
        return None, str(exc)


def _excerpt(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "…"
