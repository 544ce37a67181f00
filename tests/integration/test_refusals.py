"""What the real broker refuses reaches the caller once - an exception or an
``on_drop`` - and is never retried in a loop (issue 14): hard errors that
close the connection, refused publishes, consumes, acks, qos and gets, and
entities the topology recovery can no longer declare."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import FaultProxy

from ._names import unique

pytestmark = pytest.mark.broker

CONFIG = tl.Config(heartbeat=5, reconnect_max_delay=2.0)


async def _round_trip(client: tl.Client, queue: str, body: bytes) -> None:
    """Publish ``body`` with a confirm and consume it back."""
    producer = client.producer(queue)
    async with client.consume(queue, prefetch=10) as consumer:
        with trio.fail_after(10):
            assert await producer.publish(body)
            delivery = await consumer.__anext__()
        assert delivery.body == body
        assert await delivery.ack()


async def test_an_unknown_exchange_type_raises_at_once_and_the_client_goes_on(
    amqp_url: str,
) -> None:
    """RabbitMQ refuses it with a hard error (503, closing the connection:
    CommandRefused, one reconnect), LavinMQ with a soft one (406, closing the
    channel); either way the call raises within a second and is not retried."""
    queue = unique()
    async with tl.open_client(amqp_url, CONFIG) as client:
        connection = await client.wait_connected()
        rabbitmq = connection.server_properties.get("product") == "RabbitMQ"
        await client.declare_queue(queue)  # not auto-delete: it outlives each consumer
        await _round_trip(client, queue, b"before")
        start = trio.current_time()
        with trio.fail_after(5), pytest.raises(tl.ChannelClosed) as info:
            # A typo, or a plugin's type the broker lacks (LavinMQ 1.0.1 has
            # x-consistent-hash; RabbitMQ without the plugin refuses it too).
            await client.declare_exchange(unique("ex"), "x-no-such-type")
        took = trio.current_time() - start
        assert took < 1.0, took
        assert "x-no-such-type" in str(info.value)
        if rabbitmq:
            assert isinstance(info.value, tl.CommandRefused)
            assert info.value.reply_code == 503
            assert info.value.command == "exchange.declare"
        else:
            assert not isinstance(info.value, tl.CommandRefused)
            assert info.value.reply_code == 406
        with trio.fail_after(10):
            await _round_trip(client, queue, b"after")
        stats = client.statistics()
        assert stats.reconnects == (1 if rabbitmq else 0)
        await client.delete_queue(queue)


async def test_recovery_reports_and_forgets_an_exchange_the_broker_now_refuses(
    amqp_url: str, proxy: FaultProxy
) -> None:
    exchange, queue = unique("ex"), unique()
    try:
        await _recovery_forgets(amqp_url, proxy, exchange, queue)
    finally:
        async with tl.open_connection(amqp_url) as cleanup:
            channel = await cleanup.channel()
            await channel.exchange_delete(exchange)
            await channel.queue_delete(queue)


async def _recovery_forgets(amqp_url: str, proxy: FaultProxy, exchange: str, queue: str) -> None:
    # Neither auto-delete: they must outlive the severed connection.
    async with tl.open_client(proxy.url_for(amqp_url), CONFIG) as client:
        await client.declare_exchange(exchange, "topic")
        await client.declare_queue(queue)
        await client.bind_queue(queue, exchange, "k.#")
        # Someone else makes it a fanout exchange: re-declaring it as a topic
        # exchange is refused (406) from now on.
        async with tl.open_connection(amqp_url) as other:
            channel = await other.channel()
            await channel.exchange_delete(exchange)
            await channel.exchange_declare(exchange, "fanout")
        async with client.events() as events, client.consume(queue) as consumer:
            proxy.sever()
            failure = None
            with trio.fail_after(10):
                async for event in events:
                    if isinstance(event, tl.RecoveryFailed):
                        failure = event
                    if isinstance(event, tl.StateChange) and event.new is tl.ClientState.CONNECTED:
                        break
            assert failure is not None
            assert failure.entity == f"exchange {exchange!r}"
            assert isinstance(failure.error, tl.ChannelClosed)
            assert failure.error.reply_code == 406
            # Everything else was recovered: the binding (now to the fanout
            # exchange) and the consumer.
            async with tl.open_connection(amqp_url) as other:
                channel = await other.channel()
                await channel.confirm_select()
                await channel.publish(b"routed", exchange=exchange, routing_key="anything")
            with trio.fail_after(10):
                delivery = await consumer.__anext__()
            assert delivery.body == b"routed"
            await delivery.ack()
            # Forgotten: the next reconnect does not try it again.
            proxy.sever()
            with trio.fail_after(10):
                async for event in events:
                    assert not isinstance(event, tl.RecoveryFailed), event
                    if isinstance(event, tl.StateChange) and event.new is tl.ClientState.CONNECTED:
                        break
        assert client.statistics().recovery_failures == 1


async def test_a_producer_for_a_missing_exchange_backs_off_then_reports_the_message(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_lavin")
    config = dataclasses.replace(CONFIG, publish_retries=3)
    async with tl.open_client(amqp_url, config) as client:
        producer = client.producer(exchange=unique("missing"), routing_key="order.created")
        drops: list[tl.DropReason] = []
        producer.on_drop(lambda _message, _target, reason: drops.append(reason))
        with trio.fail_after(10), pytest.raises(tl.MessageRejected) as info:
            await producer.publish(b"x")
        assert info.value.reply_code == 404
        assert drops == [tl.DropReason.REJECTED]
        stats = producer.statistics()
        assert stats.published == 4  # the first try and three retries
        assert client.statistics().reconnects == 0
    producer_lines = [r for r in caplog.records if r.name == "trio_lavin.producer"]
    assert [r.levelno for r in producer_lines] == [logging.WARNING]
    # The channel closes are not logged one by one at INFO.
    assert not [r for r in caplog.records if "closed channel" in r.getMessage()]


async def test_consuming_a_missing_queue_raises_404_at_once(amqp_url: str) -> None:
    async with tl.open_client(amqp_url, CONFIG) as client:
        with trio.fail_after(5), pytest.raises(tl.ChannelClosed) as info:
            async with client.consume(unique("missing")):
                raise AssertionError("subscribed to a missing queue")
        assert info.value.reply_code == 404
        assert client.statistics().reconnects == 0
        assert client.connected


async def test_acks_for_unknown_or_settled_deliveries_raise_and_send_nothing(
    amqp_url: str,
) -> None:
    """Sent, either would make the broker close the channel (406 unknown
    delivery tag) and redeliver everything unacked on it."""
    queue = unique()
    async with tl.open_connection(amqp_url) as connection:
        channel = await connection.channel()
        await channel.queue_declare(queue, auto_delete=True)
        await channel.basic_qos(10)
        with pytest.raises(ValueError, match="delivery tag 999 is not one of the deliveries"):
            await channel.basic_ack(999)
        await channel.confirm_select()
        for body in (b"one", b"two"):
            await channel.publish(body, routing_key=queue)
        async with await channel.basic_consume(queue) as consumer:
            with trio.fail_after(5):
                first = await consumer.__anext__()
                second = await consumer.__anext__()
            assert await first.ack()
            with pytest.raises(tl.DeliveryAlreadySettled):
                await first.ack()
            with pytest.raises(tl.DeliveryAlreadySettled):
                await first.reject()
            assert await second.ack()
            # The channel is still open: nothing reached the broker.
            await channel.queue_declare(queue, passive=True)
            assert channel.is_open
            ok = await channel.queue_declare(queue, passive=True)
            assert ok.message_count == 0


async def test_a_qos_the_broker_does_not_implement_raises_540_and_the_client_goes_on(
    amqp_url: str,
) -> None:
    queue = unique()
    async with tl.open_client(amqp_url, CONFIG) as client:
        await client.declare_queue(queue)
        channel = await client.open_channel()
        with trio.fail_after(5), pytest.raises(tl.CommandRefused) as info:
            await channel.basic_qos(10, prefetch_size=4096)
        assert info.value.reply_code == 540
        assert info.value.command == "basic.qos"
        with trio.fail_after(10):
            await _round_trip(client, queue, b"after")
        assert client.statistics().reconnects == 1
        await client.delete_queue(queue)


async def test_basic_get_on_another_connections_exclusive_queue_raises_405(
    amqp_url: str,
) -> None:
    async with tl.open_connection(amqp_url) as owner, tl.open_client(amqp_url, CONFIG) as client:
        owner_channel = await owner.channel()
        ok = await owner_channel.queue_declare("", exclusive=True)
        channel = await client.open_channel()
        with trio.fail_after(5), pytest.raises(tl.ChannelClosed) as info:
            await channel.basic_get(ok.queue)
        assert info.value.reply_code == 405
        assert not isinstance(info.value, tl.CommandRefused)
        assert client.connected
        assert client.statistics().reconnects == 0
