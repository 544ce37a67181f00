"""AMQP over WebSocket (ws:// and wss://) against the real brokers: through websockify in
front of RabbitMQ and of LavinMQ, and to LavinMQ's own endpoint on its HTTP port.

websockify bridges WebSocket binary messages to the broker's AMQP port and splits and joins
them as it likes (64 KiB reads), as LavinMQ's own WebSocket listener does (1.0.1 sends its
output in messages of at most 4096 bytes); see tests/_websockify.py.  wss:// goes through
websockify only: the session's LavinMQ node has its HTTPS listener off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

import trio_lavin as tl
from tests._websockify import Websockify
from trio_lavin._io._websocket import WebSocketStream
from trio_lavin.testing import Broker, LavinNode

pytestmark = pytest.mark.broker

CONFIG = tl.Config(heartbeat=5, reconnect_initial_delay=0.05, reconnect_max_delay=0.5)


def unique(prefix: str = "q") -> str:
    return f"trio-lavin-test.ws.{prefix}.{secrets.token_hex(6)}"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    url: str


#: (how, broker) pairs for the tests that use ``bridge``: websockify in front of each
#: broker, and LavinMQ's own WebSocket endpoint.
ENDPOINTS = [
    pytest.param("websockify", "rabbitmq", id="websockify-rabbitmq"),
    pytest.param("websockify", "lavinmq", id="websockify-lavinmq"),
    pytest.param("native", "lavinmq", id="native-lavinmq"),
]
over_every_endpoint = pytest.mark.parametrize(("via", "broker"), ENDPOINTS, indirect=["broker"])


@pytest.fixture(scope="module")
def _module_bridge(broker: Broker) -> Iterator[Websockify]:
    """One websockify per broker for the module's tests that leave it running."""
    bridge = Websockify(broker.url)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.cleanup()


@pytest.fixture
def bridge(request: pytest.FixtureRequest, via: str, broker: Broker) -> Websockify | Endpoint:
    """Where to connect over ``ws://``: websockify, or LavinMQ's own endpoint."""
    if via == "native":
        assert isinstance(broker.node, LavinNode)
        return Endpoint(broker.node.ws_url)
    websockify: Websockify = request.getfixturevalue("_module_bridge")
    return websockify


@pytest.fixture
def own_bridge(broker: Broker) -> Iterator[Websockify]:
    """A websockify for one test, which may kill and restart it."""
    bridge = Websockify(broker.url)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.cleanup()


@over_every_endpoint
async def test_handshake_over_websocket(bridge: Websockify | Endpoint) -> None:
    assert bridge.url.startswith("ws://")
    async with tl.open_connection(bridge.url, heartbeat=7, connection_name="ws-test") as conn:
        assert isinstance(conn._stream, WebSocketStream)
        assert conn.is_open
        assert conn.heartbeat == 7
        assert conn.server_properties["product"] in ("RabbitMQ", "LavinMQ")
        channel = await conn.channel()
        declared = await channel.queue_declare(unique(), exclusive=True)
        assert declared.message_count == 0
    assert isinstance(conn.error, tl.ConnectionClosed)


@over_every_endpoint
async def test_publish_and_consume_1000_with_confirms_and_acks(
    bridge: Websockify | Endpoint,
) -> None:
    count = 1000
    async with tl.open_connection(bridge.url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        confirmations = []
        for i in range(count):
            confirmation = await channel.basic_publish(str(i).encode(), routing_key=queue)
            assert confirmation is not None
            confirmations.append(confirmation)
        await channel.wait_for_confirms()
        assert all(c.acked for c in confirmations)

        consumer_channel = await conn.channel()
        await consumer_channel.basic_qos(100)
        received: list[int] = []
        with trio.fail_after(20):
            async with await consumer_channel.basic_consume(queue) as consumer:
                async for delivery in consumer:
                    received.append(int(delivery.body))
                    assert await delivery.ack()
                    if len(received) == count:
                        break
        assert received == list(range(count))
        assert (await channel.queue_declare(queue, passive=True)).message_count == 0


@over_every_endpoint
@pytest.mark.parametrize("frame_max", [4096, None])
async def test_one_mebibyte_body_is_byte_exact_in_small_frames_and_at_the_brokers_frame_max(
    bridge: Websockify | Endpoint, frame_max: int | None
) -> None:
    """Both brokers (LavinMQ 1.0.1 over its own endpoint too, where it cuts its output
    into WebSocket messages of at most 4096 bytes) negotiate 131072 unless asked less."""
    payload = secrets.token_bytes(1 << 20)
    async with tl.open_connection(bridge.url, frame_max=frame_max) as conn:
        assert conn.frame_max == (frame_max or 131_072)
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(payload, routing_key=queue)
        delivery = await channel.basic_get(queue, no_ack=True)
    assert delivery is not None
    assert hashlib.sha256(delivery.body).digest() == hashlib.sha256(payload).digest()


@over_every_endpoint
async def test_basic_get(bridge: Websockify | Endpoint) -> None:
    async with tl.open_connection(bridge.url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        props = tl.BasicProperties(content_type="text/plain", headers={"n": 1})
        await channel.publish(b"first", routing_key=queue, properties=props)
        await channel.publish(b"second", routing_key=queue)
        first = await channel.basic_get(queue)
        assert first is not None
        assert (first.body, first.message_count) == (b"first", 1)
        assert first.properties.headers == {"n": 1}
        assert await first.ack()
        second = await channel.basic_get(queue, no_ack=True)
        assert second is not None
        assert second.body == b"second"
        assert await channel.basic_get(queue) is None


async def test_open_client_reconnects_when_the_bridge_comes_back(own_bridge: Websockify) -> None:
    queue = unique("reconnect")
    async with tl.open_client(own_bridge.url, CONFIG) as client:
        await client.declare_queue(queue)
        async with client.consume(queue, prefetch=10) as consumer:
            first = await client.wait_connected()
            await trio.to_thread.run_sync(own_bridge.stop)
            with trio.fail_after(10):
                error = await first.wait_closed()
            assert isinstance(error, tl.ConnectionLost)
            assert not isinstance(error, tl.ConnectionClosedByBroker)
            await trio.to_thread.run_sync(own_bridge.start)
            with trio.fail_after(10):
                second = await client.wait_connected()
            assert second is not first
            channel = await second.channel()
            await channel.confirm_select()
            await channel.publish(b"after the bridge came back", routing_key=queue)
            with trio.fail_after(10):
                delivery = await consumer.__anext__()
            assert delivery.body == b"after the bridge came back"
            assert await delivery.ack()
        assert client.statistics().reconnects == 1
        await client.delete_queue(queue)


async def test_wss_with_a_verified_certificate(broker: Broker, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    bridge = Websockify(broker.url, certfile=str(server_pem))
    await trio.to_thread.run_sync(bridge.start)
    try:
        params = tl.parse_url(bridge.url)
        assert params.scheme == "wss"
        verified = dataclasses.replace(params, cacertfile=str(cafile))
        async with tl.open_connection(verified) as conn:
            assert isinstance(conn._stream, WebSocketStream)
            assert isinstance(conn._stream.transport, trio.SSLStream)
            channel = await conn.channel()
            queue = (await channel.queue_declare(unique("tls"), exclusive=True)).queue
            await channel.confirm_select()
            await channel.publish(b"over TLS", routing_key=queue)
            delivery = await channel.basic_get(queue, no_ack=True)
            assert delivery is not None
            assert delivery.body == b"over TLS"
        # Without the CA, the broker's certificate is refused.
        with pytest.raises(
            tl.ConnectionLost, match=re.escape("TLS handshake with wss://127.0.0.1")
        ):
            async with tl.open_connection(params):
                pass
    finally:
        await trio.to_thread.run_sync(bridge.cleanup)


# LavinMQ only: its own WebSocket endpoint goes down and comes back with the broker.
async def test_open_client_over_lavinmq_websocket_reconnects_after_a_broker_kill(
    lavinmq_node: LavinNode,
) -> None:
    queue = unique("reconnect")
    async with tl.open_client(lavinmq_node.ws_url, CONFIG) as client:
        await client.declare_queue(queue, durable=True)
        async with client.consume(queue, prefetch=10) as consumer:
            first = await client.wait_connected()
            await trio.to_thread.run_sync(lavinmq_node.kill)
            with trio.fail_after(10):
                error = await first.wait_closed()
            assert isinstance(error, tl.ConnectionLost)
            await trio.to_thread.run_sync(lavinmq_node.start)
            with trio.fail_after(10):
                second = await client.wait_connected()
            assert isinstance(second._stream, WebSocketStream)
            channel = await second.channel()
            await channel.confirm_select()
            await channel.publish(b"after the broker came back", routing_key=queue)
            with trio.fail_after(10):
                delivery = await consumer.__anext__()
            assert delivery.body == b"after the broker came back"
            assert await delivery.ack()
        assert client.statistics().reconnects == 1
        await client.delete_queue(queue)
