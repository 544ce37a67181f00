"""An RPC client: request/reply over direct reply-to (run rpc_server.py first).

Shows :meth:`Client.rpc_call`: no reply queue to declare; the request
carries a fresh correlation id and ``reply_to=amq.rabbitmq.reply-to``, and
the call returns the reply's body.  Concurrent calls share one reply channel,
and ``timeout`` bounds each call (``RpcTimeout``).  It also shows two errors:
the server's handler failing (``RpcRemoteError``), and nobody bound to the
routing key (``RpcUnroutable``, at once, since requests are ``mandatory``).

Run the server, then the client, against the same broker::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/rpc_server.py --requests 6 &
    AMQP_URL=amqp://guest:guest@localhost/ python examples/rpc_client.py

It prints ``fib(10) = 55`` and four more results, then the two errors.
``RPC_QUEUE`` names the server's queue (both sides).
"""

from __future__ import annotations

import os

import trio

import trio_lavin as lavin

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
QUEUE = os.environ.get("RPC_QUEUE", "trio-lavin-example-rpc")


async def fib(client: lavin.Client, n: int, results: dict[int, int]) -> None:
    results[n] = int(await client.rpc_call(QUEUE, str(n).encode(), timeout=10))


async def main() -> None:
    results: dict[int, int] = {}
    async with lavin.open_client(URL) as client:
        async with trio.open_nursery() as nursery:  # five calls at once
            for n in (10, 20, 30, 40, 50):
                nursery.start_soon(fib, client, n, results)
        for n, value in sorted(results.items()):
            print(f"fib({n}) = {value}")
        try:
            await client.rpc_call(QUEUE, b"not a number", timeout=10)
        except lavin.RpcRemoteError as exc:
            print(f"server error: {exc.error}")
        try:
            await client.rpc_call(QUEUE + ".nobody", b"1", timeout=10)
        except lavin.RpcUnroutable as exc:
            print(f"unroutable: {exc}")


if __name__ == "__main__":
    trio.run(main)
