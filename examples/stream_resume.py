"""Reading a stream queue, stopping, and starting again where the reading stopped.

Shows ``client.consume(queue, stream_offset=...)``: the consumer reads a stream from
"first"; after each reconnect it subscribes again from the first offset it has not acked,
so nothing acked is read twice; ``consumer.stream_offset`` is where to start the next run
(an application stores it). Stream queues need RabbitMQ 3.9 or later (LavinMQ 1.2 or
later; the LavinMQ 1.0.1 of this project's test machines has none).

Run it against a broker (default ``amqp://guest:guest@localhost/``)::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/stream_resume.py

It prints ``first run: read offsets 0-49, next run starts at 50``, then
``second run: read offsets 50-99`` and exits 0.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
EVENTS = 100


async def read(
    client: lavin.Client, stream: str, start: lavin.StreamOffset, count: int
) -> tuple[list[int], lavin.StreamOffset | None]:
    """``count`` offsets read from ``start``, each acked once handled (a reconnect does
    not bring it again); and where the next run starts."""
    offsets: list[int] = []
    async with client.consume(stream, prefetch=20, stream_offset=start) as consumer:
        async for delivery in consumer:
            assert delivery.stream_offset is not None
            offsets.append(delivery.stream_offset)
            await delivery.ack()
            if len(offsets) == count:
                break
        return offsets, consumer.stream_offset  # what an application would store


async def main() -> int:
    stream = f"example-stream-{secrets.token_hex(4)}"
    async with lavin.open_client(URL) as client:
        await client.declare_queue(stream, durable=True, queue_type=lavin.QueueType.STREAM)
        producer = client.producer(stream)
        for i in range(EVENTS):
            producer.publish_nowait(b"event %d" % i)
        await producer.drain()

        first, stored = await read(client, stream, "first", EVENTS // 2)
        print(f"first run: read offsets {first[0]}-{first[-1]}, next run starts at {stored}")
        assert stored is not None
        second, _ = await read(client, stream, stored, EVENTS - len(first))
        print(f"second run: read offsets {second[0]}-{second[-1]}")
        channel = await client.open_channel()
        await channel.queue_delete(stream)
    return 0 if first + second == list(range(EVENTS)) else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
