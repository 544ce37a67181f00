"""The buffered Producer against the FakeBroker: buffer policies, confirms,
drops, re-publishing after a reconnect, and "exactly one outcome"."""

from __future__ import annotations

import datetime
import functools
import gc
import logging
from collections.abc import Sequence

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_lavin as tl
from trio_lavin._robust import _pausing as tl_pausing
from trio_lavin._robust._producer import BURST_MESSAGES
from trio_lavin._sansio._publishing import PublishFields
from trio_lavin.testing import FakeBrokerServer, open_fake_broker

SMALL = tl.Config(buffer_size=5, reconnect_jitter=0.0, heartbeat=10)


def bodies(broker: FakeBrokerServer, queue: str) -> list[bytes]:
    return [m.body for m in broker.queue(queue).messages]


class Drops:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, str, tl.DropReason]] = []

    def __call__(self, message: tl.Message, target: str, reason: tl.DropReason) -> None:
        self.seen.append((message.body, target, reason))


async def declare_then_disconnect(client: tl.Client, broker: FakeBrokerServer) -> None:
    await client.declare_queue("q")
    connection = await client.wait_connected()
    broker.refuse_connections = True
    broker.sever_all()
    await connection.wait_closed()


async def test_drop_oldest_evicts_and_reports_the_oldest_while_disconnected(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q", buffer_policy=tl.BufferPolicy.DROP_OLDEST)
        drops = Drops()
        producer.on_drop(drops)
        for i in range(8):
            assert producer.publish_nowait(b"%d" % i)
        assert drops.seen == [(b"%d" % i, "q", tl.DropReason.EVICTED) for i in range(3)]
        assert producer.statistics().buffered == 5
        broker.refuse_connections = False
        with trio.fail_after(5):
            await producer.drain()
        assert bodies(broker, "q") == [b"3", b"4", b"5", b"6", b"7"]
        assert producer.statistics().confirmed == 5


async def test_drop_newest_refuses_and_reports_the_new_messages(broker: FakeBrokerServer) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q", buffer_policy=tl.BufferPolicy.DROP_NEWEST)
        drops = Drops()
        producer.on_drop(drops)
        taken = [producer.publish_nowait(b"%d" % i) for i in range(8)]
        assert taken == [True] * 5 + [False] * 3
        assert [(b, r) for b, _, r in drops.seen] == [
            (b"5", tl.DropReason.BUFFER_FULL),
            (b"6", tl.DropReason.BUFFER_FULL),
            (b"7", tl.DropReason.BUFFER_FULL),
        ]
        broker.refuse_connections = False
        with trio.fail_after(5):
            await producer.drain()
        assert bodies(broker, "q") == [b"0", b"1", b"2", b"3", b"4"]


async def test_raise_policy_raises_buffer_full_and_keeps_the_rest(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q", buffer_policy=tl.BufferPolicy.RAISE)
        drops = Drops()
        producer.on_drop(drops)
        for i in range(5):
            producer.publish_nowait(b"%d" % i)
        with pytest.raises(tl.BufferFull, match=r"buffer for 'q' is full \(5 messages\)"):
            producer.publish_nowait(b"5")
        assert drops.seen == []
        broker.refuse_connections = False
        with trio.fail_after(5):
            await producer.drain()
        assert bodies(broker, "q") == [b"0", b"1", b"2", b"3", b"4"]


async def test_block_policy_waits_for_room_and_nowait_raises_would_block(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer(
            "q", buffer_policy=tl.BufferPolicy.BLOCK, mode=tl.PublishMode.FIRE_AND_FORGET
        )
        for i in range(5):
            producer.publish_nowait(b"%d" % i)
        with pytest.raises(trio.WouldBlock):
            producer.publish_nowait(b"x")
        published = trio.Event()

        async def blocked_publisher() -> None:
            await producer.publish(b"5")
            published.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_publisher)
            await trio.sleep(0.2)
            assert not published.is_set()
            broker.refuse_connections = False
            with trio.fail_after(5):
                await published.wait()
                await producer.drain()
                # Fire-and-forget: drained means written, not yet received.
                while len(bodies(broker, "q")) < 6:
                    await trio.sleep(0.001)
        assert bodies(broker, "q") == [b"%d" % i for i in range(6)]


async def test_confirm_mode_publish_returns_after_the_broker_confirmed(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q")
        assert await producer.publish(b"m", headers={"k": "v"})
        assert bodies(broker, "q") == [b"m"]
        assert broker.queue("q").messages[0].properties.headers == {"k": "v"}
        assert producer.statistics().confirmed == 1


async def test_nack_is_raised_and_reported_when_retries_are_off(broker: FakeBrokerServer) -> None:
    config = tl.Config(nack_retries=0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q")
        drops = Drops()
        producer.on_drop(drops)
        broker.nack_next(1)
        with pytest.raises(tl.MessageNacked):
            await producer.publish(b"nacked")
        assert await producer.publish(b"fine")
        assert drops.seen == [(b"nacked", "q", tl.DropReason.NACKED)]
        stats = producer.statistics()
        assert (stats.nacked, stats.confirmed, stats.retries) == (1, 1, 0)


async def test_a_nacked_message_is_published_again_after_a_pause(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """A quorum queue nacks while it elects a leader: the producer pauses
    ``nack_retry_delay`` and publishes the message again, on a new channel;
    publish() returns once that copy is confirmed, and nothing is dropped."""
    config = tl.Config(heartbeat=10, reconnect_jitter=0.0, nack_retry_delay=0.25)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q")
        drops = Drops()
        producer.on_drop(drops)
        assert await producer.publish(b"warm-up")
        first_channel = producer._channel
        broker.nack_next(1)
        start = trio.current_time()
        assert await producer.publish(b"nacked once")
        assert trio.current_time() - start == pytest.approx(0.25)
        # The retry went out on a new channel, and the old one was closed.
        assert first_channel is not None
        assert not first_channel.is_open
        assert producer._channel is not first_channel
        stats = producer.statistics()
        assert (stats.retries, stats.nacked, stats.confirmed, stats.republished) == (1, 0, 2, 1)
        assert drops.seen == []
        assert bodies(broker, "q") == [b"warm-up", b"nacked once"]


async def test_nacks_are_retried_with_backoff_then_dropped_as_nacked(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """nack_retries=3: the message is published four times, the pauses
    between are 0.1, 0.2 and 0.4 s; the fourth nack drops it."""
    config = tl.Config(heartbeat=10, reconnect_jitter=0.0, nack_retries=3)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q")
        dropped: list[tuple[int, int, tl.DropReason]] = []
        producer.on_drop(lambda m, target, reason: dropped.append((m.attempts, m.nacks, reason)))
        assert await producer.publish(b"warm-up")
        broker.nack_next(4)
        start = trio.current_time()
        with pytest.raises(tl.MessageNacked):
            await producer.publish(b"refused")
        assert trio.current_time() - start == pytest.approx(0.1 + 0.2 + 0.4)
        assert dropped == [(4, 4, tl.DropReason.NACKED)]
        stats = producer.statistics()
        assert (stats.retries, stats.nacked, stats.dropped[tl.DropReason.NACKED]) == (3, 1, 1)
        assert await producer.publish(b"fine")
        assert bodies(broker, "q") == [b"warm-up", b"fine"]


async def test_messages_published_after_a_nack_wait_behind_the_nacked_one(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """While the producer pauses after a nack it publishes nothing; then the
    nacked message goes first, in its original place, before newer ones."""
    config = tl.Config(heartbeat=10, reconnect_jitter=0.0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q")
        assert await producer.publish(b"warm-up")
        broker.nack_next(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer.publish, b"first")
            await trio.sleep(0.05)  # nacked, the producer pauses
            assert producer.statistics().retries == 1
            for i in range(3):
                producer.publish_nowait(b"later-%d" % i)
            await trio.sleep(0.01)
            assert bodies(broker, "q") == [b"warm-up"]
            with trio.fail_after(5):
                await producer.drain()
        assert bodies(broker, "q") == [b"warm-up", b"first", b"later-0", b"later-1", b"later-2"]
        assert producer.statistics().confirmed == 5


async def test_unroutable_mandatory_message_is_returned_and_reported(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        producer = client.producer(exchange="", routing_key="nowhere", mandatory=True)
        drops = Drops()
        producer.on_drop(drops)
        with pytest.raises(tl.MessageReturned) as excinfo:
            await producer.publish(b"lost")
        assert excinfo.value.reply_code == 312
        assert drops.seen == [(b"lost", "nowhere", tl.DropReason.RETURNED)]


@pytest.mark.parametrize("mode", list(tl.PublishMode))
async def test_too_large_message_is_refused_at_once(
    broker: FakeBrokerServer, mode: tl.PublishMode
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        producer = client.producer("q", max_message_size=10, mode=mode)
        drops = Drops()
        producer.on_drop(drops)
        with pytest.raises(tl.MessageTooLarge, match="11 bytes exceeds max_message_size 10"):
            producer.publish_nowait(b"x" * 11)
        assert drops.seen == [(b"x" * 11, "q", tl.DropReason.TOO_LARGE)]


@pytest.mark.parametrize("mode", list(tl.PublishMode))
async def test_closing_without_drain_reports_every_buffered_message(
    broker: FakeBrokerServer, mode: tl.PublishMode
) -> None:
    drops = Drops()
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q", mode=mode)
        producer.on_drop(drops)
        for i in range(3):
            producer.publish_nowait(b"%d" % i)
    assert drops.seen == [(b"%d" % i, "q", tl.DropReason.CLOSED) for i in range(3)]
    with pytest.raises(tl.ProducerClosed):
        producer.publish_nowait(b"late")


async def test_unconfirmed_messages_are_republished_in_order_before_newer_ones(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        connection = await client.wait_connected()
        producer = client.producer("q", confirm_window=100)
        assert await producer.publish(b"first")  # the producer's channel is open
        # The broker takes the messages but its confirms never arrive.
        broker.blackhole_all()
        for i in range(5):
            producer.publish_nowait(b"old-%d" % i)
        await trio.sleep(0.01)
        assert producer.statistics().in_flight == 5
        broker.sever_all()
        await connection.wait_closed()
        for i in range(3):
            producer.publish_nowait(b"new-%d" % i)
        with trio.fail_after(30):
            await producer.drain()
        stats = producer.statistics()
        assert stats.republished == 5
        assert stats.confirmed == 9
        assert bodies(broker, "q")[-8:] == [b"old-%d" % i for i in range(5)] + [
            b"new-%d" % i for i in range(3)
        ]


async def test_blocked_connection_pauses_publishing_and_keeps_buffering(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        connection = await client.wait_connected()
        producer = client.producer("q")
        broker.block("low on disk")
        with trio.fail_after(2):
            while not connection.blocked:
                await trio.sleep(0.001)
        for i in range(3):
            producer.publish_nowait(b"%d" % i)
        await trio.sleep(0.1)
        assert bodies(broker, "q") == []
        stats = producer.statistics()
        assert stats.buffered == 3
        assert stats.paused == "the broker blocked the connection (low on disk)"
        assert client.statistics().producers[0].pauses == 1
        broker.unblock()
        with trio.fail_after(5):
            await producer.drain()
        assert bodies(broker, "q") == [b"0", b"1", b"2"]
        assert (producer.statistics().paused, producer.statistics().pauses) == (None, 1)


async def test_failing_and_async_drop_callbacks_do_not_hurt_the_producer(
    broker: FakeBrokerServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[bytes] = []

    def broken(message: tl.Message, target: str, reason: tl.DropReason) -> None:
        raise RuntimeError("callback bug")

    async def async_callback(message: tl.Message, target: str, reason: tl.DropReason) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(message.body)

    caplog.set_level(logging.ERROR, logger="trio_lavin")
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        producer = client.producer("q", max_message_size=1)
        producer.on_drop(broken)
        producer.on_drop(async_callback)
        with pytest.raises(tl.MessageTooLarge):
            producer.publish_nowait(b"big")
        await trio.sleep(0.01)
        assert seen == [b"big"]
        await client.declare_queue("q")
        assert await producer.publish(b"k")  # the producer still works
    assert any("on_drop callback" in r.getMessage() for r in caplog.records)


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 8)),
        st.tuples(st.just("sever"), st.just(0)),
        st.tuples(st.just("refuse"), st.integers(0, 1)),
        st.tuples(st.just("nack"), st.integers(1, 4)),
        st.tuples(st.just("wait"), st.integers(0, 2000)),
    ),
    max_size=25,
)


@settings(max_examples=100, deadline=None)
@given(
    operations=OPERATIONS,
    policy=st.sampled_from(tl.BufferPolicy),
    drain=st.booleans(),
    nack_retries=st.integers(0, 2),
)
def test_every_message_handed_over_gets_exactly_one_outcome(
    operations: list[tuple[str, int]], policy: tl.BufferPolicy, drain: bool, nack_retries: int
) -> None:
    """Random interleavings of publish, sever, refuse, nack, time and close,
    with nacks retried 0 to 2 times: when the client has closed, every message
    the producer took is either confirmed or reported to on_drop, exactly
    once; a message dropped as NACKED (before the close) was nacked
    ``nack_retries + 1`` times."""
    dropped: list[int] = []
    nacked_drops: list[int] = []
    handed = 0
    config = tl.Config(
        buffer_size=4, heartbeat=10, reconnect_max_delay=1.0, nack_retries=nack_retries
    )

    def on_drop(message: tl.Message, target: str, reason: tl.DropReason) -> None:
        dropped.append(message.sequence)
        if reason is tl.DropReason.NACKED:
            nacked_drops.append(message.nacks)

    async def scenario() -> tl.ProducerStatistics:
        nonlocal handed
        async with open_fake_broker(heartbeat=10) as broker:
            async with tl.open_client(config=config, stream_factory=broker.connect) as client:
                await client.declare_queue("q")
                producer = client.producer("q", buffer_policy=policy, confirm_window=3)
                producer.on_drop(on_drop)
                for operation, argument in operations:
                    if operation == "publish":
                        for _ in range(argument):
                            try:
                                producer.publish_nowait(b"m")
                            except (tl.BufferFull, trio.WouldBlock):
                                continue
                            handed += 1
                    elif operation == "sever":
                        broker.sever_all()
                    elif operation == "refuse":
                        broker.refuse_connections = bool(argument)
                    elif operation == "nack":
                        broker.nack_next(argument)
                    else:
                        await trio.sleep(argument / 1000)
                broker.refuse_connections = False
                if drain:
                    with trio.fail_after(120):
                        await producer.drain()
                    assert producer.statistics().buffered == 0
                    assert producer.statistics().in_flight == 0
            return producer.statistics()

    stats = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert stats.confirmed + sum(stats.dropped.values()) == handed
    assert len(set(dropped)) == len(dropped) == sum(stats.dropped.values())
    assert stats.dropped[tl.DropReason.NACKED] == stats.nacked
    assert len(nacked_drops) == stats.nacked
    # Retried to the end (a nack racing the client's close is not retried).
    assert all(1 <= nacks <= nack_retries + 1 for nacks in nacked_drops)
    if drain:
        assert nacked_drops == [nack_retries + 1] * stats.nacked
    assert stats.retries <= handed * nack_retries
    if drain:
        assert stats.dropped[tl.DropReason.CLOSED] == 0


@settings(max_examples=60, deadline=None)
@given(
    operations=OPERATIONS,
    policy=st.sampled_from(tl.BufferPolicy),
    drain=st.booleans(),
    call=st.sampled_from(["publish_nowait", "enqueue", "publish"]),
)
def test_fire_and_forget_hands_every_message_to_the_connection_or_reports_it(
    operations: list[tuple[str, int]], policy: tl.BufferPolicy, drain: bool, call: str
) -> None:
    """As above, FIRE_AND_FORGET (whose plain messages wait in the buffer and
    the burst as tuples, not Message objects), taken by ``call``: every
    message taken is either published (and reaches the broker at most once)
    or reported to on_drop once, with its own sequence, body and target."""
    dropped: list[tuple[int, bytes, str, str, tl.BasicProperties | None]] = []
    handed: list[bytes] = []
    received: list[bytes] = []
    calls = 0
    config = tl.Config(buffer_size=4, heartbeat=10, reconnect_max_delay=1.0)

    def on_drop(message: tl.Message, target: str, reason: tl.DropReason) -> None:
        # Checked after the run: on_drop's exceptions are logged, not raised.
        record = (message.sequence, message.body, message.routing_key, target, message.properties)
        dropped.append(record)

    async def scenario() -> tl.ProducerStatistics:
        nonlocal calls
        async with open_fake_broker(heartbeat=10) as broker:
            async with tl.open_client(config=config, stream_factory=broker.connect) as client:
                await client.declare_queue("q")
                producer = client.producer(
                    "q", mode=tl.PublishMode.FIRE_AND_FORGET, buffer_policy=policy
                )
                producer.on_drop(on_drop)
                for operation, argument in operations:
                    if operation == "publish":
                        for _ in range(argument):
                            # Every call takes the next sequence number, refused or not.
                            calls += 1
                            body = b"%d" % calls
                            try:
                                if call == "publish_nowait":
                                    producer.publish_nowait(body)
                                else:
                                    # BLOCK waits for room: a cancelled call took nothing.
                                    with trio.move_on_after(1) as scope:
                                        if call == "enqueue":
                                            await producer.enqueue(body)
                                        else:
                                            await producer.publish(body)
                                    if scope.cancelled_caught:
                                        continue
                            except (tl.BufferFull, trio.WouldBlock):
                                continue
                            # Taken, or refused by DROP_NEWEST and reported: an outcome.
                            handed.append(body)
                    elif operation == "sever":
                        broker.sever_all()
                    elif operation == "refuse":
                        broker.refuse_connections = bool(argument)
                    elif operation != "nack":
                        await trio.sleep(argument / 1000)
                broker.refuse_connections = False
                if drain:
                    with trio.fail_after(120):
                        await producer.drain()
                    assert producer.statistics().buffered == 0
            received.extend(bodies(broker, "q"))
            return producer.statistics()

    stats = trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert stats.published + len(dropped) == len(handed)
    # A severed connection may lose what it was sending: at most once.
    assert len(received) == len(set(received)) <= stats.published
    assert set(received) <= set(handed)
    assert not set(received) & {body for _, body, *_ in dropped}
    assert stats.republished == 0
    assert len({sequence for sequence, *_ in dropped}) == len(dropped)
    assert {body for _, body, *_ in dropped} <= set(handed)
    assert [body for _, body, *_ in dropped] == [b"%d" % sequence for sequence, *_ in dropped]
    assert all(key == target == "q" for _, _, key, target, _ in dropped)
    assert all(properties is None for *_, properties in dropped)
    if drain:
        assert stats.dropped[tl.DropReason.CLOSED] == 0


async def test_plain_messages_wait_in_the_buffer_as_no_objects_for_the_collector(
    broker: FakeBrokerServer,
) -> None:
    """A FIRE_AND_FORGET producer buffers plain bytes (no properties) without
    an object per message that the cyclic garbage collector walks; evicted,
    refused and closed ones still reach on_drop as whole Messages."""
    config = tl.Config(buffer_size=10_000, reconnect_jitter=0.0, heartbeat=10)
    seen: list[tl.Message] = []
    reasons: list[tl.DropReason] = []

    def on_drop(message: tl.Message, target: str, reason: tl.DropReason) -> None:
        seen.append(message)
        reasons.append(reason)

    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer(
            "q", mode=tl.PublishMode.FIRE_AND_FORGET, buffer_policy=tl.BufferPolicy.DROP_OLDEST
        )
        producer.on_drop(on_drop)
        gc.collect()
        tracked = len(gc.get_objects())
        for i in range(10_000):
            producer.publish_nowait(b"%d" % i)
        gc.collect()
        grown = len(gc.get_objects()) - tracked
        assert grown < 1_000, f"{grown} more objects tracked for 10 000 buffered messages"
        assert producer.publish_nowait(b"newest")  # evicts message 1
    assert [(m.body, m.sequence, m.exchange, m.routing_key) for m in seen[:2]] == [
        (b"0", 1, "", "q"),
        (b"1", 2, "", "q"),
    ]
    assert reasons[0] is tl.DropReason.EVICTED
    assert reasons[1:] == [tl.DropReason.CLOSED] * 10_000
    assert seen[-1].body == b"newest"
    assert all(m.properties is None and m.attempts == 0 for m in seen)


async def test_messages_with_properties_wait_in_the_buffer_as_their_bytes(
    broker: FakeBrokerServer,
) -> None:
    """A FIRE_AND_FORGET producer keeps a buffered message's properties as the
    bytes it will publish, not the caller's objects: nothing per message for
    the cyclic garbage collector while the buffer fills during an outage.  A
    drop report carries the properties as a consumer would receive them."""
    config = tl.Config(buffer_size=10_000, reconnect_jitter=0.0, heartbeat=10)
    seen: list[tl.Message] = []
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer(
            "q", mode=tl.PublishMode.FIRE_AND_FORGET, buffer_policy=tl.BufferPolicy.DROP_OLDEST
        )
        producer.on_drop(lambda message, target, reason: seen.append(message))
        gc.collect()
        tracked = len(gc.get_objects())
        for i in range(10_000):
            properties = tl.BasicProperties(
                content_type="application/json",
                message_id=f"m-{i}",
                timestamp=datetime.datetime(2026, 12, 4, 1, 2, 3),  # naive: UTC
                headers={"replaced": True},
            )
            headers = {"n": i, "tags": ["a", b"b"], "ratio": 0.1}
            producer.publish_nowait(b"%d" % i, properties=properties, headers=headers)
        gc.collect()
        grown = len(gc.get_objects()) - tracked
        assert grown < 1_000, f"{grown} more objects tracked for 10 000 buffered messages"
        producer.publish_nowait(b"newest")  # evicts message 0
    assert len(seen) == 10_001
    first = seen[0]
    assert (first.body, first.sequence, first.routing_key) == (b"0", 1, "q")
    assert first.properties == tl.BasicProperties(
        content_type="application/json",
        message_id="m-0",
        timestamp=datetime.datetime(2026, 12, 4, 1, 2, 3, tzinfo=datetime.UTC),
        headers={"n": 0, "tags": ["a", b"b"], "ratio": 0.1},
    )
    last = seen[-2]
    assert last.properties is not None
    assert last.properties.headers == {
        "n": 9_999,
        "tags": ["a", b"b"],
        "ratio": 0.1,
    }
    assert seen[-1].properties is None


async def test_fire_and_forget_drops_carry_the_properties_and_headers_handed_over(
    broker: FakeBrokerServer,
) -> None:
    seen: list[tuple[tl.Message, tl.DropReason]] = []
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer(
            "q", mode=tl.PublishMode.FIRE_AND_FORGET, buffer_policy=tl.BufferPolicy.DROP_NEWEST
        )
        producer.on_drop(lambda message, target, reason: seen.append((message, reason)))
        properties = tl.BasicProperties(content_type="text/plain", message_id="m-1")
        for i in range(6):
            producer.publish_nowait(
                b"%d" % i, properties=properties, headers={"n": i}, routing_key=f"key-{i}"
            )
    assert [(m.body, m.routing_key, reason) for m, reason in seen] == [
        (b"5", "key-5", tl.DropReason.BUFFER_FULL),
        *[(b"%d" % i, f"key-{i}", tl.DropReason.CLOSED) for i in range(5)],
    ]
    first = seen[1][0]
    assert first.properties == properties.replace(headers={"n": 0})
    assert first.sequence == 1
    assert properties.headers is None  # the caller's object is left as it was


@pytest.mark.parametrize("mode", list(tl.PublishMode))
async def test_message_ids_gives_each_plain_message_its_own_id(
    broker: FakeBrokerServer, mode: tl.PublishMode
) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q", mode=mode, message_ids=True)
        producer.publish_nowait(b"a")
        await producer.publish(b"b")
        producer.publish_nowait(b"c", properties=tl.BasicProperties(message_id="mine"))
        with trio.fail_after(5):
            await producer.drain()
    ids = [m.properties.message_id for m in broker.queue("q").messages]
    assert ids[2] == "mine"
    assert len(set(ids)) == 3
    assert all(isinstance(i, str) and len(i) == 32 for i in ids[:2]), ids


async def test_a_producers_mode_and_destination_cannot_change_under_its_buffer(
    broker: FakeBrokerServer,
) -> None:
    """What a producer buffers and how its channel is opened follow from its
    mode: switching a FIRE_AND_FORGET producer to CONFIRM used to leave its
    buffered messages untracked (a mandatory unroutable one got no outcome).
    The mode and the checked destination are read-only."""
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        producer = client.producer(
            exchange="ex", routing_key="q", mode=tl.PublishMode.FIRE_AND_FORGET, mandatory=True
        )
        for name, value in [
            ("mode", tl.PublishMode.CONFIRM),
            ("exchange", "other"),
            ("routing_key", "x" * 300),
            ("mandatory", False),
            ("message_ids", True),
        ]:
            with pytest.raises(AttributeError):
                setattr(producer, name, value)
        assert (producer.mode, producer.exchange, producer.routing_key, producer.mandatory) == (
            tl.PublishMode.FIRE_AND_FORGET,
            "ex",
            "q",
            True,
        )
        assert producer.target == "ex/q"


async def publish_into_a_406(
    client: tl.Client, broker: FakeBrokerServer, reply_text: str, count: int
) -> tuple[tl.Producer, tl.Channel]:
    """A producer for "q" whose channel the broker closes with 406 ``reply_text`` while
    ``count`` messages are on their way (the client only learns of it after publishing
    them); the producer and that channel."""
    await client.declare_queue("q")
    producer = client.producer("q", confirm_window=10)
    assert await producer.publish(b"before")
    channel = producer._channel
    assert channel is not None
    broker.close_channel(broker.connections[0], channel.number, 406, reply_text)
    for i in range(count):
        producer.publish_nowait(b"%d" % i)
    return producer, channel


async def test_channel_closed_with_406_while_publishing_is_reopened_after_a_pause(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """LavinMQ closes a publishing channel with 406 when it is low on disk:
    the producer treats that as "blocked", pauses, reopens and loses nothing."""
    config = tl.Config(heartbeat=10, reconnect_jitter=0.0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        producer, channel = await publish_into_a_406(
            client, broker, "PRECONDITION_FAILED - low disk", 5
        )
        start = trio.current_time()
        with trio.fail_after(30):
            await producer.drain()
        assert trio.current_time() - start >= 0.1  # paused before reopening
        stats = producer.statistics()
        assert stats.confirmed == 6
        assert sum(stats.dropped.values()) == 0
        assert producer._channel is not channel
        assert not channel.is_open
        assert client.statistics().reconnects == 0
        assert [m.body for m in broker.queue("q").messages] == [b"before"] + [
            b"%d" % i for i in range(5)
        ]


async def test_a_406_that_is_not_about_disk_is_a_rejection_not_a_pause(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """RabbitMQ closes a publishing channel with 406 for things waiting does not fix (an
    invalid expiration, say): that is a rejection (retried up to publish_retries, then
    dropped as REJECTED), not a low-disk pause (regression: every 406 was taken for
    LavinMQ's low disk, so a message the broker always refuses was probed for and
    republished every 0.5 s for ever, never dropped)."""
    config = tl.Config(heartbeat=10, reconnect_jitter=0.0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        producer, _ = await publish_into_a_406(
            client, broker, "PRECONDITION_FAILED - invalid expiration", 3
        )
        with trio.fail_after(30):
            await producer.drain()
        stats = producer.statistics()
    assert (stats.pauses, stats.paused, stats.confirmed) == (0, None, 4)
    assert [m.body for m in broker.queue("q").messages] == [b"before", b"0", b"1", b"2"]


async def test_low_disk_pauses_publishing_without_dropping_and_a_probe_resumes_it(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    """LavinMQ low on disk refuses every publish with 406 and sends no
    connection.blocked: the producer pauses (reported in its statistics and
    as events), probes, and publishes everything once the broker takes
    messages again, within a probe interval."""
    config = tl.Config(heartbeat=10, reconnect_jitter=0.0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q")
        async with client.events() as events:
            broker.low_on_disk()
            for i in range(5):
                producer.publish_nowait(b"%d" % i)
            with trio.fail_after(5):
                while producer.statistics().paused is None:
                    await trio.sleep(0.01)
            stats = producer.statistics()
            assert "low on disk" in str(stats.paused)
            assert "406" in str(stats.paused)
            assert stats.pauses == 1
            await trio.sleep(60)  # a long low-disk spell: still paused, nothing dropped
            stats = producer.statistics()
            assert (stats.paused is not None, stats.pauses, stats.confirmed) == (True, 1, 0)
            assert sum(stats.dropped.values()) == 0
            broker.low_on_disk(False)
            space_back = trio.current_time()
            with trio.fail_after(5):
                await producer.drain()
            resumed_after = trio.current_time() - space_back
            assert resumed_after <= tl_pausing.FLOW_PROBE_INTERVAL + 0.1
            seen: list[tl.PublishingPaused | tl.PublishingResumed] = []
            while len(seen) < 2:
                event = events.receive_nowait()
                if isinstance(event, tl.PublishingPaused | tl.PublishingResumed):
                    seen.append(event)
        paused, resumed = seen
        assert isinstance(paused, tl.PublishingPaused)
        assert (paused.target, paused.reason) == ("q", stats.paused)
        assert isinstance(resumed, tl.PublishingResumed)
        assert resumed.paused_for == pytest.approx(resumed.at - paused.at)
        stats = producer.statistics()
        assert (stats.paused, stats.pauses, stats.confirmed) == (None, 1, 5)
        assert sum(stats.dropped.values()) == 0
        assert client.statistics().reconnects == 0
        assert bodies(broker, "q") == [b"%d" % i for i in range(5)]


async def test_publish_timeout_raises_and_the_message_still_gets_its_outcome(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q", publish_timeout=2.0)
        start = trio.current_time()
        with pytest.raises(tl.PublishTimeout, match=r"within 2\.0 s"):
            await producer.publish(b"late")
        assert trio.current_time() - start == pytest.approx(2.0)
        assert producer.statistics().buffered == 1
        broker.refuse_connections = False
        with trio.fail_after(10):
            await producer.drain()
        assert producer.statistics().confirmed == 1
        assert bodies(broker, "q") == [b"late"]
        with pytest.raises(ValueError, match="publish_timeout must be > 0 seconds or None"):
            client.producer("q", publish_timeout=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nack_retries", -1, "nack_retries must be an integer >= 0, not -1"),
        ("nack_retries", 1.5, "nack_retries must be an integer >= 0, not 1.5"),
        ("nack_retry_delay", 0, "nack_retry_delay must be a number > 0, not 0"),
        ("shuffle_urls", 1, "shuffle_urls must be True or False, not 1"),
        ("endpoint_timeout", float("inf"), "endpoint_timeout must be a number > 0, not inf"),
    ],
)
def test_cluster_settings_are_checked_when_the_config_is_made(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tl.Config(**{field: value})  # type: ignore[arg-type]


def record_publishing_tasks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the task that queues each Basic.Publish."""
    names: list[str] = []
    publish = tl.Channel.queue_message

    def spy(self: tl.Channel, *args: object, **kwargs: object) -> tl.Confirmation | None:
        names.append(trio.lowlevel.current_task().name)
        return publish(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tl.Channel, "queue_message", spy)
    return names


async def test_publish_on_an_idle_producer_publishes_from_the_callers_task(
    broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing queued and the sender idle: ``publish`` sends the message
    itself (a hop through the sender task less), and waits for its confirm."""
    names = record_publishing_tasks(monkeypatch)
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q", mode=tl.PublishMode.CONFIRM)
        with trio.fail_after(5):
            assert await producer.publish(b"first")  # opens the channel via the sender
            await producer.drain()
            names.clear()
            for i in range(20):
                assert await producer.publish(b"%d" % i)
            producer.publish_nowait(b"nowait")  # likewise, without waiting
            await producer.drain()
        me = trio.lowlevel.current_task().name
        assert names == [me] * 21
        assert bodies(broker, "q") == [b"first"] + [b"%d" % i for i in range(20)] + [b"nowait"]
        assert producer.statistics().confirmed == 22


async def test_publish_behind_buffered_messages_keeps_the_order_they_were_handed_over(
    broker: FakeBrokerServer,
) -> None:
    """A direct publish never overtakes a message waiting in the buffer:
    messages reach the queue in the order they were handed over, even
    right after ``enqueue`` woke the sender (which has not run yet)."""
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q", mode=tl.PublishMode.CONFIRM)
        handed_over: list[bytes] = []
        with trio.fail_after(10):
            assert await producer.publish(b"first")
            await producer.drain()
            handed_over.append(b"first")
            for round_ in range(20):
                for i in range(3):
                    body = b"r%d-enqueued-%d" % (round_, i)
                    assert await producer.enqueue(body)
                    handed_over.append(body)
                body = b"r%d-published" % round_
                handed_over.append(body)
                assert await producer.publish(body)
                for i in range(2):
                    body = b"r%d-nowait-%d" % (round_, i)
                    handed_over.append(body)
                    assert producer.publish_nowait(body)
            await producer.drain()
    assert bodies(broker, "q") == handed_over
    assert producer.statistics().confirmed == len(handed_over)


async def test_a_publisher_waiting_for_the_socket_learns_at_once_its_message_was_evicted(
    broker: FakeBrokerServer,
) -> None:
    """Regression: a publisher waiting for its confirm may be the task that
    reads the socket; when another publisher evicts its message
    (DROP_OLDEST), no byte comes from the broker, yet it must wake up and
    raise (it used to sleep until the next frame: never, without
    heartbeats and with publishing blocked)."""
    config = tl.Config(buffer_size=2, reconnect_jitter=0.0, heartbeat=0)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        connection = await client.wait_connected()
        producer = client.producer(
            "q", mode=tl.PublishMode.CONFIRM, buffer_policy=tl.BufferPolicy.DROP_OLDEST
        )
        assert await producer.publish(b"first")  # the producer has its channel
        broker.block("low on disk")
        with trio.fail_after(2):
            while not connection.blocked:
                await trio.sleep(0.001)
        outcome: list[BaseException | None] = []

        async def publish_victim() -> None:
            try:
                await producer.publish(b"victim")
                outcome.append(None)
            except tl.PublishError as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish_victim)
            await trio.sleep(0.05)
            for i in range(2):  # the buffer holds 2: this evicts "victim"
                assert producer.publish_nowait(b"%d" % i)
            with trio.fail_after(1):
                while not outcome:
                    await trio.sleep(0.01)
        broker.unblock()
        assert len(outcome) == 1
        assert isinstance(outcome[0], tl.PublishError)
        assert "EVICTED" in str(outcome[0])


async def test_what_cannot_be_sent_is_refused_by_the_call_and_the_rest_goes_on(
    broker: FakeBrokerServer,
) -> None:
    # Regression: while disconnected such messages were buffered, and the
    # sender task met the encoding error only when it published them.
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q")
        assert producer.publish_nowait(b"good 1")
        with pytest.raises(TypeError, match=r"headers\['bad'\] <object"):
            producer.publish_nowait(b"bad", headers={"bad": object()})
        with pytest.raises(ValueError, match=r"message_id 'xxx.*' is 300 bytes"):
            producer.publish_nowait(b"bad", properties=tl.BasicProperties(message_id="x" * 300))
        with pytest.raises(ValueError, match=r"routing key 'é.*' is 512 bytes"):
            await producer.publish(b"bad", routing_key="é" * 256)
        with pytest.raises(ValueError, match="exchange 'no!' is not a valid exchange name"):
            client.producer(exchange="no!", routing_key="q")
        assert producer.publish_nowait(b"good 2", headers={"n": 2})
        assert producer.statistics().buffered == 2
        broker.refuse_connections = False
        with trio.fail_after(5):
            await producer.drain()
        messages = broker.queue("q").messages
        assert [m.body for m in messages] == [b"good 1", b"good 2"]
        assert messages[1].properties.headers == {"n": 2}
        assert producer.statistics().dropped == dict.fromkeys(tl.DropReason, 0)


async def test_a_cancelled_enqueue_takes_no_message(broker: FakeBrokerServer) -> None:
    # Regression: enqueue() buffered the message, then raised Cancelled.
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await declare_then_disconnect(client, broker)
        producer = client.producer("q")
        with trio.CancelScope() as scope:
            scope.cancel()
            await producer.enqueue(b"cancelled")
        assert scope.cancelled_caught
        assert producer.statistics().buffered == 0
        assert await producer.enqueue(b"taken")
        broker.refuse_connections = False
        with trio.fail_after(5):
            await producer.drain()
        assert bodies(broker, "q") == [b"taken"]


async def test_a_message_awaited_by_publish_keeps_its_first_verdict() -> None:
    """A late second verdict (a drop after the confirm) does not change what
    the awaiting ``publish()`` gets, and a message nobody awaits has none."""
    unawaited = tl.Message(b"-", None, "", "q", False, 0)
    unawaited.conclude()
    assert not unawaited.awaited
    confirmed = tl.Message(b"a", None, "", "q", False, 1)
    confirmed.await_verdict()
    before = confirmed.awaited
    confirmed.conclude()
    confirmed.conclude(tl.ProducerClosed("too late"))
    assert (before, confirmed.awaited) == (True, False)
    await confirmed.wait_for_verdict(None)  # no error: the confirm came first

    nacked = tl.Message(b"b", None, "", "q", False, 2)
    nacked.await_verdict()
    nacked.conclude(tl.MessageNacked(2))
    nacked.conclude()
    with pytest.raises(tl.MessageNacked):
        await nacked.wait_for_verdict(None)


REFUSING_POLICIES = [
    tl.BufferPolicy.DROP_OLDEST,
    tl.BufferPolicy.DROP_NEWEST,
    tl.BufferPolicy.RAISE,
]


async def enqueue_as_the_sender_empties_the_buffer(policy: tl.BufferPolicy) -> list[int]:
    """Fill a buffer of 2 on a blocked connection, unblock it and enqueue 10
    more at once: what ``statistics().buffered`` said at each refusal."""
    capacity = 2
    refusals: list[int] = []
    async with open_fake_broker(heartbeat=10) as broker:
        config = tl.Config(buffer_size=capacity, reconnect_jitter=0.0, heartbeat=10)
        async with tl.open_client(config=config, stream_factory=broker.connect) as client:
            await client.declare_queue("q")
            broker.block()
            connection = await client.wait_connected()
            with trio.fail_after(5):
                while not connection.blocked:
                    await trio.sleep(0.001)
            producer = client.producer("q", buffer_policy=policy)

            @producer.on_drop
            def refused(message: tl.Message, target: str, reason: tl.DropReason) -> None:
                if reason is tl.DropReason.BUFFER_FULL:
                    refusals.append(producer.statistics().buffered)

            await trio.sleep(0.01)  # the sender waits for the unblock
            producer.publish_nowait(b"a")
            producer.publish_nowait(b"b")
            broker.unblock()
            with trio.fail_after(5):
                for i in range(10):
                    try:
                        await producer.enqueue(b"%d" % i)
                    except tl.BufferFull:
                        refusals.append(producer.statistics().buffered)
                await producer.drain()
    return refusals


@pytest.mark.parametrize("policy", REFUSING_POLICIES, ids=lambda p: p.value)
async def test_enqueue_on_a_full_buffer_acts_on_the_buffer_as_it_is_after_its_checkpoint(
    policy: tl.BufferPolicy,
) -> None:
    """``enqueue`` finds the buffer full, yields, and only then applies its
    policy: the sender may have emptied the buffer meanwhile (the broker
    unblocked the connection).  So it looks again: no refusal of a message
    there is room for, no WouldBlock from DROP_OLDEST (run 20 times: the
    sender runs during that checkpoint about every other time)."""
    for _ in range(20):
        refusals = await enqueue_as_the_sender_empties_the_buffer(policy)
        assert all(buffered == 2 for buffered in refusals), refusals


async def enqueue_as_the_client_closes(
    policy: tl.BufferPolicy,
) -> tuple[list[tuple[bytes, tl.DropReason]], object]:
    """Fill a buffer of 2 of a client that cannot connect, start an
    ``enqueue`` and close the client: the drops, and what ``enqueue``
    returned or raised (with whether the CLOSED drops came before)."""
    drops: list[tuple[bytes, tl.DropReason]] = []
    outcome: list[object] = []

    async def enqueue(producer: tl.Producer) -> None:
        try:
            outcome.append(await producer.enqueue(b"new"))
        except (tl.ProducerClosed, tl.BufferFull) as exc:
            outcome.append((type(exc), (b"a", tl.DropReason.CLOSED) in drops))

    async with open_fake_broker(heartbeat=10) as broker:
        broker.refuse_connections = True
        config = tl.Config(buffer_size=2, reconnect_jitter=0.0, heartbeat=10)
        with trio.fail_after(5):
            async with (
                trio.open_nursery() as nursery,
                tl.open_client(config=config, stream_factory=broker.connect) as client,
            ):
                producer = client.producer("q", buffer_policy=policy)
                producer.on_drop(lambda m, target, reason: drops.append((m.body, reason)))
                producer.publish_nowait(b"a")
                producer.publish_nowait(b"b")
                nursery.start_soon(enqueue, producer)
                await trio.lowlevel.checkpoint()
    assert len(outcome) == 1
    return drops, outcome[0]


@pytest.mark.parametrize("policy", REFUSING_POLICIES, ids=lambda p: p.value)
async def test_enqueue_on_a_full_buffer_of_a_closing_client_raises_producer_closed(
    policy: tl.BufferPolicy,
) -> None:
    """The client closes while ``enqueue`` waits at its checkpoint on a
    full buffer: it raises ProducerClosed (the message was not taken), not
    EndOfChannel, a BufferFull or a BUFFER_FULL drop after the CLOSED ones
    (run 20 times: the close falls in that checkpoint about every other time)."""
    for _ in range(20):
        drops, outcome = await enqueue_as_the_client_closes(policy)
        reasons = [reason for _, reason in drops]
        closing = reasons.index(tl.DropReason.CLOSED)
        assert set(reasons[closing:]) == {tl.DropReason.CLOSED}, drops
        if isinstance(outcome, tuple):
            error, closed_first = outcome
            assert error is (tl.ProducerClosed if closed_first else tl.BufferFull), outcome
        # "new" has one outcome: taken (then dropped), refused, or not taken (raised).
        assert [body for body, _ in drops].count(b"new") == (
            0 if isinstance(outcome, tuple) else 1
        )


async def test_buffered_counts_what_the_buffer_holds_while_publishers_wait_for_room(
    broker: FakeBrokerServer,
) -> None:
    """With BLOCK publishers waiting for room, taking a message from the full
    buffer moves a waiting one in: ``statistics().buffered`` stays between 0
    and the buffer's size (it went to -4 when it counted a message in only
    once its publisher ran again)."""
    capacity = 2
    seen: set[int] = set()
    config = tl.Config(
        buffer_size=capacity, reconnect_jitter=0.0, heartbeat=10, reconnect_initial_delay=0.01
    )
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        connection = await client.wait_connected()
        producer = client.producer("q", buffer_policy=tl.BufferPolicy.BLOCK)
        await trio.sleep(0.05)
        broker.refuse_connections = True
        broker.sever_all()
        await connection.wait_closed()

        async def watch() -> None:
            while True:
                seen.add(producer.statistics().buffered)
                await trio.lowlevel.checkpoint()

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                for i in range(6):
                    nursery.start_soon(functools.partial(producer.publish, b"%d" % i))
                await trio.sleep(0.05)
                assert producer.statistics().buffered == capacity
                broker.refuse_connections = False
                await producer.drain()
                nursery.cancel_scope.cancel()
    assert min(seen) >= 0
    assert max(seen) == capacity
    # Six tasks publishing at once: every message once, in whichever order they ran.
    assert sorted(m.body for m in broker.queue("q").messages) == [b"%d" % i for i in range(6)]


def record_bursts(monkeypatch: pytest.MonkeyPatch) -> list[list[bytes]]:
    """The bodies of each burst a channel queues at once."""
    bursts: list[list[bytes]] = []
    queue_messages = tl.Channel.queue_messages

    def spy(self: tl.Channel, messages: Sequence[PublishFields], *, kick: bool) -> None:
        bursts.append([message[0] for message in messages])
        queue_messages(self, messages, kick=kick)

    monkeypatch.setattr(tl.Channel, "queue_messages", spy)
    return bursts


async def test_a_loop_of_fire_and_forget_publishes_is_queued_in_bursts_in_order(
    broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``await publish()`` in FIRE_AND_FORGET mode takes each message into a
    burst that the channel queues at once: 1000 calls make no queueing of
    their own, a few dozen bursts of at most BURST_MESSAGES, and the messages
    arrive in order."""
    bursts = record_bursts(monkeypatch)
    singles = record_publishing_tasks(monkeypatch)
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q", mode=tl.PublishMode.FIRE_AND_FORGET)
        with trio.fail_after(10):
            assert await producer.publish(b"first")  # opens the channel via the sender
            await producer.drain()
            bursts.clear()
            singles.clear()
            for i in range(1000):
                assert await producer.publish(b"%d" % i)
            assert producer.statistics().buffered <= BURST_MESSAGES
            await producer.drain()
        stats = producer.statistics()
    assert singles == []
    assert [body for burst in bursts for body in burst] == [b"%d" % i for i in range(1000)]
    assert 1000 // BURST_MESSAGES <= len(bursts) <= 2 * (1000 // BURST_MESSAGES + 1)
    assert max(len(burst) for burst in bursts) <= BURST_MESSAGES
    assert bodies(broker, "q") == [b"first"] + [b"%d" % i for i in range(1000)]
    assert (stats.published, stats.buffered, sum(stats.dropped.values())) == (1001, 0, 0)


async def test_a_burst_taken_after_its_channel_closed_goes_first_on_the_next_one(
    broker: FakeBrokerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FIRE_AND_FORGET messages taken with no yield between them while the
    producer's channel is closed: the first BURST_MESSAGES wait in the burst
    (counted as buffered), the call that finds it full cannot queue it on the
    closed channel, and the rest wait in the buffer; all go out on the next
    channel, in the order they were taken, none lost, none twice."""
    bursts = record_bursts(monkeypatch)
    config = tl.Config(buffer_size=100, reconnect_jitter=0.0, heartbeat=10)
    async with tl.open_client(config=config, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q", mode=tl.PublishMode.FIRE_AND_FORGET)
        with trio.fail_after(10):
            assert await producer.publish(b"before")
            await producer.drain()
            while bodies(broker, "q") != [b"before"]:
                await trio.sleep(0.001)
            channel = producer._channel
            assert channel is not None
            broker.close_channel(broker.connections[0], channel.number, 504, "CHANNEL_ERROR")
            while channel.is_open:
                await trio.sleep(0.001)
            bursts.clear()
            for i in range(BURST_MESSAGES + 6):
                assert producer.publish_nowait(b"%d" % i)
            stats = producer.statistics()
            assert stats.buffered == BURST_MESSAGES + 6
            await producer.drain()
        assert producer._channel is not channel
        stats = producer.statistics()
    assert bursts[0] == [b"%d" % i for i in range(BURST_MESSAGES)]  # the one refused
    expected = [b"before"] + [b"%d" % i for i in range(BURST_MESSAGES + 6)]
    assert bodies(broker, "q") == expected
    assert (stats.published, sum(stats.dropped.values())) == (len(expected), 0)


async def test_a_fire_and_forget_burst_waits_while_the_connection_is_blocked(
    broker: FakeBrokerServer,
) -> None:
    """Taken while the broker blocks publishing, FIRE_AND_FORGET messages wait
    (counted as buffered) and go out once it unblocks."""
    async with tl.open_client(stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        connection = await client.wait_connected()
        producer = client.producer("q", mode=tl.PublishMode.FIRE_AND_FORGET)
        assert await producer.publish(b"before")
        with trio.fail_after(5):
            await producer.drain()
        broker.block("low on memory")
        with trio.fail_after(2):
            while not connection.blocked:
                await trio.sleep(0.001)
        for i in range(3):
            assert await producer.publish(b"%d" % i)
        await trio.sleep(0.1)
        assert bodies(broker, "q") == [b"before"]
        assert producer.statistics().buffered == 3
        broker.unblock()
        with trio.fail_after(5):
            await producer.drain()
            assert producer.statistics().buffered == 0
            while len(bodies(broker, "q")) < 4:  # sent after drain() returned
                await trio.sleep(0.001)
        assert bodies(broker, "q") == [b"before", b"0", b"1", b"2"]


async def test_a_burst_not_yet_queued_when_the_client_closes_gets_an_outcome(
    broker: FakeBrokerServer,
) -> None:
    """Messages still in the burst when the client closes are either sent or
    reported to on_drop as CLOSED: each gets exactly one outcome."""
    drops = Drops()
    async with tl.open_client(config=SMALL, stream_factory=broker.connect) as client:
        await client.declare_queue("q")
        producer = client.producer("q", mode=tl.PublishMode.FIRE_AND_FORGET)
        producer.on_drop(drops)
        assert await producer.publish(b"before")
        with trio.fail_after(5):
            await producer.drain()
        for i in range(10):
            assert producer.publish_nowait(b"%d" % i)
    stats = producer.statistics()
    sent = bodies(broker, "q")[1:]
    dropped = [body for body, _, reason in drops.seen if reason is tl.DropReason.CLOSED]
    assert sorted(sent + dropped) == sorted(b"%d" % i for i in range(10))
    assert stats.published == 1 + len(sent)
    assert stats.buffered == 0
