"""Helpers for the sans-IO tests: broker-side frames and a three-way feeder."""

from __future__ import annotations

from collections.abc import Callable

from pamqp import base, body, commands, header
from pamqp import frame as pamqp_frame

from trio_lavin import BasicProperties
from trio_lavin._sansio import AMQPConnection
from trio_lavin._sansio import _events as ev

from .codec_strategies import to_pamqp

#: How bytes are fed to a parser: every case is checked all three ways.
FEED_MODES = ("all-at-once", "byte-at-a-time", "with-trailing-bytes")

#: The first bytes of some other frame, fed after the data under test.
TRAILING = b"\x01\x00\x01\x00\x00"


def method(channel: int, value: base.Frame) -> bytes:
    return pamqp_frame.marshal(value, channel)


def content(
    channel: int,
    value: base.Frame,
    payload: bytes,
    properties: BasicProperties | None = None,
    frame_size: int | None = None,
) -> bytes:
    """A content-bearing method, its header and its body frames."""
    frames = [
        method(channel, value),
        pamqp_frame.marshal(
            # pamqp's encoder: independent of the one under test
            header.ContentHeader(
                0,
                len(payload),
                commands.Basic.Properties() if properties is None else to_pamqp(properties),
            ),
            channel,
        ),
    ]
    step = frame_size or max(len(payload), 1)
    for offset in range(0, len(payload), step):
        frames.append(
            pamqp_frame.marshal(body.ContentBody(payload[offset : offset + step]), channel)
        )
    return b"".join(frames)


def feed(conn: AMQPConnection, data: bytes, mode: str) -> list[ev.Event]:
    """Feed ``data`` the way ``mode`` says and collect every event."""
    events: list[ev.Event] = []

    def drain() -> None:
        while (event := conn.next_event()) is not None:
            events.append(event)

    if mode == "byte-at-a-time":
        for index in range(len(data)):
            conn.receive_data(data[index : index + 1])
            drain()
    elif mode == "with-trailing-bytes":
        conn.receive_data(data + TRAILING)
        drain()
    else:
        conn.receive_data(data)
        drain()
    return events


def decode_all(data: bytes) -> list[tuple[int, object]]:
    """Decode client output (after the protocol header) into (channel, frame)."""
    frames: list[tuple[int, object]] = []
    if data.startswith(b"AMQP"):
        data = data[8:]
    while data:
        used, channel, value = pamqp_frame.unmarshal(data)
        frames.append((channel, value))
        data = data[used:]
    return frames


def names(data: bytes) -> list[str]:
    return [value.name for _, value in decode_all(data)]  # type: ignore[attr-defined]


def open_connection(
    heartbeat: int = 60,
    frame_max: int = 131_072,
    channel_max: int = 2047,
    factory: Callable[[], AMQPConnection] | None = None,
) -> AMQPConnection:
    """A connection taken through the whole handshake."""
    conn = factory() if factory is not None else AMQPConnection(username="u", password="pw")
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(
        method(0, commands.Connection.Start(server_properties={"product": "test"}))
        + method(0, commands.Connection.Tune(channel_max, frame_max, heartbeat))
        + method(0, commands.Connection.OpenOk())
    )
    events = []
    while (event := conn.next_event()) is not None:
        events.append(event)
    assert isinstance(events[-1], ev.ConnectionOpened)
    conn.data_to_send()
    return conn


def open_channel(conn: AMQPConnection) -> int:
    number = conn.open_channel()
    conn.receive_data(method(number, commands.Channel.OpenOk()))
    assert conn.next_event() == ev.ChannelOpened(number)
    conn.data_to_send()
    return number
