"""Prometheus metrics of a trio-lavin client: serve ``/metrics`` and scrape it once.

What it shows: ``trio_lavin.prometheus.serve_metrics`` serving a client's
counters (published, confirmed, consumed, acked, reconnects, connection state,
...) over HTTP from the trio program itself, in one line.  It publishes and
consumes a few hundred messages, serves ``/metrics`` on a free loopback port,
fetches it once like a Prometheus server would, prints some metric lines and
exits (in a second or two).

Needs the extra (``pip install 'trio-lavin[prometheus]'``) and a broker::

    AMQP_URL=amqp://guest:guest@localhost/ python examples/prometheus_metrics.py

In a real service, keep the server running and point Prometheus at
``http://<host>:9100/metrics``; ``serve_metrics`` listens on 127.0.0.1 unless told
otherwise, so give it the address Prometheus reaches (``"0.0.0.0"``: every one)::

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_metrics, 9100, client, "0.0.0.0")

It exits 0 when the scrape showed every message published, confirmed,
consumed and acked.
"""

from __future__ import annotations

import os
import secrets
import sys

import trio
from prometheus_client.parser import text_string_to_metric_families

import trio_lavin as lavin
from trio_lavin.prometheus import serve_metrics

MESSAGES = 500


async def scrape(port: int) -> str:
    """GET /metrics over plain HTTP, as Prometheus does."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response = bytearray()
            while chunk := await stream.receive_some(65536):
                response += chunk
    head, _, body = bytes(response).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode()
    if " 200 " not in status:
        raise RuntimeError(f"/metrics answered {status!r}")
    return body.decode()


async def traffic(client: lavin.Client, queue: str) -> None:
    """Publish MESSAGES confirmed messages and consume (and ack) them all."""
    await client.declare_queue(queue, auto_delete=True)
    producer = client.producer(queue, mode=lavin.PublishMode.CONFIRM)
    async with client.consume(queue, prefetch=100) as consumer:
        for i in range(MESSAGES):
            await producer.enqueue(b"message %d" % i)
        await producer.drain()
        received = 0
        async for delivery in consumer:
            await delivery.ack()
            received += 1
            if received == MESSAGES:
                break


async def main() -> int:
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost/")
    queue = f"trio-lavin-example.metrics.{secrets.token_hex(4)}"
    config = lavin.Config(connection_name="example")
    with trio.fail_after(30):
        async with lavin.open_client(url, config) as client, trio.open_nursery() as nursery:
            # The one line: serve /metrics (port 0: any free port; loopback only).
            port = await nursery.start(serve_metrics, 0, client)
            print(f"serving http://127.0.0.1:{port}/metrics")
            await traffic(client, queue)
            text = await scrape(port)
            nursery.cancel_scope.cancel()
    families = [
        f for f in text_string_to_metric_families(text) if f.name.startswith("trio_lavin_")
    ]
    print(f"scraped {len(families)} trio_lavin_ metrics")
    values: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            if (
                sample.labels.get("reason")
                or sample.labels.get("state", "CONNECTED") != "CONNECTED"
            ):
                continue  # keep the printout short
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            print(f"  {sample.name}{{{labels}}} {sample.value:g}")
            values[sample.name] = sample.value
    expected = {
        "trio_lavin_connected": 1,
        "trio_lavin_producer_published_total": MESSAGES,
        "trio_lavin_producer_confirmed_total": MESSAGES,
        "trio_lavin_consumer_consumed_total": MESSAGES,
        "trio_lavin_consumer_acked_total": MESSAGES,
    }
    wrong = {
        name: values.get(name) for name, value in expected.items() if values.get(name) != value
    }
    if wrong:
        print(f"unexpected values: {wrong}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
