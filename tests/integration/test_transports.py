"""The same publish / consume / confirm round trips over every transport:
plain TCP, TLS, and AMQP over WebSocket, on RabbitMQ and LavinMQ.

RabbitMQ has no WebSocket listener: ``ws`` goes through websockify there, and to LavinMQ's
own endpoint (its HTTP port) on LavinMQ.  ``amqps`` runs on RabbitMQ only: the TLS node is
a second RabbitMQ node with a TLS listener (``tls_broker``), and the session's LavinMQ node
has its TLS listener off.
"""

from __future__ import annotations

import secrets

import pytest
import trio

import trio_lavin as tl
from tests._websockify import Websockify
from tests.integration.conftest import TLSBroker
from trio_lavin.testing import Broker, LavinNode

#: (transport, broker) pairs.
CASES = [
    pytest.param("amqp", "rabbitmq", id="amqp-rabbitmq"),
    pytest.param("amqps", "rabbitmq", id="amqps-rabbitmq"),
    pytest.param("ws", "rabbitmq", id="ws-rabbitmq"),
    pytest.param("amqp", "lavinmq", id="amqp-lavinmq"),
    pytest.param("ws", "lavinmq", id="ws-lavinmq"),
]

pytestmark = [
    pytest.mark.broker,
    pytest.mark.parametrize(("transport", "broker"), CASES, indirect=["broker"]),
]


@pytest.fixture
def url(request: pytest.FixtureRequest, transport: str, broker: Broker) -> str:
    if transport == "amqp":
        return broker.url
    if transport == "amqps":
        tls: TLSBroker = request.getfixturevalue("tls_broker")
        return tls.url(f"cacertfile={tls.ca_file}")
    if isinstance(broker.node, LavinNode):
        return broker.node.ws_url
    bridge: Websockify = request.getfixturevalue("websocket_bridge")
    return bridge.url


def unique(prefix: str = "q") -> str:
    return f"trio-lavin-test.transport.{prefix}.{secrets.token_hex(6)}"


async def test_publish_confirm_consume_ack_round_trip(url: str) -> None:
    count = 1000
    async with tl.open_connection(url) as conn:
        assert conn.params.scheme == tl.parse_url(url).scheme
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        confirmations = [
            await channel.basic_publish(b"%d" % i, routing_key=queue) for i in range(count)
        ]
        await channel.wait_for_confirms()
        assert all(c is not None and c.acked for c in confirmations)
        await channel.basic_qos(100)
        received = []
        with trio.fail_after(20):
            async with await channel.basic_consume(queue) as consumer:
                async for delivery in consumer:
                    received.append(int(delivery.body))
                    assert await delivery.ack()
                    if len(received) == count:
                        break
        assert received == list(range(count))


async def test_large_body_split_into_small_frames(url: str) -> None:
    # Over 1 MiB: written in several chunks (Sending.PROGRESS_CHUNK), on every transport.
    payload = secrets.token_bytes(2_500_000)
    async with tl.open_connection(url, frame_max=4096) as conn:
        assert conn.frame_max == 4096
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(payload, routing_key=queue)
        delivery = await channel.basic_get(queue, no_ack=True)
    assert delivery is not None
    assert delivery.body == payload


async def test_mandatory_return_and_get_empty(url: str) -> None:
    async with tl.open_connection(url) as conn:
        channel = await conn.channel()
        await channel.confirm_select()
        with pytest.raises(tl.MessageReturned):
            await channel.publish(b"x", routing_key=unique("nowhere"), mandatory=True)
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        assert await channel.basic_get(queue) is None


async def test_open_client_producer_and_consumer(url: str) -> None:
    queue = unique()
    async with tl.open_client(url, tl.Config(heartbeat=5)) as client:
        await client.declare_queue(queue, auto_delete=True)
        producer = client.producer(queue)
        async with client.consume(queue, prefetch=50) as consumer:
            for i in range(100):
                await producer.enqueue(b"%d" % i)
            with trio.fail_after(20):
                await producer.drain()
                bodies = []
                async for delivery in consumer:
                    bodies.append(delivery.body)
                    if len(bodies) % 25 == 0:
                        assert await delivery.ack(multiple=True)
                    if len(bodies) == 100:
                        break
        assert bodies == [b"%d" % i for i in range(100)]
        assert producer.statistics().confirmed == 100
