"""The asyncio peers: ``aio-pika`` and ``aiormq`` (the library aio-pika is built on), each
on uvloop when it is installed (the fastest way to run them), else on asyncio's own loop.

Each uses its documented API the way its README does: aio-pika ``connect`` + ``channel`` +
``default_exchange.publish(Message(...))`` + ``queue.iterator()``; aiormq ``connect`` +
``channel`` + ``basic_publish`` + ``basic_consume`` with a callback.  Pipelined confirms
keep up to ``window`` publishes in flight as tasks (both libraries return the confirm from
the awaited publish call, so a task per message is how one pipelines them);
``publish_confirm_tasks`` runs ``tasks`` tasks, each awaiting its own confirmed publishes.
Their one publish call is awaited, so ``publish`` runs the ``publish_nowait`` code.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import version
from typing import Any

import suite_common as common
from suite_common import Measurement, RunSpec, Timer

#: Seconds between passive queue.declare polls while waiting for the broker to hold all N.
POLL_INTERVAL = 0.001

Scenario = Callable[[Any, RunSpec], Awaitable[Measurement]]


def run(spec: RunSpec) -> Measurement:
    library = "aio_pika" if spec.client == "aio-pika" else "aiormq"
    __import__(library)  # ModuleNotFoundError here reports the cell as n/a
    try:
        import uvloop
    except ModuleNotFoundError:
        loop = "asyncio loop"
        measurement: Measurement = asyncio.run(_run(spec))
    else:
        loop = f"uvloop {version('uvloop')}"
        measurement = uvloop.run(_run(spec))
    measurement.variant = f"{spec.client} {version(spec.client)}, {loop}"
    return measurement


async def _run(spec: RunSpec) -> Measurement:
    async with asyncio.timeout(spec.deadline):
        if spec.client == "aio-pika":
            return await _aio_pika(spec)
        return await _aiormq(spec)


async def _window_publish(publish: Callable[[], Awaitable[Any]], spec: RunSpec) -> None:
    """Run ``publish()`` ``spec.messages`` times with at most ``spec.window`` in flight."""
    window: deque[asyncio.Future[Any]] = deque()
    for _ in range(spec.messages):
        if len(window) >= spec.window:
            await window.popleft()
        window.append(asyncio.ensure_future(publish()))
    await asyncio.gather(*window)


async def _tasks_publish(publish: Callable[[], Awaitable[Any]], spec: RunSpec) -> None:
    """``spec.tasks`` tasks, each awaiting ``publish()`` until ``spec.messages`` in all."""
    remaining = spec.messages

    async def publisher() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await publish()

    async with asyncio.TaskGroup() as group:
        for _ in range(spec.tasks):
            group.create_task(publisher())


async def _latencies(
    one: Callable[[], Awaitable[Any]], spec: RunSpec
) -> tuple[Timer, list[float]]:
    latencies: list[float] = []
    timer = Timer()
    for i in range(spec.warmup + spec.messages):
        if i == spec.warmup:
            timer.start()
        start = time.perf_counter()
        await one()
        if i >= spec.warmup:
            latencies.append(time.perf_counter() - start)
    timer.stop()
    return timer, latencies


#: The scenarios that run on a channel with publisher confirms.
CONFIRM_SCENARIOS = ("publish_confirm", "publish_confirm_tasks", "publish_confirm_sync")


# -- aio-pika ------------------------------------------------------------------------------


def _aio_pika_messages(aio_pika: Any, spec: RunSpec) -> Iterator[Any]:
    """Endless ``aio_pika.Message`` objects, one made per message, for ``spec``'s profile."""
    if spec.message_profile != "realistic":
        while True:
            yield aio_pika.Message(common.BODY)
    body = common.REALISTIC_BODY
    persistent = aio_pika.DeliveryMode.PERSISTENT
    for message_id, traceparent in common.message_ids():
        yield aio_pika.Message(
            body,
            content_type=common.CONTENT_TYPE,
            delivery_mode=persistent,
            message_id=message_id,
            timestamp=common.timestamp_now(),
            headers=common.headers(traceparent),
        )


async def _aio_pika(spec: RunSpec) -> Measurement:
    import aio_pika

    connection = await aio_pika.connect(spec.url)
    try:
        confirms = spec.scenario in CONFIRM_SCENARIOS
        channel = await connection.channel(publisher_confirms=confirms)
        exchange = channel.default_exchange
        queue = spec.queue
        messages = _aio_pika_messages(aio_pika, spec)
        read = spec.message_profile == "realistic"
        timer = Timer()

        async def publish() -> Any:
            return await exchange.publish(next(messages), routing_key=queue)

        async def held() -> int:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count)

        if spec.scenario in ("publish_nowait", "publish"):
            timer.start()
            for _ in range(spec.messages):
                await publish()
            while True:  # the queue's length is the broker's: poll it
                if await held() >= spec.messages:
                    break
                await asyncio.sleep(POLL_INTERVAL)
            timer.stop()
        elif spec.scenario == "publish_confirm":
            timer.start()
            await _window_publish(publish, spec)
            timer.stop()
        elif spec.scenario == "publish_confirm_tasks":
            timer.start()
            await _tasks_publish(publish, spec)
            timer.stop()
        elif spec.scenario == "publish_confirm_sync":
            timer, latencies = await _latencies(publish, spec)
            return timer.measurement(spec.messages, latencies)
        elif spec.scenario == "consume":
            timer.start()
            await channel.set_qos(prefetch_count=spec.prefetch)
            source = await channel.declare_queue(queue, passive=True)
            received = 0
            message_id: object = None
            traceparent: object = None
            async with source.iterator() as incoming:
                async for message in incoming:
                    received += 1
                    if read:
                        message_id = message.message_id
                        traceparent = message.headers["traceparent"]
                    if received % spec.ack_every == 0 or received == spec.messages:
                        await message.ack(multiple=True)
                    if received == spec.messages:
                        break
            timer.stop()
            if read:
                common.check_read(message_id, traceparent)
        else:  # roundtrip
            source = await channel.declare_queue(queue, passive=True)
            async with source.iterator(no_ack=True) as incoming:
                received = incoming.__aiter__()

                async def roundtrip() -> None:
                    await publish()
                    await received.__anext__()

                timer, latencies = await _latencies(roundtrip, spec)
            return timer.measurement(spec.messages, latencies)
        return timer.measurement(spec.messages)
    finally:
        await connection.close()


# -- aiormq --------------------------------------------------------------------------------


def _aiormq_properties(aiormq: Any, spec: RunSpec) -> Iterator[Any]:
    """Endless ``aiormq.spec.Basic.Properties`` (pamqp's), one per message, for ``spec``'s
    profile (None in the bare profile).  pamqp encodes a timestamp only from a datetime."""
    if spec.message_profile != "realistic":
        return itertools.repeat(None)
    return _aiormq_realistic(aiormq.spec.Basic.Properties)


def _aiormq_realistic(properties: Callable[..., Any]) -> Iterator[Any]:
    for message_id, traceparent in common.message_ids():
        yield properties(
            content_type=common.CONTENT_TYPE,
            delivery_mode=common.PERSISTENT,
            message_id=message_id,
            timestamp=common.timestamp_now(),
            headers=common.headers(traceparent),
        )


async def _aiormq(spec: RunSpec) -> Measurement:
    import aiormq

    connection = await aiormq.connect(spec.url)
    try:
        confirms = spec.scenario in CONFIRM_SCENARIOS
        channel = await connection.channel(publisher_confirms=confirms)
        queue = spec.queue
        body = common.body(spec.message_profile)
        properties = _aiormq_properties(aiormq, spec)
        read = spec.message_profile == "realistic"
        timer = Timer()

        async def publish() -> Any:
            return await channel.basic_publish(
                body, routing_key=queue, properties=next(properties)
            )

        if spec.scenario in ("publish_nowait", "publish"):
            timer.start()
            for _ in range(spec.messages):
                await publish()
            while True:  # the queue's length is the broker's: poll it
                declared = await channel.queue_declare(queue, passive=True)
                if declared.message_count >= spec.messages:
                    break
                await asyncio.sleep(POLL_INTERVAL)
            timer.stop()
        elif spec.scenario == "publish_confirm":
            timer.start()
            await _window_publish(publish, spec)
            timer.stop()
        elif spec.scenario == "publish_confirm_tasks":
            timer.start()
            await _tasks_publish(publish, spec)
            timer.stop()
        elif spec.scenario == "publish_confirm_sync":
            timer, latencies = await _latencies(publish, spec)
            return timer.measurement(spec.messages, latencies)
        elif spec.scenario == "consume":
            done = asyncio.Event()
            received = 0
            seen: list[object] = [None, None]

            async def on_message(message: Any) -> None:
                nonlocal received
                received += 1
                if read:
                    props = message.header.properties
                    seen[0] = props.message_id
                    seen[1] = props.headers["traceparent"]
                if received % spec.ack_every == 0 or received == spec.messages:
                    await channel.basic_ack(message.delivery.delivery_tag, multiple=True)
                if received == spec.messages:
                    done.set()

            timer.start()
            await channel.basic_qos(prefetch_count=spec.prefetch)
            await channel.basic_consume(queue, on_message, no_ack=False)
            await done.wait()
            timer.stop()
            if read:
                common.check_read(*seen)
        else:  # roundtrip
            arrived: asyncio.Queue[Any] = asyncio.Queue()

            async def on_delivery(message: Any) -> None:
                arrived.put_nowait(message)

            await channel.basic_consume(queue, on_delivery, no_ack=True)

            async def roundtrip() -> None:
                await publish()
                await arrived.get()

            timer, latencies = await _latencies(roundtrip, spec)
            return timer.measurement(spec.messages, latencies)
        return timer.measurement(spec.messages)
    finally:
        await connection.close()
