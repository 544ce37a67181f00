"""What the broker refuses is raised or reported once, never retried in a
loop: hard errors (Connection.Close naming a command) raised to the call that
sent the command, refused entities dropped from the topology replay, and a
broker that closes every connection given up on after
``Config.max_broker_closes`` (FakeBroker, MockClock)."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import pytest
import trio
import trio.testing

import trio_lavin as tl
from trio_lavin._robust._events import ClientEvent
from trio_lavin.testing import FakeBrokerServer

FAST = tl.Config(heartbeat=10, reconnect_jitter=0.0)


async def set_work_queue(broker: FakeBrokerServer, *, declared: bool) -> None:
    """Declare or delete the queue "work" from a connection of its own (as
    another application would)."""
    async with tl.open_connection(stream_factory=broker.connect) as other:
        channel = await other.channel()
        if declared:
            await channel.queue_declare("work")
        else:
            await channel.queue_delete("work")


def received(events: trio.MemoryReceiveChannel[ClientEvent]) -> list[ClientEvent]:
    """The client events that are waiting in ``events``."""
    seen = []
    while True:
        try:
            seen.append(events.receive_nowait())
        except trio.WouldBlock:
            return seen


async def test_a_declare_the_broker_refuses_outright_raises_command_refused_and_is_not_repeated(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        with pytest.raises(tl.CommandRefused) as info:
            await client.declare_exchange("events", "x-consistent-hash")
        refused = info.value
        assert refused.reply_code == 503
        assert refused.command == "exchange.declare"
        assert (refused.class_id, refused.method_id) == (40, 10)
        assert isinstance(refused, tl.ChannelClosed)
        assert isinstance(refused.__cause__, tl.ConnectionClosedByBroker)
        assert "refused exchange.declare" in str(refused)
        assert "x-consistent-hash" in str(refused)
        # The client reconnects once and goes on working; nothing was recorded.
        await client.declare_queue("after")
        stats = client.statistics()
        assert stats.reconnects == 1
        assert broker.connection_count == 2
        assert "events" not in broker.exchange_names()
        assert "after" in broker.queue_names()


async def test_a_refused_consume_raises_at_once_and_the_client_keeps_working(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """The first subscription to a queue that does not exist raises its 404
    (nothing to wait for), without a reconnect."""
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        with pytest.raises(tl.ChannelClosed) as info:
            async with client.consume("missing"):
                raise AssertionError("subscribed to a missing queue")
        assert info.value.reply_code == 404
        assert client.statistics().reconnects == 0
        await client.declare_queue("there")
        assert client.statistics().connects == 1


async def test_recovery_forgets_an_entity_the_broker_now_refuses_and_recovers_the_rest(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        await client.declare_exchange("ex", "topic")
        await client.declare_queue("q")
        await client.bind_queue("q", "ex", "k")
        # Someone else re-creates the exchange with another type: declaring it
        # again as a topic exchange is refused with 406 from now on.
        async with tl.open_connection(stream_factory=broker.connect) as other:
            channel = await other.channel()
            await channel.exchange_delete("ex")
            await channel.exchange_declare("ex", "fanout")
        async with client.events() as events:
            broker.sever_all()
            await trio.sleep(1)
            assert client.connected
            failures = [e for e in received(events) if isinstance(e, tl.RecoveryFailed)]
        assert [f.entity for f in failures] == ["exchange 'ex'"]
        assert isinstance(failures[0].error, tl.ChannelClosed)
        assert failures[0].error.reply_code == 406
        assert client.statistics().recovery_failures == 1
        # The queue and its binding (to the fanout exchange) were recovered.
        assert broker.publish("ex", "anything", b"routed") == 1
        # Forgotten: the next reconnect does not ask again.
        broker.sever_all()
        await trio.sleep(1)
        assert client.connected
        assert client.statistics().recovery_failures == 1
        assert client.statistics().reconnects == 2


async def test_recovery_forgets_an_entity_refused_with_a_hard_error_and_recovers_the_rest(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """An exchange whose type the broker no longer knows (its plugin was
    disabled) closes the connection when declared again: it is reported and
    forgotten, and the next connection recovers everything else."""
    broker.exchange_types.add("x-plugin")
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        # Exclusive: gone with the connection, so only the recovery brings them back.
        await client.declare_queue("before", exclusive=True)
        await client.declare_exchange("plugged", "x-plugin")
        await client.declare_queue("after", exclusive=True)
        await client.bind_queue("after", "amq.direct", "k")
        broker.exchange_types.discard("x-plugin")
        async with client.events() as events:
            broker.sever_all()
            await trio.sleep(2)
            assert client.connected
            failures = [e for e in received(events) if isinstance(e, tl.RecoveryFailed)]
        assert [f.entity for f in failures] == ["exchange 'plugged'"]
        assert isinstance(failures[0].error, tl.CommandRefused)
        assert failures[0].error.reply_code == 503
        assert sorted(broker.queue_names()) == ["after", "before"]
        assert broker.publish("amq.direct", "k", b"x") == 1
        stats = client.statistics()
        assert stats.recovery_failures == 1
        # One attempt failed (the refusal closed it), the next one recovered.
        assert stats.connect_attempts == 3
        assert stats.connects == 2


async def test_a_broker_that_closes_every_connection_after_open_makes_the_client_give_up(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """541 right after Connection.OpenOk, on every connection: the client
    tries ``max_broker_closes`` times with waits that follow the backoff
    policy, then raises the broker's reason out of ``open_client``."""
    config = dataclasses.replace(FAST, max_broker_closes=5)
    broker.close_after_open = (541, "INTERNAL_ERROR - out of order")
    starts: list[float] = []

    async def run_client() -> None:
        async with (
            tl.open_client(config=config, stream_factory=broker.connect) as client,
            client.events() as events,
        ):
            async for event in events:
                if isinstance(event, tl.StateChange) and event.new is tl.ClientState.CONNECTING:
                    starts.append(trio.current_time())

    with pytest.raises(tl.ConnectionClosedByBroker) as info:
        await run_client()
    assert info.value.reply_code == 541
    assert "closed 5 connections in a row with 541 INTERNAL_ERROR" in str(info.value)
    assert "out of order" in str(info.value)
    assert broker.connection_count == 5
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps == [0.1, 0.2, 0.4, 0.8]


async def test_a_command_refused_on_every_connection_backs_off_instead_of_resetting(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """A user retrying a command that the broker refuses outright: each
    refusal is raised, and the reconnects after them come ever more slowly
    (the backoff does not start over, as it does after a network loss)."""
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        reconnected_at: list[float] = []
        for _ in range(4):
            with pytest.raises(tl.CommandRefused):
                await client.declare_exchange("events", "no-such-type")
            refused_at = trio.current_time()
            await client.wait_connected()
            reconnected_at.append(round(trio.current_time() - refused_at, 6))
        assert reconnected_at == [0.1, 0.2, 0.4, 0.8]
        # A network loss then starts the backoff over.
        connection = await client.wait_connected()
        broker.sever_all()
        await connection.wait_closed()
        lost_at = trio.current_time()
        await client.wait_connected()
        assert round(trio.current_time() - lost_at, 6) == 0.1


def _producer_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_lavin.producer" and r.levelno == level
    ]


async def test_publishing_to_a_missing_exchange_backs_off_then_drops_as_rejected(
    broker: FakeBrokerServer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CONFIRM: the broker closes the channel (404) on every try; the
    producer pauses with the backoff between tries, says so in one WARNING,
    and after ``publish_retries`` drops the message as REJECTED, raised by
    ``publish()`` as MessageRejected."""
    caplog.set_level("DEBUG", logger="trio_lavin")
    config = dataclasses.replace(FAST, publish_retries=3)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        producer = client.producer(exchange="events", routing_key="order.created")
        drops: list[tuple[int, tl.DropReason]] = []
        producer.on_drop(lambda message, _target, reason: drops.append((message.attempts, reason)))
        start = trio.current_time()
        with pytest.raises(tl.MessageRejected) as info:
            await producer.publish(b"x")
        took = trio.current_time() - start
        assert info.value.reply_code == 404
        assert info.value.exchange == "events"
        assert "no exchange 'events'" in str(info.value)
        assert drops == [(4, tl.DropReason.REJECTED)]
        # Pauses of 0.1 + 0.2 + 0.4 s between the four tries.
        assert took == pytest.approx(0.7)
        stats = producer.statistics()
        assert stats.published == 4
        assert stats.dropped[tl.DropReason.REJECTED] == 1
        assert stats.buffered == stats.in_flight == 0
        assert client.statistics().reconnects == 0
    warnings = _producer_records(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "404" in warnings[0]
    assert "retried up to 3 times" in warnings[0]


async def test_fire_and_forget_to_a_missing_exchange_never_spins(
    broker: FakeBrokerServer,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """FIRE_AND_FORGET, 10 s of messages to an exchange that does not exist:
    channels are opened ever more slowly (0.1, 0.2, 0.4 ... s apart), one
    WARNING in all."""
    caplog.set_level("DEBUG", logger="trio_lavin")
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        producer = client.producer(exchange="events", mode=tl.PublishMode.FIRE_AND_FORGET)
        for _ in range(100):
            producer.publish_nowait(b"x")
            await trio.sleep(0.1)
        pauses = [m for m in _producer_records(caplog, logging.DEBUG) if "pausing" in m]
        warnings = _producer_records(caplog, logging.WARNING)
        # 0.1 + 0.2 + ... + 6.4 > 10 s: seven pauses at most.
        assert len(warnings) == 1, warnings
        assert 1 + len(pauses) <= 7, pauses
        assert producer.statistics().published <= 100
        assert client.statistics().reconnects == 0


async def test_a_confirm_ends_the_rejection_episode(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """A publish retried while its exchange is missing goes through, and is
    confirmed, once the exchange exists (within its ``publish_retries``)."""
    config = dataclasses.replace(FAST, publish_retries=100)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        producer = client.producer(exchange="late", routing_key="k")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer.publish, b"first")
            await trio.sleep(3.05)  # tries at 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s
            await client.declare_exchange("late", "direct")
        assert producer.statistics().confirmed == 1
        assert producer.statistics().published == 6


async def test_a_consumer_whose_queue_is_gone_at_recovery_tries_again_with_backoff(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """The recovery cannot subscribe the consumer again (404: its queue was
    deleted while the client was disconnected): the consumer backs off and
    subscribes once the queue is back, instead of waiting for ever."""

    await set_work_queue(broker, declared=True)
    async with (
        tl.open_client(config=FAST, stream_factory=broker.connect) as client,
        client.consume("work") as consumer,
    ):
        broker.sever_all()
        # Gone before the client reconnects (0.1 s later).
        await set_work_queue(broker, declared=False)
        await trio.sleep(1)
        assert client.connected
        assert client.statistics().recovery_failures == 1
        await set_work_queue(broker, declared=True)
        broker.publish("", "work", b"back")
        with trio.fail_after(60):
            delivery = await consumer.__anext__()
        assert delivery.body == b"back"
        assert await delivery.ack()


async def test_a_cancelled_ack_leaves_the_delivery_unsettled(broker: FakeBrokerServer) -> None:
    """An ack cancelled before it was queued sent nothing: the delivery can
    still be acked (regression: it was marked settled first, and the retry
    raised DeliveryAlreadySettled while the message stayed unacked)."""
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("work")
        broker.publish("", "work", b"x")
        async with await channel.basic_consume("work") as consumer:
            delivery = await consumer.__anext__()
            with trio.CancelScope() as scope:
                scope.cancel()
                await delivery.ack()
            assert scope.cancelled_caught
            settled_before = delivery.settled
            assert not settled_before
            assert await delivery.ack()
            settled_after = delivery.settled
            assert settled_after
            with pytest.raises(tl.DeliveryAlreadySettled):
                await delivery.ack()
        assert broker.queue("work").messages_ready == 0
        assert broker.queue("work").messages_unacknowledged == 0


async def test_a_consumer_iterated_while_its_queue_is_gone_subscribes_once_it_is_back(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """The task is already waiting for a delivery when the connection drops
    and the queue is deleted: the recovery is refused (404) and the consumer
    tries again with backoff until the queue is back (regression: after one
    failed try it waited for a wake-up that never came)."""

    await set_work_queue(broker, declared=True)
    got: list[bytes] = []
    async with (
        tl.open_client(config=FAST, stream_factory=broker.connect) as client,
        client.consume("work") as consumer,
        trio.open_nursery() as nursery,
    ):

        async def iterate() -> None:
            async for delivery in consumer:
                got.append(delivery.body)
                await delivery.ack()
                return

        nursery.start_soon(iterate)
        await trio.sleep(0.01)
        broker.sever_all()
        await set_work_queue(broker, declared=False)  # before the reconnect, 0.1 s later
        await trio.sleep(5)  # refused, tried again, refused again...
        assert client.connected
        assert not got
        await set_work_queue(broker, declared=True)
        broker.publish("", "work", b"back")
        with trio.fail_after(60):
            while not got:
                await trio.sleep(0.1)
        assert got == [b"back"]


async def test_recovery_keeps_a_binding_refused_while_its_exchange_is_missing(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """A binding to an exchange another application owns, deleted while the
    client was disconnected (404): reported, but kept, and recovered after a
    later reconnect once the exchange is back (regression: it was forgotten
    for good after one transient refusal)."""

    async def on_other_connection(declare: bool) -> None:
        async with tl.open_connection(stream_factory=broker.connect) as other:
            channel = await other.channel()
            if declare:
                await channel.exchange_declare("ext", "direct")
            else:
                await channel.exchange_delete("ext")

    await on_other_connection(declare=True)
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("mine", exclusive=True)  # gone with each connection
        await client.bind_queue("mine", "ext", "k")
        broker.sever_all()
        await on_other_connection(declare=False)  # before the reconnect
        await trio.sleep(1)
        assert client.connected
        assert client.statistics().recovery_failures == 1
        await on_other_connection(declare=True)
        broker.sever_all()
        await trio.sleep(1)
        assert client.connected
        assert client.statistics().recovery_failures == 1  # recovered this time
        assert broker.publish("ext", "k", b"routed") == 1


async def test_requeued_says_whether_the_message_comes_back(broker: FakeBrokerServer) -> None:
    """``Delivery.requeued`` is True after a nack or reject with requeue, and False
    after an ack or a nack or reject without it."""
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("work")
        for number in range(5):
            broker.publish("", "work", b"%d" % number)
        requeued = {}
        async with await channel.basic_consume("work") as consumer:
            for settle in ("ack", "nack", "nack-discard", "reject", "reject-discard"):
                delivery = await consumer.__anext__()
                if settle == "ack":
                    assert await delivery.ack()
                elif settle.startswith("nack"):
                    assert await delivery.nack(requeue=settle == "nack")
                else:
                    assert await delivery.reject(requeue=settle == "reject")
                requeued[settle] = delivery.requeued
    assert requeued == {
        "ack": False,
        "nack": True,
        "nack-discard": False,
        "reject": True,
        "reject-discard": False,
    }
