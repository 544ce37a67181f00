"""The trio connection against the in-process FakeBroker: fast tests of the
I/O shell (failure detection, cancellation, task ownership) under trio's
MockClock.  The same behaviours are tested against RabbitMQ in
tests/integration."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from pamqp import commands
from pamqp import frame as pamqp_frame

import trio_lavin as tl
from trio_lavin._client._consumer import YIELD_EVERY
from trio_lavin.testing import FakeBrokerServer, open_fake_broker


@pytest.fixture(params=["memory", "socketpair"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[FakeBrokerServer]:
    """Each test runs on in-memory streams and on a socket pair: on a socket
    the connection reads straight from it, and a waiting task may take the
    reading over (``Connection._wait_once``)."""
    async with open_fake_broker(heartbeat=10, transport=request.param) as broker:
        yield broker


async def test_roundtrip_through_the_fake_broker(broker: FakeBrokerServer) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        assert conn.heartbeat == 10
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        await channel.confirm_select()
        await channel.publish(b"one", routing_key="jobs")
        await channel.basic_qos(10)
        async with await channel.basic_consume("jobs") as consumer:
            async for delivery in consumer:
                assert delivery.body == b"one"
                assert await delivery.ack()
                break
    assert broker.queue("jobs").messages_ready == 0
    assert broker.queue("jobs").messages_unacknowledged == 0


async def test_severed_connection_is_reported_at_once(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        start = trio.current_time()
        broker.sever_all()
        error = await conn.wait_closed()
        assert trio.current_time() - start < 0.01
        assert isinstance(error, tl.ConnectionLost)
        assert not isinstance(error, tl.ConnectionClosedByBroker)
        with pytest.raises(tl.ConnectionLost):
            await channel.queue_declare("x")


async def test_blackholed_connection_is_lost_after_two_heartbeat_intervals(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        await conn.channel()
        start = trio.current_time()
        broker.blackhole_all()
        error = await conn.wait_closed()
        elapsed = trio.current_time() - start
    assert isinstance(error, tl.ConnectionLost)
    assert "heartbeat timeout" in str(error)
    # Silence is measured from the last byte received: at most 2 x 10 s.
    assert 15.0 <= elapsed <= 20.0 + 0.01


async def test_idle_connection_sends_heartbeats_and_stays_open(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        before = conn.bytes_sent
        await trio.sleep(62)
        assert conn.is_open
        # One heartbeat frame (8 bytes) per half interval: at 5, 10, ... 60 s.
        assert conn.bytes_sent - before == 8 * 12


async def test_forced_close_by_broker_is_connection_closed_by_broker(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        broker.close_all_connections()
        error = await conn.wait_closed()
        assert isinstance(error, tl.ConnectionClosedByBroker)
        assert error.reply_code == 320
        assert not channel.is_open


async def test_blocked_connection_is_reported_and_waitable(broker: FakeBrokerServer) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        await conn.channel()  # a round trip, so the handshake is over on both sides
        broker.block("low on disk")
        with trio.fail_after(1):
            while not conn.blocked:
                await trio.sleep(0.001)
        broker.unblock()
        with trio.fail_after(1):
            await conn.wait_unblocked()
        assert not conn.blocked


async def test_broker_channel_close_fails_pending_and_later_calls(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        with pytest.raises(tl.ChannelClosed) as excinfo:
            await channel.queue_declare("q", durable=True)
        assert excinfo.value.reply_code == 406
        with pytest.raises(tl.ChannelClosed):
            await channel.queue_purge("q")
        assert conn.is_open


async def test_stale_ack_after_channel_close_returns_false_and_sends_nothing(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        broker.publish("", "q", b"m")
        delivery = await channel.basic_get("q")
        assert delivery is not None
        await channel.aclose()
        sent = conn.bytes_sent
        assert not await delivery.ack()
        await trio.sleep(0.01)
        assert conn.bytes_sent == sent
        assert broker.queue("q").messages_ready == 1


async def test_a_message_got_with_no_ack_is_settled_and_refuses_an_ack(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        broker.publish("", "q", b"m")
        delivery = await channel.basic_get("q", no_ack=True)
        assert delivery is not None
        assert delivery.body == b"m"
        assert delivery.settled
        sent = conn.bytes_sent
        with pytest.raises(tl.DeliveryAlreadySettled):
            await delivery.ack()
        assert conn.bytes_sent == sent
        assert broker.queue("q").messages_ready == 0


async def test_nack_from_broker_fails_the_confirmation(broker: FakeBrokerServer) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        await channel.confirm_select()
        broker.nack_next(1)
        with pytest.raises(tl.MessageNacked) as excinfo:
            await channel.publish(b"x", routing_key="q")
        assert excinfo.value.delivery_tag == 1
        await channel.publish(b"y", routing_key="q")


async def test_pending_confirmations_fail_when_the_connection_is_lost(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        await channel.confirm_select()
        broker.blackhole_all()
        confirmation = await channel.basic_publish(b"x", routing_key="q")
        assert confirmation is not None
        broker.sever_all()
        with pytest.raises(tl.ConnectionLost):
            await confirmation.wait()
        assert confirmation.done
        assert not confirmation.acked


async def test_slow_consumer_pauses_reading_but_not_heartbeats(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        for i in range(5):
            broker.publish("", "q", bytes([i]))
        consumer = await channel.basic_consume("q", no_ack=True, buffer_size=2)
        await trio.sleep(100)  # nobody iterates: the reader waits on the full buffer
        assert conn.is_open
        bodies = []
        async for delivery in consumer:
            bodies.append(delivery.body)
            if len(bodies) == 5:
                break
        assert bodies == [bytes([i]) for i in range(5)]


async def test_consumer_with_a_full_buffer_yields_to_other_tasks_every_yield_every_deliveries(
    broker: FakeBrokerServer,
) -> None:
    total = 3 * YIELD_EVERY
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        for i in range(total):
            broker.publish("", "q", str(i).encode())
        consumer = await channel.basic_consume("q", no_ack=True, buffer_size=total)
        while consumer.buffered < total:
            await trio.sleep(0.001)
        ticks = 0

        async def other_task() -> None:
            nonlocal ticks
            while True:
                await trio.lowlevel.checkpoint()
                ticks += 1

        bodies: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.lowlevel.checkpoint()  # let it start
            start = ticks
            async for delivery in consumer:
                bodies.append(delivery.body)
                if len(bodies) == total:
                    break
            ran = ticks - start
            nursery.cancel_scope.cancel()
    assert bodies == [str(i).encode() for i in range(total)]
    # The other task ran about once per YIELD_EVERY deliveries, not once per delivery
    # (trio may run the two in either order after a yield, hence the slack of one).
    assert total // YIELD_EVERY - 1 <= ran <= total // YIELD_EVERY + 1


async def test_consumer_takes_a_buffered_delivery_only_if_not_cancelled(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        broker.publish("", "q", b"kept")
        consumer = await channel.basic_consume("q", no_ack=True)
        while consumer.buffered < 1:
            await trio.sleep(0.001)
        with trio.CancelScope() as scope:
            scope.cancel()
            await consumer.__anext__()
        assert scope.cancelled_caught
        assert consumer.buffered == 1
        assert (await consumer.__anext__()).body == b"kept"


async def test_leaving_a_consumer_block_gives_buffered_deliveries_back(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        for i in range(5):
            broker.publish("", "q", bytes([i]))
        async with await channel.basic_consume("q") as consumer:
            while consumer.buffered < 5:
                await trio.sleep(0.001)
            first = await consumer.__anext__()
            assert await first.ack()
        await trio.sleep(0.01)
        queue = broker.queue("q")
        assert (queue.messages_ready, queue.messages_unacknowledged) == (4, 0)


async def test_leaving_a_consumer_block_gives_back_only_what_no_multiple_ack_settled(
    broker: FakeBrokerServer,
) -> None:
    """An ack with ``multiple`` settles buffered deliveries too: leaving the
    block gives back none of them (a reject of a settled tag is a 406 that
    closed the channel), and the channel stays open."""
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        for i in range(4):
            broker.publish("", "q", bytes([i]))
        async with await channel.basic_consume("q") as consumer:
            while consumer.buffered < 4:
                await trio.sleep(0.001)
            await consumer.__anext__()
            assert await channel.basic_ack(0, multiple=True)  # all four
        await trio.sleep(0.01)
        assert channel.is_open, channel.error
        queue = broker.queue("q")
        assert (queue.messages_ready, queue.messages_unacknowledged) == (0, 0)


async def test_a_consumer_tag_used_before_with_no_ack_gives_back_what_an_acking_one_refuses(
    broker: FakeBrokerServer,
) -> None:
    """A tag once used by a no_ack consumer, then by an acking one on the same
    channel: deliveries still coming when the acking one's block ends go back
    to the queue (they stayed unacked: the tag was taken for no_ack's still)."""
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        first = await channel.basic_consume("q", no_ack=True, consumer_tag="x")
        await first.cancel()
        broker.publish("", "q", b"first")
        async with await channel.basic_consume("q", consumer_tag="x") as consumer:
            assert await (await consumer.__anext__()).ack()
            await trio.sleep(0.01)
            for i in range(5):
                broker.publish("", "q", bytes([i]))  # on their way as the block ends
        with trio.fail_after(5):
            while broker.queue("q").messages_unacknowledged:
                await trio.sleep(0.001)
        assert broker.queue("q").messages_ready == 5


@pytest.mark.parametrize("settle", ["ack", "nack", "reject"])
async def test_a_settle_cancelled_before_it_runs_sends_nothing(
    broker: FakeBrokerServer, settle: str
) -> None:
    """ack, nack and reject alike: cancelled, the call raises Cancelled,
    sends nothing and leaves the delivery unsettled (reject sent anyway)."""
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        broker.publish("", "q", b"m")
        delivery = await channel.basic_get("q")
        assert delivery is not None
        sent = conn.bytes_sent
        with trio.CancelScope() as scope:
            scope.cancel()
            await getattr(delivery, settle)()
        assert scope.cancelled_caught
        await trio.sleep(0.01)
        assert conn.bytes_sent == sent
        assert not delivery.settled
        assert broker.queue("q").messages_unacknowledged == 1


async def test_delivery_without_properties_gets_empty_ones_on_first_access(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        broker.publish("", "q", b"bare")
        consumer = await channel.basic_consume("q", no_ack=True)
        delivery = await consumer.__anext__()
        assert delivery.properties == tl.BasicProperties()
        assert delivery.properties is delivery.properties  # made once, then kept
        assert repr(delivery).startswith("<Delivery 1 on channel 1 from exchange '' ")


async def test_call_cancelled_at_once_still_sends_its_request_whole(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        with trio.CancelScope() as scope:
            scope.cancel()  # the deadline has passed before the call starts
            await channel.queue_declare("declared-anyway")
        assert scope.cancelled_caught
        # The caller sent the frame itself (shielded) before waiting; the late
        # DeclareOk is consumed, so the channel stays in step.
        assert (await channel.queue_declare("next")).queue == "next"
        assert broker.queue("declared-anyway").messages_ready == 0
        assert channel.is_open


async def test_cancelling_the_block_around_a_connection_closes_it_at_once(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    with trio.move_on_after(1) as scope:
        async with tl.open_connection(stream_factory=broker.connect) as conn:
            await trio.sleep_forever()
    assert scope.cancelled_caught
    # Regression: aclose waited CLOSE_TIMEOUT (5 s) for a CloseOk that the
    # cancelled reader could never read.
    assert trio.current_time() - start < 1.5
    assert isinstance(conn.error, tl.ConnectionClosed)
    await trio.sleep(0.1)
    assert broker.connections == []  # the broker saw it go


async def test_closing_a_consumer_or_connection_with_a_full_buffer_is_prompt(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("q")
        for i in range(10):
            broker.publish("", "q", bytes([i]))
        start = trio.current_time()
        async with await channel.basic_consume("q", buffer_size=2) as consumer:
            while consumer.buffered < 2:
                await trio.sleep(0.01)
            # The reader now waits for room; nobody iterates.
        # Regression: leaving waited CLOSE_TIMEOUT for a CancelOk stuck behind
        # the deliveries the reader could not hand over.
        assert trio.current_time() - start < 1
        await trio.sleep(0.1)
        queue = broker.queue("q")
        assert (queue.messages_ready, queue.messages_unacknowledged) == (10, 0)
        consumer = await channel.basic_consume("q", buffer_size=2)
        while consumer.buffered < 2:
            await trio.sleep(0.01)
        start = trio.current_time()
        await conn.aclose()
        assert trio.current_time() - start < 1
    assert isinstance(conn.error, tl.ConnectionClosed)


async def test_cancelled_channel_open_is_closed_again(broker: FakeBrokerServer) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        with trio.move_on_after(0):
            await conn.channel()
        channel = await conn.channel()
        await channel.queue_declare("q")
        await trio.sleep(0.01)
        assert broker.connections[0].channel_ids == [channel.number]


async def test_leaving_the_block_leaves_no_task_behind(broker: FakeBrokerServer) -> None:
    def task_names() -> set[str]:
        root = trio.lowlevel.current_root_task()
        assert root is not None
        names: set[str] = set()
        stack = [root]
        while stack:
            task = stack.pop()
            names.add(task.name)
            for nursery in task.child_nurseries:
                stack.extend(nursery.child_tasks)
        return names

    async with tl.open_connection(stream_factory=broker.connect) as conn:
        inside = task_names()
        ours = {name for name in inside if name.startswith("<Connection")}
        assert {name.rsplit(" ", 1)[1] for name in ours} == {"reader", "writer", "heartbeats"}
    after = task_names()
    assert not [name for name in after if name.startswith("<Connection")]
    assert not conn.is_open


def handshake_bytes(heartbeat: int = 0) -> bytes:
    return b"".join(
        pamqp_frame.marshal(value, 0)
        for value in (
            commands.Connection.Start(),
            commands.Connection.Tune(2047, 131072, heartbeat),
            commands.Connection.OpenOk(),
        )
    )


@pytest.mark.parametrize(
    ("garbage", "code"),
    [
        (struct.pack(">BHI", 9, 0, 0) + b"\xce", 501),  # unknown frame type
        (pamqp_frame.marshal(commands.Basic.QosOk(), 5), 504),  # channel never opened
        (pamqp_frame.marshal(commands.Connection.Start(), 0), 503),  # Start again
    ],
)
async def test_protocol_error_from_broker_sends_close_and_loses_connection(
    garbage: bytes, code: int
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def factory() -> trio.abc.Stream:
        return client

    async with trio.open_nursery() as nursery:

        async def broker() -> None:
            await server.receive_some(8)
            await server.send_all(handshake_bytes())
            await server.send_all(garbage)

        nursery.start_soon(broker)
        async with tl.open_connection(stream_factory=factory) as conn:
            error = await conn.wait_closed()
        assert isinstance(error, tl.ConnectionLost)
        assert error.reply_code == code
        assert isinstance(error.__cause__, tl.RemoteProtocolError)
        sent = b""
        while chunk := await server.receive_some():
            sent += chunk
        frames = []
        while sent:
            used, _, value = pamqp_frame.unmarshal(sent)
            frames.append(value)
            sent = sent[used:]
        closes = [f for f in frames if isinstance(f, commands.Connection.Close)]
        assert [c.reply_code for c in closes] == [code]


async def test_broker_that_never_answers_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.memory_stream_pair()

    async def factory() -> trio.abc.Stream:
        return client

    start = trio.current_time()
    with pytest.raises(TimeoutError, match=r"took longer than 3\.0 s"):
        async with tl.open_connection(stream_factory=factory, connect_timeout=3.0):
            pass
    assert trio.current_time() - start == pytest.approx(3.0)
    await server.aclose()


async def test_broker_answering_with_another_protocol_version_is_reported() -> None:
    client, server = trio.testing.memory_stream_pair()

    async def factory() -> trio.abc.Stream:
        return client

    async with trio.open_nursery() as nursery:

        async def broker() -> None:
            await server.receive_some(8)
            await server.send_all(b"AMQP\x01\x01\x00\x0a")
            await server.aclose()

        nursery.start_soon(broker)
        with pytest.raises(tl.ConnectionLost, match="does not accept AMQP 0-9-1") as excinfo:
            async with tl.open_connection(stream_factory=factory):
                pass
        assert excinfo.value.reply_code == 540
