"""The worker (``Client.serve``) on the FakeBroker under trio's MockClock: deliveries,
acks, handler failures, retries through the work queue (delay 0), dead letters to a
parking queue and the duplicate window, with the connection severed under it; and a
clean stop within (and past) the grace period."""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import functools
import itertools
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from hypothesis import given, note, settings
from hypothesis import strategies as st

import trio_lavin as tl
from trio_lavin.testing import FakeBrokerServer, Message, open_fake_broker

QUEUE = "work"
PARKED = "parked"
ATTEMPT = "x-trio-lavin-attempt"
ERROR = "x-trio-lavin-error"
CONFIG = tl.Config(heartbeat=10, reconnect_jitter=0.0, reconnect_max_delay=0.2)
#: Delay 0: a retry copy goes straight back to the work queue (no TTL queue needed).
RETRY = tl.Retry(attempts=3, delays=(0,), dead_letter_queue=PARKED)
#: Seconds of virtual time an example may take (MockClock: a hang fails at once).
LIMIT = 120


class HandlerFailed(Exception):
    """What a failing handler raises."""


def attempt_of(delivery: tl.Delivery) -> int:
    attempt = (delivery.properties.headers or {}).get(ATTEMPT, 1)
    assert isinstance(attempt, int)
    return attempt


def worker_of(client: tl.Client) -> tl.WorkerStatistics:
    [worker] = client.statistics().workers
    return worker


def consumed_from(client: tl.Client, queue: str) -> int:
    """Deliveries of ``queue`` the client's consumers handed over."""
    return sum(c.consumed for c in client.statistics().consumers if c.queue == queue)


def bodies(broker: FakeBrokerServer, queue: str) -> list[bytes]:
    return [m.body for m in broker.queue(queue).messages]


async def wait_until(condition: collections.abc.Callable[[], bool], seconds: float) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.01)


# -- the property -----------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One run: ``count`` messages, numbered; those in ``flaky`` fail their first
    attempt, ``poison`` fails every attempt; for each ``(k, "start" | "end",
    fault)`` in ``faults`` the fault strikes when the handler run numbered k (1 for
    the first) starts or ends: "sever" cuts the client's connection, "cancel" has
    the broker cancel the worker's consumer (it subscribes again on a new channel
    and closes the old one, whose unacked deliveries return to the queue);
    ``published_first`` messages are published before the worker starts, the rest
    while it runs."""

    count: int
    flaky: frozenset[int]
    poison: int | None
    concurrency: int
    prefetch_extra: int
    faults: frozenset[tuple[int, str, str]]
    window: bool
    published_first: int
    pace: int


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    count = draw(st.integers(1, 60))
    numbers = st.integers(0, count - 1)
    poison = draw(st.none() | numbers)
    flaky = draw(st.frozensets(numbers, max_size=min(count, 15)))
    faults = draw(
        st.frozensets(
            st.tuples(
                st.integers(1, count + 10),
                st.sampled_from(["start", "end"]),
                st.sampled_from(["sever", "cancel"]),
            ),
            max_size=5,
        )
    )
    return Plan(
        count=count,
        flaky=flaky - {poison},
        poison=poison,
        concurrency=draw(st.integers(1, 8)),
        prefetch_extra=draw(st.integers(0, 4)),
        faults=faults,
        window=draw(st.booleans()),
        published_first=draw(st.integers(0, count)),
        pace=draw(st.integers(0, 7)),
    )


@dataclass
class Seen:
    """What the handler saw."""

    #: (number, attempt, raised, dead) of every handler run, in order of their
    #: ends; dead: it raised when its channel was gone (so no copy is made: the
    #: broker delivers it again).
    runs: list[tuple[int, int, bool, bool]]
    #: Successful runs per message number.
    succeeded: collections.Counter[int]
    #: Severs that cut a connection (not those made while there was none).
    severed: int
    #: Consumers the broker cancelled.
    cancelled: int
    #: The most handlers running at once.
    most_running: int


@dataclass
class Outcome:
    seen: Seen
    worker: tl.WorkerStatistics
    after: tl.WorkerStatistics
    consumed: int
    reconnects: int
    work_queue: list[bytes]
    unacked: int
    parked: list[Message]


async def run_plan(plan: Plan) -> Outcome:
    seen = Seen([], collections.Counter(), 0, 0, 0)
    started = 0
    running = 0
    good = set(range(plan.count)) - {plan.poison}

    async with open_fake_broker(heartbeat=10) as broker:

        def strike(run: int, where: str) -> None:
            if (run, where, "sever") in plan.faults and broker.connections:
                seen.severed += 1
                broker.sever_all()
            if (run, where, "cancel") in plan.faults:
                seen.cancelled += broker.cancel_consumers(QUEUE)

        async def handler(delivery: tl.Delivery) -> None:
            nonlocal started, running
            started += 1
            run = started
            running += 1
            seen.most_running = max(seen.most_running, running)
            try:
                number, attempt = int(delivery.body), attempt_of(delivery)
                strike(run, "start")
                await trio.sleep((number * 3 + run * plan.pace) % 4 / 1000)
                raising = number == plan.poison or (number in plan.flaky and attempt == 1)
                strike(run, "end")
                channel = delivery.channel
                dead = raising and not (channel.is_open and channel.connection.is_open)
                seen.runs.append((number, attempt, raising, dead))
                if raising:
                    raise HandlerFailed(f"{number} fails attempt {attempt}")
                seen.succeeded[number] += 1
            finally:
                running -= 1

        async with tl.open_client(config=CONFIG, stream_factory=broker.connect) as client:
            await client.declare_queue(QUEUE, durable=True)
            producer = client.producer(QUEUE, message_ids=True)
            for number in range(plan.published_first):
                producer.publish_nowait(b"%d" % number)

            def done() -> bool:
                stats = client.statistics()
                worker = worker_of(client)
                queue = broker.queue(QUEUE)
                return (
                    good <= set(seen.succeeded)
                    and (plan.poison is None or worker.dead_lettered >= 1)
                    and queue.messages_ready == 0
                    and queue.messages_unacknowledged == 0
                    and stats.buffered == 0
                    and stats.in_flight == 0
                    and worker.in_flight == 0
                    and client.connected
                )

            with trio.fail_after(LIMIT):
                async with trio.open_nursery() as nursery:
                    await nursery.start(
                        functools.partial(
                            client.serve,
                            QUEUE,
                            handler,
                            concurrency=plan.concurrency,
                            prefetch=plan.concurrency + plan.prefetch_extra,
                            retry=RETRY,
                            duplicate_window=1000 if plan.window else 0,
                        )
                    )
                    for number in range(plan.published_first, plan.count):
                        producer.publish_nowait(b"%d" % number)
                    await wait_until(done, LIMIT)
                    worker = worker_of(client)
                    await trio.sleep(1)  # nothing more comes
                    assert worker_of(client) == worker
                    assert done()
                    nursery.cancel_scope.cancel()
            after = worker_of(client)
            consumed = consumed_from(client, QUEUE)
            reconnects = client.statistics().reconnects
        queue = broker.queue(QUEUE)
        return Outcome(
            seen=seen,
            worker=worker,
            after=after,
            consumed=consumed,
            reconnects=reconnects,
            work_queue=[m.body for m in queue.messages],
            unacked=queue.messages_unacknowledged,
            parked=list(broker.queue(PARKED).messages),
        )


@settings(max_examples=25, deadline=None)
@given(plan=plans())
def test_every_message_is_handled_and_the_counters_agree_under_failures_and_severs(
    plan: Plan,
) -> None:
    """Every message that does not always fail succeeds at least once (exactly once
    with the duplicate window); the always-failing one runs 3 times (at least 3
    when severs interfered and there is no window) and ends in the parking queue;
    the worker's counters agree with what the handler saw."""
    outcome = trio.run(run_plan, plan, clock=trio.testing.MockClock(autojump_threshold=0))
    seen, worker = outcome.seen, outcome.worker
    note(f"severed {seen.severed}, cancelled {seen.cancelled}, worker {worker}")
    good = set(range(plan.count)) - {plan.poison}
    interfered = seen.severed + seen.cancelled > 0

    # Handled at least once, exactly once with the window (or without severs).
    assert set(seen.succeeded) == good
    if plan.window or not interfered:
        assert set(seen.succeeded.values()) <= {1}
    for number in plan.flaky:
        attempts = sorted(a for n, a, _, dead in seen.runs if n == number and not dead)
        assert set(attempts) == {1, 2}
        if plan.window or not interfered:
            assert attempts == [1, 2]  # failed once, then its copy succeeded

    # The always-failing message: 3 attempts, then parked.
    poison_attempts = sorted(a for n, a, _, dead in seen.runs if n == plan.poison and not dead)
    parked = outcome.parked
    if plan.poison is None:
        assert poison_attempts == []
        assert parked == []
        assert worker.dead_lettered == 0
    else:
        if plan.window or not interfered:
            assert poison_attempts == [1, 2, 3]
        else:
            assert len(poison_attempts) >= 3
            assert set(poison_attempts) == {1, 2, 3}
        assert parked
        assert {m.body for m in parked} == {b"%d" % plan.poison}
        for message in parked:
            headers = message.properties.headers or {}
            assert headers[ATTEMPT] == 3
            assert headers[ERROR] == f"HandlerFailed: {plan.poison} fails attempt 3"
            assert headers["x-trio-lavin-queue"] == QUEUE
        if not interfered:
            assert len(parked) == 1
        if plan.window:
            assert worker.dead_lettered == 1
        # Each dead letter counted was confirmed in the parking queue (a producer
        # may publish one twice across a reconnect).
        assert len(parked) >= worker.dead_lettered >= 1

    # The counters agree with the handler.
    raised = [(n, a) for n, a, r, _ in seen.runs if r]
    copied = [(n, a) for n, a, r, dead in seen.runs if r and not dead]
    assert worker.handled == sum(seen.succeeded.values()) == len(seen.runs) - len(raised)
    assert worker.failed == len(raised)
    assert worker.retried == sum(a < RETRY.attempts for _, a in copied)
    assert worker.dead_lettered == sum(a >= RETRY.attempts for _, a in copied)
    assert worker.in_flight == 0
    assert worker.workers == 1
    if not plan.window:
        assert worker.duplicates == 0
    elif not interfered:
        assert worker.duplicates == 0  # nothing came twice
    # Every delivery handed to the worker ran the handler or was skipped as a duplicate.
    assert outcome.consumed == len(seen.runs) + worker.duplicates
    assert seen.most_running <= plan.concurrency
    assert outcome.reconnects <= seen.severed

    # Stopped cleanly, with nothing left behind.
    assert outcome.after == dataclasses.replace(worker, workers=0)
    assert outcome.work_queue == []
    assert outcome.unacked == 0


# -- a clean stop -----------------------------------------------------------------------


async def test_cancelling_the_worker_lets_running_handlers_finish_within_grace_and_acks_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Three handlers run (of ten messages, five prefetched) when the worker is
    cancelled: they finish within the grace period and are acked; the two
    prefetched deliveries never started go back with the channel, so the queue
    holds exactly the seven messages not handled."""
    running: set[int] = set()
    finished: list[int] = []

    async def handler(delivery: tl.Delivery) -> None:
        number = int(delivery.body)
        running.add(number)
        try:
            await trio.sleep(0.5)
            finished.append(number)
        finally:
            running.discard(number)

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        for number in range(10):
            broker.publish("", QUEUE, b"%d" % number)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        client.serve, QUEUE, handler, concurrency=3, prefetch=5, grace=2
                    )
                )
                await wait_until(lambda: len(running) == 3, 5)
                assert broker.queue(QUEUE).messages_unacknowledged == 5
                stopped_at = trio.current_time()
                nursery.cancel_scope.cancel()
            took = trio.current_time() - stopped_at
        assert running == set()
        assert sorted(finished) == [0, 1, 2]
        assert took < 2  # the handlers' 0.5 s, not the grace period
        worker = worker_of(client)
        assert (worker.handled, worker.failed, worker.in_flight, worker.workers) == (3, 0, 0, 0)
        queue = broker.queue(QUEUE)
        assert queue.messages_unacknowledged == 0
        assert queue.consumer_count == 0
        left = sorted(int(body) for body in bodies(broker, QUEUE))
        assert left == sorted(set(range(10)) - set(finished))


async def test_a_handler_still_running_after_grace_is_cancelled_and_its_message_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Of two running handlers, the quick one finishes within the grace period and
    is acked; the slow one is cancelled at the end of it (not counted as failed)
    and its message is back in the queue, flagged redelivered."""
    cancelled: list[bytes] = []
    finished: list[bytes] = []

    async def handler(delivery: tl.Delivery) -> None:
        try:
            await trio.sleep(10 if delivery.body == b"slow" else 0.2)
        except trio.Cancelled:
            cancelled.append(delivery.body)
            raise
        finished.append(delivery.body)

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        broker.publish("", QUEUE, b"slow")
        broker.publish("", QUEUE, b"quick")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(client.serve, QUEUE, handler, concurrency=2, grace=1)
                )
                await wait_until(lambda: worker_of(client).in_flight == 2, 5)
                stopped_at = trio.current_time()
                nursery.cancel_scope.cancel()
            took = trio.current_time() - stopped_at
        assert (finished, cancelled) == ([b"quick"], [b"slow"])
        assert 1 <= took < 2  # the grace period, not the slow handler's 10 s
        worker = worker_of(client)
        assert (worker.handled, worker.failed, worker.in_flight) == (1, 0, 0)
        assert (worker.retried, worker.dead_lettered) == (0, 0)
        queue = broker.queue(QUEUE)
        assert queue.messages_unacknowledged == 0
        [back] = queue.messages
        assert (back.body, back.redelivered) == (b"slow", True)


# -- the duplicate window ---------------------------------------------------------------


async def test_the_duplicate_window_acks_a_later_delivery_of_a_handled_message_unrun(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message published again with the id of one already handled is acked
    without running the handler, and counted in ``duplicates``; another id, and
    a message without an id, are handled as usual."""
    handled: list[bytes] = []

    async def handler(delivery: tl.Delivery) -> None:
        handled.append(delivery.body)

    def with_id(message_id: str | None) -> tl.BasicProperties:
        return tl.BasicProperties(message_id=message_id)

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(client.serve, QUEUE, handler, duplicate_window=10)
                )
                broker.publish("", QUEUE, b"first", with_id("m-1"))
                await wait_until(lambda: worker_of(client).handled == 1, 5)
                broker.publish("", QUEUE, b"again", with_id("m-1"))
                await wait_until(lambda: worker_of(client).duplicates == 1, 5)
                broker.publish("", QUEUE, b"other", with_id("m-2"))
                broker.publish("", QUEUE, b"no id", with_id(None))
                broker.publish("", QUEUE, b"no id", with_id(None))
                await wait_until(lambda: worker_of(client).handled == 4, 5)
                await trio.sleep(0.5)
                queue = broker.queue(QUEUE)
                assert (queue.messages_ready, queue.messages_unacknowledged) == (0, 0)
                nursery.cancel_scope.cancel()
        assert handled == [b"first", b"other", b"no id", b"no id"]
        worker = worker_of(client)
        assert (worker.handled, worker.duplicates, worker.failed) == (4, 1, 0)
        assert consumed_from(client, QUEUE) == 5


# -- regressions ------------------------------------------------------------------------


async def test_a_copy_whose_parking_queue_is_gone_declares_it_again_not_a_hot_loop() -> None:
    """The parking queue is deleted (by an operator) while the worker runs, and a
    message fails its only attempt: the dead-letter copy comes back unroutable
    (mandatory).  The worker declares the queue again and parks the copy; it used to
    requeue the original at once, which the broker delivered again at once: the
    handler ran hundreds of times a second (real clock: under an autojump MockClock
    the loop never lets virtual time pass)."""
    runs = 0

    async def handler(delivery: tl.Delivery) -> None:
        nonlocal runs
        runs += 1
        raise HandlerFailed("never works")

    retry = tl.Retry(attempts=1, dead_letter_queue=PARKED)
    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(client.serve, QUEUE, handler, retry=retry))
                async with tl.open_connection(stream_factory=broker.connect) as operator:
                    await (await operator.channel()).queue_delete(PARKED)
                broker.publish("", QUEUE, b"poison")
                await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
        assert bodies(broker, PARKED) == [b"poison"]  # parked after all, not lost
        assert bodies(broker, QUEUE) == []
        assert runs == 1, f"the handler ran {runs} times in 0.3 s"


async def test_a_copy_the_broker_keeps_refusing_requeues_the_message_after_growing_pauses() -> (
    None
):
    """Every retry copy is nacked: the message goes back to the work queue (never
    lost), but only after a pause that doubles each time (real clock), not in a loop."""
    runs: list[float] = []

    async def handler(delivery: tl.Delivery) -> None:
        runs.append(trio.current_time())
        raise HandlerFailed("never works")

    retry = tl.Retry(attempts=3, delays=(0,))
    no_retries = dataclasses.replace(CONFIG, nack_retries=0)  # the first nack is final
    async with (
        open_fake_broker() as broker,
        tl.open_client(config=no_retries, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        broker.nack_next(1_000_000)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(client.serve, QUEUE, handler, retry=retry))
                broker.publish("", QUEUE, b"refused")
                await trio.sleep(1.0)
                nursery.cancel_scope.cancel()
        assert bodies(broker, QUEUE) == [b"refused"]  # not lost
        gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    assert 2 <= len(runs) <= 5, f"the handler ran {len(runs)} times in 1 s"
    assert all(later > earlier for earlier, later in itertools.pairwise(gaps)), gaps


async def test_a_duplicate_key_function_that_raises_leaves_that_message_unfiltered() -> None:
    handled: list[bytes] = []

    async def handler(delivery: tl.Delivery) -> None:
        handled.append(delivery.body)

    def broken_key(delivery: tl.Delivery) -> str:
        raise KeyError("no order id")

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        client.serve, QUEUE, handler, duplicate_window=10, duplicate_key=broken_key
                    )
                )
                broker.publish("", QUEUE, b"one")
                broker.publish("", QUEUE, b"two")
                await wait_until(lambda: len(handled) == 2, 5)
                nursery.cancel_scope.cancel()
        assert bodies(broker, QUEUE) == []
        assert worker_of(client).handled == 2
    assert sorted(handled) == [b"one", b"two"]


async def test_a_handler_that_requeues_its_delivery_gets_it_again_with_the_window_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler nacks its first delivery with requeue (it wants another go):
    the duplicate window must not count that message as finished, or the
    redelivery would be acked unrun and the message lost."""
    handled: list[bool] = []

    async def handler(delivery: tl.Delivery) -> None:
        handled.append(delivery.redelivered)
        if not delivery.redelivered:
            assert await delivery.nack(requeue=True)

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(client.serve, QUEUE, handler, duplicate_window=10)
                )
                broker.publish("", QUEUE, b"again", tl.BasicProperties(message_id="m-1"))
                await wait_until(lambda: len(handled) == 2, 5)
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
        assert handled == [False, True]
        assert worker_of(client).duplicates == 0
        assert bodies(broker, QUEUE) == []


async def serve_until_it_ends(client: tl.Client, ended: list[BaseException]) -> None:
    """Run a worker (in a nursery outside the client's block) and record how it ended."""

    async def handler(delivery: tl.Delivery) -> None:
        pass

    try:
        await client.serve(QUEUE, handler)
    except BaseException as exc:
        ended.append(exc)
        if not isinstance(exc, Exception):
            raise


async def test_a_worker_outside_the_client_block_ends_when_the_client_closes_disconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The worker runs in an outer nursery; the connection is down (the broker
    refuses new ones) when the client's block ends: the worker raises
    ConnectionClosed itself, not wrapped in a group (regression: its consumer
    waited for a reconnect that would never come, and the nursery hung)."""
    ended: list[BaseException] = []
    async with open_fake_broker() as broker:
        with trio.fail_after(LIMIT):
            async with (
                trio.open_nursery() as outer,
                tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
            ):
                await client.declare_queue(QUEUE, durable=True)
                outer.start_soon(serve_until_it_ends, client, ended)
                await wait_until(lambda: bool(client.statistics().workers), 5)
                broker.refuse_connections = True
                broker.sever_all()
                await wait_until(lambda: not client.connected, 5)
                await trio.sleep(1)
    [error] = ended
    assert type(error) is tl.ConnectionClosed, repr(error)


async def test_a_worker_outside_the_client_block_ends_when_the_client_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As above, but the client gives up reconnecting (max_reconnect_attempts):
    the worker raises the client's ConnectionLost."""
    ended: list[BaseException] = []
    gives_up = dataclasses.replace(CONFIG, max_reconnect_attempts=2)
    async with open_fake_broker() as broker:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as outer:
                try:
                    async with tl.open_client(
                        config=gives_up, stream_factory=broker.connect
                    ) as client:
                        await client.declare_queue(QUEUE, durable=True)
                        outer.start_soon(serve_until_it_ends, client, ended)
                        await wait_until(lambda: bool(client.statistics().workers), 5)
                        broker.refuse_connections = True
                        broker.sever_all()
                        await trio.sleep_forever()
                except tl.ConnectionLost:
                    pass
    [error] = ended
    assert type(error) is tl.ConnectionLost, repr(error)


async def test_a_handler_that_fails_after_its_channel_died_makes_no_retry_copy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The connection is severed while the handler runs, and then the handler
    raises: the broker delivers the message again by itself, so the worker
    publishes no retry copy (regression: it did, once reconnected, and the
    message was handled twice more: the redelivery and the copy)."""
    runs: list[int] = []

    async def handler(delivery: tl.Delivery) -> None:
        runs.append(attempt_of(delivery))
        if len(runs) == 1:
            broker.sever_all()
            await wait_until(lambda: not delivery.channel.is_open, 5)
            raise HandlerFailed("after the sever")

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(client.serve, QUEUE, handler, retry=RETRY))
                broker.publish("", QUEUE, b"order")
                await wait_until(lambda: len(runs) == 2, 10)
                await trio.sleep(2)
                nursery.cancel_scope.cancel()
        assert runs == [1, 1]  # the broker's redelivery, no copy with attempt 2
        worker = worker_of(client)
        assert (worker.failed, worker.retried, worker.handled) == (1, 0, 1)
        assert bodies(broker, QUEUE) == []


async def test_a_parked_copy_is_persistent_and_does_not_expire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A transient message with an expiration fails its last attempt: its copy in
    the parking queue is persistent (delivery_mode 2) and has no expiration, as
    the broker's own dead-lettering does; other properties are kept."""

    async def handler(delivery: tl.Delivery) -> None:
        raise HandlerFailed("never works")

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue(QUEUE, durable=True)
        retry = tl.Retry(attempts=1, dead_letter_queue=PARKED)
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(client.serve, QUEUE, handler, retry=retry))
                properties = tl.BasicProperties(
                    delivery_mode=1, expiration="60000", content_type="text/plain"
                )
                broker.publish("", QUEUE, b"order", properties)
                await wait_until(lambda: worker_of(client).dead_lettered == 1, 10)
                nursery.cancel_scope.cancel()
        [parked] = broker.queue(PARKED).messages
        assert parked.properties.delivery_mode == 2
        assert parked.properties.expiration is None
        assert parked.properties.content_type == "text/plain"


async def test_the_copies_producer_takes_any_body_the_client_may_receive() -> None:
    """A client that receives bodies up to 200 MiB can copy them to a retry queue:
    the producer for copies has that limit, not the usual 128 MiB."""
    config = dataclasses.replace(CONFIG, max_body_size=200 * 1024 * 1024)
    async with (
        open_fake_broker() as broker,
        tl.open_client(config=config, stream_factory=broker.connect) as client,
    ):
        assert client.shared_producer().max_message_size == 200 * 1024 * 1024


async def test_a_worker_refused_for_its_arguments_leaves_no_statistics_behind() -> None:
    async def handler(delivery: tl.Delivery) -> None:
        pass

    async with (
        open_fake_broker() as broker,
        tl.open_client(config=CONFIG, stream_factory=broker.connect) as client,
    ):
        with pytest.raises(ValueError, match=r"concurrency must be an int in 1\.\.65535, not 0"):
            await client.serve(QUEUE, handler, concurrency=0)
        assert client.statistics().workers == ()
