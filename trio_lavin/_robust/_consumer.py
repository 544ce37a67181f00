"""A consumer that survives reconnects, server cancels and channel closes."""

from __future__ import annotations

import datetime
import functools
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._client._channel import Channel
from .._client._connection import Connection
from .._client._consumer import Consumer
from .._client._counters import DeliveryCounters
from .._client._delivery import Delivery
from .._exceptions import AMQPConnectionError, ChannelClosed, CommandRefused, ConsumerCancelled
from .._sansio._errors import CONTENT_TOO_LARGE
from ._backoff import Backoff
from ._offsets import STREAM_OFFSET, StreamOffset, StreamOffsets

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger("trio_lavin.consumer")


@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """The counters of one queue's consumers in a client (a part of
    :meth:`Client.statistics`).  The counts cover every consumer of the queue
    the client ever ran, across reconnects, so they only grow."""

    #: The queue as given to ``client.consume`` (for a server-named queue,
    #: the name it had first).
    queue: str
    #: Consumers of the queue running now.
    consumers: int
    #: Subscriptions made (re-subscriptions included).
    subscriptions: int
    #: Deliveries handed to the application.
    consumed: int
    #: Of those, deliveries flagged ``redelivered`` by the broker.
    redelivered: int
    #: Acks sent (an ack with ``multiple=True`` counts once).
    acked: int
    #: Nacks sent.
    nacked: int
    #: Rejects sent.
    rejected: int
    #: Acks, nacks and rejects that returned False: their channel was gone.
    stale_acks: int
    #: Deliveries received and not yet taken by the application.
    buffered: int
    #: Of a stream queue: the next offset its consumers read, the first one
    #: the application has not settled (the highest, with several
    #: consumers; before any delivery, the offset they started from if it is
    #: one; None for other queues).
    stream_offset: int | None = None


class RecoveringConsumer:
    """Deliveries from one queue, across reconnects.  Made by
    :meth:`Client.consume`; iterate it with ``async for``.

    Each subscription has its own channel with ``basic.qos(prefetch)``.  When
    the subscription ends - the connection was lost, the broker cancelled the
    consumer (its queue was deleted), or the broker closed the channel (for
    example a 406 consumer timeout) - the consumer subscribes again: on the
    next connection, or at once (with backoff) when the connection is fine.
    Deliveries from an ended subscription stay valid objects, but their
    ``ack()`` returns False: the broker redelivers them.

    A message larger than the client's ``max_body_size`` closes the
    subscription's channel (311 CONTENT_TOO_LARGE) and stays in the queue; the
    consumer subscribes again after a backoff that grows while that repeats,
    so the broker does not resend it in a loop (a dead-letter policy on the
    queue, or a larger ``max_body_size``, gets it out of the way).
    """

    def __init__(
        self,
        client: Client,
        queue: str,
        prefetch: int,
        no_ack: bool,
        exclusive: bool,
        consumer_tag: str | None,
        arguments: dict[str, Any] | None,
        counters: DeliveryCounters | None = None,
        rng: random.Random | None = None,
        stream_offset: StreamOffset | None = None,
    ) -> None:
        self._client = client
        #: For the jitter of its backoff (the client's).
        self._rng = rng if rng is not None else random.Random()
        self.queue = queue
        self.prefetch = prefetch
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.consumer_tag = consumer_tag
        self.arguments = arguments
        self._channel: Channel | None = None
        self._current: Consumer | None = None
        self._changed = trio.Event()
        self._lock = trio.Lock()
        self._closed = False
        #: Why the consumer ended for good (the broker refused to subscribe
        #: it with a hard error); raised by the iteration.
        self._error: CommandRefused | None = None
        #: The broker refused a re-subscription made for us (by the
        #: client's recovery): the iteration tries again with backoff.
        self._refused: ChannelClosed | None = None
        #: While the broker keeps sending a message too large for us (we close
        #: the channel over it with 311, and it comes again), the wait before
        #: each new subscription; kept across deliveries handed over in between.
        self._refusals: Backoff | None = None
        #: Subscriptions made so far (the first one included).
        self.subscriptions = 0
        #: Shared by the client's consumers of the same queue.
        self._counters = counters if counters is not None else DeliveryCounters()
        #: For a stream: what the application settled, and where to subscribe again.
        self._offsets = None if stream_offset is None else StreamOffsets(stream_offset)
        #: The current subscription's number in ``_offsets``.
        self._subscription = 0

    def __repr__(self) -> str:
        return f"<RecoveringConsumer of queue {self.queue!r}>"

    @property
    def counters(self) -> DeliveryCounters:
        """The counters it adds to (shared by the client's consumers of its queue)."""
        return self._counters

    @property
    def channel(self) -> Channel | None:
        """The channel of the current subscription, if any."""
        return self._channel

    async def subscribe(self, connection: Connection) -> None:
        """Internal: subscribe on ``connection`` (which the client just recovered, or
        which is still fine after our subscription ended)."""
        async with self._lock:
            if (
                self._closed
                or self._error is not None
                or (
                    self._current is not None
                    and self._current.channel.connection is connection
                    and self._current.channel.is_open
                    and not self._current.finished
                )
            ):
                return
            channel = await self._client.open_channel(connection)
            channel.counters = self._counters
            arguments, offsets = self.arguments, self._offsets
            if offsets is not None:
                # From the first offset the application has not settled (a
                # stream takes no no_ack consumers: we ack for it).
                arguments = {**(arguments or {}), STREAM_OFFSET: offsets.resume_from()}
            try:
                if self.prefetch:
                    await channel.basic_qos(self.prefetch)
                consumer = await channel.basic_consume(
                    self._client.current_queue_name(self.queue),
                    no_ack=self.no_ack and offsets is None,
                    exclusive=self.exclusive,
                    consumer_tag=self.consumer_tag,
                    arguments=arguments,
                )
            except BaseException:
                with trio.CancelScope(shield=True):
                    await channel.aclose()
                raise
            previous, ended = self._channel, self._current
            self._channel, self._current = channel, consumer
            if offsets is not None:
                if not self.subscriptions:
                    offsets.pin(datetime.datetime.now(datetime.UTC))
                waiting = None if ended is None else ended.next_buffered
                if waiting is not None and waiting.stream_offset is not None:
                    offsets.arrived(waiting.stream_offset)
                offsets.end_subscription(self._subscription)
                self._subscription = offsets.new_subscription()
                channel.settle_listener = functools.partial(offsets.settled, self._subscription)
            self._refused = None
            self.subscriptions += 1
            self._counters.subscriptions += 1
            self._wake()
            if previous is not None and previous.is_open:
                # Its consumer was cancelled (by the broker): return what it holds
                # unacked to the queue now, rather than when the connection ends.
                await previous.aclose()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def client_finished(self) -> None:
        """Internal: the client closed or gave up: an iteration waiting for it to
        reconnect raises why."""
        self._wake()

    def end_with(self, error: CommandRefused) -> None:
        """Internal: end the consumer: the broker refused to subscribe it with a hard
        error (asking again would be refused again).  The iteration raises
        ``error``."""
        self._error = error
        self._wake()

    def subscription_refused(self, error: ChannelClosed) -> None:
        """Internal: the client's recovery could not subscribe us again (e.g. 404: the
        queue is gone): the iteration tries again itself, with backoff."""
        self._refused = error
        self._wake()

    def __aiter__(self) -> RecoveringConsumer:
        return self

    async def __anext__(self) -> Delivery:
        backoff: Backoff | None = None  # made only when a re-subscription is needed
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            current, subscription = self._current, self._subscription
            if current is None:
                self._client.raise_if_finished()
                await self._changed.wait()
                continue
            try:
                delivery = await current.__anext__()
                if self._offsets is not None and not await self._take_from_stream(
                    delivery, subscription
                ):
                    continue
                counters = self._counters
                counters.consumed += 1
                if delivery.redelivered:
                    counters.redelivered += 1
                return delivery
            except StopAsyncIteration:
                if self._closed:
                    raise
                reason: BaseException = ConsumerCancelled(current.consumer_tag)
            except (ConsumerCancelled, ChannelClosed) as exc:
                _forget_traceback(exc)
                reason = exc
            except AMQPConnectionError as exc:
                _forget_traceback(exc)
                if self._current is not current:
                    continue  # subscribed again meanwhile
                if self._refused is None:
                    # The client reconnects and re-subscribes us (or says the
                    # broker refused, or that it finished): wait for that.
                    self._client.raise_if_finished()
                    await self._changed.wait()
                    continue
                # The broker refused the re-subscription: try again ourselves
                # (until one succeeds, which clears ``_refused``).
                reason = self._refused
            if self._current is not current:
                continue  # already replaced
            logger.warning("consumer of %r ended (%s); subscribing again", self.queue, str(reason))
            if isinstance(reason, ChannelClosed) and reason.reply_code == CONTENT_TOO_LARGE:
                # We refused a message larger than max_body_size; the broker
                # requeued it and sends it again: wait longer each time rather
                # than fetch it in a loop.
                refusals = self._refusals or self._client.config.backoff(jitter=False)
                await trio.sleep(refusals.delay(self._rng))
                self._refusals = refusals.next()
            else:
                self._refusals = None
            backoff = await self._resubscribe(backoff or self._client.config.backoff(jitter=False))

    async def _take_from_stream(self, delivery: Delivery, subscription: int) -> bool:
        """Whether to hand ``delivery`` (of ``subscription``) of a stream to the
        application: not if it settled that offset already (it is acked, for the
        broker's credit, unless an ack with ``multiple`` did that)."""
        assert self._offsets is not None
        offset = delivery.stream_offset
        if offset is None:
            return True  # not from a stream after all: nothing to count
        settled = delivery.settled
        if not self._offsets.delivered(
            subscription, delivery.delivery_tag, offset, settled=self.no_ack or settled
        ):
            if not settled:
                await delivery.ack()
            return False
        if self.no_ack and not settled:
            await delivery.ack()
        return True

    @property
    def stream_offset(self) -> StreamOffset | None:
        """For a stream: where to start next time to read only what the
        application has not settled (the first offset it did not ack, nack
        or reject, or the one after the last delivered); store it, and pass
        it as ``stream_offset`` to the next run's ``consume``.  Before any
        delivery, the offset the consumer was asked to start from."""
        return None if self._offsets is None else self._offsets.resume_from()

    async def _resubscribe(self, backoff: Backoff) -> Backoff:
        """Subscribe again on the live connection (waiting for one) after our
        subscription ended, or the broker refused the one the client's
        recovery made; back off while the broker refuses (e.g. the queue
        does not exist yet).

        Raises:
            ConnectionLost: the client gave up.
        """
        try:
            connection = await self._client.wait_connected()
        except AMQPConnectionError:
            if self._closed:
                return backoff
            raise
        try:
            await self.subscribe(connection)
        except CommandRefused as exc:
            self.end_with(exc)  # raised by the iteration
            return backoff
        except ChannelClosed as exc:
            self._refused = exc  # still to do, whatever wakes the iteration next
            delay = backoff.delay(self._rng)
            logger.warning(
                "re-subscribing to %r failed (%s); trying again in %.2f s", self.queue, exc, delay
            )
            await trio.sleep(delay)
            return backoff.next()
        except AMQPConnectionError:
            return backoff
        return backoff.reset()

    @property
    def buffered(self) -> int:
        """Deliveries received and not yet iterated."""
        current = self._current
        if current is None:
            return 0
        return current.buffered

    async def stop(self) -> None:
        """Stop the deliveries (``basic.cancel``) but keep the channel, so
        what was delivered can still be acked; the iteration ends and the
        consumer does not subscribe again.  :meth:`aclose` then closes the
        channel (what is still unacked goes back to the queue)."""
        self._closed = True
        self._changed.set()
        current = self._current
        if current is not None:
            try:
                await current.cancel()
            except (ChannelClosed, ConsumerCancelled, AMQPConnectionError):
                pass  # the subscription is gone already: nothing more comes

    async def aclose(self) -> None:
        """Stop consuming: cancel the subscription and close its channel
        (unacked deliveries go back to the queue)."""
        self._closed = True
        self._changed.set()
        current, channel = self._current, self._channel
        self._current = self._channel = None
        if current is not None:
            current.finish(None)
        if channel is not None:
            await channel.aclose()


def _forget_traceback(error: BaseException) -> None:
    """Drop the traceback of an error we handled.  The error object is also
    stored on the dead channel or connection (and raised to every consumer of
    it); its traceback holds the frame of :meth:`RecoveringConsumer.__anext__`,
    whose locals later hold the *next* subscription.  Kept, that links every
    dead connection to its successor, so one stale reference to an old one
    (e.g. an idle producer's closed channel) would keep them all alive."""
    error.__traceback__ = None
