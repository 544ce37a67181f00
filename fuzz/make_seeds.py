"""Write the hand-made seed inputs of every harness into ``fuzz/corpus/<harness>/``.

Run from the repository root: ``python fuzz/make_seeds.py``.  It only
(re)writes the files named here; other files in the corpus folders (inputs
saved from fuzzer findings, ``crash-*`` regressions) are left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pamqp import body, commands, header
from pamqp import frame as pamqp_frame

CORPUS = Path(__file__).parent / "corpus"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"


def frame(channel: int, value: Any) -> bytes:
    return bytes(pamqp_frame.marshal(value, channel))


def message(
    channel: int,
    method: Any,
    payload: bytes,
    properties: commands.Basic.Properties | None = None,
    split: int = 0,
) -> bytes:
    """A content-bearing method, its header and its body (in frames of ``split`` bytes)."""
    frames = [
        frame(channel, method),
        frame(
            channel,
            header.ContentHeader(0, len(payload), properties or commands.Basic.Properties()),
        ),
    ]
    step = split or len(payload) or 1
    frames += [
        frame(channel, body.ContentBody(payload[i : i + step]))
        for i in range(0, len(payload), step)
    ]
    return b"".join(frames)


def deliver(channel: int, tag: int, payload: bytes, **options: Any) -> bytes:
    method = commands.Basic.Deliver("ctag", tag, False, "ex", "rk")
    return message(channel, method, payload, **options)


PROPERTIES = commands.Basic.Properties(
    content_type="text/plain",
    headers={"k": "v", "n": 1, "nested": {"list": [1, "two", 3.5]}},
    delivery_mode=2,
    priority=5,
    message_id="id-1",
)


def frame_reader_seeds() -> dict[str, bytes]:
    return {
        "heartbeat": HEARTBEAT,
        "protocol_header": b"AMQP\x00\x00\x09\x00",
        "close": frame(0, commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)),
        "deliver_first": deliver(1, 1, b"x" * 10),
        # After a first frame, so FrameReader.take_delivery can take them whole:
        "fast_deliver": HEARTBEAT + deliver(1, 7, b"hello") + deliver(1, 8, b""),
        "fast_deliver_split_body": HEARTBEAT + deliver(2, 9, b"abcdefgh", split=3),
        "fast_deliver_properties": HEARTBEAT + deliver(1, 10, b"{}", properties=PROPERTIES),
        "ack_nack": HEARTBEAT
        + frame(1, commands.Basic.Ack(5, multiple=True))
        + frame(1, commands.Basic.Nack(6, multiple=False, requeue=True)),
    }


def connection_seeds() -> dict[str, bytes]:
    """First byte: the setup (see fuzz_connection.SETUPS); then broker bytes."""
    in_use, small, closing, awaiting = b"\x00", b"\x01", b"\x02", b"\x03"
    return {
        "confirms": in_use
        + frame(1, commands.Basic.Ack(2, multiple=True))
        + frame(1, commands.Basic.Nack(3)),
        "replies_then_deliveries": in_use
        + frame(2, commands.Queue.DeclareOk("q", 0, 0))
        + frame(2, commands.Basic.ConsumeOk("ctag"))
        + deliver(2, 1, b"fast")
        + deliver(2, 2, b"in-frames", split=4)
        + deliver(2, 3, b"", properties=PROPERTIES)
        + HEARTBEAT,
        "broker_notices": in_use
        + frame(3, commands.Channel.Flow(False))
        + frame(2, commands.Basic.Cancel("ctag"))
        + frame(0, commands.Connection.Blocked("low memory"))
        + frame(0, commands.Connection.Unblocked())
        + message(1, commands.Basic.Return(312, "NO_ROUTE", "", "q"), b"back")
        + frame(3, commands.Channel.Close(406, "PRECONDITION_FAILED", 60, 40)),
        "broker_closes": in_use + frame(0, commands.Connection.Close(320, "bye", 0, 0)),
        "ack_without_confirm_mode": in_use + frame(3, commands.Basic.Ack(1)),
        "heartbeat_on_a_channel": in_use + HEARTBEAT[:1] + b"\x00\x01" + HEARTBEAT[3:],
        "body_over_the_limit": small + deliver(1, 1, b"y" * 2000, split=1000),
        "channel_replies": small
        + frame(2, commands.Channel.CloseOk())
        + frame(3, commands.Channel.OpenOk())
        + frame(3, commands.Channel.Close(200, "", 0, 0)),
        "closing": closing
        + deliver(1, 1, b"discarded")
        + frame(0, commands.Connection.Close(200, "both", 0, 0))
        + frame(0, commands.Connection.CloseOk()),
        "handshake_end": awaiting
        + HEARTBEAT
        + frame(0, commands.Connection.OpenOk())
        + frame(1, commands.Channel.OpenOk()),
    }


def url_seeds() -> dict[str, bytes]:
    """Without NUL: the URL; with NULs: scheme, separator, user, rest, host
    around the harness's password (see fuzz_url)."""
    return {
        "full": b"amqp://user:pass@host:5672/vh?heartbeat=30&frame_max=8192&channel_max=10",
        "tls": b"amqps://u:p@broker/%2f?verify=verify_none&cacertfile=/ca.pem"
        b"&certfile=c.pem&keyfile=k.pem&server_name_indication=example",
        "ipv6": b"ws://[::1]:15672/",
        "options": b"wss://u@h/?connection_timeout=1500&connection_name=app%20one"
        b"&auth_mechanism=PLAIN",
        "defaults": b"amqp://",
        "structured": b"amqp\x00://\x00user\x00\x00host:5672/vh",
        "structured_slash": b"amqp\x00://\x00user\x00/and?more\x00host/",
        "structured_typo": b"amqp\x00:/\x00user\x00\x00host",
        "structured_fragment": b"amqps\x00://\x00u\x00#x\x00h/?heartbeat=5",
    }


def main() -> None:
    for name, seeds in (
        ("frame_reader", frame_reader_seeds()),
        ("connection", connection_seeds()),
        ("url", url_seeds()),
    ):
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for seed, data in seeds.items():
            (folder / seed).write_bytes(data)


if __name__ == "__main__":
    main()
