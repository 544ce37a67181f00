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


async def test_after_a_server_cancel_only_what_the_application_settled_stays_settled(
    broker: FakeBrokerServer,
) -> None:
    """The server cancels the consumer: it subscribes again on a new channel and closes
    the old one (whose unacked delivery goes back to the queue), so a late ack there
    returns False and settles nothing, and no delivery of the new subscription is taken
    for settled unless the application settled it.  (Regression: a late ack on the old
    channel, still open then, settled the new subscription's delivery with the same
    tag, which the next reconnect skipped: lost to the application.)"""
    async with tl.open_client(stream_factory=broker.connect) as client:
        await client.declare_queue("s")
        publish_offsets(broker, "s", range(10))
        async with client.consume("s", prefetch=5, stream_offset="first") as consumer:
            iterator = consumer.__aiter__()
            old = [await iterator.__anext__() for _ in range(5)]  # offsets 0-4, tags 1-5
            for delivery in old[1:]:
                await delivery.ack()
            broker.cancel_consumers("s")
            with trio.fail_after(5):
                new = [await iterator.__anext__() for _ in range(5)]
            offsets = sorted(d.stream_offset for d in new if d.stream_offset is not None)
            assert offsets == [5, 6, 7, 8, 9]
            assert await old[0].ack() is False  # its channel was closed: not settled
            for delivery in new:
                if delivery.stream_offset != 5:
                    await delivery.ack()
            with trio.fail_after(5):
                again = (await iterator.__anext__()).stream_offset
            assert again == 0  # back in the queue when the old channel closed
            broker.sever_all()  # what is unacked comes again: offsets 0 and 5
            handed: list[int | None] = []
            with trio.fail_after(5):
                while len(handed) < 2:
                    handed.append((await iterator.__anext__()).stream_offset)
        assert sorted(o for o in handed if o is not None) == [0, 5]
        assert None not in handed
