"""Publishing with publisher confirms: every message confirmed, or reported.

Shows a buffered :class:`~trio_lavin.Producer` in CONFIRM mode: ``enqueue``
buffers messages without waiting (backpressure only when the buffer is
full), ``drain`` waits until the broker confirmed them all, and ``on_drop``
would say why a message was given up (it is not called here).

Run it against a broker (default ``amqp://guest:guest@localhost/``)::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/publish_confirm.py

It prints ``confirmed 100 of 100`` and exits 0.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
COUNT = 100


async def main() -> int:
    queue = f"example-confirm-{secrets.token_hex(4)}"
    drops: list[tuple[int, lavin.DropReason]] = []
    with trio.fail_after(30):
        async with lavin.open_client(URL) as client:
            await client.declare_queue(queue, auto_delete=True)
            producer = client.producer(queue, mode=lavin.PublishMode.CONFIRM)
            producer.on_drop(
                lambda message, target, reason: drops.append((message.sequence, reason))
            )
            # One message published and confirmed before the call returns:
            await producer.publish(b"first", headers={"n": 0})
            # The rest pipelined: buffered at once, confirmed in the background.
            for n in range(1, COUNT):
                await producer.enqueue(f"message {n}".encode(), headers={"n": n})
            await producer.drain()
            stats = producer.statistics()
            depth = await client.delete_queue(queue)  # returns the messages it deleted
    print(f"confirmed {stats.confirmed} of {COUNT}, dropped {len(drops)}, {depth} in the queue")
    return 0 if stats.confirmed == COUNT == depth and not drops else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
