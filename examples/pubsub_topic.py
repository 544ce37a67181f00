"""Publish/subscribe through a topic exchange.

Shows exchanges, server-named exclusive queues and bindings with wildcards
(``*`` one word, ``#`` zero or more), all declared through the client, so
they are declared again after a reconnect.  A producer publishes to the
exchange with a routing key per message; each subscriber gets the messages
its binding keys match.

Run it against a broker (default ``amqp://guest:guest@localhost/``)::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/pubsub_topic.py

It prints what each subscriber received.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
#: subscriber -> binding keys
SUBSCRIPTIONS = {
    "all-errors": ["*.error"],
    "billing": ["billing.#"],
}
MESSAGES = ["billing.error", "billing.invoice.created", "shipping.error", "shipping.info"]


async def subscribe(
    client: lavin.Client, queue: str, expected: int, received: list[str], done: trio.Event
) -> None:
    async with client.consume(queue) as deliveries:
        async for delivery in deliveries:
            received.append(delivery.routing_key)
            await delivery.ack()
            if len(received) == expected:
                done.set()
                return


async def main() -> int:
    exchange = f"example-topic-{secrets.token_hex(4)}"
    expected = {"all-errors": 2, "billing": 2}
    received: dict[str, list[str]] = {name: [] for name in SUBSCRIPTIONS}
    with trio.fail_after(30):
        async with lavin.open_client(URL) as client:
            await client.declare_exchange(exchange, "topic", auto_delete=True)
            queues = {}
            for name, keys in SUBSCRIPTIONS.items():
                # "" = a server-named queue; exclusive: it goes away with the connection.
                queues[name] = (await client.declare_queue("", exclusive=True)).queue
                for key in keys:
                    await client.bind_queue(queues[name], exchange, key)
            async with trio.open_nursery() as nursery:
                dones = []
                for name, queue in queues.items():
                    done = trio.Event()
                    dones.append(done)
                    nursery.start_soon(
                        subscribe, client, queue, expected[name], received[name], done
                    )
                producer = client.producer(exchange=exchange, routing_key="")
                for key in MESSAGES:
                    await producer.publish(f"event {key}".encode(), routing_key=key)
                for done in dones:
                    await done.wait()
    for name, keys in received.items():
        print(f"{name} ({', '.join(SUBSCRIPTIONS[name])}) got: {', '.join(sorted(keys))}")
    ok = sorted(received["all-errors"]) == ["billing.error", "shipping.error"] and sorted(
        received["billing"]
    ) == ["billing.error", "billing.invoice.created"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
