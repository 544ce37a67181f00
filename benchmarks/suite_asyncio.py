"""The asyncio peers: ``aio-pika`` and ``aiormq`` (the library aio-pika is built on), each
on uvloop when it is installed (the fastest way to run them), else on asyncio's own loop.

Each uses its documented API the way its README does: aio-pika ``connect`` + ``channel`` +
``default_exchange.publish(Message(...))`` + ``queue.iterator()``; aiormq ``connect`` +
``channel`` + ``basic_publish`` + ``basic_consume`` with a callback.  Pipelined confirms
keep up to ``window`` publishes in flight as tasks (both libraries return the confirm from
the awaited publish call, so a task per message is how one pipelines them).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

from suite_common import BODY, Measurement, RunSpec, Timer

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


# -- aio-pika ------------------------------------------------------------------------------


async def _aio_pika(spec: RunSpec) -> Measurement:
    import aio_pika

    connection = await aio_pika.connect(spec.url)
    try:
        confirms = spec.scenario in ("publish_confirm", "publish_confirm_sync")
        channel = await connection.channel(publisher_confirms=confirms)
        exchange = channel.default_exchange
        queue = spec.queue
        timer = Timer()

        async def publish() -> Any:
            return await exchange.publish(aio_pika.Message(BODY), routing_key=queue)

        async def held() -> int:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count)

        if spec.scenario == "publish_nowait":
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
        elif spec.scenario == "publish_confirm_sync":
            timer, latencies = await _latencies(publish, spec)
            return timer.measurement(spec.messages, latencies)
        elif spec.scenario == "consume":
            timer.start()
            await channel.set_qos(prefetch_count=spec.prefetch)
            source = await channel.declare_queue(queue, passive=True)
            received = 0
            async with source.iterator() as messages:
                async for message in messages:
                    received += 1
                    if received % spec.ack_every == 0 or received == spec.messages:
                        await message.ack(multiple=True)
                    if received == spec.messages:
                        break
            timer.stop()
        else:  # roundtrip
            source = await channel.declare_queue(queue, passive=True)
            async with source.iterator(no_ack=True) as messages:
                received = messages.__aiter__()

                async def roundtrip() -> None:
                    await publish()
                    await received.__anext__()

                timer, latencies = await _latencies(roundtrip, spec)
            return timer.measurement(spec.messages, latencies)
        return timer.measurement(spec.messages)
    finally:
        await connection.close()


# -- aiormq --------------------------------------------------------------------------------


async def _aiormq(spec: RunSpec) -> Measurement:
    import aiormq

    connection = await aiormq.connect(spec.url)
    try:
        confirms = spec.scenario in ("publish_confirm", "publish_confirm_sync")
        channel = await connection.channel(publisher_confirms=confirms)
        queue = spec.queue
        timer = Timer()

        async def publish() -> Any:
            return await channel.basic_publish(BODY, routing_key=queue)

        if spec.scenario == "publish_nowait":
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
        elif spec.scenario == "publish_confirm_sync":
            timer, latencies = await _latencies(publish, spec)
            return timer.measurement(spec.messages, latencies)
        elif spec.scenario == "consume":
            done = asyncio.Event()
            received = 0

            async def on_message(message: Any) -> None:
                nonlocal received
                received += 1
                if received % spec.ack_every == 0 or received == spec.messages:
                    await channel.basic_ack(message.delivery.delivery_tag, multiple=True)
                if received == spec.messages:
                    done.set()

            timer.start()
            await channel.basic_qos(prefetch_count=spec.prefetch)
            await channel.basic_consume(queue, on_message, no_ack=False)
            await done.wait()
            timer.stop()
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
