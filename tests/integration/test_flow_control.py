"""Flow control on a real RabbitMQ: its memory and disk alarms send connection.blocked to
publishing connections; the producer pauses (buffering, dropping nothing), the connection
stays up on heartbeats, and every message is confirmed once after connection.unblocked.
(LavinMQ's own way, 406 on publish when low on disk, is in test_lavinmq.py.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import RabbitNode

from ._names import unique

pytestmark = pytest.mark.broker

COUNT = 50


def _memory_alarm(node: RabbitNode) -> Callable[[bool], object]:
    def alarm(on: bool) -> object:
        # A watermark below what the node uses raises the alarm at once; 0.4 is the default.
        return node.rabbitmqctl("set_vm_memory_high_watermark", "0.0001" if on else "0.4")

    return alarm


def _disk_alarm(node: RabbitNode) -> Callable[[bool], object]:
    def alarm(on: bool) -> object:
        # More free disk than any machine has; then the default limit (50 MB).
        return node.rabbitmqctl("set_disk_free_limit", "1000000GB" if on else "50MB")

    return alarm


@pytest.mark.parametrize("make_alarm", [_memory_alarm, _disk_alarm], ids=["memory", "disk"])
async def test_an_alarm_blocks_the_producer_and_every_message_is_confirmed_once_after(
    rabbit_node: RabbitNode, make_alarm: Callable[[RabbitNode], Callable[[bool], object]]
) -> None:
    alarm = make_alarm(rabbit_node)
    queue = unique()
    config = tl.Config(heartbeat=2)
    async with tl.open_client(rabbit_node.url, config) as client:
        await client.declare_queue(queue)
        connection = await client.wait_connected()
        producer = client.producer(queue)
        assert await producer.publish(b"before")
        async with client.events() as events:
            alarm(True)
            try:
                # RabbitMQ blocks a connection when it next publishes.
                for i in range(COUNT):
                    producer.publish_nowait(b"%d" % i)
                with trio.fail_after(30):
                    while producer.statistics().paused is None:
                        await trio.sleep(0.05)
                stats = producer.statistics()
                assert str(stats.paused).startswith("the broker blocked the connection (")
                assert connection.blocked
                # Three heartbeat intervals, blocked: the connection stays up.
                await trio.sleep(3 * config.heartbeat)
                assert connection.is_open
                assert producer.statistics().confirmed <= 1 + 1  # at most the one in the socket
            finally:
                alarm(False)
            with trio.fail_after(60):
                await producer.drain()
            kinds = []
            while True:
                try:
                    event = events.receive_nowait()
                except trio.WouldBlock:
                    break
                if isinstance(event, tl.PublishingPaused | tl.PublishingResumed):
                    kinds.append(type(event))
        assert kinds == [tl.PublishingPaused, tl.PublishingResumed]
        stats = producer.statistics()
        assert (stats.paused, stats.pauses, stats.confirmed) == (None, 1, COUNT + 1)
        assert sum(stats.dropped.values()) == 0
        assert client.statistics().reconnects == 0
    async with tl.open_connection(rabbit_node.url) as conn:
        channel = await conn.channel()
        bodies = []
        while (delivery := await channel.basic_get(queue, no_ack=True)) is not None:
            bodies.append(delivery.body)
        await channel.queue_delete(queue)
    assert bodies == [b"before"] + [b"%d" % i for i in range(COUNT)]
