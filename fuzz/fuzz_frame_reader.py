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
4. the hand-written decoders of the hot methods (``_FAST_METHODS``: Deliver,
   Ack, Nack) agree with pamqp's generic decoder on every payload both accept
   (pamqp reads the unsigned 64-bit delivery tag as signed; the harness
   compares it modulo 2**64).

The seed corpus has deliveries after a first frame (the shortcut only works
once the first frame is in), so both fast paths are reached;
``tests/sansio/test_fuzz_harnesses.py`` checks that they are.

Run: ``nox -s fuzz`` (all harnesses) or
``python fuzz/fuzz_frame_reader.py fuzz/corpus/frame_reader -max_total_time=60``.
"""

from __future__ import annotations

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
        if expected != dict(value):
            raise AssertionError(
                f"fast decoder gives {dict(value)!r}, pamqp {expected!r} for {payload!r}"
            )
        return value


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
