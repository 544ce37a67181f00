"""Testing an application with trio-lavin's pytest plugin: a real throwaway broker, a
fault proxy in front of it, and a property test on the in-process fake broker.

Shows the ``lavin_*`` fixtures that ``pip install trio-lavin[testing]`` gives every
project (no conftest needed): ``lavin_amqp_url`` (a throwaway RabbitMQ started once per
session on free loopback ports, or ``AMQP_URL``), ``lavin_client``, ``lavin_fault_proxy``
and ``lavin_fake_broker``, with the hypothesis strategies of
``trio_lavin.testing.strategies``.  The application is a small order store that
publishes each order and a consumer that records them.

Copy it into your project and run::

    python -m pytest test_with_the_pytest_plugin.py

(``--lavin-broker=lavinmq`` uses a throwaway LavinMQ instead, found through ``LAVINMQ``
or PATH).
"""

from __future__ import annotations

import secrets

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_lavin as lavin
from trio_lavin.testing import FakeBrokerServer, FaultProxy, open_fake_broker
from trio_lavin.testing.strategies import messages

# -- the application under test -----------------------------------------------------------


async def place_orders(client: lavin.Client, queue: str, orders: list[bytes]) -> None:
    """Publish every order, confirmed."""
    producer = client.producer(queue)
    for order in orders:
        await producer.publish(order, properties=lavin.BasicProperties(delivery_mode=2))


async def read_orders(client: lavin.Client, queue: str, count: int) -> list[bytes]:
    """The first ``count`` orders in the queue, acked."""
    seen: list[bytes] = []
    async with client.consume(queue, prefetch=50) as deliveries:
        async for delivery in deliveries:
            seen.append(delivery.body)
            await delivery.ack()
            if len(seen) == count:
                break
    return seen


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_orders_reach_the_queue_in_order(lavin_client: lavin.Client) -> None:
    queue = f"orders-{secrets.token_hex(4)}"
    await lavin_client.declare_queue(queue, auto_delete=True)
    orders = [b"order %d" % i for i in range(100)]
    with trio.fail_after(30):
        await place_orders(lavin_client, queue, orders)
        assert await read_orders(lavin_client, queue, len(orders)) == orders


@pytest.mark.trio
async def test_no_order_is_lost_when_the_connection_drops(
    lavin_amqp_url: str, lavin_fault_proxy: FaultProxy
) -> None:
    queue = f"orders-{secrets.token_hex(4)}"
    config = lavin.Config(reconnect_max_delay=0.2)
    async with lavin.open_client(lavin_fault_proxy.url_for(lavin_amqp_url), config) as client:
        await client.declare_queue(queue, durable=True)
        orders = [b"order %d" % i for i in range(200)]
        with trio.fail_after(60):
            await place_orders(client, queue, orders[:100])
            lavin_fault_proxy.sever()  # the network drops the connection
            await place_orders(client, queue, orders[100:])
            seen = await read_orders(client, queue, len(orders))
        await client.delete_queue(queue)
    assert set(seen) == set(orders)  # at least once: every order, maybe one twice
    assert client.statistics().reconnects >= 1


@settings(max_examples=20, deadline=None)
@given(bodies=st.lists(messages().map(lambda drawn: drawn.body), min_size=1, max_size=20))
def test_any_orders_come_back_as_they_were_sent_on_the_fake_broker(
    bodies: list[bytes],
) -> None:
    async def main() -> list[bytes]:
        async with open_fake_broker() as broker:
            return await through(broker)

    async def through(broker: FakeBrokerServer) -> list[bytes]:
        async with lavin.open_client(stream_factory=broker.connect) as client:
            await client.declare_queue("orders")
            await place_orders(client, "orders", bodies)
            return await read_orders(client, "orders", len(bodies))

    assert trio.run(main) == bodies


@pytest.mark.trio
async def test_the_fake_broker_fixture_serves_a_client(
    lavin_fake_broker: FakeBrokerServer,
) -> None:
    async with lavin.open_client(stream_factory=lavin_fake_broker.connect) as client:
        await client.declare_queue("orders")
        await place_orders(client, "orders", [b"one", b"two"])
        assert await read_orders(client, "orders", 2) == [b"one", b"two"]
