"""A producer and a consumer with live rates: what trio-lavin looks like running.

Run it with ``nox -s demo`` (which starts a throwaway RabbitMQ node), or
against your own broker::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/demo.py --seconds 10

The producer publishes with publisher confirms, keeping a window of messages
in flight; the consumer acks each delivery.  Every second it prints the
publish, confirm and consume rates; at the end, the totals.  It exits 0 when
every confirmed message was consumed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections import deque

import trio

import trio_lavin as lavin


async def produce(
    url: str, queue: str, stop: trio.Event, counts: dict[str, int], window: int, size: int
) -> None:
    async with lavin.open_connection(url, connection_name="demo-producer") as conn:
        channel = await conn.channel()
        await channel.confirm_select()
        body = b"x" * size
        in_flight: deque[lavin.Confirmation] = deque()
        while not stop.is_set():
            confirmation = await channel.basic_publish(body, routing_key=queue)
            assert confirmation is not None
            in_flight.append(confirmation)
            counts["published"] += 1
            while len(in_flight) >= window or (in_flight and in_flight[0].done):
                await in_flight.popleft().wait()
                counts["confirmed"] += 1
        while in_flight:
            await in_flight.popleft().wait()
            counts["confirmed"] += 1


async def consume(
    url: str, queue: str, done: trio.Event, counts: dict[str, int], prefetch: int
) -> None:
    async with lavin.open_connection(url, connection_name="demo-consumer") as conn:
        channel = await conn.channel()
        await channel.basic_qos(prefetch)
        async with await channel.basic_consume(queue) as deliveries:
            async for delivery in deliveries:
                counts["consumed"] += 1
                # Ack in batches of prefetch/2: one frame acks them all.
                if counts["consumed"] % max(prefetch // 2, 1) == 0:
                    await delivery.ack(multiple=True)
                if done.is_set() and counts["consumed"] >= counts["confirmed"]:
                    await delivery.ack(multiple=True)
                    return


async def report(counts: dict[str, int], stop: trio.Event) -> None:
    last = dict(counts)
    second = 0
    while not stop.is_set():
        await trio.sleep(1)
        second += 1
        rates = {key: counts[key] - last[key] for key in counts}
        last = dict(counts)
        print(
            f"{second:3d}s  publish {rates['published']:7d} msg/s   "
            f"confirm {rates['confirmed']:7d} msg/s   consume {rates['consumed']:7d} msg/s",
            flush=True,
        )


async def main(url: str, seconds: float, window: int, prefetch: int, size: int) -> int:
    queue = f"trio-lavin-demo-{secrets.token_hex(4)}"
    async with lavin.open_connection(url) as admin:
        channel = await admin.channel()
        await channel.queue_declare(queue, auto_delete=False)
    counts = {"published": 0, "confirmed": 0, "consumed": 0}
    stop = trio.Event()
    producer_done = trio.Event()
    print(f"trio-lavin {lavin.__version__} demo: {lavin.parse_url(url).endpoint}, queue {queue}")
    with trio.fail_after(seconds + 30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report, counts, stop)

            async def run_producer() -> None:
                await produce(url, queue, stop, counts, window, size)
                producer_done.set()

            nursery.start_soon(run_producer)
            nursery.start_soon(consume, url, queue, producer_done, counts, prefetch)
            await trio.sleep(seconds)
            stop.set()
            await producer_done.wait()
    async with lavin.open_connection(url) as admin:
        channel = await admin.channel()
        left = await channel.queue_delete(queue)
    print(
        f"total: published {counts['published']}, confirmed {counts['confirmed']}, "
        f"consumed {counts['consumed']} in {seconds:.0f} s "
        f"({counts['consumed'] / seconds:.0f} msg/s end to end); left in queue: {left}"
    )
    return 0 if counts["consumed"] >= counts["confirmed"] > 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=1000, help="confirms in flight")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--size", type=int, default=16, help="body size in bytes")
    args = parser.parse_args()
    sys.exit(trio.run(main, args.url, args.seconds, args.window, args.prefetch, args.size))
