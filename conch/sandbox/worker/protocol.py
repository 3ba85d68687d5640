"""The framed wire protocol between the host and the in-sandbox worker.

Stdlib only: this file is also loaded inside sandboxes, where conch is not installed.

A frame is a fixed header, a JSON object, and an optional binary body::

    magic b"CNCH" | version u8 | json length u32 | body length u64 | json | body

Both sides send frames at any time on one byte stream each way: the host sends requests
(``exec``, ``command``, ``snapshot``, ``restore``, ``define``, ``interrupt``, ``shutdown``)
and replies to callbacks (``ret``); the worker sends replies (``res``), streamed output
(``out``) and callbacks into the host while user code runs (``call``). A frame that does not
start with the magic, names another version, or claims an absurd length is a
:class:`FrameError`, never a hang on a read that will not end.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct

MAGIC = b"CNCH"
VERSION = 1
HEADER = struct.Struct("!4sBIQ")
HEADER_SIZE = HEADER.size
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024 * 1024
TEXT_FRAME_PREFIX = b"CNCH64 "
"""Text mode (worker config ``"channel": "text"``), for transports that carry only text from
the worker (E2B's process output is decoded as UTF-8): each frame the worker sends is one
line, this prefix and the base64 of the frame's bytes. Lines without the prefix (a login
shell's noise) are not frames. What the host sends stays binary."""


def encode_text_frame(frame: bytes | memoryview) -> bytes:
    """One frame's bytes as one text line."""
    return TEXT_FRAME_PREFIX + base64.b64encode(frame) + b"\n"


def decode_text_frame(line: bytes) -> bytes | None:
    """The frame bytes of a text line, or ``None`` for a line that is not a frame."""
    line = line.rstrip(b"\r\n")
    if not line.startswith(TEXT_FRAME_PREFIX):
        return None
    try:
        return base64.b64decode(line[len(TEXT_FRAME_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError(f"a text frame is not valid base64: {exc}") from None


class FrameError(Exception):
    """A frame on the channel is malformed: wrong magic, version or length, or bad JSON."""


def encode_frame(message: dict, body: bytes | memoryview = b"") -> bytes:
    """One frame as bytes. ``message`` must be JSON-serialisable."""
    return encode_header(message, len(body)) + bytes(body)


def encode_header(message: dict, body_length: int) -> bytes:
    """Header and JSON of a frame whose body is written separately (large bodies)."""
    if not 0 <= body_length <= MAX_BODY_BYTES:
        raise FrameError(f"frame body of {body_length} bytes is out of range")
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(data) > MAX_JSON_BYTES:
        raise FrameError(f"frame JSON of {len(data)} bytes exceeds {MAX_JSON_BYTES}")
    return HEADER.pack(MAGIC, VERSION, len(data), body_length) + data


def decode_header(header: bytes) -> tuple[int, int]:
    """Validate a frame header; return (json length, body length)."""
    if len(header) != HEADER_SIZE:
        raise FrameError(f"truncated frame header ({len(header)} of {HEADER_SIZE} bytes)")
    magic, version, json_length, body_length = HEADER.unpack(header)
    if magic != MAGIC:
        raise FrameError(f"bad frame magic {magic!r} (expected {MAGIC!r}): the stream is garbled")
    if version != VERSION:
        raise FrameError(
            f"protocol version {version} is not supported (this side speaks {VERSION})"
        )
    if json_length > MAX_JSON_BYTES or body_length > MAX_BODY_BYTES:
        raise FrameError(f"frame lengths out of range (json {json_length}, body {body_length})")
    return json_length, body_length


def decode_message(data: bytes) -> dict:
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"frame JSON is invalid: {exc}") from None
    if not isinstance(message, dict) or "op" not in message:
        raise FrameError("frame JSON must be an object with an 'op' field")
    return message
