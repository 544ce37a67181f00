"""Fuzz the frame reader.

Invariant: for ANY input bytes,

1. the reader either returns frames or raises a :class:`~trio_lavin._sansio.FrameError`
   - or, only when the stream starts with ``AMQP`` and before any frame, a
   :class:`~trio_lavin._sansio.ProtocolVersionMismatch` - never another exception;
2. feeding the bytes all at once or one byte at a time gives the same frames
   and the same error;
3. so does offering every position to the whole-delivery shortcut
   (``FrameReader.take_delivery``) first, all at once and one byte at a time:
   a Deliver + header + body it takes is the same three frames that
   ``next_frame`` returns one by one;
4. our own method decoders (``_FAST_METHODS``: Deliver, Ack, Nack, Return,
   GetOk and the methods that carry a field table) agree with pamqp's generic
   decoder on every payload both accept, but where we decode differently on
   purpose (``_agrees``): pamqp reads the unsigned 64-bit delivery tag as
   signed; it gives a table's text that is not UTF-8 as bytes where we keep it
   as text with surrogateescape; it reads a timestamp above 2**32 as
   milliseconds where we keep the seconds on the wire; NaN equals NaN here.

The seed corpus has deliveries after a first frame (the shortcut only works
once the first frame is in), so both fast paths are reached;
``tests/sansio/test_fuzz_harnesses.py`` checks that they are.

Run: ``nox -s fuzz`` (all harnesses) or
``python fuzz/fuzz_frame_reader.py fuzz/corpus/frame_reader -max_total_time=60``.
"""

from __future__ import annotations

import datetime
import math
import sys

from pamqp import base, commands

from trio_lavin._sansio import FrameError, FrameReader, ProtocolVersionMismatch
from trio_lavin._sansio._framing import _FAST_METHODS, FRAME_METHOD, FrameValue
from trio_lavin._sansio._properties import ContentHeader

Frames = list[tuple[int, str, object]]


class _CheckedReader(FrameReader):
    """A reader that decodes every fast-path method with pamqp too and compares."""

    def _decode(self, frame_type: int, channel: int, payload: bytes) -> FrameValue:
        value = super()._decode(frame_type, channel, payload)
        method_id = int.from_bytes(payload[:4], "big")
        if frame_type != FRAME_METHOD or method_id not in _FAST_METHODS:
            return value
        assert isinstance(value, base.Frame)
        slow = commands.INDEX_MAPPING[method_id]()
        try:
            slow.unmarshal(payload[4:])
        except Exception:  # pamqp refuses it: nothing to compare
            return value
        expected = dict(slow)
        # pamqp decodes the unsigned 64-bit delivery tag as signed.
        if "delivery_tag" in expected:
            expected["delivery_tag"] %= 2**64
        if not _agrees(dict(value), expected):
            raise AssertionError(
                f"fast decoder gives {dict(value)!r}, pamqp {expected!r} for {payload!r}"
            )
        return value


def _agrees(ours: object, theirs: object) -> bool:
    """Whether our decoded value is pamqp's, but for the differences we chose."""
    if isinstance(ours, str) and isinstance(theirs, bytes):
        return ours.encode("utf-8", "surrogateescape") == theirs
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return len(ours) == len(theirs) and all(
            _agrees(key, their_key) and _agrees(value, their_value)
            for (key, value), (their_key, their_value) in zip(
                ours.items(), theirs.items(), strict=True
            )
        )
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(map(_agrees, ours, theirs))
    if isinstance(theirs, datetime.datetime) and isinstance(ours, datetime.datetime | int):
        seconds = ours if isinstance(ours, int) else int(ours.timestamp())
        if seconds > 0xFFFFFFFF:  # pamqp takes these for milliseconds
            return theirs == datetime.datetime.fromtimestamp(seconds / 1000, datetime.UTC)
        return ours == theirs
    if isinstance(ours, float) and isinstance(theirs, float) and math.isnan(ours):
        return math.isnan(theirs)
    if isinstance(theirs, bytearray):  # pamqp's x; ours is bytes
        theirs = bytes(theirs)
    return type(ours) is type(theirs) and ours == theirs


def _accept(channel: int, body_size: int) -> bool:
    return True


def _read(chunks: list[bytes], shortcut: bool) -> tuple[Frames, str | None]:
    reader = _CheckedReader(frame_max=8192)
    frames: Frames = []
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            while True:
                if shortcut and (whole := reader.take_delivery(_accept)) is not None:
                    channel, tag, number, redelivered, exchange, key, props, payload = whole
                    # As the frame path's decoder builds it: no validation of the names.
                    method = commands.Basic.Deliver.__new__(commands.Basic.Deliver)
                    method.consumer_tag, method.delivery_tag = tag, number
                    method.redelivered, method.exchange, method.routing_key = (
                        redelivered,
                        exchange,
                        key,
                    )
                    content_header = ContentHeader(len(payload), props)
                    frames.append((channel, method.name, _comparable(method)))
                    frames.append((channel, content_header.name, _comparable(content_header)))
                    if payload:
                        frames.append((channel, "ContentBody", payload))
                    continue
                if (frame := reader.next_frame()) is None:
                    break
                channel, value = frame
                frames.append((channel, value.name, _comparable(value)))
    except ProtocolVersionMismatch as exc:
        if frames or not b"".join(chunks).startswith(b"AMQP"):
            raise AssertionError(f"{exc!r} after {len(frames)} frames") from exc
        return frames, f"{type(exc).__name__}: {exc.reply_code}"
    except FrameError as exc:
        return frames, f"{type(exc).__name__}: {exc.reply_code}"
    return frames, None


def _comparable(value: object) -> object:
    body = getattr(value, "value", None)
    if isinstance(body, bytes):
        return body
    if isinstance(value, ContentHeader):
        return (value.class_id, value.weight, value.body_size, repr(value.properties))
    try:
        return sorted((k, repr(v)) for k, v in dict(value).items())  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return repr(type(value))


def check(data: bytes) -> None:
    """The invariant, for one input (used by atheris and by the test suite)."""
    bytewise_chunks = [data[i : i + 1] for i in range(len(data))]
    whole = _read([data], shortcut=False)
    for name, other in (
        ("byte-at-a-time", _read(bytewise_chunks, shortcut=False)),
        ("all-at-once with the shortcut", _read([data], shortcut=True)),
        ("byte-at-a-time with the shortcut", _read(bytewise_chunks, shortcut=True)),
    ):
        if other != whole:
            raise AssertionError(f"all-at-once {whole!r} != {name} {other!r}")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
