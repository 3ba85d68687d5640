"""The wire protocol: every frame round-trips, and damage is an error, never a hang."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conch.sandbox.worker import protocol

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.text(), json_values, max_size=5).map(lambda m: {**m, "op": "x"})


def split_frame(frame: bytes) -> tuple[dict, bytes]:
    json_length, body_length = protocol.decode_header(frame[: protocol.HEADER_SIZE])
    json_end = protocol.HEADER_SIZE + json_length
    assert len(frame) == json_end + body_length
    return protocol.decode_message(frame[protocol.HEADER_SIZE : json_end]), frame[json_end:]


@given(message=messages, body=st.binary(max_size=2048))
def test_every_frame_decodes_to_what_was_encoded(message, body):
    assert split_frame(protocol.encode_frame(message, body)) == (message, body)


@given(message=messages, body_length=st.integers(0, protocol.MAX_BODY_BYTES))
def test_a_separately_written_body_is_announced_in_the_header(message, body_length):
    header = protocol.encode_header(message, body_length)
    assert protocol.decode_header(header[: protocol.HEADER_SIZE])[1] == body_length


@given(body_length=st.integers(protocol.MAX_BODY_BYTES + 1, 1 << 63) | st.integers(max_value=-1))
def test_a_body_length_the_other_side_would_refuse_is_never_sent(body_length):
    with pytest.raises(protocol.FrameError, match="out of range"):
        protocol.encode_header({"op": "x"}, body_length)


@given(garbage=st.binary(min_size=protocol.HEADER_SIZE, max_size=protocol.HEADER_SIZE))
def test_a_header_without_the_magic_is_refused(garbage):
    if garbage.startswith(protocol.MAGIC):
        return
    with pytest.raises(protocol.FrameError, match="magic"):
        protocol.decode_header(garbage)


def test_another_protocol_version_is_refused_by_name():
    header = struct.pack("!4sBIQ", protocol.MAGIC, protocol.VERSION + 1, 2, 0)
    with pytest.raises(protocol.FrameError, match="version 2 is not supported"):
        protocol.decode_header(header)


def test_absurd_lengths_are_refused_before_any_read():
    header = struct.pack("!4sBIQ", protocol.MAGIC, protocol.VERSION, 1 << 31, 0)
    with pytest.raises(protocol.FrameError, match="out of range"):
        protocol.decode_header(header)


@pytest.mark.parametrize("payload", [b"\xff\xfe", b"[1, 2]", b'{"no_op": 1}', b"{"])
def test_json_that_is_not_a_message_object_is_refused(payload):
    with pytest.raises(protocol.FrameError):
        protocol.decode_message(payload)


def test_a_truncated_header_is_refused():
    with pytest.raises(protocol.FrameError, match="truncated"):
        protocol.decode_header(b"CNCH")
