"""CPU cost of the sans-IO core, with no broker and no I/O.

Measures, on this machine, how many messages per second the pure protocol
machine can

* encode as ``basic.publish`` + content header + body, and
* decode from ``basic.deliver`` + content header + body bytes into events,

with the messages of the suite's ``--message-profile`` (``bare``: 16-byte
bodies, no properties; ``realistic``: see benchmarks/README.md, with the
properties made before the timed loop, and each decoded delivery's
message_id and traceparent header read).  For ``realistic`` it also times
making the ``BasicProperties`` themselves, as the suite's clients do per
message.

These bound what any client built on the core can reach: the broker and
the sockets only add to it.  Run: ``python benchmarks/bench_sansio.py
[--message-profile realistic]``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import suite_common as common
from pamqp import body, commands, header
from pamqp import frame as pamqp_frame

import trio_lavin as lavin
from trio_lavin._sansio import AMQPConnection
from trio_lavin._sansio import _events as ev
from trio_lavin._sansio._framing import encode_frame
from trio_lavin._sansio._properties import ContentHeader


def open_machine() -> tuple[AMQPConnection, int]:
    conn = AMQPConnection()
    conn.initiate()
    conn.receive_data(
        pamqp_frame.marshal(commands.Connection.Start(), 0)
        + pamqp_frame.marshal(commands.Connection.Tune(2047, 131072, 60), 0)
        + pamqp_frame.marshal(commands.Connection.OpenOk(), 0)
    )
    while conn.next_event() is not None:
        pass
    number = conn.open_channel()
    conn.receive_data(pamqp_frame.marshal(commands.Channel.OpenOk(), number))
    assert conn.next_event() == ev.ChannelOpened(number)
    conn.data_to_send()
    return conn, number


def realistic_properties(count: int) -> list[lavin.BasicProperties]:
    """``count`` properties of the realistic profile, as the suite's clients make them."""
    return [
        lavin.BasicProperties(
            content_type=common.CONTENT_TYPE,
            delivery_mode=common.PERSISTENT,
            message_id=message_id,
            timestamp=common.timestamp_now(),
            headers=common.headers(traceparent),
        )
        for message_id, traceparent in itertools.islice(common.message_ids(), count)
    ]


def bench_properties(count: int, profile: str) -> float:
    """Making one message's ``BasicProperties`` (ids, timestamp, headers and all)."""
    start = time.perf_counter()
    realistic_properties(count)
    return count / (time.perf_counter() - start)


def bench_publish(count: int, profile: str) -> float:
    conn, number = open_machine()
    payload = common.body(profile)
    if profile == "realistic":
        messages = realistic_properties(count)
        start = time.perf_counter()
        for properties in messages:
            conn.publish(number, payload, routing_key="bench", properties=properties)
    else:
        start = time.perf_counter()
        for _ in range(count):
            conn.publish(number, payload, routing_key="bench")
    conn.data_to_send()
    return count / (time.perf_counter() - start)


def bench_deliver(count: int, profile: str) -> float:
    conn, number = open_machine()
    payload = common.body(profile)
    deliver = pamqp_frame.marshal(commands.Basic.Deliver("ctag", 1, False, "", "bench"), number)
    content = pamqp_frame.marshal(body.ContentBody(payload), number)
    if profile == "realistic":
        data = b"".join(
            deliver + encode_frame(number, ContentHeader(len(payload), props)) + content
            for props in realistic_properties(count)
        )
    else:
        props = commands.Basic.Properties()
        data = (
            deliver + pamqp_frame.marshal(header.ContentHeader(0, 16, props), number) + content
        ) * count
    read = profile == "realistic"
    message_id: object = None
    traceparent: object = None
    start = time.perf_counter()
    conn.receive_data(data)
    seen = 0
    while (event := conn.next_event()) is not None:
        seen += 1
        if read:
            assert isinstance(event, ev.DeliveryReceived)
            assert event.properties is not None
            message_id = event.properties.message_id
            traceparent = event.properties.headers["traceparent"]  # type: ignore[index]
    elapsed = time.perf_counter() - start
    assert seen == count
    if read:
        common.check_read(message_id, traceparent)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--message-profile", choices=list(common.MESSAGE_PROFILES), default="bare")
    args = parser.parse_args()
    benches: list[tuple[str, Callable[[int, str], float]]] = [
        ("publish encode", bench_publish),
        ("deliver decode", bench_deliver),
    ]
    if args.message_profile == "realistic":
        benches.insert(0, ("make properties", bench_properties))
    if args.message_profile == "realistic":
        print("message profile realistic (properties made before the encode loop)")
    else:
        print(f"message profile bare: {common.MESSAGE_PROFILES['bare']}")
    for name, bench in benches:
        rates = [bench(args.count, args.message_profile) for _ in range(args.rounds)]
        print(
            f"{name:15s} median {statistics.median(rates):10,.0f} msg/s "
            f"({1e6 / statistics.median(rates):.1f} us/msg) over {args.rounds} rounds"
        )


if __name__ == "__main__":
    main()
