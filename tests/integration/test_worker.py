"""The worker (``Client.serve``) on the real brokers: concurrency, retries through
delay queues, dead letters, the duplicate window, and a clean stop, with the
connection severed under it."""

from __future__ import annotations

import collections.abc
import random

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import Broker, FaultProxy

from ._names import unique

pytestmark = pytest.mark.broker

CONFIG = tl.Config(heartbeat=5, reconnect_max_delay=0.2)
ATTEMPT = "x-trio-lavin-attempt"


async def queue_depth(url: str, queue: str) -> int:
    async with tl.open_connection(url) as connection:
        channel = await connection.channel()
        return (await channel.queue_declare(queue, passive=True)).message_count


async def delete_queues(url: str, *queues: str) -> None:
    async with tl.open_connection(url) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)


async def wait_until(condition: collections.abc.Callable[[], bool], seconds: float) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


async def test_the_worker_acks_what_its_handler_returns_and_retries_a_failure_after_its_delay(
    broker: Broker,
) -> None:
    queue = unique("work")
    runs: list[tuple[bytes, int, float]] = []  # body, attempt, when

    async def handler(delivery: tl.Delivery) -> None:
        headers = delivery.properties.headers or {}
        runs.append((delivery.body, headers.get(ATTEMPT, 1), trio.current_time()))
        if delivery.body == b"3" and ATTEMPT not in headers:
            raise RuntimeError("first try of 3 fails")

    retry = tl.Retry(attempts=3, delays=(0.3,))
    async with tl.open_client(broker.url, CONFIG) as client, trio.open_nursery() as nursery:
        await client.declare_queue(queue, durable=True)
        await nursery.start(lambda task_status: client.serve(
            queue, handler, concurrency=4, retry=retry, task_status=task_status
        ))  # fmt: skip
        producer = client.producer(queue)
        for i in range(10):
            await producer.publish(b"%d" % i, properties=tl.BasicProperties(message_id=str(i)))
        await wait_until(lambda: len(runs) == 11, 10)
        await trio.sleep(0.2)  # nothing more comes
        [stats] = client.statistics().workers
        nursery.cancel_scope.cancel()
    [after] = client.statistics().workers
    assert (stats.workers, after.workers) == (1, 0)  # running, then stopped
    assert len(runs) == 11
    assert sorted(body for body, _, _ in runs) == sorted([b"%d" % i for i in range(10)] + [b"3"])
    (first, second) = [(attempt, when) for body, attempt, when in runs if body == b"3"]
    assert (first[0], second[0]) == (1, 2)
    # Waited in the delay queue, not a hot loop.  The broker times the 0.3 s
    # itself, on its own millisecond clock: LavinMQ was seen to let a copy go
    # 0.4 ms early by ours (0.2996 s).
    assert 0.29 <= second[1] - first[1] < 3
    assert (stats.queue, stats.handled, stats.failed, stats.retried) == (queue, 10, 1, 1)
    assert (stats.dead_lettered, stats.duplicates, stats.in_flight) == (0, 0, 0)
    assert await queue_depth(broker.url, queue) == 0
    delay_queue = f"{queue}.retry.300ms"
    assert await queue_depth(broker.url, delay_queue) == 0
    await delete_queues(broker.url, queue, delay_queue)


async def test_a_message_failing_every_attempt_lands_in_the_dead_letter_queue(
    broker: Broker,
) -> None:
    queue, parking = unique("work"), unique("parked")
    attempts: list[int] = []

    async def handler(delivery: tl.Delivery) -> None:
        attempts.append((delivery.properties.headers or {}).get(ATTEMPT, 1))
        raise ValueError("never works")

    retry = tl.Retry(attempts=3, delays=(0, 0.1), dead_letter_queue=parking)
    async with tl.open_client(broker.url, CONFIG) as client, trio.open_nursery() as nursery:
        await client.declare_queue(queue, durable=True)
        await nursery.start(lambda task_status: client.serve(
            queue, handler, retry=retry, task_status=task_status
        ))  # fmt: skip
        properties = tl.BasicProperties(content_type="text/plain", headers={"app": "kept"})
        await client.producer(queue).publish(b"poison", properties=properties)
        await wait_until(lambda: client.statistics().workers[0].dead_lettered == 1, 10)
        [stats] = client.statistics().workers
        nursery.cancel_scope.cancel()
    assert attempts == [1, 2, 3]
    assert (stats.failed, stats.retried, stats.dead_lettered, stats.handled) == (3, 2, 1, 0)
    async with tl.open_connection(broker.url) as connection:
        channel = await connection.channel()
        parked = await channel.basic_get(parking, no_ack=True)
        assert parked is not None
        assert parked.body == b"poison"
        assert parked.properties.content_type == "text/plain"
        headers = parked.properties.headers or {}
        assert headers["app"] == "kept"
        assert headers["x-trio-lavin-error"] == "ValueError: never works"
        assert headers["x-trio-lavin-queue"] == queue
        assert headers[ATTEMPT] == 3
        assert await channel.basic_get(queue) is None
    await delete_queues(broker.url, queue, parking, f"{queue}.retry.100ms")


async def test_a_message_goes_through_the_same_delay_queue_on_every_retry(
    broker: Broker,
) -> None:
    """Each copy is a new message: the broker's x-death history of the last pass
    through the delay queue is not carried over, or the broker would take the next
    pass for a dead-letter cycle and drop the message (LavinMQ does)."""
    queue, parking = unique("work"), unique("parked")
    attempts: list[int] = []

    async def handler(delivery: tl.Delivery) -> None:
        attempts.append((delivery.properties.headers or {}).get(ATTEMPT, 1))
        raise ValueError("never works")

    retry = tl.Retry(attempts=4, delays=(0.05,), dead_letter_queue=parking)
    async with tl.open_client(broker.url, CONFIG) as client, trio.open_nursery() as nursery:
        await client.declare_queue(queue, durable=True)
        await nursery.start(lambda task_status: client.serve(
            queue, handler, retry=retry, task_status=task_status
        ))  # fmt: skip
        await client.producer(queue).publish(b"poison")
        await wait_until(lambda: client.statistics().workers[0].dead_lettered == 1, 10)
        nursery.cancel_scope.cancel()
    assert attempts == [1, 2, 3, 4]
    async with tl.open_connection(broker.url) as connection:
        channel = await connection.channel()
        parked = await channel.basic_get(parking, no_ack=True)
        assert parked is not None
        assert "x-death" not in (parked.properties.headers or {})
    await delete_queues(broker.url, queue, parking, f"{queue}.retry.50ms")


async def test_without_a_dead_letter_queue_the_last_failure_goes_to_the_queues_dlx(
    broker: Broker,
) -> None:
    queue, dlx_queue = unique("work"), unique("dlx")

    async def handler(delivery: tl.Delivery) -> None:
        raise ValueError("never works")

    async with tl.open_client(broker.url, CONFIG) as client, trio.open_nursery() as nursery:
        await client.declare_queue(dlx_queue, durable=True)
        arguments = tl.queue_arguments(dead_letter_exchange="", dead_letter_routing_key=dlx_queue)
        await client.declare_queue(queue, durable=True, arguments=arguments)
        await nursery.start(lambda task_status: client.serve(
            queue, handler, retry=tl.Retry(attempts=1), task_status=task_status
        ))  # fmt: skip
        await client.producer(queue).publish(b"poison")
        await wait_until(lambda: client.statistics().workers[0].dead_lettered == 1, 10)
        nursery.cancel_scope.cancel()
    async with tl.open_connection(broker.url) as connection:
        channel = await connection.channel()
        with trio.fail_after(5):
            while (dead := await channel.basic_get(dlx_queue, no_ack=True)) is None:
                await trio.sleep(0.02)
        assert dead.body == b"poison"
        [death] = (dead.properties.headers or {})["x-death"]
        assert (death["queue"], death["reason"]) == (queue, "rejected")
    await delete_queues(broker.url, queue, dlx_queue)


COUNT = 10_000
FAILING = 0.05


@pytest.mark.parametrize("window", [20_000, 0], ids=["duplicate-window", "no-window"])
async def test_a_worker_under_severs_handles_every_message_once_with_its_duplicate_window(
    broker: Broker, proxy: FaultProxy, window: int
) -> None:
    """10 000 messages, concurrency 20, handlers sleeping 0-5 ms and failing 5 % of the
    time on their first attempt, the connection severed every 200-500 ms while the
    messages are published and handled through it."""
    queue = unique("work")
    rng = random.Random(window)
    failing = set(rng.sample(range(COUNT), int(COUNT * FAILING)))
    succeeded: collections.Counter[int] = collections.Counter()
    first_failures: set[int] = set()

    async def handler(delivery: tl.Delivery) -> None:
        number = int(delivery.body)
        await trio.sleep(rng.random() * 0.005)
        if number in failing and ATTEMPT not in (delivery.properties.headers or {}):
            first_failures.add(number)
            raise RuntimeError(f"{number} fails its first attempt")
        succeeded[number] += 1

    async def sever_now_and_then() -> None:
        while True:
            await trio.sleep(rng.uniform(0.2, 0.5))
            proxy.sever()

    retry = tl.Retry(attempts=3, delays=(0.05,))
    url = proxy.url_for(broker.url)
    async with tl.open_client(url, CONFIG) as client, trio.open_nursery() as nursery:
        await client.declare_queue(queue, durable=True)
        await nursery.start(lambda task_status: client.serve(
            queue, handler, concurrency=20, retry=retry, duplicate_window=window,
            task_status=task_status,
        ))  # fmt: skip
        nursery.start_soon(sever_now_and_then)
        producer = client.producer(queue, message_ids=True, confirm_window=500)
        started = trio.current_time()
        for number in range(COUNT):
            producer.publish_nowait(b"%d" % number)  # the buffer holds them all
        with trio.fail_after(240):
            await producer.drain()
            published = trio.current_time()
            await wait_until(lambda: len(succeeded) == COUNT, 240)
        nursery.cancel_scope.cancel()
    took = trio.current_time() - started
    stats = client.statistics()
    [worker] = stats.workers
    assert sorted(succeeded) == list(range(COUNT))  # none lost
    assert first_failures == failing  # each failed once and was retried
    assert stats.reconnects >= 3
    assert worker.retried >= len(failing)
    assert worker.dead_lettered == 0
    runs = sum(succeeded.values())
    if window:
        assert set(succeeded.values()) == {1}  # exactly once, as the application sees it
    else:
        assert runs >= COUNT  # at least once
    assert worker.handled == runs
    print(
        f"{broker.kind} window={window}: {stats.reconnects} reconnects, {runs - COUNT} "
        f"handled twice, {worker.duplicates} duplicates skipped, {worker.retried} retried; "
        f"published in {published - started:.1f} s, handled in {took:.1f} s"
    )
    await delete_queues(broker.url, queue, f"{queue}.retry.50ms")


async def test_cancelling_a_worker_mid_run_finishes_its_handlers_and_loses_nothing(
    broker: Broker,
) -> None:
    queue = unique("work")
    count = 2_000
    first: set[int] = set()
    second: set[int] = set()
    running = 0
    still_running_at_stop: list[int] = []

    def handler_into(
        done: set[int],
    ) -> collections.abc.Callable[[tl.Delivery], collections.abc.Awaitable[None]]:
        async def handler(delivery: tl.Delivery) -> None:
            nonlocal running
            running += 1
            try:
                await trio.sleep(0.02)
                done.add(int(delivery.body))
            finally:
                running -= 1

        return handler

    async with tl.open_client(broker.url, CONFIG) as client:
        await client.declare_queue(queue, durable=True)
        producer = client.producer(queue, confirm_window=500)
        for number in range(count):
            producer.publish_nowait(b"%d" % number)
        await producer.drain()
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: client.serve(
                queue, handler_into(first), concurrency=20, grace=5, task_status=task_status
            ))  # fmt: skip
            await wait_until(lambda: len(first) >= 500 and running > 0, 30)
            nursery.cancel_scope.cancel()
            still_running_at_stop.append(running)
        assert running == 0  # the running handlers finished within the grace period
        assert still_running_at_stop[0] > 0  # some were running when it was cancelled
        [stats] = client.statistics().workers
        assert stats.handled == len(first)
        # Everything handled was acked (nothing left unacked on the closed channel):
        # the queue holds exactly the rest.
        assert await queue_depth(broker.url, queue) == count - len(first)
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: client.serve(
                queue, handler_into(second), concurrency=20, task_status=task_status
            ))  # fmt: skip
            await wait_until(lambda: len(first) + len(second) >= count, 60)
            nursery.cancel_scope.cancel()
    assert first.isdisjoint(second)
    assert first | second == set(range(count))
    await delete_queues(broker.url, queue, f"{queue}.retry.1000ms", f"{queue}.retry.10000ms")
