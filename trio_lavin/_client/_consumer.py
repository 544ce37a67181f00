"""A consumer of one ``basic.consume``: the buffer between the connection's
dispatch and the task that iterates it."""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Final

import trio

from .._exceptions import AMQPConnectionError, ChannelClosed, ConsumerCancelled
from ._delivery import Delivery
from ._reading import Lot, Notice

if TYPE_CHECKING:
    from ._channel import Channel

#: Deliveries buffered per consumer when no prefetch is set.  With a prefetch
#: the buffer holds ``prefetch_count`` deliveries, which is all the broker can
#: send before an ack, so the reader never waits for a slow consumer.
DEFAULT_CONSUMER_BUFFER: Final = 1_000

#: How long cancelling a consumer waits for the broker.
CANCEL_TIMEOUT: Final = 5.0

#: A consumer whose buffer is never empty still yields to the scheduler once
#: per this many deliveries, so a fast broker cannot starve the other tasks.
YIELD_EVERY: Final = 64


class Consumer:
    """Deliveries of one ``basic.consume``, as an async iterator.

    Iteration ends normally after :meth:`cancel` (once the deliveries already
    received are consumed) and raises :class:`ConsumerCancelled` when the
    broker cancelled the consumer, or the channel's/connection's error when
    those closed.  As an async context manager it cancels itself on exit;
    deliveries still buffered then are rejected with ``requeue=True``, so the
    broker hands them to another consumer.

    Taking the next delivery is a cancellation point.  While deliveries are
    waiting in the buffer it yields to the scheduler only once every
    :data:`YIELD_EVERY` deliveries (a trio schedule point per message would
    cost more than decoding it); when the buffer is empty it waits as usual.
    """

    def __init__(
        self, channel: Channel, queue: str, consumer_tag: str, capacity: int, no_ack: bool
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.consumer_tag = consumer_tag
        self.no_ack = no_ack
        self._capacity = capacity
        self._buffer: deque[Delivery] = deque()
        #: Tasks iterating wait for this: a delivery, or the end.
        self._news = Notice(self._has_news)
        #: The connection's reader, waiting for room in a full buffer.
        self._writable = Lot()
        self._error: BaseException | None = None
        #: No more deliveries will come (cancelled, or the channel closed).
        self._finished = False
        #: Iteration was closed on our side: deliveries are refused.
        self._closed = False
        #: The connection is closing: deliveries are dropped (the broker
        #: requeues them when the connection ends); iteration goes on.
        self._discarding = False
        self._taken_without_yield = 0

    def __repr__(self) -> str:
        return f"<Consumer {self.consumer_tag!r} on queue {self.queue!r}>"

    @property
    def buffered(self) -> int:
        """Deliveries received and waiting to be iterated."""
        return len(self._buffer)

    @property
    def _accepting(self) -> bool:
        return not (self._finished or self._closed or self._discarding)

    def put(self, delivery: Delivery) -> bool:
        """Internal: buffer a delivery, even beyond the buffer's capacity
        (the connection then reads no more until there is room); False if
        the consumer takes no more deliveries."""
        if self._finished or self._closed or self._discarding:
            return False
        self._buffer.append(delivery)
        self._news.notify_one()
        return True

    @property
    def next_buffered(self) -> Delivery | None:
        """The buffered delivery iterating would hand over next, if any."""
        return self._buffer[0] if self._buffer else None

    @property
    def overfull(self) -> bool:
        """Holds more deliveries than its buffer is for."""
        return len(self._buffer) > self._capacity

    @property
    def finished(self) -> bool:
        """No more deliveries will come: cancelled, or its channel closed."""
        return self._finished

    async def wait_for_room(self) -> None:
        """Internal: for the connection's reader: wait until the buffer has
        room again, or the consumer takes no more."""
        while self._accepting and len(self._buffer) > self._capacity:
            await self._writable.park()

    def _has_news(self) -> bool:
        """Iterating would not wait."""
        return bool(self._buffer) or self._finished or self._closed

    def finish(self, error: BaseException | None) -> None:
        """Internal: no more deliveries will come (``error``: why, if not a cancel)."""
        if not self._finished:
            self._finished = True
            self._error = error
            self._news.notify()
            self._writable.unpark_all()

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            if self._buffer and not self._closed:
                self._taken_without_yield += 1
                if self._taken_without_yield >= YIELD_EVERY:
                    self._taken_without_yield = 0
                    await trio.lowlevel.checkpoint()
                    continue  # another task may have taken or closed meanwhile
                await trio.lowlevel.checkpoint_if_cancelled()
                delivery = self._buffer.popleft()
                self._writable.unpark()
                return delivery
            if self._finished or self._closed:
                await trio.lowlevel.checkpoint()
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._taken_without_yield = 0
            connection = self.channel.connection
            await connection.sending.flush()
            if not self._buffer:
                await connection.wait_for(self._news)

    async def cancel(self) -> None:
        """Stop the broker sending more (``basic.cancel``).  Deliveries that
        arrived before the broker confirmed can still be iterated and acked.
        Does nothing if the consumer or its channel is already gone."""
        if self._finished:
            await trio.lowlevel.checkpoint()
            return
        if self.channel.is_open:
            await self.channel.basic_cancel(self.consumer_tag)
        self.finish(None)

    async def __aenter__(self) -> Consumer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Refuse deliveries first: a connection reader waiting for room in our
        # full buffer must go on, or it would never read the CancelOk.
        self._refuse()
        with trio.move_on_after(CANCEL_TIMEOUT) as scope:
            scope.shield = True
            try:
                await self.cancel()
            except (ChannelClosed, ConsumerCancelled, AMQPConnectionError):
                pass
        self._give_back()

    def _refuse(self) -> None:
        """Take no more deliveries (the connection gives them back to the
        broker) and release a reader waiting for room."""
        self._closed = True
        self._news.notify()
        self._writable.unpark_all()

    def discard(self) -> None:
        """Internal: the connection is closing: drop further deliveries, and
        release a reader waiting for room so that it reads the ``CloseOk``."""
        self._discarding = True
        self._writable.unpark_all()

    def _give_back(self) -> None:
        """Reject the buffered deliveries with requeue, so the broker hands
        them to another consumer."""
        left, self._buffer = self._buffer, deque()
        if not self.no_ack:
            for delivery in left:
                if not delivery.settled:  # an ack with ``multiple`` may have settled it
                    self.channel.give_back_nowait(delivery.delivery_tag)
