"""The client against the real broker through FaultProxy: severed and
blackholed connections, sever cycles under load, and the zero-loss chaos run."""

from __future__ import annotations

import random
import secrets
from typing import Literal

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import BrokerNode, FaultProxy, open_fault_proxy

from ._names import unique

pytestmark = pytest.mark.broker


async def roundtrip(client: tl.Client, queue: str, consumer: tl.RecoveringConsumer) -> bytes:
    """Publish one confirmed message and receive it."""
    connection = await client.wait_connected()
    channel = await connection.channel()
    await channel.confirm_select()
    body = secrets.token_bytes(8)
    await channel.publish(body, routing_key=queue)
    await channel.aclose()
    while True:
        delivery = await consumer.__anext__()
        await delivery.ack()
        if delivery.body == body:
            return body


async def test_after_a_sever_the_client_is_back_and_round_trips_within_one_second(
    amqp_url: str, proxy: FaultProxy
) -> None:
    queue = unique()
    config = tl.Config(heartbeat=5)
    async with tl.open_client(proxy.url_for(amqp_url), config) as client:
        await client.declare_queue(queue, auto_delete=True)
        async with client.consume(queue, prefetch=10) as consumer:
            await roundtrip(client, queue, consumer)
            modes: tuple[Literal["rst", "fin"], ...] = ("rst", "fin")
            for mode in modes:
                connection = await client.wait_connected()
                start = trio.current_time()
                assert proxy.sever(mode) >= 1
                await connection.wait_closed()
                with trio.fail_after(1.0):
                    await roundtrip(client, queue, consumer)
                elapsed = trio.current_time() - start
                print(f"sever ({mode}): back and round-tripped in {elapsed:.3f} s")
        assert client.statistics().reconnects == 2


async def test_a_blackholed_connection_is_replaced_within_two_heartbeats_plus_one_second(
    amqp_url: str, proxy: FaultProxy
) -> None:
    heartbeat = 2
    config = tl.Config(heartbeat=heartbeat)
    async with tl.open_client(proxy.url_for(amqp_url), config) as client:
        connection = await client.wait_connected()
        start = trio.current_time()
        proxy.blackhole()
        with trio.fail_after(2 * heartbeat + 1):
            await connection.wait_closed()
            detected = trio.current_time() - start
            proxy.restore()  # the partition heals; new connections go through
            await client.wait_connected()
        print(
            f"blackhole: detected after {detected:.2f} s, reconnected after "
            f"{trio.current_time() - start:.2f} s (limit {2 * heartbeat + 1} s)"
        )
        assert "heartbeat timeout" in str(connection.error)


async def test_twenty_sever_cycles_under_continuous_publishing_keep_topology(
    amqp_url: str, proxy: FaultProxy
) -> None:
    queue, exchange = unique(), unique("ex")
    config = tl.Config(heartbeat=5)
    async with tl.open_client(proxy.url_for(amqp_url), config) as client:
        await client.declare_exchange(exchange, "direct", auto_delete=True)
        await client.declare_queue(queue, auto_delete=True)
        await client.bind_queue(queue, exchange, "k")
        producer = client.producer(exchange=exchange, routing_key="k")
        dropped: list[tl.DropReason] = []
        producer.on_drop(lambda message, target, reason: dropped.append(reason))
        stop = trio.Event()

        async def publish() -> None:
            number = 0
            while not stop.is_set():
                number += 1
                await producer.enqueue(b"%d" % number)
                await trio.sleep(0.001)

        async with client.consume(queue, prefetch=100) as consumer, trio.open_nursery() as n:
            n.start_soon(publish)
            for _ in range(20):
                connection = await client.wait_connected()
                await trio.sleep(random.uniform(0.05, 0.2))
                proxy.sever()
                await connection.wait_closed()
            with trio.fail_after(5):
                await client.wait_connected()
                body = await roundtrip(client, queue, consumer)
            stop.set()
            with trio.fail_after(30):
                await producer.drain()
            n.cancel_scope.cancel()
        stats = client.statistics()
        assert client.connected
        assert stats.reconnects == 20
        assert stats.recovery_failures == 0
        assert dropped == []
        assert body
        print(f"20 sever cycles: {producer.statistics()}")


async def test_zero_loss_chaos_with_severs_and_a_broker_restart(
    node: BrokerNode,
) -> None:
    """50 000 messages with unique ids, in CONFIRM mode, while the connection
    is severed every 200-500 ms and the broker is killed and restarted once:
    every confirmed id arrives, and every id is confirmed or reported."""
    total = 50_000
    queue = unique("chaos")
    params = tl.parse_url(node.url)
    config = tl.Config(heartbeat=5, reconnect_max_delay=1.0)
    confirmed: set[int] = set()
    dropped: dict[int, tl.DropReason] = {}
    async with open_fault_proxy(params.host, params.port) as proxy:
        url = proxy.url_for(node.url)
        async with tl.open_client(url, config) as client:
            await client.declare_queue(queue, durable=True)
            producer = client.producer(queue, confirm_window=500)
            producer.on_drop(
                lambda message, target, reason: dropped.__setitem__(int(message.body), reason)
            )
            done = trio.Event()

            async def publish_one(number: int, limit: trio.CapacityLimiter) -> None:
                async with limit:
                    props = tl.BasicProperties(delivery_mode=2, message_id=str(number))
                    try:
                        await producer.publish(b"%d" % number, properties=props)
                    except tl.PublishError:
                        return
                    confirmed.add(number)

            async def publish_all() -> None:
                limit = trio.CapacityLimiter(2_000)
                async with trio.open_nursery() as nursery:
                    for number in range(total):
                        await limit.acquire_on_behalf_of(number)
                        limit.release_on_behalf_of(number)
                        nursery.start_soon(publish_one, number, limit)
                done.set()

            async def chaos() -> None:
                severs = 0
                killed = False
                while not done.is_set():
                    await trio.sleep(random.uniform(0.2, 0.5))
                    if not killed and len(confirmed) > total // 3:
                        killed = True
                        await trio.to_thread.run_sync(node.kill)
                        await trio.sleep(0.5)
                        await trio.to_thread.run_sync(node.start)
                        continue
                    severs += proxy.sever()
                print(f"chaos: {severs} connections severed, broker restarted: {killed}")

            start = trio.current_time()
            with trio.fail_after(300):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(publish_all)
                    nursery.start_soon(chaos)
            publish_time = trio.current_time() - start
            stats = client.statistics()
        # Read everything back over a direct connection.
        received: list[int] = []
        async with tl.open_connection(node.url) as conn:
            channel = await conn.channel()
            await channel.basic_qos(1000)
            depth = (await channel.queue_declare(queue, durable=True, passive=True)).message_count
            if depth:
                with trio.fail_after(120):
                    async with await channel.basic_consume(queue) as consumer:
                        async for delivery in consumer:
                            received.append(int(delivery.body))
                            if len(received) % 500 == 0:
                                await delivery.ack(multiple=True)
                            if len(received) == depth:
                                await delivery.ack(multiple=True)
                                break
            await channel.queue_delete(queue)
    unique_received = set(received)
    duplicates = len(received) - len(unique_received)
    lost = confirmed - unique_received
    unaccounted = set(range(total)) - confirmed - set(dropped)
    print(
        f"published={total} confirmed={len(confirmed)} dropped={len(dropped)} "
        f"received={len(received)} duplicates={duplicates} lost={len(lost)} "
        f"reconnects={stats.reconnects} seconds={publish_time:.1f}"
    )
    assert lost == set()
    assert unaccounted == set()
    assert stats.reconnects >= 2
