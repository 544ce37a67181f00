"""The client's limits on what a broker may send, against the in-process FakeBroker.

A message larger than ``max_body_size`` is refused on its channel (311
CONTENT_TOO_LARGE): the channel's users get :class:`ChannelClosed` with that
code, the connection stays up, the broker keeps the message, and a recovering
consumer backs off instead of fetching the message again in a loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_lavin as tl
from trio_lavin._robust._supervisor import RECORDED_DELAYS, Connect, Supervisor, Wait
from trio_lavin._sansio._errors import CONTENT_TOO_LARGE
from trio_lavin._sansio._framing import FrameReader
from trio_lavin.testing import FakeBrokerServer, open_fake_broker

from ._server import raw_frame

LIMIT = 1000


@pytest.fixture
async def broker() -> AsyncIterator[FakeBrokerServer]:
    async with open_fake_broker(heartbeat=0) as broker:
        yield broker


async def _wait_ready(broker: FakeBrokerServer, queue: str, count: int) -> None:
    with trio.fail_after(5):
        while broker.queue(queue).messages_ready != count:
            await trio.sleep(0.01)


async def test_too_large_a_message_closes_only_its_channel_with_311(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_connection(stream_factory=broker.connect, max_body_size=LIMIT) as conn:
        channel = await conn.channel()
        await channel.queue_declare("big")
        await channel.queue_declare("small")
        await channel.confirm_select()
        await channel.publish(b"b" * (LIMIT + 1), routing_key="big")
        await channel.publish(b"s" * LIMIT, routing_key="small")
        consumer = await channel.basic_consume("big")
        with pytest.raises(tl.ChannelClosed) as excinfo, trio.fail_after(5):
            async for _ in consumer:
                pass
        assert excinfo.value.reply_code == CONTENT_TOO_LARGE
        assert str(excinfo.value) == (
            "311 CONTENT_TOO_LARGE: Basic.Deliver on channel 1 carries a body of 1001 bytes, "
            "more than max_body_size 1000"
        )
        assert not channel.is_open
        assert conn.is_open
        # The broker got our Channel.Close and requeued the message.
        await _wait_ready(broker, "big", 1)
        other = await conn.channel()
        delivery = await other.basic_get("small")
        assert delivery is not None
        assert delivery.body == b"s" * LIMIT
        # basic.get of the large one fails the same way, on its own channel.
        with pytest.raises(tl.ChannelClosed) as excinfo:
            await other.basic_get("big")
        assert excinfo.value.reply_code == CONTENT_TOO_LARGE
        assert conn.is_open


async def test_recovering_consumer_backs_off_from_a_message_too_large(
    broker: FakeBrokerServer,
) -> None:
    config = tl.Config(
        max_body_size=LIMIT, heartbeat=0, reconnect_initial_delay=0.05, reconnect_jitter=0.0
    )
    async with tl.open_client(stream_factory=broker.connect, config=config) as client:
        await client.declare_queue("big")
        producer = client.producer("big")
        await producer.publish(b"b" * (LIMIT + 1))
        received = 0
        async with client.consume("big") as deliveries:
            with trio.move_on_after(1.0):
                async for _ in deliveries:
                    received += 1
            subscriptions = deliveries.subscriptions
        stats = client.statistics()
        assert client.connected
    assert received == 0
    # 0.05 + 0.1 + 0.2 + 0.4 s of backoff fit in 1 s: at most 5 subscriptions,
    # not one per round trip.
    assert 2 <= subscriptions <= 5, subscriptions
    assert stats.connects == 1
    assert broker.queue("big").messages_ready == 1


async def test_the_backoff_from_a_message_too_large_grows_across_the_deliveries_before_it(
    broker: FakeBrokerServer,
) -> None:
    """A small message ahead of the one too large is handed over each time
    (its ack comes after the 311 closed the channel, so it comes again): the
    wait before subscribing again still grows (it started over with every
    delivery handed over: 20 subscriptions in a second)."""
    config = tl.Config(
        max_body_size=LIMIT, heartbeat=0, reconnect_initial_delay=0.05, reconnect_jitter=0.0
    )
    async with tl.open_client(stream_factory=broker.connect, config=config) as client:
        await client.declare_queue("big")
        producer = client.producer("big")
        await producer.publish(b"small")
        await producer.publish(b"b" * (LIMIT + 1))
        received: list[bytes] = []
        async with client.consume("big") as deliveries:
            with trio.move_on_after(1.0):
                async for delivery in deliveries:
                    received.append(delivery.body)
                    await delivery.ack()
            subscriptions = deliveries.subscriptions
    assert set(received) == {b"small"}
    # 0.05 + 0.1 + 0.2 + 0.4 s of backoff fit in 1 s: at most 5 subscriptions.
    assert 2 <= subscriptions <= 5, subscriptions
    assert len(received) <= subscriptions


def test_a_client_retrying_for_ever_keeps_a_bounded_record_of_delays() -> None:
    supervisor = Supervisor(tl.Config(), ["amqp://127.0.0.1:1/"], 0.0)
    now = 0.0
    for _ in range(3 * RECORDED_DELAYS):
        action = supervisor.next_action(now)
        if isinstance(action, Wait):
            now = action.until
            action = supervisor.next_action(now)
        assert isinstance(action, Connect)
        supervisor.connect_started(now, action.endpoint)
        supervisor.connect_failed(now, tl.ConnectionLost("refused"))
        supervisor.changes.clear()
    assert supervisor.attempts == 3 * RECORDED_DELAYS
    assert RECORDED_DELAYS <= len(supervisor.delays) <= 2 * RECORDED_DELAYS
    assert supervisor.delays[-1] == pytest.approx(supervisor.retry_at - now)


async def test_opening_more_channels_than_channel_max_is_a_clear_error() -> None:
    async with (
        open_fake_broker(channel_max=2) as small,
        tl.open_connection(stream_factory=small.connect) as conn,
    ):
        assert conn.channel_max == 2
        first = await conn.channel()
        await conn.channel()
        with pytest.raises(tl.LocalProtocolError, match=r"all 2 channels are in use"):
            await conn.channel()
        assert conn.is_open
        await first.aclose()
        third = await conn.channel()
        assert third.number == first.number


@given(
    sizes=st.lists(st.integers(0, 4096 - 8), min_size=1, max_size=8),
    chunk=st.integers(1, 3 * 4096),
)
def test_the_receive_buffer_holds_at_most_one_incomplete_frame(
    sizes: list[int], chunk: int
) -> None:
    """Once parsed, what stays buffered is less than frame_max: the client's
    receive buffer never exceeds frame_max plus one read (RECEIVE_SIZE)."""
    reader = FrameReader(4096)
    stream = b"".join(raw_frame(3, 1, b"x" * size) for size in sizes)
    frames = 0
    for offset in range(0, len(stream), chunk):
        reader.receive_data(stream[offset : offset + chunk])
        while reader.next_frame() is not None:
            frames += 1
        assert reader.buffered < reader.frame_max
    assert frames == len(sizes)
    assert reader.buffered == 0
