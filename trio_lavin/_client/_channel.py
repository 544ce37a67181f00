"""Channels: the AMQP methods, publishing, consuming, confirms.

A :class:`Channel` belongs to one live :class:`~._connection.Connection` and is
single-use: once closed (by you, by the broker, or because the connection
died) it stays closed, and every call raises the reason.  Open a new one with
``await connection.channel()``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import trio
from pamqp import base, commands

from .._exceptions import (
    ChannelClosed,
    CommandRefused,
    ConnectionClosedByBroker,
    ConsumerCancelled,
)
from .._queues import unhonoured_queue_type
from .._sansio import _events as ev
from .._sansio._channel_state import ChannelState
from .._sansio._connection import AMQPConnection
from .._sansio._publishing import PublishFields
from ._confirms import Confirms
from ._consumer import DEFAULT_CONSUMER_BUFFER, Consumer
from ._counters import DeliveryCounters
from ._delivery import BasicProperties, Confirmation, Delivery
from ._requests import Waiter, names_request

if TYPE_CHECKING:
    from ._connection import Connection
    from ._sending import Sending

logger = logging.getLogger("trio_lavin.channel")

FieldTable = dict[str, Any]

#: How long closing a channel or cancelling a consumer waits for the broker.
CLOSE_TIMEOUT: Final = 5.0

_tag_counter = itertools.count(1)


@dataclass(frozen=True, slots=True)
class QueueDeclareOk:
    """The broker's answer to a queue declaration."""

    queue: str
    message_count: int
    consumer_count: int


class Channel:
    """An AMQP channel: declare topology, publish, consume, get, ack.

    Every method that waits for the broker is cancellation-safe: the request's
    frames are queued whole before the first checkpoint, and a reply that
    arrives after the caller was cancelled is consumed and discarded (a late
    ``ConsumeOk`` cancels the orphaned consumer), so the channel never gets
    out of step.

    Errors: :class:`ChannelClosed` when the broker closed the channel (with
    its reply code; the connection stays usable) or you did;
    :class:`CommandRefused` (a :class:`ChannelClosed`) for the call whose
    command the broker refused with a hard error, closing the whole
    connection (e.g. 540 for a ``basic_qos`` with a ``prefetch_size``);
    :class:`ConnectionLost` / :class:`ConnectionClosed` when the connection
    ended.
    """

    def __init__(self, connection: Connection, number: int, amqp: AMQPConnection) -> None:
        """Made by :meth:`Connection.channel` (``amqp`` is its sans-IO machine)."""
        self.connection = connection
        self.number = number
        #: The connection's sending side (see :mod:`._sending`).
        self.sending = connection.sending
        self._amqp = amqp
        self._waiters: deque[Waiter] = deque()
        self._error: BaseException | None = None
        self._closed = trio.Event()
        self._consumers: dict[str, Consumer] = {}
        #: Tags of consumers started with no_ack: their deliveries are never acked.
        self._no_ack_tags: set[str] = set()
        self.prefetch_count = 0
        #: False while the broker asked us to pause publishing (Channel.Flow).
        self.flow_active = True
        self._confirming = False
        self._confirms = Confirms()
        self._return_handler: Callable[[ev.ReturnedMessage], None] | None = None
        #: Acks/nacks/rejects sent (a recovering consumer shares its own).
        self.counters = DeliveryCounters()
        #: The delivery tag of the latest delivery (tags count up from 1).
        self._last_tag = 0
        #: Every delivery up to this tag was settled by a ``multiple`` ack/nack.
        self.settled_up_to = 0
        #: Told ``(tag, multiple)`` of every ack, nack and reject the application sends.
        self.settle_listener: Callable[[int, bool], None] | None = None

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Channel {self.number} {state}>"

    # -- state ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._error is None

    @property
    def error(self) -> BaseException | None:
        """Why the channel is closed, or None while it is open."""
        return self._error

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error

    def _set_closed(self, error: BaseException, *, refused: bool = False) -> None:
        """The channel is gone: fail everything waiting on it (``refused``:
        the broker closed the connection over our oldest request, which gets
        a :class:`CommandRefused`)."""
        if self._error is not None:
            return
        self._error = error
        self._closed.set()
        waiters, self._waiters = self._waiters, deque()
        if refused and waiters:
            # The broker refused our oldest request outright: that call gets
            # the refusal (and is not repeated); the others, the loss.
            assert isinstance(error, ConnectionClosedByBroker)
            waiters.popleft().resolve(error=CommandRefused.from_close(error))
        for waiter in waiters:
            waiter.resolve(error=error)
        for consumer in list(self._consumers.values()):
            consumer.finish(error)
        self._consumers.clear()
        self._confirms.fail_all(error)

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the channel (``channel.close``), waiting up to 5 s for the
        broker.  Idempotent; never raises for a channel that is already
        gone.  Unacked deliveries go back to their queues."""
        if self._error is not None:
            return
        if self.connection.is_open and self._amqp.channel_state(self.number) is ChannelState.OPEN:
            self._amqp.close_channel(self.number)
            self.sending.kick()
        self._set_closed(ChannelClosed(f"channel {self.number} was closed by this side"))
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = True
            await self.connection.wait_channel_released(self.number)

    # -- requests ----------------------------------------------------------------

    async def _call(
        self, method: base.Frame, on_late_reply: Callable[[Any], None] | None = None
    ) -> Any:
        self._check_open()
        self.connection.check_open()
        expects_reply = self._amqp.send_method(self.number, method)
        if not expects_reply:
            self.sending.kick()
            return None
        waiter = Waiter(method.index, on_late_reply)
        self._waiters.append(waiter)
        # Sends the request from this task (or wakes the writer to send it).
        await self.sending.flush()
        return await self._wait(waiter)

    async def _wait(self, waiter: Waiter) -> Any:
        try:
            await self.connection.wait_for(waiter.signal)
        except BaseException:
            waiter.abandoned = True
            if waiter.signal.is_set() and waiter.error is None and waiter.on_late_reply:
                waiter.on_late_reply(waiter.value)
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    def _send_nowait(self, method: base.Frame) -> bool:
        """Queue a method that has no reply; False if the channel is gone."""
        if self._error is not None or not self.connection.is_open:
            return False
        self._amqp.send_method(self.number, method)
        self.sending.kick()
        return True

    # exchanges

    async def exchange_declare(
        self,
        exchange: str,
        exchange_type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: FieldTable | None = None,
    ) -> None:
        """Declare an exchange (create it unless it exists with the same
        settings; a different type or arguments closes the channel with 406)."""
        await self._call(
            commands.Exchange.Declare(
                exchange=exchange,
                exchange_type=exchange_type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            )
        )

    async def exchange_delete(self, exchange: str, *, if_unused: bool = False) -> None:
        await self._call(commands.Exchange.Delete(exchange=exchange, if_unused=if_unused))

    async def exchange_bind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: FieldTable | None = None,
    ) -> None:
        await self._call(
            commands.Exchange.Bind(
                destination=destination,
                source=source,
                routing_key=routing_key,
                arguments=arguments,
            )
        )

    async def exchange_unbind(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        *,
        arguments: FieldTable | None = None,
    ) -> None:
        await self._call(
            commands.Exchange.Unbind(
                destination=destination,
                source=source,
                routing_key=routing_key,
                arguments=arguments,
            )
        )

    # queues

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: FieldTable | None = None,
    ) -> QueueDeclareOk:
        """Declare a queue; an empty name asks the broker to make one up
        (read it from the result).  Redeclaring with other settings closes
        the channel with 406 PRECONDITION_FAILED.  Asking a LavinMQ that
        lacks it for a quorum or stream queue (``x-queue-type``) logs a
        WARNING: LavinMQ declares a classic queue instead."""
        if warning := unhonoured_queue_type(self.connection.server_properties, queue, arguments):
            logger.warning("%s", warning)
        reply = await self._call(
            commands.Queue.Declare(
                queue=queue,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        )
        return QueueDeclareOk(reply.queue, reply.message_count, reply.consumer_count)

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: FieldTable | None = None,
    ) -> None:
        await self._call(
            commands.Queue.Bind(
                queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
            )
        )

    async def queue_unbind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: FieldTable | None = None,
    ) -> None:
        await self._call(
            commands.Queue.Unbind(
                queue=queue, exchange=exchange, routing_key=routing_key, arguments=arguments
            )
        )

    async def queue_purge(self, queue: str) -> int:
        """Remove all ready messages; returns how many."""
        reply = await self._call(commands.Queue.Purge(queue=queue))
        return int(reply.message_count)

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns the number of messages deleted with it."""
        reply = await self._call(
            commands.Queue.Delete(queue=queue, if_unused=if_unused, if_empty=if_empty)
        )
        return int(reply.message_count)

    # basic

    async def basic_qos(
        self, prefetch_count: int = 0, *, prefetch_size: int = 0, global_: bool = False
    ) -> None:
        """Limit unacked deliveries (``prefetch_count``; 0 = no limit) for
        consumers started after this call on this channel."""
        if not 0 <= prefetch_count <= 65_535:
            raise ValueError(f"prefetch_count must be in 0..65535, not {prefetch_count!r}")
        await self._call(
            commands.Basic.Qos(
                prefetch_size=prefetch_size, prefetch_count=prefetch_count, global_=global_
            )
        )
        self.prefetch_count = prefetch_count

    async def confirm_select(self) -> None:
        """Turn on publisher confirms: from now on :meth:`basic_publish`
        returns a :class:`Confirmation` for each message."""
        if self._confirming:
            return
        await self._call(commands.Confirm.Select())
        self._confirming = True

    @property
    def confirming(self) -> bool:
        return self._confirming

    async def basic_publish(
        self,
        body: bytes | bytearray | memoryview,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> Confirmation | None:
        """Publish a message.

        Waits only while the connection's send buffer is full (backpressure).
        In confirm mode it returns the message's :class:`Confirmation`
        (``await`` its ``wait()`` for the verdict; publishes can be pipelined
        this way), else ``None``.  Use :meth:`publish` to publish and wait for
        the confirm in one call.

        Cancellation: if cancelled, the message was not published.  Once this
        returns, the message is queued whole for sending.

        Raises:
            ChannelClosed, ConnectionLost, ConnectionClosed: see the class doc.
            ValueError: exchange or routing key longer than 255 bytes, or a
                property that cannot be encoded.
        """
        self._check_open()
        await self.sending.wait_for_room(self.connection.check_open)
        return self.queue_message(body, exchange, routing_key, properties, mandatory, kick=True)

    def basic_publish_nowait(
        self,
        body: bytes | bytearray | memoryview,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> Confirmation | None:
        """:meth:`basic_publish` without waiting: queue the message now.

        Raises:
            trio.WouldBlock: the connection's send buffer is full; wait with
                :meth:`basic_publish` instead.
            Others: as :meth:`basic_publish`.
        """
        return self.queue_message(body, exchange, routing_key, properties, mandatory, kick=True)

    def queue_message(
        self,
        body: bytes | bytearray | memoryview,
        exchange: str,
        routing_key: str,
        properties: BasicProperties | bytes | None,
        mandatory: bool,
        *,
        kick: bool,
    ) -> Confirmation | None:
        """Internal: queue a message; wake the writer to send it if ``kick``,
        else the caller sends it (``Sending.flush``).  ``properties`` may be
        the bytes ``encode_properties`` made of them."""
        if type(body) is not bytes:
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        sending = self._room_to_queue()
        tag = self._amqp.publish(self.number, body, exchange, routing_key, properties, mandatory)
        sending.spend(len(body))
        if kick:
            sending.kick()
        if not tag:
            return None
        confirmation = Confirmation(tag, exchange, routing_key, body, mandatory, self.connection)
        self._confirms.add(confirmation)
        return confirmation

    def _room_to_queue(self) -> Sending:
        """The connection's sending side, when the channel and the connection
        are open and the send budget takes more.

        Raises:
            ChannelClosed, AMQPConnectionError: the channel or the connection
                is not open.
            trio.WouldBlock: the send budget is full.
        """
        if self._error is not None:
            raise self._error
        connection = self.connection
        connection.check_open()
        sending = connection.sending
        if sending.full:
            raise trio.WouldBlock
        return sending

    def queue_messages(self, messages: Sequence[PublishFields], *, kick: bool) -> None:
        """Internal: queue several messages at once, in order, on a channel
        not in confirm mode, each a :data:`PublishFields` whose routing key and
        exchange were checked.  The checks of the channel, the connection and
        the send budget are made once for them all, so either all are queued
        or none is.  ``kick``: as for :meth:`queue_message`.

        Raises:
            trio.WouldBlock: the connection's send budget is full.
            ChannelClosed, AMQPConnectionError: the channel or the connection
                is not open.
            LocalProtocolError: the channel is in confirm mode.
        """
        sending = self._room_to_queue()
        self._amqp.publish_many(self.number, messages)
        sending.spend(sum([len(message[0]) for message in messages]), len(messages))
        if kick:
            sending.kick()

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str = "",
        routing_key: str = "",
        properties: BasicProperties | None = None,
        mandatory: bool = False,
    ) -> None:
        """Publish and, in confirm mode, wait until the broker confirmed.

        Raises:
            MessageNacked: the broker nacked it.
            MessageReturned: ``mandatory`` and unroutable.
            ChannelClosed, ConnectionLost, ConnectionClosed: the channel or
                connection ended first (the outcome is then unknown).
        """
        self._check_open()
        connection = self.connection
        await connection.sending.wait_for_room(connection.check_open)
        confirmation = self.queue_message(
            body, exchange, routing_key, properties, mandatory, kick=False
        )
        # Sends the message from this task (or wakes the writer to send it):
        # the writer need not wake up only to find nothing left to send.
        await connection.sending.flush()
        if confirmation is not None:
            await confirmation.wait()

    async def wait_for_confirms(self) -> None:
        """Wait until every message published so far has its verdict (acks,
        nacks and returns are not raised here; read them from each
        :class:`Confirmation`).  Raises the channel's error if it closes."""
        while (last := self._confirms.last()) is not None:
            await last.wait_settled()
        self._check_open()

    def on_return(self, handler: Callable[[ev.ReturnedMessage], None] | None) -> None:
        """Call ``handler(returned)`` for each unroutable ``mandatory``
        message when the channel is not in confirm mode (in confirm mode the
        return is raised from the message's :class:`Confirmation`)."""
        self._return_handler = handler

    async def basic_get(self, queue: str, *, no_ack: bool = False) -> Delivery | None:
        """Fetch one message, or ``None`` if the queue is empty."""
        reply = await self._call(commands.Basic.Get(queue=queue, no_ack=no_ack))
        if not isinstance(reply, Delivery):
            return None
        if no_ack:
            reply.settle_unacked()  # the broker counts it acked
        return reply

    async def basic_consume(
        self,
        queue: str,
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        consumer_tag: str | None = None,
        arguments: FieldTable | None = None,
        buffer_size: int | None = None,
    ) -> Consumer:
        """Start a consumer; iterate the returned :class:`Consumer`.

        Deliveries wait in a bounded buffer of ``buffer_size`` (default: the
        channel's prefetch count, or 1000 without one).  When a delivery
        comes beyond it (kept, with the rest of that read) the connection
        stops reading until the consumer catches up, so set a prefetch
        (``basic_qos``) to keep other channels flowing.
        """
        tag = (
            consumer_tag or f"trio-lavin.{self.number}.{next(_tag_counter)}.{secrets.token_hex(4)}"
        )
        if tag in self._consumers:
            raise ValueError(f"consumer tag {tag!r} is already in use on this channel")
        capacity = buffer_size or self.prefetch_count or DEFAULT_CONSUMER_BUFFER
        if capacity < 1:
            raise ValueError(f"buffer_size must be >= 1, not {capacity!r}")
        consumer = Consumer(self, queue, tag, capacity, no_ack)
        self._consumers[tag] = consumer
        # Deliveries under this tag that nobody takes are given back unless
        # the broker counts them acked (also the late ones of an earlier
        # no_ack consumer with the tag: they come before this one's).
        if no_ack:
            self._no_ack_tags.add(tag)
        else:
            self._no_ack_tags.discard(tag)

        def cancel_orphan(_reply: Any) -> None:
            # The caller was cancelled after the broker accepted the consumer.
            self._consumers.pop(tag, None)
            consumer.finish(None)
            self._send_nowait(commands.Basic.Cancel(consumer_tag=tag, nowait=True))

        try:
            await self._call(
                commands.Basic.Consume(
                    queue=queue,
                    consumer_tag=tag,
                    no_ack=no_ack,
                    exclusive=exclusive,
                    arguments=arguments,
                ),
                on_late_reply=cancel_orphan,
            )
        except BaseException:
            if tag in self._consumers and self._error is not None:
                self._consumers.pop(tag, None)
            raise
        return consumer

    async def basic_cancel(self, consumer_tag: str) -> None:
        """Cancel a consumer; its iteration ends after the deliveries already
        received."""
        await self._call(commands.Basic.Cancel(consumer_tag=consumer_tag))
        consumer = self._consumers.pop(consumer_tag, None)
        if consumer is not None:
            consumer.finish(None)

    async def basic_ack(self, delivery_tag: int, *, multiple: bool = False) -> bool:
        """Ack a delivery of this channel; False (nothing sent) if the channel
        is gone.  It queues the frame without waiting (the writer sends it
        with the next batch), so it is cheap enough to call per message.

        Raises:
            ValueError: no delivery with that tag came on this channel (the
                broker would close the channel with 406 over it); nothing is
                sent.  With ``multiple``, tag 0 means every unacked delivery.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None or not self.connection.is_open:
            self.counters.stale_acks += 1
            return False
        self._check_tag(delivery_tag, multiple)
        self._amqp.acknowledge(self.number, delivery_tag, multiple=multiple)
        self.sending.kick()
        self.counters.acked += 1
        return True

    async def basic_nack(
        self, delivery_tag: int, *, requeue: bool = True, multiple: bool = False
    ) -> bool:
        """Reject one delivery (``multiple``: and every earlier unacked one);
        False (nothing sent) if the channel is gone.  Raises as
        :meth:`basic_ack`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is not None or not self.connection.is_open:
            self.counters.stale_acks += 1
            return False
        self._check_tag(delivery_tag, multiple)
        self._amqp.acknowledge(self.number, delivery_tag, multiple=multiple, requeue=requeue)
        self.sending.kick()
        self.counters.nacked += 1
        return True

    async def basic_reject(self, delivery_tag: int, *, requeue: bool = True) -> bool:
        """Reject one delivery; False (nothing sent) if the channel is gone.
        Raises as :meth:`basic_ack`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._error is None and self.connection.is_open:
            self._check_tag(delivery_tag, False)
        return self._reject_nowait(delivery_tag, requeue=requeue)

    def _check_tag(self, delivery_tag: int, multiple: bool) -> None:
        """Refuse a tag that no delivery on this channel had, and note the
        deliveries a ``multiple`` settles."""
        if not (0 if multiple else 1) <= delivery_tag <= self._last_tag:
            latest = f"the latest is {self._last_tag}" if self._last_tag else "none came yet"
            raise ValueError(
                f"delivery tag {delivery_tag!r} is not one of the deliveries on channel "
                f"{self.number} ({latest})"
            )
        if multiple:
            delivery_tag = delivery_tag or self._last_tag
            self.settled_up_to = max(self.settled_up_to, delivery_tag)
        if self.settle_listener is not None:
            self.settle_listener(delivery_tag, multiple)

    def give_back_nowait(self, delivery_tag: int) -> bool:
        """Internal: return a delivery the application never got to the broker
        (``Basic.Reject`` with requeue), for another consumer; False if the
        channel is gone (the broker requeues it anyway).  Not counted as the
        application's reject."""
        return self._send_nowait(commands.Basic.Reject(delivery_tag=delivery_tag, requeue=True))

    def _reject_nowait(self, delivery_tag: int, *, requeue: bool = True) -> bool:
        sent = self._send_nowait(commands.Basic.Reject(delivery_tag=delivery_tag, requeue=requeue))
        if sent:
            self.counters.rejected += 1
        else:
            self.counters.stale_acks += 1
        return sent

    async def basic_recover(self, *, requeue: bool = True) -> None:
        """Redeliver all unacked messages of this channel."""
        await self._call(commands.Basic.Recover(requeue=requeue))

    async def tx_select(self) -> None:
        await self._call(commands.Tx.Select())

    async def tx_commit(self) -> None:
        await self._call(commands.Tx.Commit())

    async def tx_rollback(self) -> None:
        await self._call(commands.Tx.Rollback())

    # -- what the connection hands over ------------------------------------------------

    async def wait_opened(self) -> None:
        """Internal: wait for the broker's ``Channel.OpenOk`` to the
        ``Channel.Open`` the connection queued."""

        def close_orphan(_value: Any) -> None:
            # The caller was cancelled after the broker opened the channel.
            if self.is_open and self.connection.is_open:
                self._amqp.close_channel(self.number)
                self.sending.kick()
                self._set_closed(ChannelClosed("channel open was cancelled"))

        waiter = Waiter(commands.Channel.Open.index, close_orphan)
        self._waiters.append(waiter)
        await self._wait(waiter)

    def handle_event(self, event: ev.ChannelEvent) -> bool:
        """Internal: apply an event the connection's dispatch routed to this
        channel (see ``_EVENT_HANDLERS``); True when the channel is gone
        and its number free."""
        handler = self._EVENT_HANDLERS.get(type(event))
        return False if handler is None else handler(self, event)

    def deliver(self, event: ev.DeliveryReceived) -> Consumer | None:
        """Internal: hand a delivery to its consumer; the consumer if it is
        now beyond its buffer (the connection then reads no more until it
        has room).  A delivery nobody takes (its consumer was cancelled on
        our side while the broker was still sending, or stopped iterating)
        goes back to the broker, unless the broker counts it acked."""
        consumer = self._consumers.get(event.consumer_tag)
        if consumer is not None:
            delivery = self._make_delivery(event, event.consumer_tag, no_ack=consumer.no_ack)
            if consumer.put(delivery):
                return consumer if consumer.overfull else None
        if event.consumer_tag not in self._no_ack_tags:
            self._reject_nowait(event.delivery_tag)
        return None

    def discard_deliveries(self) -> None:
        """Internal: the connection is closing: consumers drop what comes."""
        for consumer in self._consumers.values():
            consumer.discard()

    def end(self, error: BaseException, *, refused: bool = False) -> None:
        """Internal: the connection ended with ``error``: fail everything
        waiting on the channel (``refused``: see :meth:`waits_first_for`)."""
        self._set_closed(error, refused=refused)

    def waits_first_for(self, error: ConnectionClosedByBroker) -> bool:
        """Internal: is the command the broker names in ``error`` (closing
        the connection over it) our oldest request still waiting?  Replies
        come in request order, so only that one can be it."""
        return bool(self._waiters) and names_request(error, self._waiters[0].request)

    def _on_method_reply(self, event: ev.MethodReply | ev.ChannelOpened) -> bool:
        self._on_reply(getattr(event, "method", None))
        return False

    def _on_get(self, event: ev.GetReceived) -> bool:
        self._on_reply(self._make_delivery(event))
        return False

    def _on_confirm(self, event: ev.PublishAcked | ev.PublishNacked) -> bool:
        self._confirms.settle(event.delivery_tag, event.multiple, type(event) is ev.PublishAcked)
        return False

    def _on_returned(self, event: ev.ReturnedMessage) -> bool:
        if self._confirming and self._confirms.returned(event):
            return False  # raised from the message's Confirmation
        if self._return_handler is not None:
            self._return_handler(event)
        else:
            logger.warning(
                "channel %d: message to exchange %r with routing key %r returned: %d %s",
                self.number,
                event.exchange,
                event.routing_key,
                event.reply_code,
                event.reply_text,
            )
        return False

    def _on_cancelled(self, event: ev.BrokerCancelledConsumer) -> bool:
        consumer = self._consumers.pop(event.consumer_tag, None)
        if consumer is not None:
            consumer.finish(ConsumerCancelled(event.consumer_tag))
        return False

    def _on_flow(self, event: ev.ChannelFlow) -> bool:
        self.flow_active = event.active
        return False

    def _on_closed_by_broker(self, event: ev.BrokerClosedChannel) -> bool:
        # DEBUG: whoever used the channel gets the error and says so.
        logger.debug(
            "broker closed channel %d: %d %s", self.number, event.reply_code, event.reply_text
        )
        self._set_closed(ChannelClosed(event.reply_text, event.reply_code))
        return True  # the machine queued the CloseOk: the number is free

    def _on_too_large(self, event: ev.ContentTooLarge) -> bool:
        # The machine is closing the channel; the number stays taken until
        # the broker's CloseOk.
        logger.warning("refused a message on channel %d: %s", self.number, event.reply_text)
        self._set_closed(ChannelClosed(event.reply_text, event.reply_code))
        return False

    def _on_close_ok(self, event: ev.ChannelCloseOk) -> bool:
        self._set_closed(ChannelClosed(f"channel {self.number} was closed"))
        return True

    #: What a channel does with each event the connection routes to it; the
    #: handler returns True when the channel is gone.  Deliveries take the
    #: faster path of :meth:`deliver`.
    _EVENT_HANDLERS: Final[dict[type[ev.Event], Callable[[Channel, Any], bool]]] = {
        ev.MethodReply: _on_method_reply,
        ev.ChannelOpened: _on_method_reply,
        ev.GetReceived: _on_get,
        ev.PublishAcked: _on_confirm,
        ev.PublishNacked: _on_confirm,
        ev.ReturnedMessage: _on_returned,
        ev.BrokerCancelledConsumer: _on_cancelled,
        ev.ChannelFlow: _on_flow,
        ev.BrokerClosedChannel: _on_closed_by_broker,
        ev.ContentTooLarge: _on_too_large,
        ev.ChannelCloseOk: _on_close_ok,
    }

    def _on_reply(self, value: Any) -> None:
        if self._waiters:
            self._waiters.popleft().resolve(value)

    def _make_delivery(
        self,
        event: ev.DeliveryReceived | ev.GetReceived,
        consumer_tag: str | None = None,
        *,
        no_ack: bool = False,
    ) -> Delivery:
        self._last_tag = event.delivery_tag
        return Delivery(
            event.body,
            event.properties,
            event.delivery_tag,
            event.redelivered,
            event.exchange,
            event.routing_key,
            self,
            consumer_tag,
            event.message_count if isinstance(event, ev.GetReceived) else None,
            no_ack,
        )
