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


def properties_seeds() -> dict[str, bytes]:
    """Property flags and values of content headers, every field-table type among them."""
    import datetime
    import decimal

    from trio_lavin._sansio._properties import BasicProperties, encode_properties_py

    headers = {
        "source": "bench",
        "seq": 12345,
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    every_type = {
        "t": True,
        "b": -5,
        "s": -300,
        "u": 40_000,
        "I": -70_000,
        "i": 3_000_000_000,
        "l": -(2**40),
        "d": 0.1,
        "D": decimal.Decimal("1.25"),
        "S": "caf\u00e9",
        "x": b"\x00\xff",
        "A": [1, "two", [3.0], {"four": None}],
        "T": datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC),
        "F": {"nested": {"deeper": [b"", bytearray(b"x")]}},
        "V": None,
    }
    return {
        "realistic": encode_properties_py(
            BasicProperties(
                content_type="application/json",
                delivery_mode=2,
                message_id="0b0e4f0a-5d5e-4e77-9d43-6c1f1e2a3b4c",
                timestamp=1_796_000_000,
                headers=headers,
            )
        ),
        "every_property": encode_properties_py(
            BasicProperties(
                content_type="text/plain",
                content_encoding="gzip",
                headers={},
                delivery_mode=1,
                priority=9,
                correlation_id="",
                reply_to="amq.rabbitmq.reply-to",
                expiration="60000",
                message_id="m",
                timestamp=2**40,
                message_type="t",
                user_id="guest",
                app_id="app",
                cluster_id="c",
            )
        ),
        "every_type": encode_properties_py(BasicProperties(headers=every_type)),
        "not_utf8": b"\x80\x80\x02\xff\xfe\x02\xc3\x28",  # content_type and message_id
        # f (32-bit float), L, B and NUL, which only come from other clients
        "other_clients": b"\x20\x00\x00\x00\x00\x19\x01ff?\x80\x00\x00\x01LL"
        + (2**63 - 1).to_bytes(8, "big")
        + b"\x01BB\xff\x01N\x00",
        "continuation_flags": b"\x80\x01\x00\x01\x00\x00\x04json",
        "empty": b"\x00\x00",
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
        ("properties", properties_seeds()),
    ):
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for seed, data in seeds.items():
            (folder / seed).write_bytes(data)


if __name__ == "__main__":
    main()
