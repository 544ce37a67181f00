"""A work-queue consumer with concurrency, retries and a clean stop: :class:`Worker`.

``await nursery.start(client.serve, queue, handler)`` runs one (with keywords:
``nursery.start(functools.partial(client.serve, queue, handler, concurrency=20))``).  It
consumes ``queue`` with a recovering consumer and runs up to
``concurrency`` handlers at once, each in a child task of the worker's own
nursery.  A handler that returns gets its delivery acked; one that raises
gets its message retried or dead-lettered as the :class:`~._retry.Retry`
policy says (the copies go out through the client's shared producer, in
confirm mode, and the original is acked only once the broker confirmed the
copy).  An optional duplicate window skips messages it has finished with.

Stopping (the worker's task is cancelled, or the client gave up): the
consumer is cancelled (``basic.cancel``) so nothing new arrives, the running
handlers get ``grace`` seconds to finish and are acked, and then the channel
closes, which returns every delivery still unacked to the queue.  A handler
still running after the grace period is cancelled and its message returned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

import trio

from .._client._delivery import Delivery
from .._exceptions import AMQPConnectionError, AMQPError, MessageReturned
from .._queues import queue_arguments
from .._sansio._properties import BasicProperties
from .._util import unwrap_single_exception
from ._retry import (
    ATTEMPT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    DeadLetter,
    DuplicateWindow,
    Retry,
    attempt_of,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from .._client._channel import QueueDeclareOk
    from ._consumer import RecoveringConsumer
    from ._producer import Producer

logger = logging.getLogger("trio_lavin.worker")

Handler = Callable[[Delivery], Awaitable[object]]
KeyFunction = Callable[[Delivery], Hashable | None]

#: A worker's handlers at once, and the seconds they get to finish when it stops.
DEFAULT_CONCURRENCY: Final = 10
DEFAULT_GRACE: Final = 10.0
#: Three attempts, 1 s and 10 s apart, then reject to the dead-letter exchange.
DEFAULT_RETRY: Final = Retry()

#: Seconds a stopping worker waits for the broker's ``basic.cancel-ok``.
CANCEL_TIMEOUT: Final = 5.0
#: Seconds a handler that finished within the grace period has for its ack.
ACK_TIMEOUT: Final = 5.0
#: The headers a broker adds when it dead-letters a message.
BROKER_DEATH_HEADERS: Final = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
#: Seconds before a message whose copy could not be published is requeued, doubling
#: while that goes on, up to the maximum.
FAILED_COPY_PAUSE: Final = 0.1
MAX_FAILED_COPY_PAUSE: Final = 30.0
#: Characters of a handler's error kept in a dead-lettered message's header.
MAX_ERROR_TEXT: Final = 1000


def message_id(delivery: Delivery) -> Hashable | None:
    """The default duplicate key: the message's ``message_id`` (None: the
    message is not filtered)."""
    return delivery.properties.message_id


class WorkerCounters:
    """What the workers of one queue did, over the client's life (plain ints,
    bumped without locks; read by :meth:`Client.statistics`)."""

    __slots__ = (
        "dead_lettered",
        "duplicates",
        "failed",
        "handled",
        "in_flight",
        "retried",
        "workers",
    )

    def __init__(self) -> None:
        #: Workers of the queue running now.
        self.workers = 0
        #: Handlers that returned.
        self.handled = 0
        #: Handlers that raised.
        self.failed = 0
        #: Retry copies the broker confirmed.
        self.retried = 0
        #: Messages that failed their last attempt and were dead-lettered.
        self.dead_lettered = 0
        #: Deliveries skipped (and acked) by the duplicate window.
        self.duplicates = 0
        #: Handlers running now.
        self.in_flight = 0


@dataclass(frozen=True, slots=True)
class WorkerStatistics:
    """The counters of one queue's workers in a client (a part of
    :meth:`Client.statistics`); counts only grow, ``workers`` and
    ``in_flight`` are gauges."""

    #: The queue as given to ``client.serve``.
    queue: str
    #: Workers of the queue running now.
    workers: int
    #: Handlers that returned (their deliveries acked, or settled by them).
    handled: int
    #: Handlers that raised.
    failed: int
    #: Messages published again for a later attempt.
    retried: int
    #: Messages that failed every attempt, rejected to the queue's
    #: dead-letter exchange or published to the dead-letter queue.
    dead_lettered: int
    #: Deliveries the duplicate window skipped (acked, handler not run).
    duplicates: int
    #: Handlers running now.
    in_flight: int

    @classmethod
    def of(cls, queue: str, counters: WorkerCounters) -> WorkerStatistics:
        """A snapshot of ``counters``."""
        c = counters
        return cls(
            queue, c.workers, c.handled, c.failed, c.retried, c.dead_lettered, c.duplicates,
            c.in_flight,
        )  # fmt: skip


class Worker:
    """One run of :meth:`Client.serve` (see there for the contract)."""

    def __init__(
        self,
        client: Serving,
        queue: str,
        handler: Handler,
        *,
        concurrency: int,
        prefetch: int | None,
        retry: Retry,
        duplicate_window: int,
        duplicate_key: KeyFunction,
        grace: float,
        counters: WorkerCounters,
    ) -> None:
        if type(concurrency) is not int or not 1 <= concurrency <= 65_535:
            raise ValueError(f"concurrency must be an int in 1..65535, not {concurrency!r}")
        prefetch = concurrency if prefetch is None else prefetch
        if type(prefetch) is not int or not concurrency <= prefetch <= 65_535:
            raise ValueError(
                f"prefetch must be an int in {concurrency}..65535 (at least the concurrency), "
                f"not {prefetch!r}"
            )
        if not isinstance(retry, Retry):
            raise TypeError(f"retry must be a trio_lavin.Retry, not {type(retry).__name__}")
        if not (isinstance(grace, (int, float)) and grace >= 0):
            raise ValueError(f"grace must be seconds >= 0, not {grace!r}")
        self._client = client
        self.queue = queue
        self._handler = handler
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.retry = retry
        self.grace = grace
        #: Names checked now, not at the first failure.
        self._delay_queues = retry.delay_queues(queue)
        self._window = DuplicateWindow(duplicate_window) if duplicate_window else None
        self._key = duplicate_key
        self._counters = counters
        self._slots = trio.Semaphore(concurrency)
        #: Duplicate keys being handled now, and what a second delivery of
        #: one waits for.
        self._keys_in_flight: dict[Hashable, trio.Event] = {}
        #: The cancel scopes of the handlers running now (shielded: a stop
        #: gives them ``grace`` seconds by setting their deadlines).
        self._running: set[trio.CancelScope] = set()
        self._stopping = False
        #: Copies in a row that could not be published (the pause grows with it).
        self._failed_copies = 0

    def __repr__(self) -> str:
        return f"<Worker of queue {self.queue!r}, concurrency {self.concurrency}>"

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Declare the delay and dead-letter queues, consume, and handle until
        cancelled (or the client gives up)."""
        for name in self._own_queues():
            await self._declare(name)
        self._counters.workers += 1
        try:
            deliveries: RecoveringConsumer
            # Handlers never raise an Exception: what comes out of the nursery
            # is the consumer's error (the client closed or gave up), as itself.
            with unwrap_single_exception():
                async with (
                    self._client.consume(self.queue, prefetch=self.prefetch) as deliveries,
                    trio.open_nursery() as nursery,
                ):
                    task_status.started()
                    try:
                        async for delivery in deliveries:
                            await self._slots.acquire()
                            nursery.start_soon(self._handle, delivery)
                    finally:
                        await self._stop(deliveries)
        finally:
            self._counters.workers -= 1
        raise AssertionError(
            "a recovering consumer never ends while it is open"
        )  # pragma: no cover

    def _own_queues(self) -> list[str]:
        """The delay queues and the dead-letter queue the worker declares."""
        dead_letters = self.retry.dead_letter_queue
        return [*self._delay_queues, *([] if dead_letters is None else [dead_letters])]

    async def _declare(self, name: str) -> None:
        """Declare one of :meth:`_own_queues` (durable)."""
        ttl = self._delay_queues.get(name)
        arguments = (
            None
            if ttl is None
            else queue_arguments(
                message_ttl=ttl, dead_letter_exchange="", dead_letter_routing_key=self.queue
            )
        )
        await self._client.declare_queue(name, durable=True, arguments=arguments)

    async def _stop(self, deliveries: RecoveringConsumer) -> None:
        """No more deliveries; the running handlers have ``grace`` seconds."""
        self._stopping = True
        deadline = trio.current_time() + self.grace
        for scope in self._running:
            scope.deadline = min(scope.deadline, deadline)
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CANCEL_TIMEOUT):
            await deliveries.stop()

    async def _handle(self, delivery: Delivery) -> None:
        try:
            # Shielded: a stop lets the handler finish (until its deadline).
            with trio.CancelScope(shield=True) as scope:
                if self._stopping:
                    return  # not started: the channel's close returns it
                self._running.add(scope)
                try:
                    await self._handle_once(delivery)
                finally:
                    self._running.discard(scope)
        finally:
            self._slots.release()

    async def _handle_once(self, delivery: Delivery) -> None:
        """Run the handler for one delivery (unless it is a duplicate), then
        settle it."""
        attempt = attempt_of(delivery.properties.headers)
        window = self._window
        key = None if window is None else self._key_of(delivery)
        if key is None or window is None:
            await self._run_handler(delivery, None, attempt)
            return
        while (other := self._keys_in_flight.get(key)) is not None:
            await other.wait()  # a second delivery of a message being handled now
        if window.is_duplicate(key, attempt):
            self._counters.duplicates += 1
            await self._settle(delivery.ack())
            return
        done = self._keys_in_flight[key] = trio.Event()
        try:
            await self._run_handler(delivery, key, attempt)
        finally:
            del self._keys_in_flight[key]
            done.set()

    def _key_of(self, delivery: Delivery) -> Hashable | None:
        """The delivery's duplicate key; None (not filtered) if the key function raised."""
        try:
            return self._key(delivery)
        except Exception:
            logger.exception(
                "the duplicate key function failed for %r; handling it unfiltered", delivery
            )
            return None

    async def _run_handler(self, delivery: Delivery, key: Hashable | None, attempt: int) -> None:
        counters = self._counters
        counters.in_flight += 1
        try:
            await self._handler(delivery)
        except Exception as exc:
            counters.in_flight -= 1
            counters.failed += 1
            await self._failed(delivery, key, attempt, exc)
            return
        except BaseException:
            counters.in_flight -= 1
            raise  # cancelled past the grace period: the broker gets it back
        counters.in_flight -= 1
        counters.handled += 1
        if key is not None and self._window is not None and not delivery.requeued:
            # Before the ack: a redelivery is a duplicate.  (Unless the handler
            # requeued it itself: it wants another go.)
            self._window.finished(key)
        if not delivery.settled:  # the handler may have settled it itself
            await self._settle(delivery.ack())

    async def _settle(self, settling: Awaitable[bool]) -> bool:
        """Ack (nack, reject) within ACK_TIMEOUT, even past a stop's deadline;
        False if its channel was gone (the broker redelivers it)."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + ACK_TIMEOUT):
            return await settling
        return False  # timed out: the channel is stuck, and its close returns the message

    async def _failed(
        self, delivery: Delivery, key: Hashable | None, attempt: int, error: Exception
    ) -> None:
        """Retry or dead-letter a message whose handler raised ``error``."""
        decision = self.retry.decide(self.queue, attempt)
        described = f"{type(error).__name__}: {error}"
        if delivery.settled:
            logger.warning(
                "handler for queue %r raised %s after settling its delivery; not retried",
                self.queue, described,
            )  # fmt: skip
            return
        channel = delivery.channel
        if not (channel.is_open and channel.connection.is_open):
            # Its channel is gone: the broker delivers it again by itself, and a
            # copy now would make two of it.
            logger.warning(
                "handler for queue %r raised %s after its channel closed; "
                "the broker delivers the message again",
                self.queue, described,
            )  # fmt: skip
            return
        properties = delivery.properties
        # A copy is a new message: the broker's history of the last pass through a
        # delay queue stays behind (brokers drop a message whose x-death shows it
        # expired in the queue it is about to expire in again: a dead-letter cycle).
        headers = {
            name: value
            for name, value in (properties.headers or {}).items()
            if name not in BROKER_DEATH_HEADERS
        }
        if isinstance(decision, DeadLetter):
            logger.error(
                "handler for queue %r failed attempt %d of %d (%s); dead-lettering the message",
                self.queue, attempt, self.retry.attempts, described, exc_info=error,
            )  # fmt: skip
            if decision.queue is None:
                if await self._settle(delivery.reject(requeue=False)):
                    self._dead_lettered(key)
                # else: redelivered, it fails and is dead-lettered again
                return
            headers[ERROR_HEADER] = described[:MAX_ERROR_TEXT]
            headers[QUEUE_HEADER] = self.queue
            headers[ATTEMPT_HEADER] = attempt
            target = decision.queue
            # Parked until someone looks (as the broker's own dead-lettering
            # does, the expiration stays behind), and kept across broker restarts.
            properties = properties.replace(expiration=None, delivery_mode=2)
        else:
            logger.warning(
                "handler for queue %r failed attempt %d of %d (%s); retrying in %g s",
                self.queue, attempt, self.retry.attempts, described, decision.delay,
            )  # fmt: skip
            headers[ATTEMPT_HEADER] = decision.attempt
            target = decision.delay_queue or self._client.current_queue_name(self.queue)
        try:
            await self._publish_copy(delivery.body, properties, headers, target)
        except (AMQPError, AMQPConnectionError) as exc:
            # Not published: back to the work queue as it is, after a pause that
            # grows while this goes on (not a hot loop at the head of the queue).
            pause = min(FAILED_COPY_PAUSE * 2**self._failed_copies, MAX_FAILED_COPY_PAUSE)
            self._failed_copies += 1
            logger.error(
                "could not publish to %r (%s); requeueing the message in %.1f s",
                target, exc, pause,
            )  # fmt: skip
            await trio.sleep(pause)
            await self._settle(delivery.reject(requeue=True))
            return
        self._failed_copies = 0
        if isinstance(decision, DeadLetter):
            self._dead_lettered(key)
        else:
            self._counters.retried += 1
            if key is not None and self._window is not None:
                self._window.retried(key, attempt)  # its copy carries on
        await self._settle(delivery.ack())

    async def _publish_copy(
        self, body: bytes, properties: BasicProperties, headers: dict[str, Any], target: str
    ) -> None:
        """Publish a retry or dead-letter copy to ``target``, confirmed; if the
        broker returns it (an operator deleted one of our queues), declare that
        queue again and publish once more.

        Raises:
            AMQPError, AMQPConnectionError: it could not be published.
        """
        producer = self._client.shared_producer()
        try:
            await producer.publish(
                body, properties=properties, headers=headers, routing_key=target
            )
        except MessageReturned:
            if target not in self._own_queues():
                raise
            logger.warning("queue %r is gone; declaring it again", target)
            await self._declare(target)
            await producer.publish(
                body, properties=properties, headers=headers, routing_key=target
            )

    def _dead_lettered(self, key: Hashable | None) -> None:
        self._counters.dead_lettered += 1
        if key is not None and self._window is not None:
            self._window.finished(key)


class Serving:
    """The worker half of a client: :meth:`serve` and the workers' counters."""

    if TYPE_CHECKING:
        # Provided by Client.
        async def declare_queue(
            self,
            name: str = "",
            *,
            durable: bool = False,
            exclusive: bool = False,
            auto_delete: bool = False,
            arguments: dict[str, Any] | None = None,
        ) -> QueueDeclareOk: ...

        def consume(
            self, queue: str, *, prefetch: int = 100
        ) -> AbstractAsyncContextManager[RecoveringConsumer]: ...

        def current_queue_name(self, queue: str) -> str: ...

        def shared_producer(self) -> Producer: ...

    def __init__(self) -> None:
        #: Worker counters per queue, kept for the client's life.
        self._worker_counters: dict[str, WorkerCounters] = {}

    def _worker_snapshots(self) -> tuple[WorkerStatistics, ...]:
        """One snapshot per queue served so far, in order of first use."""
        return tuple(
            WorkerStatistics.of(queue, counters)
            for queue, counters in tuple(self._worker_counters.items())
        )

    async def serve(
        self,
        queue: str,
        handler: Callable[[Delivery], Awaitable[object]],
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        prefetch: int | None = None,
        retry: Retry = DEFAULT_RETRY,
        duplicate_window: int = 0,
        duplicate_key: KeyFunction = message_id,
        grace: float = DEFAULT_GRACE,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Handle the messages of work queue ``queue`` until cancelled.

        Run it in a nursery: ``await nursery.start(client.serve, queue,
        handler)`` returns once it consumes (``nursery.start`` takes no
        keywords: pass them with ``functools.partial(client.serve, queue,
        handler, concurrency=20)``).  Up to ``concurrency`` calls of
        ``await handler(delivery)`` run at once, each in a task of the
        worker's nursery (``prefetch``, default ``concurrency``, is how many
        the broker sends ahead).  When the handler returns, the delivery is
        acked (unless the handler settled it itself).

        When the handler raises an :class:`Exception`, ``retry`` decides
        (see :class:`Retry`): a copy with the attempt number in its
        ``x-trio-lavin-attempt`` header goes to a delay queue (declared
        durable by the worker, named ``<queue>.retry.<ms>ms``, whose expired
        messages the broker dead-letters back to ``queue``) or, for a delay
        of 0, straight back to ``queue``; after the last attempt the message
        is dead-lettered.  The original is acked once the broker confirmed
        its copy.  The default tries 3 times, 1 s and then 10 s apart, and
        then rejects without requeue (to the queue's dead-letter exchange).

        Delivery is at least once: a delivery whose channel dies before its
        ack comes again (``ack()`` returned False), and a producer
        republishes after a reconnect.  ``duplicate_window`` (default 0:
        off) remembers the last that many message ids (``duplicate_key``,
        default ``message_id``; a key of None is never filtered) and how far
        each got; a delivery of one it finished with is acked without
        running the handler again, and a second delivery of a message being
        handled waits for the first.  The window is this worker's, in
        memory: a restarted worker starts empty.  Give producers
        ``message_ids=True`` so every message has an id.

        Cancellation: the worker stops taking deliveries (``basic.cancel``),
        running handlers get ``grace`` seconds to finish and are acked;
        then the channel closes and every delivery still unacked returns to
        the queue.  A handler still running after ``grace`` is cancelled
        (its message returns too).

        Raises:
            ValueError, TypeError: a bad ``concurrency``, ``prefetch``
                (below ``concurrency``), ``retry``, ``duplicate_window`` or
                ``grace`` (before anything is declared).
            ChannelClosed: the broker refused to declare a delay or
                dead-letter queue (406: it exists with other arguments) or
                to subscribe (404: no such queue).
            ConnectionClosed, ConnectionLost: the client was closed or gave up.
        """
        counters = self._worker_counters.get(queue) or WorkerCounters()
        worker = Worker(
            self,
            queue,
            handler,
            concurrency=concurrency,
            prefetch=prefetch,
            retry=retry,
            duplicate_window=duplicate_window,
            duplicate_key=duplicate_key,
            grace=grace,
            counters=counters,
        )
        self._worker_counters.setdefault(queue, counters)  # the arguments were fine
        await worker.run(task_status)
