"""open_client against the FakeBroker under trio's MockClock: reconnects,
failure detection, fatal errors, topology recovery, task ownership."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
import trio.testing

import trio_lavin as tl
from trio_lavin.testing import FakeBrokerServer, open_fake_broker

FAST = tl.Config(heartbeat=10, reconnect_jitter=0.0)


def client_tasks() -> list[str]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    names: list[str] = []
    stack = [root]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return [n for n in names if n.startswith(("trio-lavin", "<Connection"))]


async def test_client_connects_and_reports_state(broker: FakeBrokerServer) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        async with client.events() as events:
            connection = await client.wait_connected()
            assert client.connected
            assert client.state is tl.ClientState.CONNECTED
            stats = client.statistics()
            assert stats.connects == 1
            assert stats.reconnects == 0
            assert connection.heartbeat == 10
        del events
    assert client.statistics().state is tl.ClientState.CLOSED


async def test_sever_reconnects_after_the_initial_delay_and_counts_it(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        first = await client.wait_connected()
        async with client.events() as events:
            start = trio.current_time()
            broker.sever_all()
            await first.wait_closed()
            second = await client.wait_connected()
            assert second is not first
            assert trio.current_time() - start == pytest.approx(0.1)
            states: list[tuple[tl.ClientState, tl.ClientState]] = []
            while len(states) < 3:
                event = await events.receive()
                if isinstance(event, tl.StateChange):
                    states.append((event.old, event.new))
        assert states == [
            (tl.ClientState.CONNECTED, tl.ClientState.DISCONNECTED),
            (tl.ClientState.DISCONNECTED, tl.ClientState.CONNECTING),
            (tl.ClientState.CONNECTING, tl.ClientState.CONNECTED),
        ]
        stats = client.statistics()
        assert stats.reconnects == 1
        assert stats.detections_by_event == 1
        assert stats.detections_by_poll == 0


async def test_backoff_grows_while_the_broker_refuses_then_resets(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        broker.refuse_connections = True
        broker.sever_all()
        await trio.sleep(3.0)  # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 = 3.1: four attempts fail
        assert client.statistics().failed_attempts == 4
        broker.refuse_connections = False
        await client.wait_connected()
        assert client._supervisor.delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
        assert trio.current_time() == pytest.approx(3.1, abs=0.01)
        # Healthy again: the next loss waits the initial delay, not 3.2 s.
        broker.sever_all()
        await trio.sleep(0.05)
        await client.wait_connected()
        assert client._supervisor.delays[-1] == pytest.approx(0.1)


async def test_blackhole_is_detected_within_two_heartbeats_plus_one_second(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        first = await client.wait_connected()
        start = trio.current_time()
        broker.blackhole_all()
        error = await first.wait_closed()
        detected = trio.current_time() - start
        assert isinstance(error, tl.ConnectionLost)
        assert detected <= 2 * 10 + 1
        await client.wait_connected()
        assert client.statistics().reconnects == 1


async def test_health_poll_catches_a_dead_reader(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        first = await client.wait_connected()
        # Simulate the event path failing silently: the reader task is gone
        # but nobody was told.
        first._running.discard("reader")
        start = trio.current_time()
        await first.wait_closed()
        assert trio.current_time() - start <= 0.1 + 1e-9
        assert first.failed_by_poll
        await client.wait_connected()
        assert client.statistics().detections_by_poll == 1


async def test_health_poll_catches_a_hanging_write(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    config = tl.Config(heartbeat=0, write_timeout=2.0, reconnect_jitter=0.0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        first = await client.wait_connected()
        first.sending.write_started = trio.current_time()  # a write that never finishes
        await first.wait_closed()
        assert first.failed_by_poll
        assert "has not finished" in str(first.error)


async def test_wrong_password_raises_access_refused_after_bounded_tries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_broker(users={"guest": "right"}) as broker:
        with pytest.raises(tl.ConnectionClosedByBroker) as excinfo:
            async with tl.open_client(
                "amqp://guest:wrong@localhost/", FAST, stream_factory=broker.connect
            ) as client:
                await client.wait_connected()
        assert excinfo.value.reply_code == 403
        assert "ACCESS_REFUSED" in str(excinfo.value)
        assert "wrong" not in str(excinfo.value)
        assert broker.connection_count == 3  # max_fatal_attempts


async def test_max_reconnect_attempts_gives_up_with_the_last_error(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    broker.refuse_connections = True
    config = tl.Config(max_reconnect_attempts=4, reconnect_jitter=0.0)
    with pytest.raises(tl.ConnectionLost, match="gave up after 4 attempts"):
        async with tl.open_client(config=config, stream_factory=broker.connect) as client:
            await client.wait_connected()
    assert trio.current_time() == pytest.approx(0.1 + 0.2 + 0.4)


async def test_topology_is_declared_again_after_reconnect(broker: FakeBrokerServer) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_exchange("orders", "topic", durable=True)
        await client.declare_queue("eu-orders", durable=True)
        await client.bind_queue("eu-orders", "orders", "*.eu")
        await client.declare_queue("temp", exclusive=True)
        await client.declare_queue("gone")
        await client.delete_queue("gone")
        first = await client.wait_connected()
        # A broker that lost everything (a restart without durability).
        broker.sever_all()
        broker._vhosts["/"].queues.clear()
        broker._vhosts["/"].exchanges.pop("orders")
        await first.wait_closed()
        await client.wait_connected()
        assert broker.queue_names() == ["eu-orders", "temp"]
        assert "orders" in broker.exchange_names()
        assert broker.publish("orders", "x.eu", b"routed") == 1
        assert broker.queue("eu-orders").messages_ready == 1


async def test_server_named_queue_gets_a_new_name_and_bindings_follow(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_exchange("fan", "fanout")
        ok = await client.declare_queue("", exclusive=True)
        original = ok.queue
        await client.bind_queue(original, "fan")
        async with client.events() as events:
            first = await client.wait_connected()
            broker.sever_all()
            await first.wait_closed()
            await client.wait_connected()
            renamed = None
            while renamed is None:
                event = await events.receive()
                if isinstance(event, tl.QueueRenamed):
                    renamed = event
        assert renamed.old == original
        assert renamed.new != original
        assert client.current_queue_name(original) == renamed.new
        assert broker.queue_names() == [renamed.new]
        assert broker.publish("fan", "", b"m") == 1
        assert await client.purge_queue(original) == 1


async def test_entity_that_fails_to_recover_is_reported_and_the_rest_recovers(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("good-1")
        await client.declare_exchange("ex", "direct")
        await client.declare_queue("good-2")
        first = await client.wait_connected()
        async with client.events() as events:
            broker.sever_all()
            # While we are away, the exchange is re-created with another type.
            broker._vhosts["/"].exchanges.pop("ex")
            broker._vhosts["/"].queues.clear()
            async with tl.open_connection(stream_factory=broker.connect) as other:
                channel = await other.channel()
                await channel.exchange_declare("ex", "fanout")
            await first.wait_closed()
            await client.wait_connected()
            failures: list[tl.RecoveryFailed] = []
            while not failures:
                event = await events.receive()
                if isinstance(event, tl.RecoveryFailed):
                    failures.append(event)
        assert failures[0].entity == "exchange 'ex'"
        assert isinstance(failures[0].error, tl.ChannelClosed)
        assert failures[0].error.reply_code == 406
        assert set(broker.queue_names()) == {"good-1", "good-2"}
        assert client.statistics().recovery_failures == 1
        assert client.connected


async def test_recovering_consumer_receives_again_after_reconnect(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("jobs", durable=True)
        async with client.consume("jobs", prefetch=10) as consumer:
            broker.publish("", "jobs", b"before")
            first = await consumer.__anext__()
            assert first.body == b"before"
            assert await first.ack()
            with trio.fail_after(5):
                while broker.queue("jobs").messages_unacknowledged:
                    await trio.sleep(0.001)
            connection = await client.wait_connected()
            broker.sever_all()
            await connection.wait_closed()
            broker.publish("", "jobs", b"after")
            with trio.fail_after(5):
                second = await consumer.__anext__()
            assert second.body == b"after"
            assert await second.ack()
            assert consumer.subscriptions == 2


async def test_stale_delivery_ack_returns_false_and_message_is_redelivered(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("jobs")
        async with client.consume("jobs", prefetch=10) as consumer:
            broker.publish("", "jobs", b"m")
            stale = await consumer.__anext__()
            connection = await client.wait_connected()
            broker.sever_all()
            await connection.wait_closed()
            assert not await stale.ack()
            with trio.fail_after(5):
                again = await consumer.__anext__()
            assert again.body == b"m"
            assert again.redelivered
            assert await again.ack()


async def test_consumer_resubscribes_after_server_cancel(broker: FakeBrokerServer) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("jobs")
        async with client.consume("jobs", prefetch=5) as consumer:
            assert broker.cancel_consumers("jobs") == 1
            broker.publish("", "jobs", b"still here")
            with trio.fail_after(5):
                delivery = await consumer.__anext__()
            assert delivery.body == b"still here"
            assert consumer.subscriptions == 2


async def test_consumer_resubscribes_after_broker_channel_close(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("jobs")
        async with client.consume("jobs", prefetch=5) as consumer:
            assert consumer.channel is not None
            broker.close_channel(
                broker.connections[0],
                consumer.channel.number,
                406,
                "PRECONDITION_FAILED - delivery acknowledgement timed out",
            )
            broker.publish("", "jobs", b"after timeout")
            with trio.fail_after(5):
                delivery = await consumer.__anext__()
            assert delivery.body == b"after timeout"
            assert consumer.subscriptions == 2


async def test_no_task_outlives_the_client(broker: FakeBrokerServer) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        async with client.consume("q", prefetch=1):
            names = client_tasks()
            assert "trio-lavin supervisor" in names
            assert "trio-lavin health poll" in names
            assert any(n.endswith(" reader") for n in names)
    assert client_tasks() == []


async def test_failover_tries_the_next_url(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fake_broker() as good:
        attempts: list[int] = []

        async def factory() -> trio.abc.Stream:
            attempts.append(len(attempts))
            if len(attempts) % 2 == 1:
                raise OSError(111, "Connection refused")
            return await good.connect()

        urls = ["amqp://guest:guest@down.invalid/", "amqp://guest:guest@up.invalid/"]
        in_order = dataclasses.replace(FAST, shuffle_urls=False)
        async with tl.open_client(urls, in_order, stream_factory=factory) as client:
            await client.wait_connected()
            stats = client.statistics()
        assert stats.endpoint == "amqp://up.invalid:5672/%2F"
        assert stats.failed_attempts == 1


async def test_endpoint_timeout_gives_up_on_a_silent_node_and_tries_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node that never answers (a blackholed host) costs endpoint_timeout,
    then the next URL is tried at once."""
    async with open_fake_broker() as good:
        clients: list[tl.Client] = []

        async def factory() -> trio.abc.Stream:
            if clients[0].statistics().endpoint == "amqp://silent.invalid:5672/%2F":
                await trio.sleep_forever()
            return await good.connect()

        urls = ["amqp://guest:guest@silent.invalid/", "amqp://guest:guest@up.invalid/"]
        config = dataclasses.replace(FAST, shuffle_urls=False, endpoint_timeout=2.0)
        start = trio.current_time()
        async with tl.open_client(urls, config, stream_factory=factory) as client:
            clients.append(client)  # before the supervisor runs
            await client.wait_connected()
            assert trio.current_time() - start == pytest.approx(2.0)
            stats = client.statistics()
        assert stats.endpoint == "amqp://up.invalid:5672/%2F"
        assert stats.failed_attempts == 1
        assert "within endpoint_timeout 2.0 s" in (stats.last_error or "")
    with pytest.raises(ValueError, match="endpoint_timeout must be a number > 0, not 0"):
        tl.Config(endpoint_timeout=0)


async def test_losing_a_node_fails_over_to_the_next_and_back_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two brokers behind two URLs: the one in use goes down, the client is on
    the other after the initial delay (and the producer's and consumer's work
    continues there); when that one goes down too, the first is used again."""
    async with open_fake_broker() as a, open_fake_broker() as b:
        brokers = {"amqp://a.invalid:5672/%2F": a, "amqp://b.invalid:5672/%2F": b}
        clients: list[tl.Client] = []

        async def factory() -> trio.abc.Stream:
            endpoint = clients[0].statistics().endpoint
            assert endpoint is not None
            return await brokers[endpoint].connect()

        urls = ["amqp://guest:guest@a.invalid/", "amqp://guest:guest@b.invalid/"]
        config = dataclasses.replace(FAST, shuffle_urls=False)
        async with tl.open_client(urls, config, stream_factory=factory) as client:
            clients.append(client)  # before the supervisor runs
            await client.declare_queue("q")
            producer = client.producer("q")
            assert await producer.publish(b"on a")
            a.refuse_connections = True
            a.sever_all()
            lost_at = trio.current_time()
            assert await producer.publish(b"on b")
            connection = await client.wait_connected()
            assert trio.current_time() - lost_at == pytest.approx(0.1)
            assert client.statistics().endpoint == "amqp://b.invalid:5672/%2F"
            assert [m.body for m in b.queue("q").messages] == [b"on b"]
            a.refuse_connections = False
            b.refuse_connections = True
            b.sever_all()
            await connection.wait_closed()
            assert await producer.publish(b"on a again")
            assert client.statistics().endpoint == "amqp://a.invalid:5672/%2F"
            assert [m.body for m in a.queue("q").messages] == [b"on a", b"on a again"]
            assert client.statistics().reconnects == 2


async def test_jitter_spreads_delays_within_bounds(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    config = tl.Config(reconnect_jitter=0.5)
    async with tl.open_client(
        config=config, stream_factory=broker.connect, rng=random.Random(7)
    ) as client:
        await client.wait_connected()
        for _ in range(5):
            connection = await client.wait_connected()
            broker.sever_all()
            await connection.wait_closed()
        await client.wait_connected()
        delays = client._supervisor.delays
        assert len(set(delays)) == 5
        assert all(0.05 <= d <= 0.15 for d in delays)


class DeafAfterOpen(trio.abc.Stream):
    """Passes the handshake through, then drops everything the client sends
    (a broker that stops hearing the client once connected)."""

    def __init__(self, inner: trio.abc.Stream, *, deaf: bool) -> None:
        self.inner = inner
        self.deaf = deaf
        self.opened = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.opened and self.deaf:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if b"\x00\x0a\x00\x29" in data:  # Connection.OpenOk
            self.opened = True
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_recovery_that_hangs_past_connect_timeout_fails_only_that_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Re-declaring after connecting takes longer than connect_timeout (the
    broker stopped hearing us): that attempt failed, and the next one
    connects (trio's TooSlowError escaped and took the whole client down)."""
    async with open_fake_broker(heartbeat=10) as broker:
        attempts = 0

        async def connect() -> trio.abc.Stream:
            nonlocal attempts
            attempts += 1
            return DeafAfterOpen(await broker.connect(), deaf=attempts == 1)

        config = tl.Config(heartbeat=10, reconnect_jitter=0.0, connect_timeout=2)
        with trio.fail_after(30):
            async with tl.open_client(config=config, stream_factory=connect) as client:
                await client.declare_queue("q")
                await client.wait_connected()
                assert attempts == 2
                assert client.statistics().connects == 1


async def test_a_queue_declared_again_keeps_its_bindings_across_reconnects(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Declaring a queue again (an idempotent start-up) after binding it: a
    reconnect re-declares it before its binding, as first declared (the
    binding came first and failed with 404 on every reconnect)."""
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.declare_exchange("x", "direct")
        await client.declare_queue("q", exclusive=True)
        await client.bind_queue("q", "x", "k")
        await client.declare_queue("q", exclusive=True)
        for _ in range(2):
            connection = await client.wait_connected()
            broker.sever_all()
            await connection.wait_closed()
            await client.wait_connected()
            assert broker.publish("x", "k", b"m") == 1
        assert client.statistics().recovery_failures == 0


async def test_a_consumer_of_a_server_named_queue_by_a_later_name_follows_it(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """A consumer given the name a server-named queue had after one
    reconnect still finds it after the next (only its first name was
    translated, so the consumer's subscription failed with 404)."""
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        first = (await client.declare_queue("", exclusive=True)).queue
        connection = await client.wait_connected()
        broker.sever_all()
        await connection.wait_closed()
        await client.wait_connected()
        second = client.current_queue_name(first)
        assert second != first
        async with client.consume(second) as consumer:
            connection = await client.wait_connected()
            broker.sever_all()
            await connection.wait_closed()
            await client.wait_connected()
            with trio.fail_after(5):
                while consumer.subscriptions < 2:
                    await trio.sleep(0.01)
            third = client.current_queue_name(first)
            assert client.current_queue_name(second) == third != second
            assert broker.queue(third).consumer_count == 1
            assert client.statistics().recovery_failures == 0


async def test_a_connection_that_lived_longer_than_the_wait_before_it_starts_the_waits_over(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """A sever storm of connections that each live a while (longer than the
    wait before them) is ridden out at the initial delay every time."""
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        start = trio.current_time()
        for _ in range(5):
            connection = await client.wait_connected()
            await trio.sleep(0.5)
            broker.sever_all()
            await connection.wait_closed()
        await client.wait_connected()
        # 5 x (0.5 s up + 0.1 s wait); growing waits would add 0.1 + 0.2 + ... + 1.6 s.
        assert trio.current_time() - start < 3.5
        assert client.statistics().reconnects == 5
    assert broker.connection_count == 6


class Throttled(trio.abc.Stream):
    """A live link that moves 1 MB a second, steadily."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for i in range(0, len(view), 100_000):
            await self.inner.send_all(view[i : i + 100_000])
            await trio.sleep(0.1)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_long_write_that_makes_progress_is_not_taken_for_a_hung_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 40 MB message over a 1 MB/s link takes 40 s to write: longer than
    write_timeout (30 s), but bytes move all along, so the health poll lets
    it finish (it declared the connection dead every 30 s, for ever)."""
    async with open_fake_broker(heartbeat=60) as broker:

        async def connect() -> trio.abc.Stream:
            return Throttled(await broker.connect())

        config = tl.Config(heartbeat=60, reconnect_jitter=0.0, write_timeout=30.0)
        async with tl.open_client(config=config, stream_factory=connect) as client:
            await client.declare_queue("big")
            with trio.fail_after(100):
                assert await client.producer("big").publish(b"x" * 40_000_000)
            assert client.statistics().detections_by_poll == 0
            assert client.statistics().connects == 1
        assert broker.queue("big").messages_ready == 1
