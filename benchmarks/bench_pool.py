"""Would a connection pool help?  1 vs 2 vs 4 connections from one trio process.

Issue 6 asked for an optional ``ConnectionPool`` ("N connections behind one client, producers
spread over them"), to be kept only if it measurably helps.  This measures exactly what such a
pool would do, with the public low-level API: N connections, one channel and one queue each,
the messages spread evenly over them, published by one task per connection, in two modes:

* ``publish_nowait``: fire-and-forget; the clock stops when the broker holds all messages;
* ``publish_confirm``: pipelined confirms, a window of 1000 per connection.

Rounds interleave the connection counts; medians are printed with the ratio to one
connection.  Run (against a throwaway node, or AMQP_URL):
``python -m trio_lavin.testing rabbitmq exec -- python benchmarks/bench_pool.py --rounds 5``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import time
from collections import deque

import trio

import trio_lavin as lavin

BODY = b"x" * 16
#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001
WINDOW = 1000


async def _publish_nowait(channel: lavin.Channel, queue: str, count: int) -> None:
    for _ in range(count):
        try:
            channel.basic_publish_nowait(BODY, routing_key=queue)
        except trio.WouldBlock:
            await channel.basic_publish(BODY, routing_key=queue)
    while True:  # the queue's length is the broker's: poll it
        if (await channel.queue_declare(queue, passive=True)).message_count >= count:
            return
        await trio.sleep(POLL_INTERVAL)


async def _publish_confirm(channel: lavin.Channel, queue: str, count: int) -> None:
    window: deque[lavin.Confirmation] = deque()
    for _ in range(count):
        if len(window) >= WINDOW:
            await window[0].wait()
            while window and window[0].done:
                window.popleft()
        confirmation = await channel.basic_publish(BODY, routing_key=queue)
        assert confirmation is not None
        window.append(confirmation)
    await channel.wait_for_confirms()


async def measure(url: str, connections: int, mode: str, messages: int) -> float:
    """Messages per second through ``connections`` connections."""
    per_connection = messages // connections
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            channels: list[tuple[lavin.Connection, lavin.Channel, str]] = []
            for _ in range(connections):
                connection = await nursery.start(_hold_connection, url)
                channel = await connection.channel()
                queue = f"bench-pool-{secrets.token_hex(4)}"
                await channel.queue_declare(queue, arguments={"x-expires": 600_000})
                if mode == "publish_confirm":
                    await channel.confirm_select()
                channels.append((connection, channel, queue))
            publish = _publish_nowait if mode == "publish_nowait" else _publish_confirm
            start = time.perf_counter()
            async with trio.open_nursery() as publishers:
                for _, channel, queue in channels:
                    publishers.start_soon(publish, channel, queue, per_connection)
            elapsed = time.perf_counter() - start
            for _, channel, queue in channels:
                await channel.queue_delete(queue)
            nursery.cancel_scope.cancel()
    return per_connection * connections / elapsed


async def _hold_connection(
    url: str, *, task_status: trio.TaskStatus[lavin.Connection] = trio.TASK_STATUS_IGNORED
) -> None:
    async with lavin.open_connection(url) as connection:
        task_status.started(connection)
        await trio.sleep_forever()


async def main(url: str, rounds: int, messages: int, counts: list[int]) -> None:
    results: dict[tuple[str, int], list[float]] = {}
    for round_number in range(rounds):
        for mode in ("publish_nowait", "publish_confirm"):
            for count in counts:
                rate = await measure(url, count, mode, messages)
                results.setdefault((mode, count), []).append(rate)
                print(f"[round {round_number + 1}/{rounds}] {mode:16} {count} conn {rate:>9,.0f}")
    print()
    print(f"{rounds} interleaved rounds, {messages} messages of 16 bytes per run, medians:")
    print()
    print("| mode | " + " | ".join(f"{c} connection{'s' * (c > 1)}" for c in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for mode in ("publish_nowait", "publish_confirm"):
        base = statistics.median(results[(mode, counts[0])])
        cells = []
        for count in counts:
            rate = statistics.median(results[(mode, count)])
            cells.append(f"{rate:,.0f} ({rate / base:.2f}x)")
        print(f"| {mode} (msg/s) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    trio.run(main, args.url, args.rounds, args.messages, args.connections)
