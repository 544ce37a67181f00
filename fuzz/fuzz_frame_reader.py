"""Fuzz the frame reader.

Invariant: for ANY input bytes, the reader either returns frames or raises
a :class:`~trio_lavin._sansio.RemoteProtocolError` (FrameError, or
ProtocolVersionMismatch at the start of the stream) - never another
exception - and feeding the bytes all at once or one byte at a time gives
the same frames and the same error.

Run: ``nox -s fuzz`` (all harnesses) or
``python fuzz/fuzz_frame_reader.py fuzz/corpus/frame_reader -max_total_time=60``.
"""

from __future__ import annotations

import sys

from trio_lavin._sansio import FrameReader, RemoteProtocolError


def _read(chunks: list[bytes]) -> tuple[list[tuple[int, str, object]], str | None]:
    reader = FrameReader(frame_max=8192)
    frames: list[tuple[int, str, object]] = []
    try:
        for chunk in chunks:
            reader.receive_data(chunk)
            while (frame := reader.next_frame()) is not None:
                channel, value = frame
                frames.append((channel, value.name, _comparable(value)))
    except RemoteProtocolError as exc:
        return frames, f"{type(exc).__name__}: {exc.reply_code}"
    return frames, None


def _comparable(value: object) -> object:
    body = getattr(value, "value", None)
    if isinstance(body, bytes):
        return body
    try:
        return sorted((k, repr(v)) for k, v in dict(value).items())  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return repr(type(value))


def check(data: bytes) -> None:
    """The invariant, for one input (used by atheris and by the test suite)."""
    whole = _read([data])
    bytewise = _read([data[i : i + 1] for i in range(len(data))])
    if whole != bytewise:
        raise AssertionError(f"all-at-once {whole!r} != byte-at-a-time {bytewise!r}")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
