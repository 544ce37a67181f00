"""An RPC server: answers requests sent with ``client.rpc_call`` (see rpc_client.py).

Shows :meth:`Client.serve_rpc`: it consumes a queue, calls an async handler
for each request, publishes the handler's bytes to the request's direct
reply-to address with its correlation id, then acks the request.  A handler
that raises sends the caller an error (raised there as
``trio_lavin.RpcRemoteError``); here, a request that is not a number.

Run the server, then the client, against the same broker::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/rpc_server.py --requests 6 &
    AMQP_URL=amqp://guest:guest@localhost/ python examples/rpc_client.py

The server prints ``serving ...`` once it consumes, one line per request,
and ``served N requests`` when it has handled ``--requests`` requests (or
``--seconds`` passed).  ``RPC_QUEUE`` names the queue (both sides).
"""

from __future__ import annotations

import argparse
import os

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
QUEUE = os.environ.get("RPC_QUEUE", "trio-lavin-example-rpc")


def fibonacci(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def main(requests: int, seconds: float) -> None:
    served = 0
    enough = trio.Event()

    async def handle(delivery: lavin.Delivery) -> bytes:
        nonlocal served
        served += 1
        if served >= requests:
            enough.set()
        n = int(delivery.body)  # a ValueError goes back to the caller as RpcRemoteError
        print(f"fib({n}) requested (correlation id {delivery.properties.correlation_id})")
        return str(fibonacci(n)).encode()

    async with lavin.open_client(URL) as client:
        await client.declare_queue(QUEUE, auto_delete=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(client.serve_rpc, QUEUE, handle)
            print(f"serving fibonacci on queue {QUEUE!r}", flush=True)
            with trio.move_on_after(seconds):
                await enough.wait()
            await trio.sleep(0.1)  # let the last reply and ack go out
            nursery.cancel_scope.cancel()
    print(f"served {served} requests")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6, help="stop after this many")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    args = parser.parse_args()
    trio.run(main, args.requests, args.seconds)
