"""CPU cost of the sans-IO core, with no broker and no I/O.

Measures, on this machine, how many messages per second the pure protocol
machine can

* encode as ``basic.publish`` + content header + body (16-byte bodies), and
* decode from ``basic.deliver`` + content header + body bytes into events.

These bound what any client built on the core can reach: the broker and
the sockets only add to it.  Run: ``python benchmarks/bench_sansio.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pamqp import body, commands, header
from pamqp import frame as pamqp_frame

from trio_lavin._sansio import AMQPConnection
from trio_lavin._sansio import _events as ev


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


def bench_publish(count: int) -> float:
    conn, number = open_machine()
    payload = b"x" * 16
    start = time.perf_counter()
    for _ in range(count):
        conn.publish(number, payload, routing_key="bench")
    conn.data_to_send()
    return count / (time.perf_counter() - start)


def bench_deliver(count: int) -> float:
    conn, number = open_machine()
    props = commands.Basic.Properties()
    one = (
        pamqp_frame.marshal(commands.Basic.Deliver("ctag", 1, False, "", "bench"), number)
        + pamqp_frame.marshal(header.ContentHeader(0, 16, props), number)
        + pamqp_frame.marshal(body.ContentBody(b"x" * 16), number)
    )
    data = one * count
    start = time.perf_counter()
    conn.receive_data(data)
    seen = 0
    while conn.next_event() is not None:
        seen += 1
    elapsed = time.perf_counter() - start
    assert seen == count
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name, bench in (("publish encode", bench_publish), ("deliver decode", bench_deliver)):
        rates = [bench(args.count) for _ in range(args.rounds)]
        print(
            f"{name:15s} median {statistics.median(rates):10,.0f} msg/s "
            f"({1e6 / statistics.median(rates):.1f} us/msg) over {args.rounds} rounds"
        )


if __name__ == "__main__":
    main()
