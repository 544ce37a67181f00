"""A worker for a queue of orders: handlers run concurrently, a failure is retried
after a delay, a message that keeps failing is parked, and a duplicate is skipped.

Shows ``client.serve(queue, handler, ...)`` with ``trio_lavin.Retry``: order 7 fails
once (retried 0.2 s later through a delay queue, then handled); order 3 always fails
(tried 3 times, then parked in a dead-letter queue with its error); order 5 is
published twice with the same message id (the second copy is acked unhandled).

Run it against a broker (default ``amqp://guest:guest@localhost/``)::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/worker.py

It prints ``handled 9 of 10 orders``, the worker's counts and the parked order, and
exits 0.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
ORDERS = 10


async def main() -> int:
    queue = f"example-orders-{secrets.token_hex(4)}"
    parking = f"{queue}.parked"
    handled: list[int] = []

    all_handled = trio.Event()

    async def handle(delivery: lavin.Delivery) -> None:
        order = int(delivery.body)
        attempt = (delivery.properties.headers or {}).get("x-trio-lavin-attempt", 1)
        await trio.sleep(0.01)  # the work
        if order == 3 or (order == 7 and attempt == 1):
            raise RuntimeError(f"order {order} failed on attempt {attempt}")
        handled.append(order)
        if len(handled) == ORDERS - 1:
            all_handled.set()

    retry = lavin.Retry(attempts=3, delays=(0.2,), dead_letter_queue=parking)
    async with lavin.open_client(URL) as client:
        await client.declare_queue(queue, durable=True)
        producer = client.producer(queue)
        for order in [*range(ORDERS), 5]:
            await producer.publish(
                b"%d" % order, properties=lavin.BasicProperties(message_id=f"order-{order}")
            )
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: client.serve(
                    queue,
                    handle,
                    concurrency=4,
                    retry=retry,
                    duplicate_window=1000,
                    task_status=task_status,
                )
            )
            with trio.fail_after(30):
                async with client.consume(parking) as parked_orders:
                    parked = await parked_orders.__anext__()  # order 3, after 3 attempts
                    await parked.ack()
                await all_handled.wait()
            nursery.cancel_scope.cancel()  # stop the worker: it finishes what it runs
        [stats] = client.statistics().workers
        print(f"handled {len(handled)} of {ORDERS} orders: {sorted(handled)}")
        print(
            f"failed {stats.failed}, retried {stats.retried}, dead-lettered "
            f"{stats.dead_lettered}, duplicates skipped {stats.duplicates}"
        )
        error = (parked.properties.headers or {})["x-trio-lavin-error"]
        print(f"parked: order {int(parked.body)} ({error})")
        for name in (queue, parking, f"{queue}.retry.200ms"):
            await client.delete_queue(name)
    return 0 if sorted(handled) == [0, 1, 2, 4, 5, 6, 7, 8, 9] else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
