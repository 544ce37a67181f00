"""AMQP over WebSocket (LavinMQ's ``ws://`` / ``wss://`` endpoint).

Shows that the transport is only a URL away: the same client API over a
WebSocket connection (``pip install 'trio-lavin[ws]'``).  LavinMQ serves it
on its HTTP port (15672, or 15671 with TLS); RabbitMQ needs a bridge such as
websockify.  The URL path is the virtual host, as for ``amqp://``.

Run it with the WebSocket URL of your broker::

    AMQP_WS_URL=ws://guest:guest@localhost:15672/ python examples/websocket.py

It publishes a message, gets it back, and prints
``round trip over ws://...: b'hello over WebSocket'``.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_WS_URL", "ws://guest:guest@localhost:15672/")


async def main() -> int:
    queue = f"example-ws-{secrets.token_hex(4)}"
    body = b"hello over WebSocket"
    with trio.fail_after(30):
        async with lavin.open_client(URL) as client:
            await client.declare_queue(queue, exclusive=True)
            await client.producer(queue).publish(body)  # returns once confirmed
            async with client.consume(queue) as deliveries:
                async for delivery in deliveries:
                    await delivery.ack()
                    break
            endpoint = client.statistics().endpoint
    print(f"round trip over {endpoint}: {delivery.body!r}")
    return 0 if delivery.body == body else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
