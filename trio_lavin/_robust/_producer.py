"""The buffered producer: every message is delivered, or you are told why not.

A :class:`Producer` puts messages in a bounded buffer (a trio memory channel
of ``Config.buffer_size``) and one sender task moves them to the live
connection.  While the client is disconnected the buffer holds them; after a
reconnect it is flushed at once, with no artificial delay.

In ``CONFIRM`` mode every message ends in exactly one outcome:

* confirmed by the broker (``basic.ack``), or
* given up and reported to the ``on_drop`` callbacks with a
  :class:`DropReason`: evicted or refused by the buffer policy, nacked,
  returned unroutable (``mandatory``), too large, or still pending when the
  client closed.

Messages in flight when a connection dies have no verdict; they are published
again after the reconnect, in their original order and before newer ones
(at-least-once: the broker may have taken some, so duplicates are possible).

A ``basic.nack`` is often temporary (a quorum queue nacks while it elects a
new leader after a node loss), so a nacked message is published again, up to
``Config.nack_retries`` times: the producer pauses for a backoff delay
(``Config.nack_retry_delay``, growing with each nack of the same message),
then publishes the nacked messages before any message not yet published, on
a new channel (RabbitMQ 3.10 keeps nacking every message on a channel that
first published to a quorum queue while it had no leader; messages still in
flight on the old channel are published again too, so duplicates are
possible).  Messages that were already in flight behind a nacked one may
reach the queue before it.  Only after the last retry is it dropped as NACKED.

When the broker closes the publishing channel (a *rejection*: 404 NOT_FOUND
for an exchange that does not exist, 403 ACCESS_REFUSED without write
permission, ...), the producer pauses for a backoff delay (the reconnect
policy, growing while rejections go on, starting over with the next confirm)
before it opens a new channel, and logs one WARNING per episode.  The
messages it had in flight are published again, each up to
``Config.publish_retries`` times, then dropped as REJECTED.  A 406
PRECONDITION_FAILED is how LavinMQ says "low on disk", and
``connection.blocked`` how RabbitMQ says it is low on memory or disk: the
producer pauses until the broker takes messages again, and drops nothing
(see :mod:`._pausing`: the pause shows in the statistics and as events).

In ``FIRE_AND_FORGET`` mode a message counts as done once it is handed to the
connection's writer; the few in the writer's buffer when a connection dies
(or that a rejection threw away) are lost (at-most-once), which is what that
mode trades for speed.  Calls made while the sender is idle with nothing
queued (the usual loop of ``await publish()``) skip the buffer: their messages
join a *burst* of up to :data:`BURST_MESSAGES`, which is handed to the
connection at once when the caller's task yields (the sender does it) or when
it is full; a burst its channel cannot take waits, first in line, for the next.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Final

import trio

from .._client._channel import Channel
from .._client._delivery import BasicProperties, Confirmation
from .._client._sending import Sending
from .._exceptions import (
    AMQPConnectionError,
    AMQPError,
    ChannelClosed,
    MessageNacked,
    MessageRejected,
    MessageReturned,
)
from .._sansio._events import ReturnedMessage
from .._sansio._properties import encode_properties
from .._sansio._publishing import EMPTY_PROPERTIES, encode_publish_method
from ._message import (
    Buffered,
    BufferFull,
    BufferPolicy,
    DropCallback,
    DropReason,
    Fields,
    Message,
    MessageTooLarge,
    ProducerClosed,
    ProducerStatistics,
    PublishMode,
    PublishTimeout,
    as_message,
    drop_error,
    encode_message,
    is_rejection,
    queue_on,
    with_headers,
)
from ._pausing import Pauses

if TYPE_CHECKING:
    from ._client import Client

logger = logging.getLogger("trio_lavin.producer")

#: A loop of FIRE_AND_FORGET ``await publish()`` yields to the other tasks
#: once every this many calls...
YIELD_EVERY: Final = 64
#: ... or once this many bytes wait to be written (see ``Producer._pass``).
YIELD_BYTES: Final = 64 * 1024
#: A burst (FIRE_AND_FORGET messages taken by the callers' tasks, queued on
#: the channel together: see ``Producer._publish_directly``) holds at most
#: this many messages, or bodies of this many bytes.
BURST_MESSAGES: Final = YIELD_EVERY
BURST_BYTES: Final = YIELD_BYTES
#: ``_paused_until`` when publishing was never paused.
_NEVER: Final = -math.inf
#: Longest the sender waits for the confirms of a channel it replaces after a nack.
STALE_CONFIRMS_WAIT: Final = 5.0


class Producer:
    """Publishes to one queue (default exchange) or exchange + routing key.

    Made by :meth:`Client.producer`.  See the module documentation for the
    guarantees.  All methods are safe to call while disconnected.
    """

    def __init__(
        self,
        client: Client,
        *,
        exchange: str,
        routing_key: str,
        mode: PublishMode,
        buffer_policy: BufferPolicy,
        mandatory: bool,
        confirm_window: int,
        max_message_size: int,
        publish_timeout: float | None = None,
        rng: random.Random | None = None,
        message_ids: bool = False,
    ) -> None:
        if confirm_window < 1:
            raise ValueError(f"confirm_window must be >= 1, not {confirm_window!r}")
        if max_message_size < 0:
            raise ValueError(f"max_message_size must be >= 0, not {max_message_size!r}")
        # Refused here, rather than by every publish: the destination is fixed.
        encode_publish_method(0, exchange, routing_key, mandatory, False)
        self._client = client
        #: For the jitter of the producer's pauses (the client's).
        self._rng = rng if rng is not None else random.Random()
        # Fixed for the producer's life: its channel's mode and its checked
        # destination (see the read-only properties below).
        self._exchange = exchange
        self._routing_key = routing_key
        self._mode = mode
        #: CONFIRM mode: every message is a Message, tracked to its verdict.
        self._confirm = mode is PublishMode.CONFIRM
        self._mandatory = mandatory
        self.buffer_policy = buffer_policy
        self.confirm_window = confirm_window
        self.max_message_size = max_message_size
        if publish_timeout is not None and not publish_timeout > 0:
            raise ValueError(
                f"publish_timeout must be > 0 seconds or None, not {publish_timeout!r}"
            )
        #: Default limit for :meth:`publish` (None: wait as long as it takes).
        self.publish_timeout = publish_timeout
        self._message_ids = message_ids
        self._capacity = client.config.buffer_size
        self._send, self._receive = trio.open_memory_channel[Buffered](self._capacity)
        self._retry: deque[Message] = deque()
        self._requeued: list[Message] = []
        self._in_flight = 0
        self._wakeup = trio.lowlevel.ParkingLot()
        self._window_lot = trio.lowlevel.ParkingLot()
        self._idle_lot = trio.lowlevel.ParkingLot()
        self._sequence = itertools.count(1)
        self._callbacks: list[DropCallback] = []
        self._channel: Channel | None = None
        self._closed = False
        #: FIRE_AND_FORGET and no message ids (both fixed at creation): while
        #: open, bytes alone make a message at once (``publish_nowait``).
        self._plain_fields = not self._confirm and not message_ids
        self._published = 0
        self._republished = 0
        self._confirmed = 0
        self._nacked = 0
        self._retries = 0
        self._nack_backoff = client.config.nack_backoff()
        #: After a nack, nothing is published before this time, and then on
        #: a new channel.
        self._paused_until = _NEVER
        self._renew_channel = False
        #: The sender task waits for messages, with nothing else to do.
        self._sender_idle = False
        #: FIRE_AND_FORGET publishes since ``publish()`` last yielded.
        self._unyielded = 0
        #: Messages in the buffer (the memory channel), and those of BLOCK
        #: publishers waiting for room in it.
        self._buffered = 0
        #: FIRE_AND_FORGET messages taken from the callers' tasks while the
        #: sender was idle, older than anything in the buffer, and the size of
        #: their bodies: the sender (woken by the first) or the call that
        #: finds it full queues them on the channel at once.
        self._burst: list[Fields] = []
        self._burst_bytes = 0
        #: The connection asked to queue the burst before its next write.
        self._burst_deferred_to: Sending | None = None
        self._returned = 0
        self._dropped = dict.fromkeys(DropReason, 0)
        self._pauses = Pauses(
            client, self.target, confirm=mode is PublishMode.CONFIRM, rng=self._rng
        )

    @property
    def exchange(self) -> str:
        """The exchange it publishes to ("" for the default exchange)."""
        return self._exchange

    @property
    def routing_key(self) -> str:
        """The routing key of a message published without one."""
        return self._routing_key

    @property
    def mode(self) -> PublishMode:
        """FIRE_AND_FORGET or CONFIRM, fixed when the producer is made (its
        channel's mode and what its buffer holds follow from it)."""
        return self._mode

    @property
    def message_ids(self) -> bool:
        """Every message without a ``message_id`` gets a unique one."""
        return self._message_ids

    @property
    def mandatory(self) -> bool:
        """Messages are published ``mandatory`` (unroutable ones come back)."""
        return self._mandatory

    @property
    def target(self) -> str:
        """The queue name (default exchange) or ``exchange/routing_key``."""
        return self._routing_key if not self._exchange else f"{self._exchange}/{self._routing_key}"

    def __repr__(self) -> str:
        return f"<Producer {self.target!r} {self._mode.value} {self.buffer_policy.value}>"

    def on_drop(self, callback: DropCallback) -> DropCallback:
        """Call ``callback(message, target, reason)`` for every message the
        producer gives up on.  It may be a plain function or an async one
        (run in the client's nursery); an exception in it is logged and
        otherwise ignored.  Returns ``callback``, so it works as a decorator.

        In FIRE_AND_FORGET mode the message's ``properties`` are decoded from
        the bytes it was to be published with (as a consumer receives them),
        not the object handed over: the buffer keeps only those bytes.
        """
        self._callbacks.append(callback)
        return callback

    def statistics(self) -> ProducerStatistics:
        """A frozen snapshot of the producer's counters: messages buffered
        (waiting to be published) and in flight (published, not confirmed),
        and the counts of every outcome so far."""
        return ProducerStatistics(
            target=self.target,
            # What the buffer holds (not the publishers waiting for room).
            buffered=self._receive.statistics().current_buffer_used
            + len(self._retry)
            + len(self._requeued)
            + len(self._burst),
            in_flight=self._in_flight,
            published=self._published,
            republished=self._republished,
            confirmed=self._confirmed,
            nacked=self._nacked,
            retries=self._retries,
            returned=self._returned,
            dropped=dict(self._dropped),
            paused=self._pauses.reason,
            pauses=self._pauses.count,
        )

    # -- publishing ----------------------------------------------------------------

    def _message(
        self,
        body: bytes | bytearray | memoryview,
        properties: BasicProperties | None,
        routing_key: str | None,
        headers: dict[str, Any] | None,
    ) -> Buffered:
        """The message a call hands over, checked and its properties encoded:
        :data:`Fields` for a FIRE_AND_FORGET producer, else a :class:`Message`.

        Raises:
            ProducerClosed, MessageTooLarge; TypeError, ValueError: what
                cannot be sent (see :func:`encode_message`).
        """
        if self._closed:
            raise self._closed_error()
        sequence = next(self._sequence)
        if self._message_ids and (properties is None or properties.message_id is None):
            unique = uuid.uuid4().hex
            properties = (
                BasicProperties(message_id=unique)
                if properties is None
                else properties.replace(message_id=unique)
            )
        if headers is None and routing_key is None and type(body) is bytes:
            # The usual call (encode_message, inlined): the producer's own
            # routing key was checked when it was made.
            key = self._routing_key
            encoded = EMPTY_PROPERTIES if properties is None else encode_properties(properties)
        else:
            # The producer's own routing key was checked when it was made.
            body, encoded = encode_message(body, properties, headers, routing_key)
            key = self._routing_key if routing_key is None else routing_key
        message: Buffered
        if not self._confirm:
            message = (body, self._exchange, key, self._mandatory, sequence, encoded)
        else:
            message = Message(
                body,
                with_headers(properties, headers),
                self._exchange,
                key,
                self._mandatory,
                sequence,
                encoded,
            )
        if len(body) > self.max_message_size:
            self._drop(message, DropReason.TOO_LARGE)
            raise MessageTooLarge(len(body), self.max_message_size)
        return message

    def _closed_error(self) -> ProducerClosed:
        return ProducerClosed(f"the producer for {self.target!r} is closed")

    def publish_nowait(
        self,
        body: bytes | bytearray | memoryview,
        *,
        properties: BasicProperties | None = None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
    ) -> bool:
        """Buffer a message without waiting.

        Returns True if it was buffered, False if the DROP_NEWEST policy
        refused it (it was reported to ``on_drop`` as BUFFER_FULL).  With
        DROP_OLDEST the oldest buffered message makes room (reported as
        EVICTED).

        Raises:
            BufferFull: the buffer is full and the policy is RAISE.
            trio.WouldBlock: the buffer is full and the policy is BLOCK.
            MessageTooLarge: the body exceeds ``max_message_size``.
            ProducerClosed: the producer or client is closed.
        """
        if (
            properties is None
            and headers is None
            and routing_key is None
            and type(body) is bytes
            and self._plain_fields
            and not self._closed
            and len(body) <= self.max_message_size
        ):
            # _message(), inlined for the commonest call: bytes and nothing else.
            message: Buffered = (
                body,
                self._exchange,
                self._routing_key,
                self._mandatory,
                next(self._sequence),
                EMPTY_PROPERTIES,
            )
        else:
            message = self._message(body, properties, routing_key, headers)
        channel = self._channel
        if channel is not None and self._publish_directly(channel, message, kick=True):
            return True
        try:  # _buffer_or_make_room, inlined for the usual case: there is room
            self._send.send_nowait(message)
        except trio.WouldBlock:
            return self._buffer_or_make_room(message)
        self._buffered += 1
        if self._sender_idle:  # _wake_sender(), inlined
            self._wakeup.unpark_all()
        return True

    def _buffer_or_make_room(self, message: Buffered) -> bool:
        """Buffer ``message``, making room as the policy says; False if the
        policy refused it (DROP_NEWEST)."""
        try:
            self._buffer_nowait(message)
        except trio.WouldBlock:
            if not self._make_room(message):
                return False
            self._buffer_nowait(message)
        self._wake_sender()
        return True

    def _make_room(self, message: Buffered) -> bool:
        policy = self.buffer_policy
        if policy is BufferPolicy.DROP_OLDEST:
            self._drop(self._unbuffer_nowait(), DropReason.EVICTED)
            return True
        if policy is BufferPolicy.DROP_NEWEST:
            self._drop(message, DropReason.BUFFER_FULL)
            return False
        if policy is BufferPolicy.RAISE:
            raise BufferFull(self.target, self._capacity)
        raise trio.WouldBlock

    async def publish(
        self,
        body: bytes | bytearray | memoryview,
        *,
        properties: BasicProperties | None = None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
    ) -> bool:
        """Buffer a message and, in CONFIRM mode, wait until the broker
        confirmed it.

        With the BLOCK policy this waits for room in the buffer; the other
        policies behave as in :meth:`publish_nowait`.  Returns True once the
        message was taken (and, in CONFIRM mode, confirmed); False if the
        DROP_NEWEST policy refused it (reported to ``on_drop``).

        Cancellation: cancelled while waiting for room, the message was not
        taken; cancelled while waiting for the confirm, the message stays in
        the producer and still gets its outcome (on_drop if given up).

        The producer's ``publish_timeout`` (seconds; None: no limit) bounds
        the whole call; a trio cancel scope around it works as well.

        Raises:
            MessageNacked, MessageReturned: the broker refused it (it was
                also reported to ``on_drop``).
            PublishTimeout: no verdict within ``publish_timeout``; if the
                message was taken it stays in the producer and still gets its
                outcome.
            ProducerClosed: the client closed before the message was
                confirmed (also reported to ``on_drop`` as CLOSED).
            BufferFull, MessageTooLarge: as for :meth:`publish_nowait`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        message = self._message(body, properties, routing_key, headers)
        channel = self._channel
        if (
            not self._confirm
            and channel is not None
            and self._publish_directly(channel, message, kick=True)
        ):
            # Taken, nothing to wait for: the usual FIRE_AND_FORGET call
            # ends here (the sender queues it with the messages around it).
            if self._yield_due():
                await trio.lowlevel.cancel_shielded_checkpoint()
            return True
        limit = self.publish_timeout
        if limit is None:
            return await self._publish(message)
        with trio.move_on_after(limit) as scope:
            return await self._publish(message)
        assert scope.cancelled_caught
        raise PublishTimeout(limit)

    async def _publish(self, message: Buffered) -> bool:
        """The rest of :meth:`publish`: buffer ``message`` and, in CONFIRM
        mode, wait for its verdict."""
        # CONFIRM mode: the message (always a Message there) whose verdict this call awaits.
        awaited = message if isinstance(message, Message) else None
        channel = self._channel
        if awaited is not None:
            awaited.await_verdict()
            if channel is not None:
                connection = channel.connection
                # Send the message from this task (no hop through the writer),
                # unless other tasks already wait for the broker; then the
                # writer sends everything they queue in one write.
                kick = connection.waiting_tasks > 0
                if self._publish_directly(channel, message, kick=kick):
                    if not kick:
                        await connection.sending.flush()
                    return await self._wait_for_verdict(awaited)
        if self.buffer_policy is BufferPolicy.BLOCK:
            try:
                # No schedule point when there is room: the task then goes on
                # to wait for the confirm without a detour.
                self._buffer_nowait(message)
            except trio.WouldBlock:
                await self._buffer(message)
            self._wake_sender()
        elif not self._buffer_or_make_room(message):
            await trio.lowlevel.checkpoint()
            return False
        if awaited is not None:
            return await self._wait_for_verdict(awaited)
        await self._pass()
        return True

    async def _pass(self) -> None:
        """After a publish that waits for no confirm: yield to the other
        tasks when :meth:`_yield_due` says so."""
        if self._yield_due():
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _yield_due(self) -> bool:
        """A publish that waits for no confirm yields to the other tasks (the
        sender, the writer) once every :data:`YIELD_EVERY` calls, or once the
        burst holds :data:`YIELD_BYTES` of bodies, and else only honours a
        cancellation.  So a loop of ``await publish()`` hands the sender
        bursts of messages to queue at once and the writer to send in one
        write, and still lets every other task run every few hundred
        microseconds.  (A plain method: the publish that yields rarely makes
        no coroutine for it.)"""
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY or self._burst_bytes >= YIELD_BYTES:
            self._unyielded = 0
            return True
        return False

    async def _wait_for_verdict(self, message: Message) -> bool:
        """Wait for the broker's verdict on ``message`` (CONFIRM mode)."""
        channel = self._channel
        await message.wait_for_verdict(None if channel is None else channel.connection)
        return True

    async def enqueue(
        self,
        body: bytes | bytearray | memoryview,
        *,
        properties: BasicProperties | None = None,
        headers: dict[str, Any] | None = None,
        routing_key: str | None = None,
    ) -> bool:
        """Buffer a message, waiting for room under the BLOCK policy, but not
        for the broker's confirm: the fast way to publish a stream of
        messages with backpressure.  Outcomes reach ``on_drop`` and
        :meth:`statistics`; :meth:`drain` waits for them all.

        Returns and raises as :meth:`publish_nowait` (never WouldBlock).
        Cancellation: a cancelled call took no message.  It yields to other
        tasks when it has to wait for room, and else once every 64 calls (so
        a loop of them hands the writer batches to send in one write).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        message = self._message(body, properties, routing_key, headers)
        channel = self._channel
        if channel is not None and self._publish_directly(channel, message, kick=True):
            if self._yield_due():
                await trio.lowlevel.cancel_shielded_checkpoint()
            return True
        try:
            self._buffer_nowait(message)
        except trio.WouldBlock:
            if self.buffer_policy is BufferPolicy.BLOCK:
                self._wake_sender()
                await self._buffer(message)
            else:
                # Let the sender move messages first; then the policy acts on
                # the buffer as it is now (it may have room, or be closed).
                await trio.lowlevel.checkpoint()
                if self._closed:
                    raise self._closed_error() from None
                return self._buffer_or_make_room(message)
        else:
            self._wake_sender()
            await self._pass()
            return True
        self._wake_sender()
        return True

    async def drain(self) -> None:
        """Wait until every buffered message is published and, in CONFIRM
        mode, confirmed (or given up).  Bound it with a trio timeout."""
        while self._pending():
            await self._idle_lot.park()

    def _publish_directly(self, channel: Channel, message: Buffered, *, kick: bool) -> bool:
        """Take ``message`` from the caller's task if the sender task is idle
        with nothing queued, so that the message would be the next one it
        publishes anyway; False when it must go through the buffer.

        A CONFIRM-mode Message is published at once, which spares it a hop
        through the sender (``kick``: wake the connection's writer to send
        it, else the caller sends it).  FIRE_AND_FORGET Fields join the
        burst, which the sender queues on the channel at once when the
        caller's task yields (the first wakes it), or the call that finds
        it full: one check of the channel and the connection, and one
        system call, for up to :data:`BURST_MESSAGES` messages."""
        if (
            not self._sender_idle
            or self._closed
            or self._renew_channel
            or self._retry  # _has_queued(), inlined: on every publish
            or self._requeued
            or self._buffered
            or (self._paused_until != _NEVER and self._paused_until > trio.current_time())
        ):
            return False
        if type(message) is tuple:
            # FIRE_AND_FORGET's Fields join the burst (the channel and the
            # connection are checked when it is queued): the usual call of
            # await publish() ends here.
            if (
                len(self._burst) >= BURST_MESSAGES or self._burst_bytes >= BURST_BYTES
            ) and not self._queue_burst(channel, kick=True):
                return False
            self._burst.append(message)
            self._burst_bytes += len(message[0])
            if len(self._burst) == 1:
                sending = channel.connection.sending
                if self._burst_deferred_to is not sending:
                    self._burst_deferred_to = sending
                    sending.defer(self._hand_over_burst)
                sending.kick()
            return True
        if (
            not channel.is_open
            or channel.connection.blocked
            or (self._confirm and self._in_flight >= self.confirm_window)
        ):
            return False
        try:
            confirmation = queue_on(channel, message, kick=kick)
        except (trio.WouldBlock, ChannelClosed, AMQPConnectionError):
            return False
        self._account(message, confirmation)
        return True

    def _fill_burst(self) -> bool:
        """Move messages from the buffer into the empty burst, as many as it
        holds; False if the buffer had none."""
        burst = self._burst
        while len(burst) < BURST_MESSAGES and self._burst_bytes < BURST_BYTES:
            try:
                message = self._unbuffer_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(message, Message):  # not in FIRE_AND_FORGET mode
                self._retry.append(message)
                break
            burst.append(message)
            self._burst_bytes += len(message[0])
        return bool(burst)

    def _hand_over_burst(self) -> None:
        """What the connection calls before its next write (see
        :meth:`Sending.defer`): queue the burst on the producer's channel, or,
        if it cannot take it, leave it to the sender, first in line."""
        self._burst_deferred_to = None
        if not self._burst:
            return
        channel = self._channel
        if channel is None:
            self._wake_sender()  # it opens one, then queues the burst
        else:
            self._queue_burst(channel, kick=True)

    def _queue_burst(self, channel: Channel, *, kick: bool) -> bool:
        """Queue the burst on ``channel``, all at once; False if it cannot
        take them now (then they are first in line for the sender, which is
        woken).  ``kick``: as for :meth:`Channel.queue_message`."""
        burst = self._burst
        self._burst = []
        self._burst_bytes = 0
        try:
            # While the broker refuses publishes, the sender waits for it.
            queued = not channel.connection.blocked
            if queued:
                channel.queue_messages(burst, kick=kick)
        except (trio.WouldBlock, ChannelClosed, AMQPConnectionError):
            queued = False
        if not queued:
            # None was queued: before anything else, in their order.
            self._retry.extendleft(as_message(message) for message in reversed(burst))
            self._wake_sender()
            return False
        self._published += len(burst)
        self._notify_idle()  # drain() may wait for the burst
        return True

    # The buffer, with a count of what it holds (its statistics() are too
    # slow to ask for every message).

    def _buffer_nowait(self, message: Buffered) -> None:
        self._send.send_nowait(message)
        self._buffered += 1

    async def _buffer(self, message: Buffered) -> None:
        # Counted while it waits for room: the sender taking a message out
        # moves a waiting one in, before its task runs again.
        self._buffered += 1
        try:
            await self._send.send(message)
        except BaseException:
            self._buffered -= 1
            raise

    def _unbuffer_nowait(self) -> Buffered:
        message = self._receive.receive_nowait()
        self._buffered -= 1
        return message

    def _has_queued(self) -> bool:
        """Messages wait to be published."""
        return bool(self._retry or self._requeued or self._burst or self._buffered)

    def _pending(self) -> bool:
        return bool(
            self._buffered or self._retry or self._requeued or self._burst or self._in_flight
        )

    # -- outcomes -------------------------------------------------------------------

    def _drop(self, item: Buffered, reason: DropReason, error: AMQPError | None = None) -> None:
        message = as_message(item)
        self._dropped[reason] += 1
        if message.awaited:
            # Wakes its publisher, also one reading for itself.
            message.conclude(error or drop_error(message, reason))
        for callback in self._callbacks:
            try:
                result = callback(message, self.target, reason)
                if inspect.isawaitable(result):
                    self._client.spawn(_run_callback, result)
            except Exception:
                logger.exception("on_drop callback %r raised", callback)

    def _settled(self, message: Message, error: BaseException | None) -> None:
        """A confirmation arrived (or the channel/connection died first)."""
        self._in_flight -= 1
        if self._window_lot:
            self._window_lot.unpark_all()
        if error is None:
            self._confirmed += 1
            self._pauses.confirmed()
            message.conclude()
        elif isinstance(error, MessageNacked):
            message.nacks += 1
            if message.nacks > self._client.config.nack_retries or self._closed:
                self._nacked += 1
                self._drop(message, DropReason.NACKED, MessageNacked(message.sequence))
            else:
                self._retry_nacked(message)
        elif isinstance(error, MessageReturned):
            self._returned += 1
            self._drop(message, DropReason.RETURNED, error)
        elif is_rejection(error):
            assert isinstance(error, ChannelClosed)
            message.rejections += 1
            if message.rejections > self._client.config.publish_retries or self._closed:
                rejected = MessageRejected(
                    error.reply_code or 0, error.reply_text, message.exchange, message.routing_key
                )
                self._drop(message, DropReason.REJECTED, rejected)
            else:
                self._requeue(message)  # after the pause (Pauses.after_channel_closed)
        elif self._closed:
            self._drop(message, DropReason.CLOSED)
        else:
            self._requeue(message)  # no verdict
        self._notify_idle()

    def _wake_sender(self) -> None:
        """Wake the sender task if it is parked, waiting for messages."""
        if self._sender_idle:
            self._wakeup.unpark_all()

    def _requeue(self, message: Message) -> None:
        """Publish ``message`` again on the next channel, in order."""
        self._requeued.append(message)
        self._wake_sender()

    def _retry_nacked(self, message: Message) -> None:
        """Publish ``message`` again after a pause (see the module doc)."""
        self._retries += 1
        backoff = dataclasses.replace(self._nack_backoff, attempt=message.nacks - 1)
        delay = backoff.delay(self._rng)
        self._paused_until = max(self._paused_until, trio.current_time() + delay)
        self._renew_channel = True
        logger.info(
            "message %d to %r nacked (%d of %d retries); publishing it again in %.2f s",
            message.sequence,
            self.target,
            message.nacks,
            self._client.config.nack_retries,
            delay,
        )
        self._requeue(message)

    def _notify_idle(self) -> None:
        if self._idle_lot and not self._pending():
            self._idle_lot.unpark_all()

    # -- the sender task ------------------------------------------------------------------

    def _take_message(self) -> Buffered | None:
        """The next message to publish: re-publications first, in order."""
        if self._requeued:
            merged = sorted([*self._requeued, *self._retry], key=lambda m: m.sequence)
            self._requeued.clear()
            self._retry = deque(merged)
        if self._retry:
            return self._retry.popleft()
        try:
            return self._unbuffer_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None

    async def _open_channel(self) -> Channel:
        """A channel on the live connection, in confirm mode if needed;
        waits for the connection and backs off while the broker refuses."""
        backoff = self._client.config.backoff()
        while True:
            previous = self._channel
            if previous is not None:
                if previous.is_open:
                    return previous
                self._channel = None
                if isinstance(previous.error, ChannelClosed):
                    await self._pauses.after_channel_closed(previous.error)
            confirm_mode = self._confirm
            try:
                channel = await self._client.open_channel()
                if confirm_mode:
                    await channel.confirm_select()
            except ChannelClosed as exc:
                delay = backoff.delay(self._rng)
                logger.warning(
                    "producer %r cannot open a channel (%s); retrying in %.2f s",
                    self.target,
                    exc,
                    delay,
                )
                backoff = backoff.next()
                await trio.sleep(delay)
                continue
            except AMQPConnectionError:
                if self._client.finished:
                    # The client gave up or is closing: nothing to publish
                    # to; its close reports what is left.
                    await trio.sleep_forever()
                await trio.lowlevel.checkpoint()
                continue  # wait_connected inside open_channel waits for the next one
            if not confirm_mode:
                channel.on_return(self._on_return)
            self._channel = channel
            self._pauses.channel_opened(channel.connection)
            return channel

    async def run_sender(self) -> None:
        """Internal: the sender task.  It takes a message out of the buffer only when
        it can publish it at once, so while disconnected the buffer holds
        exactly ``buffer_size`` messages."""
        confirm = self._confirm
        while True:
            if self._closed:
                await trio.sleep_forever()  # the client's nursery ends us
            if self._paused_until > trio.current_time():
                await trio.sleep_until(self._paused_until)  # after a nack
                continue
            if self._renew_channel:
                self._renew_channel = False
                stale, self._channel = self._channel, None
                if stale is not None:
                    # The verdicts of what it published before the nack may be on their
                    # way (LavinMQ nacks at once, acks after an fsync): take them first,
                    # else those messages would be published again.
                    with trio.move_on_after(STALE_CONFIRMS_WAIT):
                        with contextlib.suppress(ChannelClosed, AMQPConnectionError):
                            await stale.wait_for_confirms()
                    await stale.aclose()  # what is still unconfirmed is requeued
            channel = await self._open_channel()
            connection = channel.connection
            if connection.blocked:
                await connection.wait_unblocked()  # a pause (see Pauses)
                continue
            if confirm and self._in_flight >= self.confirm_window:
                await self._window_lot.park()
                continue
            published = 0
            if not confirm:
                # FIRE_AND_FORGET: the burst (older than what the buffer
                # holds), then the buffer's messages in bursts; a burst that
                # cannot go now waits in _retry, published one by one below.
                while self._burst or (not self._retry and self._fill_burst()):
                    if not self._queue_burst(channel, kick=False):
                        break
                    published += 1
            try:
                # Publish as many as may go right now, without yielding: the
                # writer then sends them all with one system call.
                while not (confirm and self._in_flight >= self.confirm_window):
                    message = self._take_message()
                    if message is None:
                        break
                    try:
                        # Sent below, or by the writer woken on the way out.
                        confirmation = queue_on(channel, message, kick=False)
                    except BaseException:
                        # Not published: first in line for the next try.
                        self._retry.appendleft(as_message(message))
                        connection.sending.kick()
                        raise
                    published += 1
                    self._account(message, confirmation)
            except trio.WouldBlock:
                connection.sending.kick()
                await connection.sending.wait_for_room(connection.check_open)
                continue
            except (ChannelClosed, AMQPConnectionError):
                connection.sending.kick()
                # The next _open_channel() pauses if the broker meant "low disk".
                await trio.lowlevel.checkpoint()
                continue
            if published:
                if connection.sending.writes_directly:
                    # Send them from here when the writer is idle (else it
                    # is woken): one task hop less.
                    await connection.sending.flush()
                else:
                    # A write that waits (TLS, WebSocket) is the writer's:
                    # this task is idle again at once, so publishers keep
                    # taking messages into bursts meanwhile.
                    connection.sending.kick()
                if self._has_queued():
                    await trio.lowlevel.checkpoint()
                    continue
            if not confirm or self._in_flight < self.confirm_window:
                self._notify_idle()
                # Idle for who knows how long: do not keep the last message
                # alive (through its confirmation's callback) meanwhile.
                message = confirmation = None
                self._sender_idle = True
                try:
                    await self._wakeup.park()
                finally:
                    self._sender_idle = False

    def _account(self, message: Buffered, confirmation: Confirmation | None) -> None:
        self._published += 1
        if not isinstance(message, Message):
            return  # FIRE_AND_FORGET's Fields: published once, nobody waits for them
        message.attempts += 1
        if message.attempts > 1:
            self._republished += 1
        if confirmation is None:
            message.conclude()
            return
        self._in_flight += 1
        confirmation.callback = functools.partial(self._settled, message)

    def _on_return(self, returned: ReturnedMessage) -> None:
        """FIRE_AND_FORGET and ``mandatory``: the broker could not route a
        message that already counted as done; count it (no log line per
        message: the counter is the signal)."""
        self._returned += 1
        logger.debug(
            "producer %r: message returned unroutable: %d %s",
            self.target,
            returned.reply_code,
            returned.reply_text,
        )

    def give_up(self) -> None:
        """Internal: give up on everything still pending (the client is closing)."""
        self._closed = True
        republished = sorted([*self._requeued, *self._retry], key=lambda m: m.sequence)
        pending: list[Buffered] = [*republished, *self._burst]
        self._requeued.clear()
        self._retry.clear()
        self._burst.clear()
        self._burst_bytes = 0
        while True:
            try:
                pending.append(self._unbuffer_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        for message in pending:
            self._drop(message, DropReason.CLOSED)
        self._send.close()
        self._idle_lot.unpark_all()


async def _run_callback(result: Awaitable[None]) -> None:
    try:
        await result
    except Exception:
        logger.exception("async on_drop callback raised")
