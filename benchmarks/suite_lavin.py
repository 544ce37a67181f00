"""trio-lavin, through its public API only, two ways:

* ``lavin-channel``: the low-level API, ``open_connection`` + ``Channel``
  (``basic_publish_nowait`` falling back to ``basic_publish`` when the send buffer is full,
  ``confirm_select`` + ``Confirmation.wait``, ``basic_consume``);
* ``lavin-client``: the recovering client, ``open_client`` + ``client.producer(...)``
  (``enqueue`` + ``drain``, ``publish``, ``publish_nowait``) and ``client.consume``.
"""

from __future__ import annotations

import socket
import time
from collections import deque

import trio
from suite_common import BODY, Measurement, RunSpec, Timer

import trio_lavin as lavin

#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001


def run(spec: RunSpec) -> Measurement:
    measurement: Measurement = trio.run(_run, spec)
    measurement.variant = f"trio-lavin {lavin.__version__}, trio {trio.__version__}"
    return measurement


async def _run(spec: RunSpec) -> Measurement:
    with trio.fail_after(spec.deadline):
        if spec.client == "lavin-channel":
            async with lavin.open_connection(spec.url) as connection:
                channel = await connection.channel()
                return await _CHANNEL_SCENARIOS[spec.scenario](channel, spec)
        if spec.scenario == "enqueue":
            return await _client_enqueue(spec)
        config = lavin.Config(buffer_size=max(10_000, spec.window))
        async with lavin.open_client(spec.url, config) as client:
            return await _CLIENT_SCENARIOS[spec.scenario](client, spec)


async def _wait_until_held(channel: lavin.Channel, queue: str, count: int) -> None:
    while True:  # the queue's length is the broker's: poll it
        if (await channel.queue_declare(queue, passive=True)).message_count >= count:
            return
        await trio.sleep(POLL_INTERVAL)


# -- the low-level Channel -----------------------------------------------------------------


async def _channel_publish_nowait(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    queue = spec.queue
    timer = Timer()
    timer.start()
    for _ in range(spec.messages):
        try:
            channel.basic_publish_nowait(BODY, routing_key=queue)
        except trio.WouldBlock:
            await channel.basic_publish(BODY, routing_key=queue)
    await _wait_until_held(channel, queue, spec.messages)
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_publish_confirm(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    await channel.confirm_select()
    queue = spec.queue
    window: deque[lavin.Confirmation] = deque()
    timer = Timer()
    timer.start()
    for _ in range(spec.messages):
        if len(window) >= spec.window:
            # Wait for the oldest, then retire every settled one without a checkpoint each.
            await window[0].wait()
            while window and window[0].done:
                settled = window.popleft()
                if not settled.acked:
                    await settled.wait()  # raises MessageNacked
        try:
            confirmation = channel.basic_publish_nowait(BODY, routing_key=queue)
        except trio.WouldBlock:
            confirmation = await channel.basic_publish(BODY, routing_key=queue)
        assert confirmation is not None
        window.append(confirmation)
    for confirmation in window:
        await confirmation.wait()
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_confirm_sync(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    await channel.confirm_select()
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await channel.publish(BODY, routing_key=spec.queue)
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


async def _channel_consume(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    timer = Timer()
    timer.start()
    await channel.basic_qos(spec.prefetch)
    consumer = await channel.basic_consume(spec.queue)
    received = 0
    async for delivery in consumer:
        received += 1
        if received % spec.ack_every == 0 or received == spec.messages:
            await delivery.ack(multiple=True)
        if received == spec.messages:
            break
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_roundtrip(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    consumer = await channel.basic_consume(spec.queue, no_ack=True)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        channel.basic_publish_nowait(BODY, routing_key=spec.queue)
        await consumer.__anext__()
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_CHANNEL_SCENARIOS = {
    "publish_nowait": _channel_publish_nowait,
    "publish_confirm": _channel_publish_confirm,
    "publish_confirm_sync": _channel_confirm_sync,
    "consume": _channel_consume,
    "roundtrip": _channel_roundtrip,
}


# -- the recovering Client and its Producer --------------------------------------------------


async def _client_publish_nowait(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(spec.queue, mode=lavin.PublishMode.FIRE_AND_FORGET)
    channel = await client.open_channel()
    timer = Timer()
    timer.start()
    for _ in range(spec.messages):
        await producer.enqueue(BODY)
    await producer.drain()
    await _wait_until_held(channel, spec.queue, spec.messages)
    timer.stop()
    return timer.measurement(spec.messages)


async def _client_publish_confirm(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(
        spec.queue, mode=lavin.PublishMode.CONFIRM, confirm_window=spec.window
    )
    await client.wait_connected()
    timer = Timer()
    timer.start()
    for _ in range(spec.messages):
        await producer.enqueue(BODY)
    await producer.drain()
    timer.stop()
    stats = producer.statistics()
    if stats.confirmed != spec.messages:
        raise RuntimeError(f"{stats.confirmed} of {spec.messages} confirmed: {stats}")
    return timer.measurement(spec.messages)


async def _client_confirm_sync(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(spec.queue, mode=lavin.PublishMode.CONFIRM)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await producer.publish(BODY)
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


async def _client_consume(client: lavin.Client, spec: RunSpec) -> Measurement:
    await client.wait_connected()
    timer = Timer()
    timer.start()
    received = 0
    async with client.consume(spec.queue, prefetch=spec.prefetch) as consumer:
        async for delivery in consumer:
            received += 1
            if received % spec.ack_every == 0 or received == spec.messages:
                await delivery.ack(multiple=True)
            if received == spec.messages:
                break
        timer.stop()
    return timer.measurement(spec.messages)


async def _client_roundtrip(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(spec.queue, mode=lavin.PublishMode.FIRE_AND_FORGET)
    latencies: list[float] = []
    timer = Timer()
    async with client.consume(spec.queue, prefetch=0, no_ack=True) as consumer:
        for i in range(spec.warmup + spec.messages):
            if i == spec.warmup:
                timer.start()
            start = time.perf_counter()
            producer.publish_nowait(BODY)
            await consumer.__anext__()
            if i >= spec.warmup:
                latencies.append(time.perf_counter() - start)
        timer.stop()
    return timer.measurement(spec.messages, latencies)


def _unused_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago): connects are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _client_enqueue(spec: RunSpec) -> Measurement:
    """``producer.publish_nowait`` into the buffer of a client that cannot connect: the first
    attempt is refused and the next one is an hour away, so nothing leaves the buffer."""
    config = lavin.Config(
        buffer_size=spec.messages + 1,
        reconnect_initial_delay=3600.0,
        reconnect_max_delay=3600.0,
        reconnect_jitter=0.0,
    )
    url = f"amqp://guest:guest@127.0.0.1:{_unused_port()}/"
    async with lavin.open_client(url, config) as client:
        producer = client.producer(
            "bench",
            mode=lavin.PublishMode.FIRE_AND_FORGET,
            buffer_policy=lavin.BufferPolicy.RAISE,
        )
        await trio.sleep(0.05)  # let the first connection attempt fail
        if client.connected:
            raise RuntimeError(f"something answered at {url}")
        publish_nowait = producer.publish_nowait
        timer = Timer()
        timer.start()
        for _ in range(spec.messages):
            publish_nowait(BODY)
        timer.stop()
        buffered = producer.statistics().buffered
        if buffered != spec.messages:
            raise RuntimeError(f"{buffered} of {spec.messages} messages are in the buffer")
    return timer.measurement(spec.messages)


_CLIENT_SCENARIOS = {
    "publish_nowait": _client_publish_nowait,
    "publish_confirm": _client_publish_confirm,
    "publish_confirm_sync": _client_confirm_sync,
    "consume": _client_consume,
    "roundtrip": _client_roundtrip,
}
