"""open_connection and Channel against the real broker."""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import Broker, BrokerNode

from ._names import unique

pytestmark = pytest.mark.broker


async def test_handshake_negotiates_with_the_broker(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url, heartbeat=7, connection_name="handshake-test") as conn:
        assert conn.is_open
        assert conn.heartbeat == 7
        assert conn.frame_max == 131_072
        assert 0 < conn.channel_max <= 2047
        assert conn.server_properties["product"] in ("RabbitMQ", "LavinMQ")
    assert isinstance(conn.error, tl.ConnectionClosed)


async def test_publish_and_consume_10000_with_confirms_and_manual_acks(amqp_url: str) -> None:
    count = 10_000
    async with tl.open_connection(amqp_url) as conn:
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
        assert [c.delivery_tag for c in confirmations] == list(range(1, count + 1))

        consumer_channel = await conn.channel()
        await consumer_channel.basic_qos(500)
        received: list[int] = []
        with trio.fail_after(30):
            async with await consumer_channel.basic_consume(queue) as consumer:
                async for delivery in consumer:
                    received.append(int(delivery.body))
                    assert await delivery.ack()
                    if len(received) == count:
                        break
        assert received == list(range(count))
        declared = await channel.queue_declare(queue, passive=True)
        assert declared.message_count == 0


async def test_one_mebibyte_body_is_split_into_frames_and_reassembled(amqp_url: str) -> None:
    payload = secrets.token_bytes(1 << 20)
    async with tl.open_connection(amqp_url, frame_max=4096) as conn:
        assert conn.frame_max == 4096
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(payload, routing_key=queue)
        delivery = await channel.basic_get(queue, no_ack=True)
    assert delivery is not None
    assert len(delivery.body) == len(payload)
    assert hashlib.sha256(delivery.body).digest() == hashlib.sha256(payload).digest()


async def test_basic_get_returns_messages_then_none(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        props = tl.BasicProperties(content_type="text/plain", headers={"n": 1}, message_id="m-1")
        await channel.publish(b"first", routing_key=queue, properties=props)
        await channel.publish(b"second", routing_key=queue)
        first = await channel.basic_get(queue)
        assert first is not None
        assert first.body == b"first"
        assert first.message_count == 1
        assert first.properties.content_type == "text/plain"
        assert first.properties.headers == {"n": 1}
        assert first.properties.message_id == "m-1"
        assert first.routing_key == queue
        assert await first.ack()
        second = await channel.basic_get(queue, no_ack=True)
        assert second is not None
        assert second.body == b"second"
        assert await channel.basic_get(queue) is None


async def test_mandatory_publish_to_unroutable_key_comes_back_as_return(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        await channel.confirm_select()
        with pytest.raises(tl.MessageReturned) as excinfo:
            await channel.publish(b"lost", routing_key=unique("nowhere"), mandatory=True)
        assert excinfo.value.reply_code == 312
        assert excinfo.value.reply_text == "NO_ROUTE"
        # Unroutable without mandatory is simply acked (and dropped by the broker).
        await channel.publish(b"dropped", routing_key=unique("nowhere"))


async def test_return_without_confirms_goes_to_the_return_handler(amqp_url: str) -> None:
    returned: list[tuple[int, bytes]] = []
    arrived = trio.Event()

    def on_return(event: tl.ReturnedMessage) -> None:
        returned.append((event.reply_code, event.body))
        arrived.set()

    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        channel.on_return(on_return)
        await channel.basic_publish(b"lost", routing_key=unique("nowhere"), mandatory=True)
        with trio.fail_after(5):
            await arrived.wait()
    assert returned == [(312, b"lost")]


async def test_only_the_returned_message_of_a_pipelined_batch_fails(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        good1 = await channel.basic_publish(b"a", routing_key=queue, mandatory=True)
        bad = await channel.basic_publish(b"b", routing_key=unique("nowhere"), mandatory=True)
        good2 = await channel.basic_publish(b"c", routing_key=queue, mandatory=True)
        assert good1 is not None
        assert bad is not None
        assert good2 is not None
        await channel.wait_for_confirms()
        await good1.wait()
        await good2.wait()
        with pytest.raises(tl.MessageReturned):
            await bad.wait()


async def test_redeclaring_a_queue_with_other_arguments_closes_only_the_channel(
    broker: Broker,
) -> None:
    queue = unique()
    async with tl.open_connection(broker.url) as conn:
        channel = await conn.channel()
        await channel.queue_declare(queue, auto_delete=True, arguments={"x-max-length": 10})
        with pytest.raises(tl.ChannelClosed) as excinfo:
            await channel.queue_declare(queue, auto_delete=True, arguments={"x-max-length": 20})
        assert excinfo.value.reply_code == 406
        assert "PRECONDITION_FAILED" in excinfo.value.reply_text
        if broker.kind == "lavinmq":
            # LavinMQ 1.0.1 names the queue, not the argument: "PRECONDITION_FAILED -
            # Existing queue '...' declared with other arguments".
            assert queue in excinfo.value.reply_text
        else:
            assert "x-max-length" in excinfo.value.reply_text
        assert not channel.is_open
        with pytest.raises(tl.ChannelClosed):
            await channel.basic_publish(b"x", routing_key=queue)
        # The connection is still usable.
        assert conn.is_open
        other = await conn.channel()
        assert (await other.queue_declare(queue, passive=True)).queue == queue
        await other.queue_delete(queue)


async def test_passive_declare_of_missing_queue_is_404(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        with pytest.raises(tl.ChannelClosed) as excinfo:
            await channel.queue_declare(unique("missing"), passive=True)
        assert excinfo.value.reply_code == 404
        assert conn.is_open


async def test_operator_close_connection_raises_connection_closed_320(
    node: BrokerNode,
) -> None:
    async with tl.open_connection(node.url, connection_name="to-be-closed") as conn:
        channel = await conn.channel()
        await trio.to_thread.run_sync(node.close_all_connections, "test says bye")
        with trio.fail_after(10):
            error = await conn.wait_closed()
        assert isinstance(error, tl.ConnectionClosedByBroker)
        assert error.reply_code == 320
        assert "test says bye" in error.reply_text
        assert not error.fatal
        with pytest.raises(tl.ConnectionClosedByBroker) as excinfo:
            await channel.queue_declare(unique())
        assert excinfo.value.reply_code == 320


async def test_wrong_password_raises_access_refused(amqp_url: str) -> None:
    params = tl.parse_url(amqp_url)
    bad = tl.Parameters(
        scheme=params.scheme,
        host=params.host,
        port=params.port,
        username=params.username,
        password="definitely-wrong-password",
    )
    with pytest.raises(tl.ConnectionClosedByBroker) as excinfo:
        async with tl.open_connection(bad):
            pass
    assert excinfo.value.reply_code == 403
    assert excinfo.value.fatal
    assert "ACCESS_REFUSED" in str(excinfo.value)
    assert "definitely-wrong-password" not in str(excinfo.value)


async def test_missing_vhost_raises_not_allowed(amqp_url: str) -> None:
    params = tl.parse_url(amqp_url)
    url = params.to_url(redact=False).replace("/%2F", "/no-such-vhost")
    with pytest.raises(tl.ConnectionClosedByBroker) as excinfo:
        async with tl.open_connection(url):
            pass
    assert excinfo.value.reply_code == 530
    assert excinfo.value.fatal


async def test_connection_refused_is_connection_lost(amqp_url: str) -> None:
    # A port nobody listens on: bind one, note it, close it.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(tl.ConnectionLost, match=f"cannot connect to amqp://127.0.0.1:{port}"):
        async with tl.open_connection(f"amqp://guest:guest@127.0.0.1:{port}/"):
            pass
    assert amqp_url


async def test_exchange_topology_routes_by_topic(amqp_url: str) -> None:
    exchange = unique("ex")
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        await channel.exchange_declare(exchange, "topic")
        queue = (await channel.queue_declare("", exclusive=True)).queue
        assert queue.startswith("amq.gen-")
        await channel.queue_bind(queue, exchange, "orders.*.eu")
        await channel.confirm_select()
        await channel.publish(b"1", exchange=exchange, routing_key="orders.new.eu")
        await channel.publish(b"2", exchange=exchange, routing_key="orders.new.us")
        await channel.publish(b"3", exchange=exchange, routing_key="orders.old.eu")
        await channel.queue_unbind(queue, exchange, "orders.*.eu")
        await channel.publish(b"4", exchange=exchange, routing_key="orders.new.eu")
        bodies = []
        while (delivery := await channel.basic_get(queue, no_ack=True)) is not None:
            bodies.append(delivery.body)
        assert bodies == [b"1", b"3"]
        await channel.exchange_delete(exchange)


async def test_exchange_to_exchange_binding(amqp_url: str) -> None:
    source, destination = unique("src"), unique("dst")
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        await channel.exchange_declare(source, "fanout", auto_delete=True)
        await channel.exchange_declare(destination, "direct", auto_delete=True)
        await channel.exchange_bind(destination, source)
        queue = (await channel.queue_declare("", exclusive=True)).queue
        await channel.queue_bind(queue, destination, "k")
        await channel.confirm_select()
        await channel.publish(b"via-e2e", exchange=source, routing_key="k")
        delivery = await channel.basic_get(queue, no_ack=True)
        assert delivery is not None
        assert delivery.body == b"via-e2e"
        assert delivery.exchange == source
        await channel.exchange_unbind(destination, source)


async def test_purge_and_delete_report_message_counts(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique())).queue
        await channel.confirm_select()
        for _ in range(5):
            await channel.basic_publish(b"m", routing_key=queue)
        await channel.wait_for_confirms()
        assert await channel.queue_purge(queue) == 5
        await channel.publish(b"m", routing_key=queue)
        assert await channel.queue_delete(queue) == 1


async def test_prefetch_limits_unacked_deliveries(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        for i in range(20):
            await channel.basic_publish(bytes([i]), routing_key=queue)
        await channel.wait_for_confirms()
        await channel.basic_qos(5)
        consumer = await channel.basic_consume(queue)
        await trio.sleep(0.3)  # let the broker push everything it is allowed to
        assert consumer.buffered == 5
        first = await consumer.__anext__()
        assert await first.ack()
        await trio.sleep(0.2)
        assert consumer.buffered == 5
        await consumer.cancel()


async def test_nack_with_requeue_redelivers_and_reject_without_drops(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(b"again", routing_key=queue)
        first = await channel.basic_get(queue)
        assert first is not None
        assert not first.redelivered
        assert await first.nack(requeue=True)
        second = await channel.basic_get(queue)
        assert second is not None
        assert second.body == b"again"
        assert second.redelivered
        assert await second.reject(requeue=False)
        assert await channel.basic_get(queue) is None


async def test_ack_multiple_acks_every_earlier_delivery(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        for i in range(10):
            await channel.basic_publish(bytes([i]), routing_key=queue)
        await channel.wait_for_confirms()
        deliveries = []
        async with await channel.basic_consume(queue) as consumer:
            async for delivery in consumer:
                deliveries.append(delivery)
                if len(deliveries) == 10:
                    break
        assert await deliveries[-1].ack(multiple=True)
        await channel.aclose()
        check = await conn.channel()
        assert (await check.queue_declare(queue, passive=True)).message_count == 0


async def test_unacked_deliveries_return_to_the_queue_when_the_channel_closes(
    amqp_url: str,
) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(b"keep", routing_key=queue)
        delivery = await channel.basic_get(queue)
        assert delivery is not None
        await channel.aclose()
        # The delivery's channel is gone: acking it sends nothing.
        assert not await delivery.ack()
        other = await conn.channel()
        again = await other.basic_get(queue, no_ack=True)
        assert again is not None
        assert again.body == b"keep"
        assert again.redelivered


async def test_server_cancel_on_queue_delete_ends_the_consumer(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique())).queue
        consumer = await channel.basic_consume(queue)
        admin = await conn.channel()
        await admin.queue_delete(queue)
        with trio.fail_after(5), pytest.raises(tl.ConsumerCancelled) as excinfo:
            async for _ in consumer:
                pass
        assert excinfo.value.consumer_tag == consumer.consumer_tag
        assert channel.is_open


async def test_transactions_commit_and_rollback(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.tx_select()
        await channel.basic_publish(b"rolled-back", routing_key=queue)
        await channel.tx_rollback()
        await channel.basic_publish(b"committed", routing_key=queue)
        await channel.tx_commit()
        delivery = await channel.basic_get(queue, no_ack=True)
        assert delivery is not None
        assert delivery.body == b"committed"
        assert await channel.basic_get(queue) is None


async def test_cancelled_rpc_leaves_the_channel_in_step(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        with trio.move_on_after(0) as scope:
            await channel.queue_declare(unique("cancelled"), exclusive=True)
        assert scope.cancelled_caught
        # The late DeclareOk is consumed by the abandoned request, so the next
        # call gets its own reply.
        name = unique("next")
        declared = await channel.queue_declare(name, exclusive=True)
        assert declared.queue == name


async def test_cancelled_consume_does_not_leave_a_consumer_behind(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        with trio.move_on_after(0):
            await channel.basic_consume(queue)
        await trio.sleep(0.2)
        declared = await channel.queue_declare(queue, passive=True)
        assert declared.consumer_count == 0
        assert channel._consumers == {}


async def test_channel_recovers_messages_with_basic_recover(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare(unique(), exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(b"r", routing_key=queue)
        first = await channel.basic_get(queue)
        assert first is not None
        await channel.basic_recover(requeue=True)
        again = await channel.basic_get(queue, no_ack=True)
        assert again is not None
        assert again.redelivered


async def test_many_channels_on_one_connection(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url) as conn:
        channels = [await conn.channel() for _ in range(50)]
        assert sorted(c.number for c in channels) == list(range(1, 51))
        async with trio.open_nursery() as nursery:
            for channel in channels:
                nursery.start_soon(functools.partial(channel.queue_declare, "", exclusive=True))
        for channel in channels[:25]:
            await channel.aclose()
        assert (await conn.channel()).number == 1


async def test_heartbeats_keep_an_idle_connection_open(amqp_url: str) -> None:
    async with tl.open_connection(amqp_url, heartbeat=1) as conn:
        assert conn.heartbeat == 1
        await trio.sleep(3.5)  # longer than 2 intervals with no traffic of our own
        assert conn.is_open
        channel = await conn.channel()
        await channel.queue_declare("", exclusive=True)


async def test_connect_logs_endpoint_without_password(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The low-level connection logs its life cycle at DEBUG (the client's
    # INFO lines are the ones an application sees).
    caplog.set_level(logging.DEBUG, logger="trio_lavin")
    async with tl.open_connection(amqp_url):
        pass
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("connected to amqp://") for m in messages)
    password = tl.parse_url(amqp_url).password
    assert not any(f":{password}@" in m for m in messages)


async def test_confirms_replies_and_deliveries_to_many_waiting_tasks_on_one_connection(
    amqp_url: str,
) -> None:
    """Tasks waiting for confirms, for declare replies and for deliveries
    share one TCP connection; whichever task reads the socket (one of them,
    or the reader), each gets its own answers, in order, and none is lost."""
    per_publisher, publishers = 300, 4
    total = per_publisher * publishers
    async with tl.open_connection(amqp_url) as conn:
        setup = await conn.channel()
        queue = (await setup.queue_declare(unique(), exclusive=True)).queue
        consumer_channel = await conn.channel()
        await consumer_channel.basic_qos(50)
        consumer = await consumer_channel.basic_consume(queue)
        received: list[bytes] = []

        async def publisher(name: str) -> None:
            channel = await conn.channel()
            await channel.confirm_select()
            for number in range(per_publisher):
                await channel.publish(f"{name}-{number}".encode(), routing_key=queue)

        async def declarer() -> None:
            channel = await conn.channel()
            for _ in range(200):
                ok = await channel.queue_declare(queue, passive=True)
                assert ok.queue == queue

        async def consume() -> None:
            async for delivery in consumer:
                received.append(delivery.body)
                assert await delivery.ack()
                if len(received) == total:
                    return

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consume)
                for name in "abcd":
                    nursery.start_soon(publisher, name)
                nursery.start_soon(declarer)
                nursery.start_soon(declarer)
        assert (await setup.queue_declare(queue, passive=True)).message_count == 0
    assert len(received) == total
    for name in "abcd":
        mine = [body for body in received if body.startswith(name.encode())]
        assert mine == [f"{name}-{number}".encode() for number in range(per_publisher)]
