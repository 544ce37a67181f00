"""Who reads the socket: the reader task, or a task waiting for its answer.

On a TCP socket a task about to wait for the broker (a confirm, a reply, a
delivery) takes the reading over while the reader is idle, and dispatches
what it reads itself, so the answer reaches it without a hop through the
reader.  These tests run on the fake broker over a socket pair (the client
then sees a ``trio.SocketStream``, as on TCP) and check what that must not
break: order, the consumer buffer's backpressure, and waking a waiting task
when its answer comes some other way than through the socket.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trio_lavin as tl
from trio_lavin._client._connection import RECEIVE_SIZE, Connection
from trio_lavin._client._reading import Lot, ReaderState
from trio_lavin.testing import FakeBrokerServer, open_fake_broker


@pytest.fixture
async def broker() -> AsyncIterator[FakeBrokerServer]:
    async with open_fake_broker(heartbeat=10, transport="socketpair") as broker:
        yield broker


def spy_on_dispatch(conn: Connection) -> list[str]:
    """Record the name of the task behind each dispatch of received frames."""
    names: list[str] = []
    dispatch = conn._dispatch

    async def spy() -> bool:
        names.append(trio.lowlevel.current_task().name)
        return await dispatch()

    conn._dispatch = spy  # type: ignore[method-assign]
    return names


async def test_a_task_waiting_for_its_confirm_reads_and_dispatches_the_answer_itself(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        await channel.confirm_select()
        dispatches = spy_on_dispatch(conn)
        me = trio.lowlevel.current_task().name
        for number in range(100):
            await channel.publish(str(number).encode(), routing_key="jobs")
        by_me = sum(name == me for name in dispatches)
        # Every confirm was read by the publishing task: the reader task only
        # ever woke up to find the reading taken over.
        assert by_me == 100, dispatches[:10]
    assert broker.queue("jobs").messages_ready == 100


async def test_replies_and_deliveries_are_also_read_by_the_waiting_task(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        dispatches = spy_on_dispatch(conn)
        me = trio.lowlevel.current_task().name
        declared = await channel.queue_declare("jobs")
        assert declared.queue == "jobs"
        consumer = await channel.basic_consume("jobs", no_ack=True)
        channel.basic_publish_nowait(b"ping", routing_key="jobs")
        delivery = await consumer.__anext__()
        assert delivery.body == b"ping"
        assert me in dispatches
        assert dispatches.count(me) >= 3  # DeclareOk, ConsumeOk, the delivery


async def test_a_consumer_beyond_its_buffer_stops_the_reading_until_it_has_room(
    broker: FakeBrokerServer,
) -> None:
    """A task reading for itself dispatches a whole read, even beyond its
    consumer's buffer; then nobody reads (the broker's bytes wait in the
    socket) until the consumer has room, and every message comes, in order."""
    count, size, capacity = 2000, 1024, 10
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        for number in range(count):
            broker.publish("", "jobs", number.to_bytes(4, "big") * (size // 4))
        consumer = await channel.basic_consume("jobs", no_ack=True, buffer_size=capacity)
        first = await consumer.__anext__()
        assert first.body[:4] == (0).to_bytes(4, "big")
        await trio.sleep(0.2)
        before = conn.bytes_received
        buffered = consumer.buffered
        await trio.sleep(0.2)
        assert conn.bytes_received == before  # no reading while beyond the buffer
        assert consumer.buffered == buffered
        assert capacity < buffered <= capacity + RECEIVE_SIZE // size
        numbers = [0]
        with trio.fail_after(10):
            async for delivery in consumer:
                numbers.append(int.from_bytes(delivery.body[:4], "big"))
                if len(numbers) == count:
                    break
        assert numbers == list(range(count))


async def test_a_task_waiting_on_a_silent_socket_learns_at_once_that_its_channel_closed(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Closing a channel from another task ends the iteration of its
    consumer even though no byte comes from the (silent) broker: the task
    waiting for the socket is woken to look again."""
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        consumer = await channel.basic_consume("jobs")
        outcome: list[BaseException | None] = []

        async def iterate() -> None:
            try:
                async for _ in consumer:
                    pass
                outcome.append(None)
            except tl.ChannelClosed as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(iterate)
            await trio.sleep(1)
            reading = conn._reading
            assert reading is not None
            # The iterating task reads for itself.
            assert reading.state is ReaderState.HANDED_OVER
            broker.blackhole_all()
            started = trio.current_time()
            nursery.start_soon(channel.aclose)  # no CloseOk will come
            with trio.fail_after(1):
                while not outcome:
                    await trio.sleep(0.01)
            assert trio.current_time() - started < 1
        assert len(outcome) == 1
        assert isinstance(outcome[0], tl.ChannelClosed)


async def test_two_tasks_iterating_one_consumer_learn_that_its_channel_closed(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Two tasks iterate one consumer; after a delivery the idle one reads
    the socket for itself while the other is busy.  Closing the channel on a
    silent broker wakes the reading one at once (regression: the busy task,
    leaving its wait, unhooked the consumer's signal from the reading, and the
    other slept until the next frame)."""
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        consumer = await channel.basic_consume("jobs")
        ended: list[str] = []

        async def iterate(name: str) -> None:
            try:
                async for _ in consumer:
                    await trio.sleep(1000)  # busy with it for longer than the test
            except tl.ChannelClosed:
                ended.append(name)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(iterate, "a")
            nursery.start_soon(iterate, "b")
            await trio.sleep(1)
            broker.publish("", "jobs", b"one")
            await trio.sleep(1)
            reading = conn._reading
            assert reading is not None
            assert reading.state is ReaderState.HANDED_OVER  # the idle one reads
            broker.blackhole_all()
            nursery.start_soon(channel.aclose)  # no CloseOk will come
            with trio.fail_after(1):
                while not ended:
                    await trio.sleep(0.01)
            assert len(ended) == 1
            nursery.cancel_scope.cancel()


async def test_a_task_waiting_for_a_confirm_on_a_dead_connection_gets_connection_lost(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """The broker falls silent while a task waits for a confirm, reading the
    socket itself: the heartbeat timeout ends the connection and wakes it."""
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        await channel.confirm_select()
        await channel.publish(b"before", routing_key="jobs")
        broker.blackhole_all()
        started = trio.current_time()
        with trio.fail_after(60), pytest.raises(tl.ConnectionLost, match="heartbeat timeout"):
            await channel.publish(b"into the void", routing_key="jobs")
        # Two heartbeat intervals of silence, no more.
        assert 20 <= trio.current_time() - started <= 21


async def test_a_consumer_whose_connection_dies_while_it_flushes_ends_instead_of_waiting(
    broker: FakeBrokerServer,
) -> None:
    """Regression: iterating a consumer first sends what is queued, which can
    wait for a full socket; if the connection died meanwhile, the iteration
    went on to wait for a delivery that could never come (a hang found by the
    million-message memory test).  It must raise the connection's error."""
    async with tl.open_connection(stream_factory=broker.connect, heartbeat=10) as conn:
        channel = await conn.channel()
        await channel.queue_declare("jobs")
        consumer = await channel.basic_consume("jobs")
        broker.blackhole_all()  # the broker reads nothing more: the socket fills up
        chunk = bytes(32 * 1024)
        published = 0
        while published < 1000:  # until the send buffer is full
            try:
                channel.basic_publish_nowait(chunk, routing_key="jobs")
            except trio.WouldBlock:
                break
            published += 1
        assert 0 < published < 1000

        async def sever_soon() -> None:
            await trio.sleep(0.2)
            assert conn.sending.writing  # the consumer's task is sending
            broker.sever_all()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sever_soon)
            # No yield since the publishes: the writer has not taken them, so
            # the consumer's task sends them itself, and waits for the socket.
            with trio.fail_after(5), pytest.raises(tl.ConnectionLost):
                await consumer.__anext__()


@pytest.mark.parametrize("seed", range(6))
async def test_publishers_and_consumers_cancelled_at_random_keep_every_queue_in_order(
    broker: FakeBrokerServer, seed: int
) -> None:
    """Three confirm publishers and three consumers with tiny buffers and no
    prefetch share one connection, every wait under a random timeout (0
    included), so the reading passes between tasks and back to the reader
    at every point a task can be cancelled.  Each queue gets exactly what
    was published to it, in order."""
    rng = random.Random(seed)
    queues = range(3)
    sent: dict[int, list[bytes]] = {q: [] for q in queues}
    got: dict[int, list[bytes]] = {q: [] for q in queues}
    finished: set[int] = set()
    async with tl.open_connection(stream_factory=broker.connect) as conn:
        setup = await conn.channel()
        for q in queues:
            await setup.queue_declare(f"q{q}")

        async def publisher(q: int) -> None:
            channel = await conn.channel()
            await channel.confirm_select()
            for number in range(300):
                body = b"%d" % number
                with trio.move_on_after(rng.choice([0, 1e-5, 1e-4, 1])):
                    await channel.publish(body, routing_key=f"q{q}")
                if channel._amqp._channels[channel.number].publish_seq > len(sent[q]):
                    sent[q].append(body)  # queued before any cancellation
                if rng.random() < 0.05:
                    with trio.move_on_after(rng.choice([0, 1e-5, 1])):
                        await channel.queue_declare(f"q{q}", passive=True)
            await channel.wait_for_confirms()
            finished.add(q)

        async def consumer(q: int) -> None:
            channel = await conn.channel()
            consumer = await channel.basic_consume(f"q{q}", buffer_size=3)
            while not (q in finished and len(got[q]) == len(sent[q])):
                with trio.move_on_after(rng.choice([1e-5, 1e-3, 1])):
                    delivery = await consumer.__anext__()
                    got[q].append(delivery.body)
                    await delivery.ack()
                    if rng.random() < 0.1:
                        await trio.lowlevel.checkpoint()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for q in queues:
                    nursery.start_soon(publisher, q)
                    nursery.start_soon(consumer, q)
    for q in queues:
        assert len(sent[q]) > 0
        assert got[q] == sent[q]


async def test_a_lot_counts_exactly_the_tasks_parked_in_it() -> None:
    """``Lot.parked`` is what ``len()`` of its ParkingLot would say: a task
    counts from parking until it is unparked (not until it runs again) or
    its wait is cancelled, so the hot paths' ``if lot.parked`` never skips a
    waiting task and never unparks an empty lot."""
    lot = Lot()
    woken: list[int] = []

    async def waiter(n: int) -> None:
        await lot.park()
        woken.append(n)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(waiter, n)
        await trio.testing.wait_all_tasks_blocked()
        assert lot.parked == 3
        lot.unpark()
        assert lot.parked == 2  # at once, before the woken task runs
        await trio.testing.wait_all_tasks_blocked()
        assert len(woken) == 1  # one (the first to park; trio starts tasks in any order)
        lot.unpark_all()
        assert lot.parked == 0
        lot.unpark_all()  # nobody left: nothing to do
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woken) == [0, 1, 2]  # trio runs woken tasks in any order
        with trio.CancelScope() as scope:
            nursery.start_soon(waiter, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert lot.parked == 1
            scope.cancel()
        nursery.cancel_scope.cancel()
    assert lot.parked == 0
    assert sorted(woken) == [0, 1, 2]
