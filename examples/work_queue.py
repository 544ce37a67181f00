"""A work queue: several consumers share one queue, each with a small prefetch.

Shows competing consumers in one process: three workers consume the same
queue, each on its own channel with ``prefetch=1``, so the broker hands a
new task only to a worker that acked its last one - slow workers get fewer
tasks.  (Run several processes the same way to spread work across
machines; declare the queue ``durable=True`` for tasks that must survive a
broker restart.)

Run it against a broker (default ``amqp://guest:guest@localhost/``)::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/work_queue.py

It prints how many tasks each worker did and ``processed 30 of 30 tasks``.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections import Counter

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
TASKS = 30
#: Seconds each worker takes per task: worker 0 is the slowest.
WORK_TIME = {0: 0.05, 1: 0.01, 2: 0.01}


async def worker(
    client: lavin.Client, queue: str, number: int, done: Counter[int], finished: trio.Event
) -> None:
    async with client.consume(queue, prefetch=1) as tasks:
        async for task in tasks:
            await trio.sleep(WORK_TIME[number])  # the work
            await task.ack()
            done[number] += 1
            if done.total() == TASKS:
                finished.set()


async def main() -> int:
    queue = f"example-work-{secrets.token_hex(4)}"
    done: Counter[int] = Counter()
    finished = trio.Event()
    with trio.fail_after(30):
        async with lavin.open_client(URL) as client:
            await client.declare_queue(queue, auto_delete=True)
            async with trio.open_nursery() as nursery:
                for number in WORK_TIME:
                    nursery.start_soon(worker, client, queue, number, done, finished)
                producer = client.producer(queue)
                for n in range(TASKS):
                    await producer.enqueue(f"task {n}".encode())
                await producer.drain()
                await finished.wait()
                nursery.cancel_scope.cancel()
    for number in WORK_TIME:
        print(
            f"worker {number} ({WORK_TIME[number] * 1000:.0f} ms per task): {done[number]} tasks"
        )
    print(f"processed {done.total()} of {TASKS} tasks with {len(WORK_TIME)} workers")
    return 0 if done.total() == TASKS else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
