"""open_client against the real broker: killing and restarting the node,
operator-forced closes, fatal errors."""

from __future__ import annotations

import dataclasses

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import BrokerNode, RabbitNode

from ._names import unique

pytestmark = pytest.mark.broker

CONFIG = tl.Config(heartbeat=5, reconnect_max_delay=2.0)


async def test_wrong_password_raises_access_refused_out_of_open_client(amqp_url: str) -> None:
    params = tl.parse_url(amqp_url)
    bad = tl.Parameters(
        host=params.host, port=params.port, username="guest", password="not-the-password"
    )
    start = trio.current_time()
    with trio.fail_after(20), pytest.raises(tl.ConnectionClosedByBroker) as excinfo:
        async with tl.open_client(bad, CONFIG) as client:
            await client.wait_connected()
    assert excinfo.value.reply_code == 403
    assert "ACCESS_REFUSED" in str(excinfo.value)
    assert "not-the-password" not in str(excinfo.value)
    print(f"gave up after {trio.current_time() - start:.2f} s")


async def test_operator_close_is_followed_by_a_reconnect(node: BrokerNode) -> None:
    queue = unique()
    async with tl.open_client(node.url, CONFIG) as client:
        await client.declare_queue(queue, auto_delete=True)
        first = await client.wait_connected()
        async with client.consume(queue, prefetch=10) as consumer:
            await trio.to_thread.run_sync(node.close_all_connections, "test")
            error = await first.wait_closed()
            assert isinstance(error, tl.ConnectionClosedByBroker)
            assert error.reply_code == 320
            with trio.fail_after(5):
                second = await client.wait_connected()
            assert second is not first
            channel = await second.channel()
            await channel.confirm_select()
            await channel.publish(b"after", routing_key=queue)
            with trio.fail_after(5):
                delivery = await consumer.__anext__()
            assert delivery.body == b"after"
            assert await delivery.ack()
        assert client.statistics().reconnects == 1


async def test_broker_killed_and_restarted_client_reconnects_and_consumers_receive(
    node: BrokerNode,
) -> None:
    queue = unique("durable")
    async with tl.open_client(node.url, CONFIG) as client:
        await client.declare_queue(queue, durable=True)
        async with client.consume(queue, prefetch=10) as consumer:
            first = await client.wait_connected()
            await trio.to_thread.run_sync(node.kill)
            with trio.fail_after(10):
                error = await first.wait_closed()
            assert isinstance(error, tl.ConnectionLost)
            assert not client.connected
            restart_started = trio.current_time()
            await trio.to_thread.run_sync(node.start)
            with trio.fail_after(30):
                second = await client.wait_connected()
            print(f"reconnected {trio.current_time() - restart_started:.2f} s after restart")
            channel = await second.channel()
            await channel.confirm_select()
            props = tl.BasicProperties(delivery_mode=2)
            await channel.publish(b"survivor", routing_key=queue, properties=props)
            with trio.fail_after(10):
                delivery = await consumer.__anext__()
            assert delivery.body == b"survivor"
            assert await delivery.ack()
            assert consumer.subscriptions == 2
        await client.delete_queue(queue)


async def test_failover_across_transports_tries_the_next_url(amqp_url: str) -> None:
    # Nothing listens on this port: the WebSocket attempt is refused and the
    # next attempt goes to the broker over plain AMQP.
    dead = trio.socket.socket()
    await dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    urls = [f"ws://guest:guest@127.0.0.1:{port}/", amqp_url]
    in_order = dataclasses.replace(CONFIG, shuffle_urls=False)
    async with tl.open_client(urls, in_order) as client:
        with trio.fail_after(10):
            connection = await client.wait_connected()
        stats = client.statistics()
    assert connection.params.scheme == "amqp"
    assert stats.failed_attempts == 1
    assert stats.endpoint == tl.parse_url(amqp_url).endpoint


async def test_a_quorum_queue_on_rabbitmq_is_one_and_warns_of_nothing(
    rabbit_node: RabbitNode, caplog: pytest.LogCaptureFixture
) -> None:
    queue = unique()
    async with tl.open_client(rabbit_node.url) as client:
        await client.declare_queue(queue, durable=True, queue_type=tl.QueueType.QUORUM)
        listed = rabbit_node.rabbitmqctl("list_queues", "name", "type", "--no-table-headers")
        channel = await client.open_channel()
        await channel.queue_delete(queue)
    assert f"{queue}\tquorum" in listed
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


async def test_an_expired_message_is_dead_lettered_with_its_x_death(amqp_url: str) -> None:
    """queue_arguments' dead-letter and TTL keywords, on the real broker: a message that
    waits longer than message_ttl goes to the dead-letter exchange, with an x-death."""
    work, dead, dlx = unique(), unique(), unique("dlx")
    async with tl.open_client(amqp_url) as client:
        await client.declare_exchange(dlx, "fanout")
        await client.declare_queue(dead)
        await client.bind_queue(dead, dlx)
        arguments = tl.queue_arguments(dead_letter_exchange=dlx, message_ttl=100)
        await client.declare_queue(work, arguments=arguments)
        assert await client.producer(work).publish(b"too late")
        channel = await client.open_channel()
        with trio.fail_after(10):
            while (delivery := await channel.basic_get(dead, no_ack=True)) is None:
                await trio.sleep(0.05)
        for name in (work, dead):
            await channel.queue_delete(name)
        await channel.exchange_delete(dlx)
    assert delivery.body == b"too late"
    deaths = (delivery.properties.headers or {})["x-death"]
    assert deaths[0]["queue"] == work
    assert deaths[0]["reason"] == "expired"
