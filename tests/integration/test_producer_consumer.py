"""Producer and recovering consumer against the real broker (through
FaultProxy where the network has to fail)."""

from __future__ import annotations

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import FaultProxy

from ._names import unique

pytestmark = pytest.mark.broker

CONFIG = tl.Config(buffer_size=5, heartbeat=5, reconnect_max_delay=0.5)


async def read_queue(amqp_url: str, queue: str) -> list[bytes]:
    bodies = []
    async with tl.open_connection(amqp_url) as conn:
        channel = await conn.channel()
        while (delivery := await channel.basic_get(queue, no_ack=True)) is not None:
            bodies.append(delivery.body)
    return bodies


async def disconnect(client: tl.Client, proxy: FaultProxy) -> None:
    connection = await client.wait_connected()
    proxy.refuse = True
    proxy.sever()
    await connection.wait_closed()


@pytest.mark.parametrize(
    ("policy", "kept", "reported"),
    [
        (
            tl.BufferPolicy.DROP_OLDEST,
            [3, 4, 5, 6, 7],
            [(0, "EVICTED"), (1, "EVICTED"), (2, "EVICTED")],
        ),
        (
            tl.BufferPolicy.DROP_NEWEST,
            [0, 1, 2, 3, 4],
            [(5, "BUFFER_FULL"), (6, "BUFFER_FULL"), (7, "BUFFER_FULL")],
        ),
        (tl.BufferPolicy.RAISE, [0, 1, 2, 3, 4], []),
        (tl.BufferPolicy.BLOCK, [0, 1, 2, 3, 4], []),
    ],
    ids=lambda value: getattr(value, "value", None),
)
async def test_buffer_policy_on_a_disconnected_client(
    amqp_url: str,
    proxy: FaultProxy,
    policy: tl.BufferPolicy,
    kept: list[int],
    reported: list[tuple[int, str]],
) -> None:
    queue = unique()
    drops: list[tuple[int, str]] = []
    async with tl.open_client(proxy.url_for(amqp_url), CONFIG) as client:
        await client.declare_queue(queue)
        producer = client.producer(queue, buffer_policy=policy)
        producer.on_drop(lambda m, target, reason: drops.append((int(m.body), reason.value)))
        await disconnect(client, proxy)
        refused = []
        for i in range(8):
            try:
                producer.publish_nowait(b"%d" % i)
            except (tl.BufferFull, trio.WouldBlock) as exc:
                refused.append((i, type(exc).__name__))
        if policy is tl.BufferPolicy.RAISE:
            assert refused == [(i, "BufferFull") for i in range(5, 8)]
        elif policy is tl.BufferPolicy.BLOCK:
            assert refused == [(i, "WouldBlock") for i in range(5, 8)]
        else:
            assert refused == []
        assert drops == reported
        assert producer.statistics().buffered == 5
        proxy.refuse = False
        with trio.fail_after(10):
            await producer.drain()
        assert producer.statistics().confirmed == 5
    assert await read_queue(amqp_url, queue) == [b"%d" % i for i in kept]
    async with tl.open_connection(amqp_url) as conn:
        await (await conn.channel()).queue_delete(queue)


async def test_stale_ack_returns_false_and_the_message_comes_back_redelivered(
    amqp_url: str, proxy: FaultProxy
) -> None:
    queue = unique()
    async with tl.open_client(proxy.url_for(amqp_url), CONFIG) as client:
        # Not auto-delete: the broker would delete such a queue, message and
        # all, when the severed connection's consumer goes away.
        await client.declare_queue(queue)
        producer = client.producer(queue)
        async with client.consume(queue, prefetch=10) as consumer:
            assert await producer.publish(b"only-once")
            stale = await consumer.__anext__()
            assert not stale.redelivered
            connection = await client.wait_connected()
            proxy.sever()
            await connection.wait_closed()
            assert not await stale.ack()
            with trio.fail_after(5):
                again = await consumer.__anext__()
            assert again.body == b"only-once"
            assert again.redelivered
            assert await again.ack()
            # The new channel keeps working: nothing was closed by a bad tag.
            assert await producer.publish(b"next")
            with trio.fail_after(5):
                following = await consumer.__anext__()
            assert following.body == b"next"
            assert await following.ack()
            assert consumer.channel is not None
            assert consumer.channel.is_open
            assert consumer.subscriptions == 2
        await client.delete_queue(queue)


async def test_consumer_resubscribes_after_its_queue_is_deleted_and_recreated(
    amqp_url: str,
) -> None:
    queue = unique()
    async with tl.open_client(amqp_url, CONFIG) as client:
        await client.declare_queue(queue)
        async with client.consume(queue, prefetch=10) as consumer:
            async with tl.open_connection(amqp_url) as admin:
                channel = await admin.channel()
                await channel.queue_delete(queue)  # the broker cancels our consumer
                await trio.sleep(0.3)  # re-subscribing fails (404) and backs off meanwhile
                await channel.queue_declare(queue)
                await channel.confirm_select()
                await channel.publish(b"after re-creation", routing_key=queue)
            with trio.fail_after(10):
                delivery = await consumer.__anext__()
            assert delivery.body == b"after re-creation"
            assert await delivery.ack()
            assert consumer.subscriptions >= 2
        await client.delete_queue(queue)


async def test_publish_in_confirm_mode_survives_a_sever_mid_stream(
    amqp_url: str, proxy: FaultProxy
) -> None:
    total = 20_000
    queue = unique()
    config = tl.Config(heartbeat=5)
    async with tl.open_client(proxy.url_for(amqp_url), config) as client:
        await client.declare_queue(queue)
        producer = client.producer(queue, confirm_window=200)

        async def sever_when_half_confirmed() -> None:
            while producer.statistics().confirmed < total // 2:
                await trio.sleep(0.001)
            proxy.sever()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sever_when_half_confirmed)
                for i in range(total):
                    await producer.enqueue(b"%d" % i)
                await producer.drain()
        stats = producer.statistics()
        assert stats.confirmed == total
        assert sum(stats.dropped.values()) == 0
        assert client.statistics().reconnects == 1
    received = await read_queue(amqp_url, queue)
    assert set(received) == {b"%d" % i for i in range(total)}
    # At-least-once: re-published messages the broker had already taken
    # arrive twice; first arrivals keep the publishing order.
    first_seen = list(dict.fromkeys(received))
    assert first_seen == [b"%d" % i for i in range(total)]
    print(
        f"sever mid-stream: {stats.republished} re-published, {len(received) - total} duplicates"
    )
    async with tl.open_connection(amqp_url) as conn:
        await (await conn.channel()).queue_delete(queue)
