"""A stream consumer's offset bookkeeping on the fake broker, which relays the
``x-stream-offset`` header its publisher set (it has no streams of its own): what
counts as settled across re-subscriptions."""

from __future__ import annotations

import trio

import trio_lavin as tl
from trio_lavin.testing import FakeBrokerServer


def publish_offsets(broker: FakeBrokerServer, queue: str, offsets: range) -> None:
    for offset in offsets:
        properties = tl.BasicProperties(headers={"x-stream-offset": offset})
        broker.publish("", queue, b"%d" % offset, properties)


async def test_a_late_ack_on_an_old_subscriptions_channel_settles_nothing_of_the_new_one(
    broker: FakeBrokerServer,
) -> None:
    """Regression: the server cancelled the consumer, which subscribed again on a new
    channel; an ack of an old delivery on the old (still open) channel, whose tag also
    names a delivery of the new subscription, counted that new delivery as settled, so
    after the next reconnect it was acked and skipped: lost to the application."""
    async with tl.open_client(stream_factory=broker.connect) as client:
        await client.declare_queue("s")
        publish_offsets(broker, "s", range(10))
        handed: list[int | None] = []
        async with client.consume("s", prefetch=5, stream_offset="first") as consumer:
            iterator = consumer.__aiter__()
            old = [await iterator.__anext__() for _ in range(5)]  # offsets 0-4, tags 1-5
            for delivery in old[1:]:
                await delivery.ack()
            broker.cancel_consumers("s")  # the old channel stays open, holding offset 0
            with trio.fail_after(5):
                new = [await iterator.__anext__() for _ in range(5)]  # 5-9, tags 1-5 again
            assert [d.stream_offset for d in new] == [5, 6, 7, 8, 9]
            assert [d.delivery_tag for d in new] == [1, 2, 3, 4, 5]
            for delivery in new[1:]:  # not offset 5
                await delivery.ack()
            assert await old[0].ack()  # tag 1 on the old channel: it names offset 5's tag
            broker.sever_all()  # everything unacked comes again: offsets 0 and 5
            with trio.fail_after(5):
                while len(handed) < 2:
                    handed.append((await iterator.__anext__()).stream_offset)
        assert sorted(o for o in handed if o is not None) == [0, 5]
        assert None not in handed
