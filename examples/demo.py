"""A producer and a consumer with live rates: what trio-lavin looks like running.

Run it with ``nox -s demo`` (which starts a throwaway RabbitMQ node), or
against your own broker::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/demo.py --seconds 10

One ``open_client`` carries both: a buffered producer in CONFIRM mode (the
broker confirms every message; nothing is lost silently) and a consumer with
a prefetch that acks in batches.  Every second it prints the publish,
confirm and consume rates; at the end, the totals.  It exits 0 when every
confirmed message was consumed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys

import trio

import trio_lavin as lavin


async def produce(producer: lavin.Producer, stop: trio.Event, size: int) -> None:
    body = b"x" * size
    while not stop.is_set():
        # Waits only while the 10 000-message buffer is full.
        await producer.enqueue(body)


class Progress:
    def __init__(self) -> None:
        self.consumed = 0
        #: Set once the producer is done: how many messages to wait for.
        self.target: int | None = None
        self.caught_up = trio.Event()


async def consume(client: lavin.Client, queue: str, progress: Progress, prefetch: int) -> None:
    batch = max(prefetch // 2, 1)
    async with client.consume(queue, prefetch=prefetch) as deliveries:
        async for delivery in deliveries:
            progress.consumed += 1
            if progress.consumed % batch == 0:
                await delivery.ack(multiple=True)  # one frame acks the whole batch
            if progress.target is not None and progress.consumed >= progress.target:
                await delivery.ack(multiple=True)
                progress.caught_up.set()


async def report(producer: lavin.Producer, progress: Progress) -> None:
    last = (0, 0, 0)
    second = 0
    while True:
        await trio.sleep(1)
        second += 1
        stats = producer.statistics()
        now = (stats.published, stats.confirmed, progress.consumed)
        rates = [b - a for a, b in zip(last, now, strict=True)]
        last = now
        print(
            f"{second:3d}s  publish {rates[0]:7d} msg/s   confirm {rates[1]:7d} msg/s   "
            f"consume {rates[2]:7d} msg/s   buffered {stats.buffered:5d}",
            flush=True,
        )


async def main(url: str, seconds: float, prefetch: int, size: int) -> int:
    queue = f"trio-lavin-demo-{secrets.token_hex(4)}"
    progress = Progress()
    print(f"trio-lavin {lavin.__version__} demo: {lavin.parse_url(url).endpoint}, queue {queue}")
    with trio.fail_after(seconds + 60):
        async with lavin.open_client(url, lavin.Config(connection_name="demo")) as client:
            await client.declare_queue(queue, auto_delete=True)
            producer = client.producer(queue, mode=lavin.PublishMode.CONFIRM)
            drops: list[lavin.DropReason] = []
            producer.on_drop(lambda message, target, reason: drops.append(reason))
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report, producer, progress)
                nursery.start_soon(consume, client, queue, progress, prefetch)
                async with trio.open_nursery() as producers:
                    producers.start_soon(produce, producer, stop, size)
                    await trio.sleep(seconds)
                    stop.set()
                await producer.drain()
                progress.target = producer.statistics().confirmed
                if progress.consumed >= progress.target:
                    progress.caught_up.set()
                with trio.move_on_after(30):
                    await progress.caught_up.wait()
                nursery.cancel_scope.cancel()
            stats = producer.statistics()
    print(
        f"total: published {stats.published}, confirmed {stats.confirmed}, "
        f"consumed {progress.consumed}, dropped {len(drops)} in {seconds:.0f} s of publishing"
    )
    return 0 if progress.consumed >= stats.confirmed > 0 and not drops else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="trio-lavin demo: live publish/consume rates")
    parser.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--size", type=int, default=16, help="body size in bytes")
    args = parser.parse_args()
    sys.exit(trio.run(main, args.url, args.seconds, args.prefetch, args.size))
