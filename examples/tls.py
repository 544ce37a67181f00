"""TLS: an ``amqps://`` connection that verifies the broker's certificate.

Shows TLS options: certificates and host names are verified by default
(against the system's CAs); ``cacertfile`` trusts a private CA, and
``certfile``/``keyfile`` present a client certificate (mutual TLS).  They
can be URL query parameters (``amqps://host/?cacertfile=/path/ca.pem``) or
fields of :class:`trio_lavin.Parameters`, as here.

Run it with the TLS URL of your broker and, for a private CA, its file::

    AMQPS_URL=amqps://guest:guest@localhost:5671/ AMQP_CA_FILE=ca.pem python examples/tls.py

It uses the low-level API (``open_connection``, one channel) and prints
the message that made the round trip.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQPS_URL", "amqps://guest:guest@localhost:5671/")
CA_FILE = os.environ.get("AMQP_CA_FILE")  # None: the system's trusted CAs


async def main() -> int:
    params = lavin.parse_url(URL)
    if CA_FILE:
        params = dataclasses.replace(params, cacertfile=CA_FILE)
    queue = f"example-tls-{secrets.token_hex(4)}"
    with trio.fail_after(30):
        async with lavin.open_connection(params) as connection:
            channel = await connection.channel()
            await channel.queue_declare(queue, exclusive=True)
            await channel.confirm_select()
            await channel.publish(b"hello over TLS", routing_key=queue)
            delivery = await channel.basic_get(queue, no_ack=True)
    verified = f"verified against {CA_FILE}" if CA_FILE else "verified against the system CAs"
    print(f"connected to {params.host}:{params.port} over TLS, certificate {verified}")
    print(f"round trip over TLS: {delivery.body if delivery else None!r}")
    return 0 if delivery is not None else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
