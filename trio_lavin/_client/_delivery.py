"""What a consumer or ``basic_get`` receives (:class:`Delivery`) and what a
publish in confirm mode gets back (:class:`Confirmation`): the per-message
value objects of a channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .._exceptions import DeliveryAlreadySettled, MessageReturned
from .._sansio._properties import BasicProperties
from ._reading import Signal

if TYPE_CHECKING:
    from ._channel import Channel
    from ._connection import Connection

__all__ = ["BasicProperties", "Confirmation", "Delivery"]


class Delivery:
    """A message received by a consumer or ``basic_get``.

    ``ack``/``nack``/``reject`` return False, and send nothing, when the channel
    the message came on is no longer open: its delivery tag means nothing on
    any other channel, and sending it would make the broker close that
    channel with 406 PRECONDITION_FAILED.  The broker redelivers such a
    message (with ``redelivered=True``) by itself.  Settling a delivery a
    second time (or one already settled by a ``multiple`` ack of a later one)
    raises :class:`DeliveryAlreadySettled` and sends nothing, for the same
    reason.

    Attributes (treat them as read-only; the class is not a frozen dataclass
    because one is made per message, and a frozen one takes several times
    longer to make):

    - ``body``: the message body, whole.
    - ``delivery_tag``: the broker's number for it on ``channel``.
    - ``redelivered``: the broker delivered it before (to us or another consumer).
    - ``exchange``, ``routing_key``: where it was published.
    - ``channel``: the :class:`Channel` it came on (acks go there).
    - ``consumer_tag``: the consumer it was delivered to (None for ``basic_get``).
    - ``message_count``: for ``basic_get``, messages left in the queue.
    """

    __slots__ = (
        "_properties",
        "_requeued",
        "_settled",
        "body",
        "channel",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        body: bytes,
        properties: BasicProperties | None,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        channel: Channel,
        consumer_tag: str | None = None,
        message_count: int | None = None,
        settled: bool = False,
    ) -> None:
        self.body = body
        self._properties = properties
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.channel = channel
        self.consumer_tag = consumer_tag
        self.message_count = message_count
        #: Settled already: acked, nacked or rejected, or taken with no_ack.
        self._settled = settled
        #: A nack or reject with requeue was asked for.
        self._requeued = False

    @property
    def properties(self) -> BasicProperties:
        """The message's properties; for a message that has none, an empty
        :class:`BasicProperties` made on first access."""
        properties = self._properties
        if properties is None:
            properties = self._properties = BasicProperties()
        return properties

    @property
    def stream_offset(self) -> int | None:
        """For a delivery from a stream queue, its offset in the stream (the
        ``x-stream-offset`` header the broker adds); else None."""
        properties = self._properties
        headers = None if properties is None else properties.headers
        offset = None if headers is None else headers.get("x-stream-offset")
        return offset if type(offset) is int else None

    def __repr__(self) -> str:
        return (
            f"<Delivery {self.delivery_tag} on channel {self.channel.number} from "
            f"exchange {self.exchange!r} with routing key {self.routing_key!r}, "
            f"{len(self.body)} bytes{', redelivered' if self.redelivered else ''}>"
        )

    async def ack(self, *, multiple: bool = False) -> bool:
        """Acknowledge (``multiple``: and every earlier unacked delivery on
        the channel).  False if the channel is gone; see the class doc.

        Raises:
            DeliveryAlreadySettled: it was acked, nacked or rejected before
                (and its channel is still open).

        Cancellation: a cancelled call sent nothing, and the delivery is
        still unsettled.
        """
        self._check_unsettled()
        return self._settled_if(await self.channel.basic_ack(self.delivery_tag, multiple=multiple))

    async def nack(self, *, requeue: bool = True, multiple: bool = False) -> bool:
        """Reject, with ``requeue`` (default) or dead-lettering/discarding.
        Returns and raises as :meth:`ack`."""
        self._check_unsettled()
        sent = await self.channel.basic_nack(self.delivery_tag, requeue=requeue, multiple=multiple)
        self._requeued = requeue
        return self._settled_if(sent)

    async def reject(self, *, requeue: bool = True) -> bool:
        """Reject this one delivery.  Returns and raises as :meth:`ack`."""
        self._check_unsettled()
        sent = await self.channel.basic_reject(self.delivery_tag, requeue=requeue)
        self._requeued = requeue
        return self._settled_if(sent)

    @property
    def settled(self) -> bool:
        """True once it was acked, nacked or rejected (by itself, or by a
        ``multiple`` ack or nack of a later delivery on its channel), and for
        a message received with ``no_ack`` (the broker counts it acked)."""
        return self._settled or self.delivery_tag <= self.channel.settled_up_to

    @property
    def requeued(self) -> bool:
        """True once :meth:`nack` or :meth:`reject` with ``requeue`` returned:
        the message comes back (from the queue, or, if the channel was gone,
        as the broker's redelivery)."""
        return self._requeued

    def _check_unsettled(self) -> None:
        channel = self.channel
        if not (channel.is_open and channel.connection.is_open):
            return  # nothing will be sent: the ack returns False
        if self.settled:
            raise DeliveryAlreadySettled(self.delivery_tag, channel.number)

    def settle_unacked(self) -> None:
        """Internal: the broker counts this delivery acked (taken with
        ``no_ack``): there is nothing to settle."""
        self._settled = True

    def _settled_if(self, sent: bool) -> bool:
        """Mark it settled once its ack (nack, reject) was queued."""
        if sent:
            self._settled = True
        return sent


class Confirmation:
    """The broker's verdict on one message published in confirm mode.

    ``await confirmation.wait()`` returns when the broker acked the message and
    raises :class:`MessageNacked`, :class:`MessageReturned` (a ``mandatory``
    message nobody could take) or the error that closed the channel or
    connection first (then the outcome is unknown).
    """

    __slots__ = (
        "_connection",
        "_error",
        "_signal",
        "body",
        "callback",
        "delivery_tag",
        "exchange",
        "mandatory",
        "returned",
        "routing_key",
    )

    def __init__(
        self,
        delivery_tag: int,
        exchange: str,
        routing_key: str,
        body: bytes,
        mandatory: bool,
        connection: Connection | None = None,
    ) -> None:
        self.delivery_tag = delivery_tag
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.mandatory = mandatory
        self.returned: MessageReturned | None = None
        #: Called once with the outcome (None for an ack, else the error)
        #: when the verdict arrives; it must not block or raise.
        self.callback: Callable[[BaseException | None], None] | None = None
        self._signal = Signal()
        self._error: BaseException | None = None
        #: The connection the verdict comes on (None once it came).
        self._connection = connection

    @property
    def done(self) -> bool:
        return self._signal.is_set()

    @property
    def acked(self) -> bool:
        """True once the broker acked the message (and it was not returned)."""
        return self._signal.is_set() and self._error is None

    def resolve(self, error: BaseException | None) -> None:
        """Internal: the verdict (None: acked), from the channel."""
        if not self._signal.is_set():
            self._error = error
            self._connection = None
            self._signal.set()
            if self.callback is not None:
                self.callback(error)

    async def wait_settled(self) -> None:
        """Wait for the verdict without raising it."""
        await self._signal.wait()

    async def wait(self) -> None:
        """Wait for the broker's verdict; see the class doc.  Cancelling the
        wait changes nothing about the message."""
        connection = self._connection
        if connection is None:
            await self._signal.wait()
        else:
            await connection.wait_for(self._signal)
        if self._error is not None:
            raise self._error
