"""Stream consumers across reconnects, on a real RabbitMQ (LavinMQ 1.0.1 has no stream
queues): each offset is handed to the application once it is settled, none is skipped,
and a consumer started at a stored offset reads exactly the rest.  And single active
consumers (which LavinMQ 1.0.1 lacks too) taking over from one another."""

from __future__ import annotations

import random

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import FaultProxy, RabbitNode, open_fault_proxy

from ._names import unique

pytestmark = pytest.mark.broker

COUNT = 10_000
SEVERS = 5


async def fill_stream(url: str, queue: str, count: int) -> None:
    async with tl.open_client(url) as client:
        await client.declare_queue(queue, durable=True, queue_type=tl.QueueType.STREAM)
        producer = client.producer(queue, confirm_window=1000)
        for i in range(count):
            await producer.publish(b"%d" % i)
        await producer.drain()


async def read_with_severs(
    client: tl.Client, proxy: FaultProxy, queue: str, *, no_ack: bool, stop_after: int = COUNT
) -> tuple[list[int], tl.RecoveringConsumer]:
    """Offsets handed to the application, in order; severing the connection SEVERS times."""
    rng = random.Random(7)
    sever_at = sorted(rng.sample(range(100, stop_after - 100), SEVERS))
    offsets: list[int] = []
    settled_up_to = -1  # every offset up to this one was acked (or taken with no_ack)
    async with client.consume(
        queue, prefetch=200, no_ack=no_ack, stream_offset="first"
    ) as consumer:
        async for delivery in consumer:
            offset = delivery.stream_offset
            assert offset is not None
            assert int(delivery.body) == offset  # a fresh stream: the offsets are 0, 1, ...
            assert offset > settled_up_to, f"offset {offset} came again after it was acked"
            offsets.append(offset)
            ack_now = not no_ack and (offset % 50 == 49 or offset == stop_after - 1)
            if no_ack or (ack_now and await delivery.ack(multiple=True)):
                settled_up_to = offset
            if sever_at and len(offsets) >= sever_at[0]:
                sever_at.pop(0)
                proxy.sever()
            if offset == stop_after - 1:
                break
    return offsets, consumer


@pytest.mark.parametrize("no_ack", [False, True], ids=["acks", "no_ack"])
async def test_a_stream_read_across_severs_hands_each_settled_offset_over_once(
    rabbit_node: RabbitNode, no_ack: bool
) -> None:
    queue = unique()
    await fill_stream(rabbit_node.url, queue, COUNT)
    params = tl.parse_url(rabbit_node.url)
    async with open_fault_proxy(params.host, params.port) as proxy:
        config = tl.Config(heartbeat=5, reconnect_max_delay=0.2)
        async with tl.open_client(proxy.url_for(rabbit_node.url), config) as client:
            with trio.fail_after(120):
                offsets, consumer = await read_with_severs(client, proxy, queue, no_ack=no_ack)
            assert client.statistics().reconnects == SEVERS
    # Settled offsets are never handed over again; unsettled ones (acks go every 50)
    # may be, once each per sever, and only those.
    settled_once = sorted(set(offsets))
    assert settled_once == list(range(COUNT))  # no gaps
    replays = len(offsets) - COUNT
    print(f"stream, {SEVERS} severs: {len(offsets)} deliveries, {replays} of unacked offsets")
    if no_ack:
        assert replays == 0
    else:
        assert replays <= SEVERS * 49
    assert consumer.stream_offset == COUNT


async def test_a_consumer_started_at_a_stored_offset_reads_exactly_the_rest(
    rabbit_node: RabbitNode,
) -> None:
    queue = unique()
    await fill_stream(rabbit_node.url, queue, 1000)
    async with tl.open_client(rabbit_node.url) as client:
        async with client.consume(queue, prefetch=100, stream_offset="first") as consumer:
            async for delivery in consumer:
                await delivery.ack()
                if delivery.stream_offset == 599:
                    break
            [statistics] = client.statistics().consumers
            assert statistics.stream_offset == 600  # the next one to read, while it runs
        stored = consumer.stream_offset
        assert stored == 600
        rest = []
        async with client.consume(queue, prefetch=100, stream_offset=stored) as consumer:
            with trio.fail_after(30):
                async for delivery in consumer:
                    rest.append(delivery.stream_offset)
                    await delivery.ack()
                    if delivery.stream_offset == 999:
                        break
    assert rest == list(range(600, 1000))


async def test_a_single_active_consumer_that_loses_its_connection_is_replaced_losing_nothing(
    rabbit_node: RabbitNode,
) -> None:
    """Two clients consume one x-single-active-consumer queue: only the first gets
    deliveries; its connection is severed, the other takes over, and every message is
    acked (the ones in flight at the sever are redelivered to the other)."""
    queue = unique()
    count = 600
    params = tl.parse_url(rabbit_node.url)
    config = tl.Config(heartbeat=5, reconnect_max_delay=0.2)
    acked: dict[str, list[bytes]] = {"a": [], "b": []}
    async with (
        open_fault_proxy(params.host, params.port) as proxy_a,
        open_fault_proxy(params.host, params.port) as proxy_b,
        tl.open_client(proxy_a.url_for(rabbit_node.url), config) as client_a,
        tl.open_client(proxy_b.url_for(rabbit_node.url), config) as client_b,
    ):
        arguments = tl.queue_arguments(single_active_consumer=True)
        await client_a.declare_queue(queue, durable=True, arguments=arguments)
        await client_b.declare_queue(queue, durable=True, arguments=arguments)

        async def consume(name: str, client: tl.Client) -> None:
            async with client.consume(queue, prefetch=10) as consumer:
                async for delivery in consumer:
                    if await delivery.ack():
                        acked[name].append(delivery.body)
                    if name == "a" and len(acked["a"]) == 200 and not proxy_a.refuse:
                        proxy_a.refuse = True  # stays away until b took over
                        proxy_a.sever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, "a", client_a)
            await trio.sleep(0.5)  # a subscribed first: it is the active one
            nursery.start_soon(consume, "b", client_b)
            await trio.sleep(0.5)
            producer = client_a.producer(queue)
            for i in range(count):
                producer.publish_nowait(b"%d" % i)
            with trio.fail_after(60):
                while len(acked["a"]) < 200:
                    await trio.sleep(0.01)
                while len(set(acked["a"]) | set(acked["b"])) < count:
                    await trio.sleep(0.01)
                    if len(acked["b"]) > 50:
                        proxy_a.refuse = False  # a comes back, as a standby
            nursery.cancel_scope.cancel()
    everything = {b"%d" % i for i in range(count)}
    assert set(acked["a"]) | set(acked["b"]) == everything  # nothing lost
    assert acked["a"][:200] == [b"%d" % i for i in range(200)]  # a alone, in order
    assert acked["b"]  # b took over
    # Acks a queued just before the sever never reached the broker: at most a prefetch
    # of messages came again to b (at-least-once).
    assert len(set(acked["a"]) & set(acked["b"])) <= 10


async def test_a_consumer_from_last_that_loses_its_connection_before_taking_anything_skips_nothing(
    rabbit_node: RabbitNode,
) -> None:
    """stream_offset="last": the last chunk arrived, the connection dropped
    before the application took any of it, and the next subscription starts
    at its first offset (it started at the time of the first subscription,
    after that chunk was written, so the application got nothing)."""
    queue = unique()
    await fill_stream(rabbit_node.url, queue, 10)
    # A stream offset by time counts whole seconds: let the chunk be older than
    # the first subscription by more than that.
    await trio.sleep(1.5)
    params = tl.parse_url(rabbit_node.url)
    async with open_fault_proxy(params.host, params.port) as proxy:
        config = tl.Config(heartbeat=5, reconnect_initial_delay=0.05, reconnect_jitter=0.0)
        async with (
            tl.open_client(proxy.url_for(rabbit_node.url), config) as client,
            client.consume(queue, prefetch=100, stream_offset="last") as consumer,
        ):
            with trio.fail_after(10):
                while not consumer.buffered:
                    await trio.sleep(0.01)
            proxy.sever()
            with trio.fail_after(10):
                while consumer.subscriptions < 2:  # subscribed again
                    await trio.sleep(0.01)
            got: list[int] = []
            with trio.move_on_after(3):
                async for delivery in consumer:
                    assert delivery.stream_offset is not None
                    got.append(delivery.stream_offset)
                    await delivery.ack()
                    if delivery.stream_offset == 9:
                        break
    assert got
    assert got[-1] == 9
    assert got == sorted(set(got))
