"""Fuzz the connection machine with arbitrary broker bytes after a valid handshake.

The first input byte picks one of :data:`SETUPS` (an open connection with
channels in various states, a connection closing, a handshake waiting for
OpenOk); the rest is what the "broker" sends next.

Invariant: for ANY broker bytes,

1. ``next_event()`` returns events or ``None``, or raises a
   :class:`~trio_lavin._sansio.RemoteProtocolError` - never another exception
   (not even a ``LocalProtocolError``);
2. after such an error the machine is broken for good: ``error`` is the
   exception, and if it was open (or waiting for OpenOk) the last frame in
   ``data_to_send()`` is a ``Connection.Close`` carrying the error's
   ``reply_code``, the state is CLOSING, and further bytes produce no event and
   no output; if it was already closing, no second ``Connection.Close`` is
   queued;
3. everything the machine queues for the broker decodes as valid AMQP frames
   (checked with pamqp, an independent decoder);
4. feeding the bytes all at once or one byte at a time gives the same events,
   the same error and the same output.  All at once, a complete
   Deliver + header + body takes the whole-delivery shortcut
   (``FrameReader.take_delivery``); one byte at a time it never can, so this
   is also a differential check of that shortcut against the frame-by-frame path.

Run: ``nox -s fuzz`` (all harnesses) or
``python fuzz/fuzz_connection.py fuzz/corpus/connection -max_total_time=60``.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from pamqp import base, commands
from pamqp import frame as pamqp_frame

from trio_lavin._sansio import (
    AMQPConnection,
    ConnectionState,
    RemoteProtocolError,
)
from trio_lavin._sansio import _events as ev

#: What one run produced: comparable events, (error type, reply code) or None, output bytes.
Outcome = tuple[list[tuple[str, tuple[tuple[str, str], ...]]], tuple[str, int] | None, bytes]


def _frame(channel: int, method: Any) -> bytes:
    return bytes(pamqp_frame.marshal(method, channel))


def _handshake(frame_max: int) -> tuple[bytes, bytes]:
    """The broker's Start + Tune, and its OpenOk."""
    start = _frame(
        0,
        commands.Connection.Start(
            server_properties={"product": "fuzz", "capabilities": {"publisher_confirms": True}}
        ),
    )
    return start + _frame(0, commands.Connection.Tune(2047, frame_max, 60)), _frame(
        0, commands.Connection.OpenOk()
    )


_START_TUNE, _OPEN_OK = _handshake(131_072)
_START_TUNE_SMALL, _ = _handshake(4096)


def _drain(conn: AMQPConnection) -> None:
    while conn.next_event() is not None:
        pass


def _connect(tune: bytes, open_ok: bool, **options: Any) -> AMQPConnection:
    conn = AMQPConnection(username="fuzz", password="fuzz-password", **options)
    conn.initiate()
    conn.receive_data(tune + (_OPEN_OK if open_ok else b""))
    _drain(conn)
    return conn


def _open(conn: AMQPConnection) -> int:
    number = conn.open_channel()
    conn.receive_data(_frame(number, commands.Channel.OpenOk()))
    _drain(conn)
    return number


def _channels_in_use() -> AMQPConnection:
    """Open; channel 1 in confirm mode with 3 publishes unconfirmed, channel 2
    waiting for Queue.DeclareOk then Basic.ConsumeOk, channel 3 open and idle."""
    conn = _connect(_START_TUNE, True)
    confirming, waiting = _open(conn), _open(conn)
    _open(conn)
    conn.send_method(confirming, commands.Confirm.Select())
    conn.receive_data(_frame(confirming, commands.Confirm.SelectOk()))
    _drain(conn)
    for index in range(3):
        conn.publish(confirming, b"m%d" % index, routing_key="q")
    conn.send_method(waiting, commands.Queue.Declare(queue="q"))
    conn.send_method(waiting, commands.Basic.Consume(queue="q", consumer_tag="ctag"))
    return conn


def _small_limits() -> AMQPConnection:
    """Open with frame_max 4096 and a 1000-byte body limit; channel 1 open,
    channel 2 closing (we sent Channel.Close), channel 3 waiting for OpenOk."""
    conn = _connect(_START_TUNE_SMALL, True, max_body_size=1000)
    _open(conn)
    conn.close_channel(_open(conn))
    conn.open_channel()
    return conn


def _closing() -> AMQPConnection:
    """We sent Connection.Close and wait for CloseOk; channel 1 was open."""
    conn = _connect(_START_TUNE, True)
    _open(conn)
    conn.close()
    return conn


def _awaiting_open_ok() -> AMQPConnection:
    """Start and Tune answered; waiting for Connection.OpenOk."""
    return _connect(_START_TUNE, False)


#: The machine states the first input byte selects (modulo their number).
SETUPS: tuple[Callable[[], AMQPConnection], ...] = (
    _channels_in_use,
    _small_limits,
    _closing,
    _awaiting_open_ok,
)

#: States in which a broker error queues our Connection.Close.
_CLOSE_ON_ERROR = (ConnectionState.AWAIT_OPEN_OK, ConnectionState.OPEN)


def _comparable(event: ev.Event) -> tuple[str, tuple[tuple[str, str], ...]]:
    """An event as plain strings (pamqp's repr of a method or properties has
    no content, and its equality calls NaN header values unequal)."""
    fields = []
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if isinstance(value, (base.Frame, base.BasicProperties)):
            text = f"{value.name}{sorted((name, repr(v)) for name, v in value)}"
        else:
            text = repr(value)
        fields.append((item.name, text))
    return type(event).__name__, tuple(fields)


def _decode_output(data: bytes) -> list[tuple[int, Any]]:
    """Our output as (channel, frame); fails on anything that is not a valid frame."""
    frames = []
    offset = 0
    while offset < len(data):
        used, channel, value = pamqp_frame.unmarshal(data[offset:])
        frames.append((channel, value))
        offset += used
    return frames


def _run(setup: Callable[[], AMQPConnection], chunks: list[bytes]) -> Outcome:
    conn = setup()
    conn.data_to_send()  # the handshake and the setup's requests
    events: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    output: list[bytes] = []
    error: RemoteProtocolError | None = None
    for chunk in chunks:
        conn.receive_data(chunk)
        while True:
            before = conn.state
            try:
                event = conn.next_event()
            except RemoteProtocolError as exc:  # anything else (LocalProtocolError too) is a bug
                error = exc
                output.append(_check_broken(conn, exc, before))
                break
            output.append(conn.data_to_send())
            if event is None:
                break
            events.append(_comparable(event))
        if error is not None:
            break
    sent = b"".join(output)
    _decode_output(sent)
    return events, None if error is None else (type(error).__name__, error.reply_code), sent


def _check_broken(
    conn: AMQPConnection, error: RemoteProtocolError, before: ConnectionState
) -> bytes:
    """Invariant 2, right after ``error`` was raised in state ``before``;
    returns what the machine queued meanwhile."""
    if conn.error is not error:
        raise AssertionError(f"error is {conn.error!r} after raising {error!r}")
    sent = conn.data_to_send()
    queued = _decode_output(sent)
    closes = [v for c, v in queued if isinstance(v, commands.Connection.Close)]
    if before in _CLOSE_ON_ERROR:
        if not queued or not isinstance(queued[-1][1], commands.Connection.Close):
            raise AssertionError(f"{error!r} in {before} queued {queued!r}, not a Close")
        channel, close = queued[-1]
        if channel != 0 or close.reply_code != error.reply_code:
            raise AssertionError(
                f"Close on channel {channel} with code {close.reply_code} after {error!r}"
            )
        if conn.state is not ConnectionState.CLOSING:
            raise AssertionError(f"state {conn.state} after {error!r} in {before}")
    elif closes:
        raise AssertionError(f"{error!r} in {before} queued a second Close: {queued!r}")
    conn.receive_data(_frame(0, commands.Connection.CloseOk()) + b"\x08\0\0\0\0\0\0\xce")
    if (late := conn.next_event()) is not None or conn.has_data_to_send:
        raise AssertionError(f"broken machine still reacts: {late!r} {conn.data_to_send()!r}")
    return sent


def check(data: bytes) -> None:
    """The invariant, for one input (used by atheris and by the test suite)."""
    if not data:
        return
    setup = SETUPS[data[0] % len(SETUPS)]
    broker = data[1:]
    whole = _run(setup, [broker])
    bytewise = _run(setup, [broker[i : i + 1] for i in range(len(broker))])
    if whole != bytewise:
        raise AssertionError(f"all-at-once {whole!r} != byte-at-a-time {bytewise!r}")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
