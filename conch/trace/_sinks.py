"""Where trace records go: a JSONL file, memory, or several sinks at once."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any, Protocol, Self, runtime_checkable

from conch.errors import ConfigurationError
from conch.trace._records import TraceRecord

logger = logging.getLogger("conch.trace")


@runtime_checkable
class TraceSink(Protocol):
    """Receives records. ``emit`` is synchronous and cheap, safe from any thread or task,
    and never raises because of the record's content: tracing must not break a run."""

    def emit(self, record: TraceRecord) -> None: ...

    def close(self) -> None: ...


class MemoryTraceSink:
    """Keeps records in a list, as emitted (values are not converted); for tests and viewers."""

    def __init__(self) -> None:
        self._records: list[TraceRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: TraceRecord) -> None:
        with self._lock:
            self._records.append(record)

    def close(self) -> None:
        """Nothing to release; the records stay readable."""

    @property
    def records(self) -> list[TraceRecord]:
        """A copy, in emission order."""
        with self._lock:
            return list(self._records)

    def of_type(self, record_type: str) -> list[TraceRecord]:
        return [r for r in self.records if r.type == record_type]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class JsonlTraceSink:
    """Appends each record to a file as one JSON line.

    Each line goes to the kernel in one ``write`` on a descriptor opened with
    ``O_APPEND``, under a lock: lines from threads (and from other processes appending
    to the same file) never interleave. There is no user-space buffer, so a record is
    readable as soon as ``emit`` returns and survives a crash of this process; it
    survives a power loss only with ``fsync=True`` (one fsync per record: slow).
    Values JSON cannot hold are converted (dataclasses by their repr fields, enums,
    paths, dates, bytes, pydantic models, sets; anything else becomes its ``repr``).
    Records emitted after ``close`` are counted in ``dropped``; write failures (disk
    full) in ``failed``, logged once, never raised.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.dropped = 0
        self.failed = 0
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot open trace file {self.path} for appending: {exc.strerror}; "
                "choose a writable path"
            ) from exc

    def emit(self, record: TraceRecord) -> None:
        line = encode_record(record)
        with self._lock:
            if self._fd is None:
                self.dropped += 1
                return
            try:
                _write_all(self._fd, line)
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                self.failed += 1
                if self.failed == 1:
                    logger.warning(
                        "cannot write trace file %s: %s (records are lost)", self.path, exc
                    )

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
        os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MultiSink:
    """Sends every record to each sink in turn; one failing sink does not starve the rest."""

    def __init__(self, sinks: Iterable[TraceSink]) -> None:
        self.sinks: tuple[TraceSink, ...] = tuple(sinks)

    def emit(self, record: TraceRecord) -> None:
        for sink in self.sinks:
            try:
                sink.emit(record)
            except Exception:
                logger.exception("trace sink %r failed to emit a %s record", sink, record.type)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                logger.exception("trace sink %r failed to close", sink)


def encode_record(record: TraceRecord) -> bytes:
    """One line of JSON, newline included; never raises for the record's content."""
    fields = record.to_dict()
    try:
        text = json.dumps(fields, default=_jsonable, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:  # circular data, non-string keys...
        fields["data"] = {"unencodable": repr(record.data), "reason": str(exc)}
        text = json.dumps(fields, default=repr, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace") + b"\n"


def _jsonable(value: Any) -> Any:
    """Called by json for what it cannot encode: a faithful stand-in, else the repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    model_dump = getattr(value, "model_dump", None)  # pydantic models, e.g. SDK responses
    if callable(model_dump):
        try:
            return model_dump(mode="json")
        except Exception:
            pass
    return repr(value)


def _write_all(fd: int, data: bytes) -> None:
    # A regular file takes the whole line in one write; the loop only guards a short write.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
