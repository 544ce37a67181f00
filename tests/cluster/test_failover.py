"""Failover across a real 3-node RabbitMQ cluster with quorum queues.

Each test streams messages through a CONFIRM producer and a consumer, kills a
node with SIGKILL mid-stream, and checks that every message the producer
reported confirmed reached the consumer (lost = 0; duplicates are possible
after a failover and are counted).  The figures are printed (``-s``).

RabbitMQ only: LavinMQ 1.0.1 has no clustering and no quorum queues.
"""

from __future__ import annotations

import collections
import itertools
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import RabbitCluster

pytestmark = [pytest.mark.broker, pytest.mark.cluster]

#: The URL list in the order given, so the test knows where the client starts.
CONFIG = tl.Config(heartbeat=5, shuffle_urls=False, endpoint_timeout=5.0)
#: Concurrent publishers, and the pause each takes between two messages.
PUBLISHERS = 8
PAUSE = 0.01


def unique(prefix: str) -> str:
    return f"trio-lavin-cluster.{prefix}.{secrets.token_hex(4)}"


@dataclass
class Stream:
    """What a producer/consumer pair did: when each message was confirmed,
    how often each was received, and which state changes each client saw."""

    confirmed: dict[int, float] = field(default_factory=dict)
    received: collections.Counter[int] = field(default_factory=collections.Counter)
    first_received: dict[int, float] = field(default_factory=dict)
    publish_errors: list[str] = field(default_factory=list)
    changes: dict[str, list[tl.StateChange]] = field(default_factory=dict)
    stop: trio.Event = field(default_factory=trio.Event)
    #: Publisher tasks still running.
    publishers: int = 0

    def lost(self) -> set[int]:
        return set(self.confirmed) - set(self.received)

    def duplicates(self) -> int:
        return sum(count - 1 for count in self.received.values())

    def connected_after(self, name: str, moment: float) -> float | None:
        """When the client ``name`` was next connected after ``moment``."""
        for change in self.changes[name]:
            if change.new is tl.ClientState.CONNECTED and change.at > moment:
                return change.at
        return None

    def longest_confirm_gap(self, start: float, end: float) -> float:
        """The longest time without any confirm between ``start`` and ``end``."""
        times = sorted(t for t in self.confirmed.values() if start <= t <= end)
        return max(b - a for a, b in itertools.pairwise([start, *times, end]))

    async def publish(self, producer: tl.Producer, numbers: Iterator[int]) -> None:
        self.publishers += 1
        try:
            while not self.stop.is_set():
                number = next(numbers)
                try:
                    await producer.publish(b"%d" % number)
                except tl.PublishError as exc:  # dropped: reported, so not "confirmed"
                    self.publish_errors.append(f"{number}: {exc!r}")
                else:
                    self.confirmed[number] = trio.current_time()
                await trio.sleep(PAUSE)
        finally:
            self.publishers -= 1

    async def consume(self, client: tl.Client, queue: str) -> None:
        async with client.consume(queue, prefetch=500) as deliveries:
            async for delivery in deliveries:
                number = int(delivery.body)
                self.received[number] += 1
                self.first_received.setdefault(number, trio.current_time())
                await delivery.ack()

    async def watch(self, client: tl.Client, name: str) -> None:
        self.changes[name] = []
        async with client.events() as events:
            async for event in events:
                if isinstance(event, tl.StateChange):
                    self.changes[name].append(event)

    async def wait_all_received(self) -> None:
        """Wait until the publishers stopped (the last ones may still be
        recording a confirm) and every confirmed message was received (bound
        it)."""
        while self.publishers or self.lost():
            await trio.sleep(0.05)


@asynccontextmanager
async def streaming(
    urls: list[str], queue: str, *, declare: bool
) -> AsyncIterator[tuple[Stream, tl.Client, tl.Client, tl.Producer]]:
    """A producer client and a consumer client on ``urls`` (in that order),
    streaming through ``queue`` until the block ends; then the producer is
    drained and every confirmed message waited for."""
    stream = Stream()
    async with (
        tl.open_client(urls, CONFIG) as pub_client,
        tl.open_client(urls, CONFIG) as sub_client,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(stream.watch, pub_client, "producer")
        nursery.start_soon(stream.watch, sub_client, "consumer")
        with trio.fail_after(30):
            if declare:
                await pub_client.declare_queue(queue, durable=True, queue_type=tl.QueueType.QUORUM)
            producer = pub_client.producer(queue)
            nursery.start_soon(stream.consume, sub_client, queue)
            numbers = itertools.count()
            for _ in range(PUBLISHERS):
                nursery.start_soon(stream.publish, producer, numbers)
            while len(stream.received) < 50:  # both sides are flowing
                await trio.sleep(0.01)
        yield stream, pub_client, sub_client, producer
        stream.stop.set()
        with trio.fail_after(30):
            await producer.drain()
        with trio.fail_after(30):
            await stream.wait_all_received()
        nursery.cancel_scope.cancel()


def endpoint_of(cluster: RabbitCluster, index: int) -> str:
    return tl.parse_url(cluster.url(index)).endpoint


async def wait_endpoint(client: tl.Client, endpoint: str) -> None:
    """Wait until ``client`` is connected to ``endpoint`` (bound it)."""
    while not (client.connected and client.statistics().endpoint == endpoint):
        await trio.sleep(0.01)


def report(name: str, stream: Stream, **figures: str) -> None:
    lost = stream.lost()
    shown = ", ".join(f"{key} {value}" for key, value in figures.items())
    print(
        f"\n[{name}] confirmed {len(stream.confirmed)}, received {len(stream.received)} "
        f"distinct, lost {len(lost)}, duplicates {stream.duplicates()}, "
        f"publish errors {len(stream.publish_errors)}; {shown}"
    )


async def test_the_cluster_fixture_runs_three_joined_nodes_that_answer_amqp(
    rabbit_cluster: RabbitCluster,
) -> None:
    cluster = rabbit_cluster
    running = await trio.to_thread.run_sync(cluster.running_nodes)
    assert sorted(running) == sorted(node.nodename for node in cluster.nodes)
    assert len({node.amqp_port for node in cluster.nodes}) == 3
    for url in cluster.urls:
        with trio.fail_after(10):
            async with tl.open_connection(url) as connection:
                assert connection.is_open


async def test_killing_the_connected_node_fails_over_within_a_second_and_loses_nothing(
    rabbit_cluster: RabbitCluster,
) -> None:
    """Producer (CONFIRM) and consumer both on node 0, which leads the quorum
    queue; node 0 is SIGKILLed mid-stream.  Both clients are on a survivor
    within 1 s and carry on by themselves.  Then node 0 comes back, and
    later failovers (forced closes: node 1 -> node 2 -> node 0) land on it
    again.  Every confirmed message arrives."""
    cluster = rabbit_cluster
    queue = unique("connected")
    async with streaming(cluster.urls, queue, declare=True) as (stream, pub, sub, producer):
        assert pub.statistics().endpoint == endpoint_of(cluster, 0)
        assert sub.statistics().endpoint == endpoint_of(cluster, 0)
        # (The stream flows meanwhile: rabbitmqctl takes a second or two.)
        assert await trio.to_thread.run_sync(cluster.queue_leader, queue) == 0
        killed_at = trio.current_time()
        await trio.to_thread.run_sync(cluster.kill, 0)
        survivor = endpoint_of(cluster, 1)
        with trio.fail_after(10):
            await wait_endpoint(pub, survivor)
            await wait_endpoint(sub, survivor)
        # Node 0 restarts while the stream goes on through node 1.
        restart_started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, cluster.start, 0)
            confirmed_before = len(stream.confirmed)
            received_before = len(stream.received)
            await trio.sleep(1.0)
            assert len(stream.confirmed) > confirmed_before  # publishing resumed
            assert len(stream.received) > received_before  # consuming resumed
            stall = stream.longest_confirm_gap(killed_at, trio.current_time())
        restarted_in = trio.current_time() - restart_started
        # Forced failovers go round the list and land on the restarted node.
        for expected in (2, 0):
            await trio.to_thread.run_sync(cluster.close_all_connections, "failover test")
            with trio.fail_after(10):
                await wait_endpoint(pub, endpoint_of(cluster, expected))
                await wait_endpoint(sub, endpoint_of(cluster, expected))
        back_on_0 = trio.current_time()
        with trio.fail_after(10):
            while max(stream.confirmed.values()) < back_on_0:
                await trio.sleep(0.01)  # publishing through node 0 again
    pub_back = stream.connected_after("producer", killed_at)
    sub_back = stream.connected_after("consumer", killed_at)
    assert pub_back is not None
    assert sub_back is not None
    report(
        "connected node killed",
        stream,
        producer_reconnected_after=f"{pub_back - killed_at:.3f} s",
        consumer_reconnected_after=f"{sub_back - killed_at:.3f} s",
        publish_stall=f"{stall:.3f} s",
        nack_retries=str(producer.statistics().retries),
        node_0_back_in=f"{restarted_in:.1f} s",
        reconnects=str(pub.statistics().reconnects),
    )
    assert stream.lost() == set()
    assert stream.publish_errors == []  # nacks were retried until they went through
    assert pub_back - killed_at < 1.0
    assert sub_back - killed_at < 1.0
    assert pub.statistics().reconnects == 3


async def test_killing_the_queue_leader_elsewhere_stalls_publishing_briefly_and_loses_nothing(
    rabbit_cluster: RabbitCluster,
) -> None:
    """The quorum queue is led by node 0; producer and consumer are on node 1.
    Node 0 is SIGKILLed mid-stream: the clients stay connected, publishing
    stalls while a new leader is elected (measured), nacks are retried, and
    every confirmed message arrives."""
    cluster = rabbit_cluster
    queue = unique("leader")
    async with tl.open_connection(cluster.url(0)) as connection:
        channel = await connection.channel()
        await channel.queue_declare(
            queue, durable=True, arguments=tl.queue_arguments(tl.QueueType.QUORUM)
        )
    urls = [cluster.url(1), cluster.url(2), cluster.url(0)]
    async with streaming(urls, queue, declare=False) as (stream, pub, sub, producer):
        assert pub.statistics().endpoint == endpoint_of(cluster, 1)
        # (The stream flows meanwhile: rabbitmqctl takes a second or two.)
        assert await trio.to_thread.run_sync(cluster.queue_leader, queue) == 0
        killed_at = trio.current_time()
        await trio.to_thread.run_sync(cluster.kill, 0)
        new_leader = await trio.to_thread.run_sync(cluster.queue_leader, queue)
        await trio.sleep_until(killed_at + 2.0)
        confirmed_late = [t for t in stream.confirmed.values() if t > killed_at + 1.0]
        assert confirmed_late  # publishing goes on under the new leader
    stall = stream.longest_confirm_gap(killed_at, killed_at + 2.0)
    report(
        "queue leader killed",
        stream,
        publish_stall=f"{stall:.3f} s",
        nack_retries=str(producer.statistics().retries),
        new_leader=f"node {new_leader}",
    )
    assert stream.lost() == set()
    assert stream.publish_errors == []
    assert pub.statistics().reconnects == 0
    assert sub.statistics().reconnects == 0
    assert stall < 2.0
