"""Consuming with acknowledgements: ack what you handled, reject what you cannot.

Shows :meth:`Client.consume`: a recovering consumer with a prefetch, whose
deliveries are acked one by one after they are handled (at-least-once: an
unacked delivery goes back to the queue if the consumer or its connection
dies), and one message rejected without requeueing.

Run it against a broker (default ``amqp://guest:guest@localhost/``)::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/consume_ack.py

It prints each message, then ``acked 9, rejected 1`` and exits 0.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
COUNT = 10


async def main() -> int:
    queue = f"example-consume-{secrets.token_hex(4)}"
    acked = rejected = 0
    with trio.fail_after(30):
        async with lavin.open_client(URL) as client:
            await client.declare_queue(queue, auto_delete=True)
            producer = client.producer(queue)
            for n in range(COUNT):
                await producer.enqueue(b"poison" if n == 3 else f"job {n}".encode())
            await producer.drain()

            async with client.consume(queue, prefetch=5) as deliveries:
                async for delivery in deliveries:
                    if delivery.body == b"poison":
                        # requeue=False: dead-lettered if the queue has a DLX, else dropped.
                        await delivery.reject(requeue=False)
                        rejected += 1
                        print(f"rejected {delivery.body!r}")
                    else:
                        print(f"handled {delivery.body!r} (redelivered: {delivery.redelivered})")
                        await delivery.ack()
                        acked += 1
                    if acked + rejected == COUNT:
                        break
    print(f"acked {acked}, rejected {rejected}")
    return 0 if (acked, rejected) == (COUNT - 1, 1) else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
