"""LavinMQ's own behaviours, on a real LavinMQ (1.0.1 from ../shared/lavinmq): low disk
(406 on publish, no connection.blocked), the heartbeat it offers (300 s), reject-publish
queues, priority queues, and the delayed-message and consistent-hash exchanges.  (Its
WebSocket endpoint is in test_websocket.py.)"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import Broker, LavinNode

from ._names import unique

pytestmark = [pytest.mark.broker, pytest.mark.lavinmq]


@pytest.fixture
def low_disk_node(lavinmq_broker: Broker) -> Iterator[LavinNode]:
    """A LavinMQ of its own whose data directory is a 12 MiB tmpfs: below the 16 MiB it
    needs free (2 x segment_size), so it is low on disk from the start.  It samples its
    disk every 500 ms (``stats_interval``; 5 s by default)."""
    if os.geteuid() != 0 and not os.environ.get("CI"):  # CI runs as root
        pytest.skip("a tmpfs data directory needs root")  # allowed-skip
    del lavinmq_broker  # only for its binary: this node is a second one
    node = LavinNode(config="[main]\nstats_interval = 500\n", disk_mib=12)
    node.start()
    try:
        yield node
    finally:
        node.stop()


async def _flow_is_back(url: str) -> float:
    """When the broker took a publish again, probing every 20 ms on a connection of its own
    (a confirmed message that no queue takes)."""
    async with tl.open_connection(url) as conn:
        while True:
            channel = await conn.channel()
            await channel.confirm_select()
            try:
                await channel.publish(b"", routing_key=unique("nowhere"))
            except tl.ChannelClosed as exc:
                if exc.reply_code != 406:
                    raise
                await trio.sleep(0.02)
                continue
            return trio.current_time()


async def test_low_disk_pauses_the_producer_and_it_resumes_within_1_s_of_the_flow(
    low_disk_node: LavinNode,
) -> None:
    queue = unique()
    count = 100
    config = tl.Config(heartbeat=10)
    async with tl.open_client(low_disk_node.url, config) as client:
        await client.declare_queue(queue, durable=True)
        producer = client.producer(queue)
        async with client.events() as events:
            for i in range(count):
                producer.publish_nowait(b"%d" % i)
            with trio.fail_after(10):
                while producer.statistics().paused is None:
                    await trio.sleep(0.01)
            stats = producer.statistics()
            assert "406" in str(stats.paused)
            assert "low on disk" in str(stats.paused)
            await trio.sleep(2)  # LavinMQ samples its disk 4 times meanwhile: still low
            stats = producer.statistics()
            assert stats.paused is not None
            assert stats.confirmed == 0
            assert sum(stats.dropped.values()) == 0
            low_disk_node.resize_disk(200)
            with trio.fail_after(20):
                flow_back = await _flow_is_back(low_disk_node.url)
                await producer.drain()
            paused = resumed = None
            while resumed is None:
                event = events.receive_nowait()
                if isinstance(event, tl.PublishingPaused):
                    paused = event
                elif isinstance(event, tl.PublishingResumed):
                    resumed = event
        assert paused is not None
        assert paused.target == queue
        assert resumed.at - flow_back <= 1.0
        stats = producer.statistics()
        assert (stats.paused, stats.confirmed, sum(stats.dropped.values())) == (None, count, 0)
        assert stats.pauses >= 1
        assert client.statistics().reconnects == 0
    async with tl.open_connection(low_disk_node.url) as conn:
        channel = await conn.channel()
        held = await channel.queue_declare(queue, passive=True)
        assert held.message_count == count
        first = await channel.basic_get(queue, no_ack=True)
        assert first is not None
        assert first.body == b"0"


@pytest.mark.parametrize(("asked", "negotiated"), [(30, 30), (600, 300), (0, 300)])
async def test_heartbeat_is_the_lower_of_ours_and_lavinmqs_300_s(
    lavinmq_node: LavinNode, asked: int, negotiated: int
) -> None:
    async with tl.open_connection(lavinmq_node.url, heartbeat=asked) as conn:
        assert conn.server_properties["product"] == "LavinMQ"
        assert conn.heartbeat == negotiated


async def test_reject_publish_queue_nacks_and_the_producer_retries_then_drops_nacked(
    lavinmq_node: LavinNode,
) -> None:
    queue = unique()
    dropped: list[tuple[bytes, tl.DropReason]] = []
    config = tl.Config(nack_retries=2, nack_retry_delay=0.01)
    async with tl.open_client(lavinmq_node.url, config) as client:
        await client.declare_queue(
            queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
        )
        producer = client.producer(queue)
        producer.on_drop(lambda message, target, reason: dropped.append((message.body, reason)))
        for i in range(5):
            producer.publish_nowait(b"%d" % i)
        with trio.fail_after(20):
            await producer.drain()
        stats = producer.statistics()
    assert stats.confirmed == 2
    assert stats.nacked == 3
    assert stats.retries == 3 * 2
    assert dropped == [(b"%d" % i, tl.DropReason.NACKED) for i in range(2, 5)]


async def test_priority_queue_delivers_the_highest_priority_first(
    lavinmq_node: LavinNode,
) -> None:
    queue = unique()
    async with tl.open_connection(lavinmq_node.url) as conn:
        channel = await conn.channel()
        await channel.queue_declare(queue, arguments={"x-max-priority": 9})
        await channel.confirm_select()
        for priority in (1, 5, 3, 9, 0):
            await channel.publish(
                b"%d" % priority,
                routing_key=queue,
                properties=tl.BasicProperties(priority=priority),
            )
        got = []
        while (delivery := await channel.basic_get(queue, no_ack=True)) is not None:
            got.append(delivery.body)
            assert delivery.properties.priority == int(delivery.body)
        await channel.queue_delete(queue)
    assert got == [b"9", b"5", b"3", b"1", b"0"]


async def test_delayed_message_exchange_holds_a_message_for_its_x_delay(
    lavinmq_node: LavinNode,
) -> None:
    exchange, queue = unique("x"), unique()
    async with tl.open_connection(lavinmq_node.url) as conn:
        channel = await conn.channel()
        await channel.exchange_declare(
            exchange, "x-delayed-message", arguments={"x-delayed-type": "direct"}
        )
        await channel.queue_declare(queue, exclusive=True)
        await channel.queue_bind(queue, exchange, "k")
        await channel.confirm_select()
        sent = trio.current_time()
        await channel.publish(
            b"later",
            exchange=exchange,
            routing_key="k",
            properties=tl.BasicProperties(headers={"x-delay": 600}),
        )
        assert await channel.basic_get(queue, no_ack=True) is None  # not yet
        await trio.sleep_until(sent + 0.45)
        # LavinMQ's timer and our clock disagree by a few milliseconds, so the
        # check well inside the delay is the strict one.
        assert await channel.basic_get(queue, no_ack=True) is None  # still held
        with trio.fail_after(10):
            while (delivery := await channel.basic_get(queue, no_ack=True)) is None:
                await trio.sleep(0.02)
        waited = trio.current_time() - sent
        await channel.exchange_delete(exchange)
    assert delivery.body == b"later"
    assert 0.55 <= waited < 5


async def test_consistent_hash_exchange_spreads_by_routing_key_and_keeps_a_key_on_a_queue(
    lavinmq_node: LavinNode,
) -> None:
    exchange = unique("x")
    queues = [unique(), unique()]
    async with tl.open_connection(lavinmq_node.url) as conn:
        channel = await conn.channel()
        await channel.exchange_declare(exchange, "x-consistent-hash")
        for queue in queues:
            await channel.queue_declare(queue, exclusive=True)
            await channel.queue_bind(queue, exchange, "1")  # the weight
        await channel.confirm_select()
        keys = [secrets.token_hex(4) for _ in range(200)]
        for key in [*keys, *keys]:  # every key twice
            await channel.publish(key.encode(), exchange=exchange, routing_key=key)
        held: dict[str, list[bytes]] = {}
        for queue in queues:
            held[queue] = []
            while (delivery := await channel.basic_get(queue, no_ack=True)) is not None:
                held[queue].append(delivery.body)
        await channel.exchange_delete(exchange)
    counts = [len(bodies) for bodies in held.values()]
    assert sum(counts) == 400
    # Spread over both (unevenly: with weight 1 each, LavinMQ's ring has two points).
    assert min(counts) > 0
    for bodies in held.values():  # both copies of a key went to the same queue
        assert all(bodies.count(body) == 2 for body in bodies)


async def test_a_quorum_queue_on_lavinmq_warns_that_it_is_a_classic_queue(
    lavinmq_node: LavinNode, caplog: pytest.LogCaptureFixture
) -> None:
    queue = unique()
    async with tl.open_client(lavinmq_node.url) as client:
        await client.declare_queue(queue, durable=True, queue_type=tl.QueueType.QUORUM)
        connection = await client.wait_connected()
        version = connection.server_properties["version"]
        channel = await client.open_channel()
        await channel.queue_delete(queue)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"queue {queue!r}: LavinMQ {version} has no quorum queues; it is a classic queue "
        "(x-queue-type ignored)"
    ]
