"""``perf throughput`` and ``perf latency``.

``perf throughput`` is modelled on LavinMQ's ``lavinmqperf throughput``: N publishers and M
consumers, each on its own connection, publish to and consume from one queue; once all are
connected, a line per second reports the publish and consume rates, and a summary gives the
averages.  Publishers use the fastest public path, ``Channel.basic_publish_nowait``
(``basic_publish`` when the connection's send buffer is full), with publisher confirms
pipelined over a window (``-c``).

``perf latency`` publishes one message at a time and times it until its delivery to a
consumer on the same connection, then reports percentiles.

Live lines go to stderr (``-q`` silences them), the summary to stdout: with ``--json`` stdout
holds exactly one JSON line.
"""

from __future__ import annotations

import math
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

import trio

from .._client._channel import Channel
from .._client._consumer import Consumer
from .._client._delivery import BasicProperties, Confirmation
from .._exceptions import AMQPError, ChannelClosed, MessageNacked
from .._params import Parameters
from .._sansio._errors import PRECONDITION_FAILED
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    Interrupt,
    Stopper,
    close_draining,
    connect,
    print_json,
)

#: Publishers give other tasks (the connection's writer, consumers, the reporter) a turn
#: after this many messages: often enough for smooth per-second lines, rarely enough that
#: the checkpoint costs little.
YIELD_EVERY: Final = 100

#: When consumers lag this many messages behind, publishers wait until they are only
#: ``LAG_RESUME`` behind.  Publishers and consumers share one thread, and a consumer takes
#: one delivery per turn while a publisher sends ``YIELD_EVERY``: without this, publishers
#: would take most of the CPU and the queue would grow until the broker's flow control
#: stalled them (with threads, as in lavinmqperf, the OS shares the CPU instead).
#: Consumers that do not catch up within ``LAG_WAIT`` seconds are slower than the broker
#: (or not every message reaches them, say with a length-limited queue): then publishers
#: stop waiting for them for the rest of the run.  Not used with ``-R`` (rate-limited
#: consumers) either.
LAG_LIMIT: Final = 10_000
LAG_RESUME: Final = 5_000
LAG_WAIT: Final = 1.0

#: A rate-limited publisher or consumer sleeps only when it is this far ahead of its
#: schedule: sleeping for every message would cost more than the message.
PACING_SLACK: Final = 0.001

#: How long a publisher that reached its message count waits for its last confirms.
CONFIRM_TIMEOUT: Final = 30.0

#: How long ``perf latency`` waits for one message to come back.
ROUNDTRIP_TIMEOUT: Final = 10.0
#: Longest the run waits to delete its own queue at the end.
CLEANUP_TIMEOUT: Final = 10.0

#: ``perf latency`` round trips when neither a count nor a duration is given.
DEFAULT_ROUNDTRIPS: Final = 1000


def make_body(size: int) -> bytes:
    """The message body: ``size`` bytes of the pattern lavinmqperf uses (``@A``...)."""
    return bytes(i % 27 + 64 for i in range(size))


def _properties(persistent: bool) -> BasicProperties | None:
    return BasicProperties(delivery_mode=2) if persistent else None


# -- throughput ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ThroughputOptions:
    """Everything ``perf throughput`` was asked to do (already validated)."""

    params: Parameters
    publishers: int = 1
    consumers: int = 1
    size: int = 16
    #: Seconds to measure for (None: until the counts are reached, or Ctrl-C).
    duration: float | None = None
    #: Messages to publish in total, over all publishers (None: no limit).
    pmessages: int | None = None
    #: Messages to consume in total (None: ``pmessages``, or no limit).
    cmessages: int | None = None
    #: Publisher confirms with at most this many unconfirmed per publisher (0: off).
    confirm: int = 0
    #: Consumers ack every this many deliveries with ``multiple`` (0: no_ack consumers).
    ack: int = 0
    prefetch: int | None = None
    #: Messages per second per publisher / per consumer (0: unlimited).
    rate: int = 0
    consume_rate: int = 0
    persistent: bool = False
    #: "" (the default): a queue of the run's own, deleted when it ends.
    queue: str = ""
    exchange: str = ""
    #: None: the queue's name.
    routing_key: str | None = None
    queue_args: dict[str, Any] = field(default_factory=dict)
    consumer_args: dict[str, Any] = field(default_factory=dict)
    verify: bool = False
    json: bool = False
    quiet: bool = False


@dataclass
class ThroughputStats:
    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    consumed: int = 0


class _Throughput:
    """One ``perf throughput`` run: the shared counters, the clients' tasks, the clock."""

    def __init__(self, options: ThroughputOptions, err: TextIO) -> None:
        self.options = options
        self.err = err
        self.stats = ThroughputStats()
        self.body = make_body(options.size)
        self.properties = _properties(options.persistent)
        self.queue = options.queue
        self.routing_key = options.routing_key if options.routing_key is not None else ""
        self.consume_target = options.cmessages
        if self.consume_target is None and options.pmessages is not None:
            self.consume_target = options.pmessages
        self._waiting = options.publishers + options.consumers
        self.all_ready = trio.Event()
        self.publishers_running = options.publishers
        self.consumers_done = options.consumers == 0
        self.finished = trio.Event()
        #: Set while consumers are not lagging (see LAG_LIMIT); only with consumers.
        self.caught_up = trio.Event()
        self.caught_up.set()
        self.lag_limit = LAG_LIMIT if options.consumers and not options.consume_rate else math.inf
        self.started: float | None = None
        self.stopped: float | None = None
        #: The whole run; cancelled by a stop only while clients are still connecting.
        self.scope = trio.CancelScope()
        #: Each client's work inside its connection, and the reporter's.
        self._work: list[trio.CancelScope] = []

    # -- bookkeeping --

    async def _ready(self) -> None:
        """This client is connected: wait until every other one is too."""
        self._waiting -= 1
        if self._waiting == 0:
            self.all_ready.set()
        await self.all_ready.wait()

    def _check_finished(self) -> None:
        if self.publishers_running == 0 and self.consumers_done:
            self.finished.set()

    def stop(self) -> None:
        """End the measurement now (Ctrl-C, the duration, or everything done).

        Once measuring, this cancels only the work *inside* each client's connection:
        leaving an ``open_connection`` block by cancellation would cancel the connection's
        own tasks too, and its graceful close would then wait out its timeout.
        """
        if self.started is None:
            self.scope.cancel()
            return
        if self.stopped is None:
            self.stopped = trio.current_time()
        for scope in self._work:
            scope.cancel()

    @contextmanager
    def _working(self) -> Iterator[None]:
        scope = trio.CancelScope()
        self._work.append(scope)
        if self.stopped is not None:
            scope.cancel()
        with scope:
            yield

    # -- setup --

    async def declare(self) -> None:
        """Declare the queue (as lavinmqperf: durable, or if it exists with other
        arguments, just check it is there) and bind it to the exchange if one is given.  An
        empty queue name gets a server-named, auto-delete queue."""
        options = self.options
        async with connect(options.params, "trio-lavin perf setup") as connection:
            channel = await connection.channel()
            if not options.queue:
                # Deleted when the run ends (auto-delete alone would keep it while no
                # consumer ever came, with -y 0).
                declared = await channel.queue_declare(
                    f"perf-test-{secrets.token_hex(4)}",
                    auto_delete=True,
                    arguments=options.queue_args or None,
                )
                self.queue = declared.queue
            else:
                try:
                    await channel.queue_declare(
                        options.queue, durable=True, arguments=options.queue_args or None
                    )
                except ChannelClosed as exc:
                    if exc.reply_code != PRECONDITION_FAILED:
                        raise
                    channel = await connection.channel()
                    await channel.queue_declare(options.queue, passive=True)
            if options.routing_key is None:
                self.routing_key = self.queue
            if options.exchange:
                await channel.queue_bind(self.queue, options.exchange, self.routing_key)
            await channel.aclose()

    async def delete_queue(self) -> None:
        """Delete the run's own queue (no -u); a broker that is gone takes it along."""
        try:
            async with connect(self.options.params, "trio-lavin perf cleanup") as connection:
                channel = await connection.channel()
                await channel.queue_delete(self.queue)
        except AMQPError as exc:
            print(f"could not delete the queue {self.queue!r}: {exc}", file=self.err)

    # -- clients --

    async def publisher(self, index: int) -> None:
        options = self.options
        async with connect(options.params, f"trio-lavin perf publisher {index}") as connection:
            channel = await connection.channel()
            if options.confirm:
                await channel.confirm_select()
            with self._working():
                await self._ready()
                await self._publish(channel)
                self.publishers_running -= 1
                self._check_finished()

    async def _publish(self, channel: Channel) -> None:
        options = self.options
        stats = self.stats
        body, properties = self.body, self.properties
        exchange, routing_key = options.exchange, self.routing_key
        limit = options.pmessages if options.pmessages is not None else math.inf
        window: deque[Confirmation] = deque()
        confirm = options.confirm
        rate = options.rate
        publish_nowait = channel.basic_publish_nowait
        start = trio.current_time()
        sent = 0
        while True:
            if confirm and len(window) >= confirm:
                await self._settle(window)
            if stats.published >= limit:  # (re)checked after every wait: publishers share it
                break
            stats.published += 1
            try:
                confirmation = publish_nowait(
                    body, exchange=exchange, routing_key=routing_key, properties=properties
                )
            except trio.WouldBlock:
                confirmation = await channel.basic_publish(
                    body, exchange=exchange, routing_key=routing_key, properties=properties
                )
            sent += 1
            if confirmation is not None:
                window.append(confirmation)
            if rate:
                await _pace(start, sent, rate)
            elif sent % YIELD_EVERY == 0:
                if stats.published - stats.consumed > self.lag_limit:
                    await self._wait_for_consumers()
                else:
                    await trio.lowlevel.checkpoint()
        with trio.move_on_after(CONFIRM_TIMEOUT) as scope:
            while window:
                await self._settle(window)
        if scope.cancelled_caught:
            raise CLIError(
                f"{len(window)} messages were still unconfirmed {CONFIRM_TIMEOUT:g} s after "
                "the last publish"
            )

    async def _wait_for_consumers(self) -> None:
        """Pause until consumers are at most ``LAG_RESUME`` behind (see ``LAG_LIMIT``)."""
        if self.caught_up.is_set():
            self.caught_up = trio.Event()
        with trio.move_on_after(LAG_WAIT) as wait:
            await self.caught_up.wait()
        if wait.cancelled_caught:
            self._stop_waiting_for_consumers()

    def _stop_waiting_for_consumers(self) -> None:
        self.lag_limit = math.inf
        self.caught_up.set()

    async def _settle(self, window: deque[Confirmation]) -> None:
        """Wait for the oldest confirm, then retire every settled one at the front."""
        try:
            await window[0].wait()
        except MessageNacked:
            pass
        stats = self.stats
        while window and window[0].done:
            if window.popleft().acked:
                stats.confirmed += 1
            else:
                stats.nacked += 1

    async def consumer(self, index: int) -> None:
        options = self.options
        async with connect(options.params, f"trio-lavin perf consumer {index}") as connection:
            channel = await connection.channel()
            if options.prefetch is not None:
                await channel.basic_qos(options.prefetch)
            consumer = await channel.basic_consume(
                self.queue,
                no_ack=options.ack == 0,
                arguments=options.consumer_args or None,
            )
            try:
                with self._working():
                    await self._ready()
                    await self._consume(index, consumer)
                    self.consumers_done = True
                    self._stop_waiting_for_consumers()
                    self._check_finished()
            finally:
                await close_draining(connection, consumer)

    async def _consume(self, index: int, consumer: Consumer) -> None:
        options = self.options
        stats = self.stats
        target = self.consume_target if self.consume_target is not None else math.inf
        ack_every, rate = options.ack, options.consume_rate
        body = self.body if options.verify else None
        start = trio.current_time()
        received = 0
        async for delivery in consumer:
            stats.consumed += 1
            received += 1
            if stats.published - stats.consumed <= LAG_RESUME:
                self.caught_up.set()
            if body is not None and delivery.body != body:
                raise CLIError(
                    f"consumer {index} received a body that differs from the one "
                    f"published: {delivery.body[:40]!r}"
                )
            if ack_every and received % ack_every == 0:
                await delivery.ack(multiple=True)
            if stats.consumed >= target:
                if ack_every and received % ack_every:
                    await delivery.ack(multiple=True)  # the rest since the last ack
                return
            if rate:
                await _pace(start, received, rate)

    # -- the clock --

    async def report(self) -> None:
        """Start the clock once every client is connected, print a line per second, and
        stop at the duration or when every publisher and consumer is done."""
        with self._working():
            await self.all_ready.wait()
            self.started = trio.current_time()
            await self._report(self.started)
        self.stop()

    async def _report(self, start: float) -> None:
        stats = self.stats
        deadline = start + self.options.duration if self.options.duration else math.inf
        tick = start
        last_published, last_consumed = stats.published, stats.consumed
        while not self.finished.is_set():
            tick = min(tick + 1.0, deadline)
            with trio.move_on_at(tick):
                await self.finished.wait()
            now = trio.current_time()
            if now >= deadline:
                break
            if not self.options.quiet and not self.finished.is_set():
                published, consumed = stats.published, stats.consumed
                line = (
                    f"Publish rate: {published - last_published} msgs/s "
                    f"Consume rate: {consumed - last_consumed} msgs/s "
                    f"In flight: {published - consumed}"
                )
                if self.options.confirm:
                    line += f" Unconfirmed: {published - stats.confirmed - stats.nacked}"
                print(line, file=self.err, flush=True)
                last_published, last_consumed = published, consumed


async def _pace(start: float, done: int, rate: int) -> None:
    """Sleep until ``done`` messages are due at ``rate`` per second since ``start``."""
    due = start + done / rate
    if due - trio.current_time() > PACING_SLACK:
        await trio.sleep_until(due)
    elif done % YIELD_EVERY == 0:
        await trio.lowlevel.checkpoint()


async def run_throughput(
    options: ThroughputOptions, interrupt: Interrupt, out: TextIO = sys.stdout
) -> int:
    """Run ``perf throughput``; print the summary; return the exit code."""
    run = _Throughput(options, sys.stderr)
    interrupt.on_interrupt(run.stop)
    with run.scope:
        await run.declare()
        try:
            async with trio.open_nursery() as nursery:
                for index in range(options.consumers):
                    nursery.start_soon(run.consumer, index)
                for index in range(options.publishers):
                    nursery.start_soon(run.publisher, index)
                nursery.start_soon(run.report)
        finally:
            if not options.queue:
                with trio.move_on_after(CLEANUP_TIMEOUT) as cleanup:
                    cleanup.shield = True
                    await run.delete_queue()
    if run.started is None:  # interrupted before every client was connected
        return EXIT_INTERRUPTED
    if run.stopped is None:
        run.stopped = trio.current_time()
    elapsed = run.stopped - run.started
    _throughput_summary(options, run.stats, elapsed, interrupt.received, out, run.queue)
    return EXIT_INTERRUPTED if interrupt.received else EXIT_OK


def _throughput_summary(
    options: ThroughputOptions,
    stats: ThroughputStats,
    elapsed: float,
    interrupted: bool,
    out: TextIO,
    queue: str = "",
) -> None:
    elapsed = max(elapsed, 1e-9)
    avg_pub = round(stats.published / elapsed, 1)
    avg_consume = round(stats.consumed / elapsed, 1)
    if options.json:
        print_json(
            {
                "elapsed_seconds": round(elapsed, 3),
                "avg_pub_rate": avg_pub,
                "avg_consume_rate": avg_consume,
                "published": stats.published,
                "consumed": stats.consumed,
                "confirmed": stats.confirmed if options.confirm else None,
                "nacked": stats.nacked if options.confirm else None,
                "publishers": options.publishers,
                "consumers": options.consumers,
                "size": options.size,
                "queue": queue or options.queue,
                "queue_deleted": not options.queue,
                "interrupted": interrupted,
            },
            out,
        )
        return
    lines = [
        "Summary:",
        f"Elapsed: {elapsed:.2f} s",
        f"Published: {stats.published} messages; average publish rate: {avg_pub} msgs/s",
        f"Consumed: {stats.consumed} messages; average consume rate: {avg_consume} msgs/s",
    ]
    if options.confirm:
        lines.append(f"Confirmed: {stats.confirmed}; nacked: {stats.nacked}")
    print("\n".join(lines), file=out, flush=True)


# -- latency --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyOptions:
    """Everything ``perf latency`` was asked to do (already validated)."""

    params: Parameters
    size: int = 16
    #: Timed round trips (None: ``DEFAULT_ROUNDTRIPS`` unless a duration is given).
    count: int | None = None
    duration: float | None = None
    warmup: int = 100
    persistent: bool = False
    json: bool = False
    quiet: bool = False


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list (``fraction`` in (0, 1])."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


async def run_latency(
    options: LatencyOptions, interrupt: Interrupt, out: TextIO = sys.stdout
) -> int:
    """Run ``perf latency``; print the summary; return the exit code."""
    samples: list[float] = []
    count = options.count
    if count is None and options.duration is None:
        count = DEFAULT_ROUNDTRIPS
    limit = count if count is not None else math.inf
    started = stopped = 0.0
    stopper = Stopper()
    interrupt.on_interrupt(stopper.stop)
    with stopper.outer:
        async with connect(options.params, "trio-lavin perf latency") as connection:
            channel = await connection.channel()
            queue = (await channel.queue_declare("", exclusive=True, auto_delete=True)).queue
            consumer = await channel.basic_consume(queue, no_ack=True)
            body = make_body(options.size)
            properties = _properties(options.persistent)

            async def roundtrip() -> float:
                begin = time.perf_counter()
                await channel.basic_publish(body, routing_key=queue, properties=properties)
                with trio.move_on_after(ROUNDTRIP_TIMEOUT) as wait:
                    await consumer.__anext__()
                if wait.cancelled_caught:
                    raise CLIError(
                        f"a message published to {queue!r} did not come back within "
                        f"{ROUNDTRIP_TIMEOUT:g} s"
                    )
                return time.perf_counter() - begin

            with stopper.working():
                for _ in range(options.warmup):
                    await roundtrip()
                started = stopped = time.perf_counter()
                deadline = started + options.duration if options.duration else math.inf
                next_line = started + 1.0
                second: list[float] = []
                try:
                    while len(samples) < limit and stopped < deadline:
                        sample = await roundtrip()
                        samples.append(sample)
                        second.append(sample)
                        stopped = time.perf_counter()
                        if stopped >= next_line:
                            next_line += 1.0
                            if not options.quiet:
                                _latency_line(second, sys.stderr)
                            second = []
                finally:
                    stopped = time.perf_counter()
    if interrupt.received and started == 0.0:
        return EXIT_INTERRUPTED
    _latency_summary(options, samples, stopped - started, interrupt.received, out)
    return EXIT_INTERRUPTED if interrupt.received else EXIT_OK


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _latency_line(samples: list[float], err: TextIO) -> None:
    ordered = sorted(samples)
    print(
        f"Round trips: {len(ordered)}/s p50: {_ms(percentile(ordered, 0.5))} ms "
        f"p99: {_ms(percentile(ordered, 0.99))} ms max: {_ms(ordered[-1])} ms",
        file=err,
        flush=True,
    )


def _latency_summary(
    options: LatencyOptions,
    samples: list[float],
    elapsed: float,
    interrupted: bool,
    out: TextIO,
) -> None:
    ordered = sorted(samples)
    figures: dict[str, float | None] = dict.fromkeys(
        ("min_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    )
    if ordered:
        figures = {
            "min_ms": _ms(ordered[0]),
            "mean_ms": _ms(sum(ordered) / len(ordered)),
            "p50_ms": _ms(percentile(ordered, 0.50)),
            "p90_ms": _ms(percentile(ordered, 0.90)),
            "p99_ms": _ms(percentile(ordered, 0.99)),
            "max_ms": _ms(ordered[-1]),
        }
    if options.json:
        print_json(
            {
                "roundtrips": len(ordered),
                "elapsed_seconds": round(elapsed, 3),
                **figures,
                "size": options.size,
                "interrupted": interrupted,
            },
            out,
        )
        return
    lines = ["Summary:", f"Round trips: {len(ordered)} in {elapsed:.2f} s ({options.size} bytes)"]
    if ordered:
        lines.append(
            "Latency: " + "  ".join(f"{name[:-3]} {value} ms" for name, value in figures.items())
        )
    print("\n".join(lines), file=out, flush=True)
