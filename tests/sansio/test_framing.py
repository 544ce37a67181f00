"""The frame reader and writer: every case all at once, byte at a time, and
with trailing bytes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pamqp import body, commands, heartbeat

from trio_lavin import BasicProperties
from trio_lavin._sansio import FrameError, FrameReader, ProtocolVersionMismatch
from trio_lavin._sansio._framing import (
    ABSOLUTE_FRAME_MAX,
    FRAME_OVERHEAD,
    Frame,
    encode_content,
    encode_frame,
)
from trio_lavin._sansio._properties import ContentHeader

from .helpers import FEED_MODES, TRAILING, content, method


def read_frames(data: bytes, mode: str, frame_max: int = 131_072) -> list[Frame]:
    reader = FrameReader(frame_max)
    frames: list[Frame] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if mode == "byte-at-a-time" else [data]
    if mode == "with-trailing-bytes":
        chunks = [data + TRAILING]
    for chunk in chunks:
        reader.receive_data(chunk)
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
    if mode == "with-trailing-bytes":
        assert reader.buffered == len(TRAILING)
    else:
        assert reader.buffered == 0
    return frames


@pytest.mark.parametrize("mode", FEED_MODES)
def test_method_frame_decodes_to_the_pamqp_method(mode: str) -> None:
    data = method(3, commands.Queue.DeclareOk("orders", 5, 2))
    [(channel, value)] = read_frames(data, mode)
    assert channel == 3
    assert isinstance(value, commands.Queue.DeclareOk)
    assert (value.queue, value.message_count, value.consumer_count) == ("orders", 5, 2)


@pytest.mark.parametrize("mode", FEED_MODES)
def test_content_frames_decode_in_order(mode: str) -> None:
    props = BasicProperties(content_type="text/plain", headers={"k": "v"})
    data = content(1, commands.Basic.Deliver("ctag", 7, False, "ex", "rk"), b"x" * 10, props, 4)
    frames = read_frames(data, mode)
    assert [type(v) for _, v in frames] == [
        commands.Basic.Deliver,
        ContentHeader,
        body.ContentBody,
        body.ContentBody,
        body.ContentBody,
    ]
    content_header = frames[1][1]
    assert isinstance(content_header, ContentHeader)
    assert content_header.body_size == 10
    assert content_header.properties is not None
    assert content_header.properties.content_type == "text/plain"
    assert content_header.properties.headers == {"k": "v"}
    bodies = [v.value for _, v in frames[2:] if isinstance(v, body.ContentBody)]
    assert b"".join(bodies) == b"x" * 10


@pytest.mark.parametrize("mode", FEED_MODES)
def test_heartbeat_frame_decodes(mode: str) -> None:
    [(channel, value)] = read_frames(heartbeat.Heartbeat().marshal(), mode)
    assert channel == 0
    assert isinstance(value, heartbeat.Heartbeat)


@pytest.mark.parametrize("mode", FEED_MODES)
def test_frame_larger_than_frame_max_is_a_frame_error_before_its_payload_arrives(
    mode: str,
) -> None:
    # Only the header of a 10 000-byte frame: the reader must refuse it at once
    # rather than wait to buffer the payload.
    data = struct.pack(">BHI", 3, 1, 10_000)
    with pytest.raises(FrameError, match="exceeds frame_max 4096") as excinfo:
        read_frames(data, mode, frame_max=4096)
    assert excinfo.value.reply_code == 501


def test_frame_of_exactly_frame_max_is_accepted() -> None:
    payload = b"y" * (4096 - FRAME_OVERHEAD)
    data = struct.pack(">BHI", 3, 1, len(payload)) + payload + b"\xce"
    [(_, value)] = read_frames(data, "all-at-once", frame_max=4096)
    assert isinstance(value, body.ContentBody)
    assert value.value == payload


@pytest.mark.parametrize("mode", FEED_MODES)
def test_wrong_frame_end_octet_is_a_frame_error(mode: str) -> None:
    data = method(1, commands.Basic.QosOk())[:-1] + b"\x00"
    with pytest.raises(FrameError, match=r"end octet is 0x00, expected 0xce") as excinfo:
        read_frames(data, mode)
    assert excinfo.value.reply_code == 501


@pytest.mark.parametrize("mode", FEED_MODES)
def test_unknown_frame_type_is_a_frame_error(mode: str) -> None:
    data = struct.pack(">BHI", 9, 0, 0) + b"\xce"
    with pytest.raises(FrameError, match="unknown frame type 9"):
        read_frames(data, mode)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x0a", "has no method id"),
        (b"\x00\x99\x00\x01", "unknown method id 0x00990001"),
        # Queue.DeclareOk whose queue-name length runs past the payload.
        (b"\x00\x32\x00\x0b\xff", "undecodable method frame"),
        # Connection.Start whose server-properties table length is garbage.
        (b"\x00\x0a\x00\x0a\x00\x09\xff\xff\xff\xff", "undecodable method frame"),
    ],
)
def test_undecodable_method_payload_becomes_frame_error(payload: bytes, message: str) -> None:
    data = struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce"
    with pytest.raises(FrameError, match=message) as excinfo:
        read_frames(data, "all-at-once")
    assert excinfo.value.reply_code == 501


def test_deeply_nested_field_table_is_a_frame_error_not_recursion_error() -> None:
    # A content header whose headers table nests 5 000 levels deep: pamqp's
    # decoder recursed once per level into RecursionError; ours stops at
    # MAX_FIELD_TABLE_DEPTH.
    depth = 5000
    inner = b""
    for _ in range(depth):
        entry = b"\x01k" + b"F" + struct.pack(">I", len(inner)) + inner
        inner = entry
    table = struct.pack(">I", len(inner)) + inner
    flags = 0x2000  # headers present
    payload = struct.pack(">HHQH", 60, 0, 0, flags) + table
    data = struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
    with pytest.raises(
        FrameError, match=r"undecodable content header.*nested more than 64"
    ) as excinfo:
        read_frames(data, "all-at-once", frame_max=0)
    assert excinfo.value.reply_code == 501


def test_reader_stays_broken_after_a_frame_error() -> None:
    reader = FrameReader()
    reader.receive_data(struct.pack(">BHI", 9, 0, 0) + b"\xce")
    with pytest.raises(FrameError):
        reader.next_frame()
    reader.receive_data(method(0, commands.Connection.CloseOk()))
    with pytest.raises(FrameError, match="unknown frame type 9"):
        reader.next_frame()


@pytest.mark.parametrize("mode", ["all-at-once", "byte-at-a-time"])
def test_protocol_header_from_broker_is_a_version_mismatch(mode: str) -> None:
    with pytest.raises(ProtocolVersionMismatch, match="does not accept AMQP 0-9-1"):
        read_frames(b"AMQP\x00\x00\x09\x00", mode)


def test_stream_starting_with_garbage_A_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="neither a frame nor AMQP"):
        read_frames(b"ABCDEFGH", "byte-at-a-time")


def test_frame_max_zero_means_the_absolute_limit() -> None:
    reader = FrameReader(0)
    assert reader.frame_max == ABSOLUTE_FRAME_MAX
    with pytest.raises(ValueError, match="frame_max must be >= 0, not -1"):
        FrameReader(-1)


@pytest.mark.parametrize(
    ("size", "frame_max", "expected_bodies"),
    [(0, 4096, 0), (1, 4096, 1), (4088, 4096, 1), (4089, 4096, 2), (1 << 20, 4096, 257)],
)
def test_writer_splits_bodies_to_fit_frame_max(
    size: int, frame_max: int, expected_bodies: int
) -> None:
    payload = bytes(i % 251 for i in range(size))
    frames = encode_content(1, commands.Basic.Publish(routing_key="q"), None, payload, frame_max)
    assert len(frames) == 2 + expected_bodies
    assert all(len(f) <= frame_max for f in frames[2:])
    decoded = read_frames(b"".join(frames), "all-at-once", frame_max=frame_max)
    bodies = [v.value for _, v in decoded[2:] if isinstance(v, body.ContentBody)]
    assert b"".join(bodies) == payload
    content_header = decoded[1][1]
    assert isinstance(content_header, ContentHeader)
    assert content_header.body_size == size
    assert content_header.properties is None


def test_encode_frame_names_the_method_on_bad_field() -> None:
    with pytest.raises(ValueError, match=r"cannot encode Basic\.Publish on channel 1"):
        encode_frame(1, commands.Basic.Publish(routing_key="r" * 300))


@given(
    st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5),
    st.integers(min_value=1, max_value=50),
)
def test_any_split_of_a_frame_stream_gives_the_same_frames(
    payloads: list[bytes], chunk: int
) -> None:
    data = b"".join(
        content(1, commands.Basic.Deliver("c", i + 1, False, "", "q"), p, None, 100)
        for i, p in enumerate(payloads)
    )
    whole = read_frames(data, "all-at-once")
    reader = FrameReader()
    pieces = []
    for offset in range(0, len(data), chunk):
        reader.receive_data(data[offset : offset + chunk])
        while (frame := reader.next_frame()) is not None:
            pieces.append(frame)
    assert [(c, type(v)) for c, v in pieces] == [(c, type(v)) for c, v in whole]
    bodies = [v.value for _, v in pieces if isinstance(v, body.ContentBody)]
    assert b"".join(bodies) == b"".join(payloads)
