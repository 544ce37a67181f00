"""trio-lavin, through its public API only, two ways:

* ``lavin-channel``: the low-level API, ``open_connection`` + ``Channel``
  (``basic_publish_nowait`` falling back to ``basic_publish`` when the send buffer is full,
  ``confirm_select`` + ``Confirmation.wait``, ``basic_consume``);
* ``lavin-client``: the recovering client, ``open_client`` + ``client.producer(...)``
  (``enqueue`` + ``drain``, ``publish``, ``publish_nowait``) and ``client.consume``.

In the ``realistic`` message profile every message gets its own ``BasicProperties`` (built
in the timed loop by :func:`_properties`), and consumers read each delivery's
``message_id`` and ``traceparent`` header.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections import deque
from collections.abc import Iterator

import suite_common as common
import trio
from suite_common import Measurement, RunSpec, Timer

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


def _properties(spec: RunSpec) -> Iterator[lavin.BasicProperties | None]:
    """Endless properties, one per message, for ``spec``'s message profile."""
    if spec.message_profile != "realistic":
        return itertools.repeat(None)
    return _realistic()


def _realistic() -> Iterator[lavin.BasicProperties]:
    for message_id, traceparent in common.message_ids():
        yield lavin.BasicProperties(
            content_type=common.CONTENT_TYPE,
            delivery_mode=common.PERSISTENT,
            message_id=message_id,
            timestamp=common.timestamp_now(),
            headers=common.headers(traceparent),
        )


async def _wait_until_held(channel: lavin.Channel, queue: str, count: int) -> None:
    while True:  # the queue's length is the broker's: poll it
        if (await channel.queue_declare(queue, passive=True)).message_count >= count:
            return
        await trio.sleep(POLL_INTERVAL)


# -- the low-level Channel -----------------------------------------------------------------


async def _channel_publish_nowait(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    queue = spec.queue
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    timer = Timer()
    timer.start()
    for props in itertools.islice(properties, spec.messages):
        try:
            channel.basic_publish_nowait(body, routing_key=queue, properties=props)
        except trio.WouldBlock:
            await channel.basic_publish(body, routing_key=queue, properties=props)
    await _wait_until_held(channel, queue, spec.messages)
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_publish(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    """The Channel's awaitable publish, one call per message (no confirms)."""
    queue = spec.queue
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    timer = Timer()
    timer.start()
    for props in itertools.islice(properties, spec.messages):
        await channel.basic_publish(body, routing_key=queue, properties=props)
    await _wait_until_held(channel, queue, spec.messages)
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_publish_confirm(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    await channel.confirm_select()
    queue = spec.queue
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    window: deque[lavin.Confirmation] = deque()
    timer = Timer()
    timer.start()
    for props in itertools.islice(properties, spec.messages):
        if len(window) >= spec.window:
            # Wait for the oldest, then retire every settled one without a checkpoint each.
            await window[0].wait()
            while window and window[0].done:
                settled = window.popleft()
                if not settled.acked:
                    await settled.wait()  # raises MessageNacked
        try:
            confirmation = channel.basic_publish_nowait(body, routing_key=queue, properties=props)
        except trio.WouldBlock:
            confirmation = await channel.basic_publish(body, routing_key=queue, properties=props)
        assert confirmation is not None
        window.append(confirmation)
    for confirmation in window:
        await confirmation.wait()
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_confirm_tasks(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    """``spec.tasks`` tasks on one confirm channel, each awaiting ``channel.publish`` (which
    returns once the broker confirmed) until ``spec.messages`` are confirmed in all."""
    await channel.confirm_select()
    queue = spec.queue
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    remaining = spec.messages

    async def publisher() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await channel.publish(body, routing_key=queue, properties=next(properties))

    timer = Timer()
    timer.start()
    async with trio.open_nursery() as nursery:
        for _ in range(spec.tasks):
            nursery.start_soon(publisher)
    timer.stop()
    return timer.measurement(spec.messages)


async def _channel_confirm_sync(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    await channel.confirm_select()
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await channel.publish(body, routing_key=spec.queue, properties=next(properties))
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


async def _channel_consume(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    timer = Timer()
    timer.start()
    read = spec.message_profile == "realistic"
    message_id: object = None
    traceparent: object = None
    await channel.basic_qos(spec.prefetch)
    consumer = await channel.basic_consume(spec.queue)
    received = 0
    async for delivery in consumer:
        received += 1
        if read:
            properties = delivery.properties
            message_id = properties.message_id
            traceparent = properties.headers["traceparent"]  # type: ignore[index]
        if received % spec.ack_every == 0 or received == spec.messages:
            await delivery.ack(multiple=True)
        if received == spec.messages:
            break
    timer.stop()
    if read:
        common.check_read(message_id, traceparent)
    return timer.measurement(spec.messages)


async def _channel_roundtrip(channel: lavin.Channel, spec: RunSpec) -> Measurement:
    consumer = await channel.basic_consume(spec.queue, no_ack=True)
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        channel.basic_publish_nowait(body, routing_key=spec.queue, properties=next(properties))
        await consumer.__anext__()
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


_CHANNEL_SCENARIOS = {
    "publish_nowait": _channel_publish_nowait,
    "publish": _channel_publish,
    "publish_confirm": _channel_publish_confirm,
    "publish_confirm_tasks": _channel_confirm_tasks,
    "publish_confirm_sync": _channel_confirm_sync,
    "consume": _channel_consume,
    "roundtrip": _channel_roundtrip,
}


# -- the recovering Client and its Producer --------------------------------------------------


async def _client_publish_nowait(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(spec.queue, mode=lavin.PublishMode.FIRE_AND_FORGET)
    channel = await client.open_channel()
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    timer = Timer()
    timer.start()
    for props in itertools.islice(properties, spec.messages):
        await producer.enqueue(body, properties=props)
    await producer.drain()
    await _wait_until_held(channel, spec.queue, spec.messages)
    timer.stop()
    return timer.measurement(spec.messages)


async def _client_publish(client: lavin.Client, spec: RunSpec) -> Measurement:
    """``await producer.publish(...)`` per message in FIRE_AND_FORGET mode: the call a user
    writes first."""
    producer = client.producer(spec.queue, mode=lavin.PublishMode.FIRE_AND_FORGET)
    channel = await client.open_channel()
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    timer = Timer()
    timer.start()
    for props in itertools.islice(properties, spec.messages):
        await producer.publish(body, properties=props)
    await _wait_until_held(channel, spec.queue, spec.messages)
    timer.stop()
    return timer.measurement(spec.messages)


async def _client_publish_confirm(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(
        spec.queue, mode=lavin.PublishMode.CONFIRM, confirm_window=spec.window
    )
    await client.wait_connected()
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    timer = Timer()
    timer.start()
    for props in itertools.islice(properties, spec.messages):
        await producer.enqueue(body, properties=props)
    await producer.drain()
    timer.stop()
    _check_confirmed(producer, spec.messages)
    return timer.measurement(spec.messages)


def _check_confirmed(producer: lavin.Producer, messages: int) -> None:
    stats = producer.statistics()
    if stats.confirmed != messages:
        raise RuntimeError(f"{stats.confirmed} of {messages} confirmed: {stats}")


async def _client_confirm_tasks(client: lavin.Client, spec: RunSpec) -> Measurement:
    """``spec.tasks`` tasks on one CONFIRM producer, each awaiting ``producer.publish``
    until ``spec.messages`` are confirmed in all."""
    producer = client.producer(
        spec.queue, mode=lavin.PublishMode.CONFIRM, confirm_window=spec.window
    )
    await client.wait_connected()
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    remaining = spec.messages

    async def publisher() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await producer.publish(body, properties=next(properties))

    timer = Timer()
    timer.start()
    async with trio.open_nursery() as nursery:
        for _ in range(spec.tasks):
            nursery.start_soon(publisher)
    timer.stop()
    _check_confirmed(producer, spec.messages)
    return timer.measurement(spec.messages)


async def _client_confirm_sync(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(spec.queue, mode=lavin.PublishMode.CONFIRM)
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await producer.publish(body, properties=next(properties))
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer.measurement(spec.messages, latencies)


async def _client_consume(client: lavin.Client, spec: RunSpec) -> Measurement:
    await client.wait_connected()
    read = spec.message_profile == "realistic"
    message_id: object = None
    traceparent: object = None
    timer = Timer()
    timer.start()
    received = 0
    async with client.consume(spec.queue, prefetch=spec.prefetch) as consumer:
        async for delivery in consumer:
            received += 1
            if read:
                properties = delivery.properties
                message_id = properties.message_id
                traceparent = properties.headers["traceparent"]  # type: ignore[index]
            if received % spec.ack_every == 0 or received == spec.messages:
                await delivery.ack(multiple=True)
            if received == spec.messages:
                break
        timer.stop()
    if read:
        common.check_read(message_id, traceparent)
    return timer.measurement(spec.messages)


async def _client_roundtrip(client: lavin.Client, spec: RunSpec) -> Measurement:
    producer = client.producer(spec.queue, mode=lavin.PublishMode.FIRE_AND_FORGET)
    body = common.body(spec.message_profile)
    properties = _properties(spec)
    latencies: list[float] = []
    timer = Timer()
    async with client.consume(spec.queue, prefetch=0, no_ack=True) as consumer:
        for i in range(spec.warmup + spec.messages):
            if i == spec.warmup:
                timer.start()
            start = time.perf_counter()
            producer.publish_nowait(body, properties=next(properties))
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
        body = common.body(spec.message_profile)
        properties = _properties(spec)
        timer = Timer()
        timer.start()
        if spec.message_profile == "realistic":
            for props in itertools.islice(properties, spec.messages):
                publish_nowait(body, properties=props)
        else:  # the loop as it was before profiles existed (this row is ~1 us a call)
            for _ in range(spec.messages):
                publish_nowait(body)
        timer.stop()
        buffered = producer.statistics().buffered
        if buffered != spec.messages:
            raise RuntimeError(f"{buffered} of {spec.messages} messages are in the buffer")
    return timer.measurement(spec.messages)


_CLIENT_SCENARIOS = {
    "publish_nowait": _client_publish_nowait,
    "publish": _client_publish,
    "publish_confirm": _client_publish_confirm,
    "publish_confirm_tasks": _client_confirm_tasks,
    "publish_confirm_sync": _client_confirm_sync,
    "consume": _client_consume,
    "roundtrip": _client_roundtrip,
}
