"""What a producer takes and what can become of it: publish modes, buffer
policies, drop reasons, the :class:`Message` handed to ``on_drop``, the
producer's statistics and the errors its calls raise."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._client._channel import Channel
from .._client._delivery import BasicProperties, Confirmation
from .._client._reading import Signal
from .._exceptions import AMQPError, ChannelClosed, MessageNacked, PublishError
from .._sansio._errors import PRECONDITION_FAILED
from .._sansio._fieldtable import encode_shortstr
from .._sansio._properties import decode_properties, encode_properties
from .._sansio._publishing import EMPTY_PROPERTIES

if TYPE_CHECKING:
    from .._client._connection import Connection

#: The largest body a producer accepts, by default: RabbitMQ's own
#: max_message_size default.  Larger messages are refused at once.
DEFAULT_MAX_MESSAGE_SIZE: Final = 128 * 1024 * 1024

#: Messages published but not yet confirmed, at most (CONFIRM mode).
DEFAULT_CONFIRM_WINDOW: Final = 1_000


class PublishMode(enum.Enum):
    #: Done once handed to the connection: fastest, at-most-once.
    FIRE_AND_FORGET = "FIRE_AND_FORGET"
    #: Done once the broker confirmed: at-least-once.
    CONFIRM = "CONFIRM"


class BufferPolicy(enum.Enum):
    #: When full, evict the oldest buffered message (reported as EVICTED).
    DROP_OLDEST = "DROP_OLDEST"
    #: When full, refuse the new message (reported as BUFFER_FULL).
    DROP_NEWEST = "DROP_NEWEST"
    #: When full, raise :class:`BufferFull`.
    RAISE = "RAISE"
    #: When full, ``publish()`` waits for room; ``publish_nowait()`` raises
    #: :class:`trio.WouldBlock`.
    BLOCK = "BLOCK"


class DropReason(enum.Enum):
    #: Pushed out of a full buffer by a newer message (DROP_OLDEST).
    EVICTED = "EVICTED"
    #: Refused because the buffer was full (DROP_NEWEST).
    BUFFER_FULL = "BUFFER_FULL"
    #: The broker answered basic.nack.
    NACKED = "NACKED"
    #: ``mandatory`` and no queue was bound for it (basic.return).
    RETURNED = "RETURNED"
    #: Larger than the producer's ``max_message_size``.
    TOO_LARGE = "TOO_LARGE"
    #: The broker closed the publishing channel on it (e.g. 404: no such
    #: exchange) every time, ``Config.publish_retries`` times over.
    REJECTED = "REJECTED"
    #: Still buffered or unconfirmed when the producer or client closed.
    CLOSED = "CLOSED"


class BufferFull(PublishError):
    """The producer's buffer is full (BufferPolicy.RAISE)."""

    def __init__(self, queue: str, size: int) -> None:
        super().__init__(f"the producer buffer for {queue!r} is full ({size} messages)")


class MessageTooLarge(PublishError):
    """The body is larger than the producer's ``max_message_size``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message body of {size} bytes exceeds max_message_size {limit}")


class PublishTimeout(PublishError):
    """``publish()`` got no verdict in time (the message, if taken, stays in
    the producer and still gets its outcome)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"no confirm from the broker within {seconds} s")


class ProducerClosed(PublishError):
    """The producer (or its client) is closed; the message was not taken."""


@dataclass(slots=True, eq=False)
class Message:
    """A message handed to a producer, as passed to ``on_drop``."""

    body: bytes
    properties: BasicProperties | None
    exchange: str
    routing_key: str
    mandatory: bool
    #: Position in the producer's order (1, 2, ...).
    sequence: int
    #: ``properties`` (with the call's headers) as the content header
    #: carries them, encoded when the producer took the message.
    encoded_properties: bytes = EMPTY_PROPERTIES
    #: Publications so far (more than 1 after a re-publish).
    attempts: int = 0
    #: basic.nacks received for it (each one retried, up to
    #: ``Config.nack_retries``).
    nacks: int = 0
    #: Times the broker closed the publishing channel while it was in flight
    #: (each one retried, up to ``Config.publish_retries``).
    rejections: int = 0
    #: Set once the message has its verdict, if a ``publish()`` awaits it.
    _waiter: Signal | None = None
    #: The verdict, if it is a failure: what the awaiting ``publish()`` raises.
    _error: BaseException | None = None

    def await_verdict(self) -> None:
        """Internal: a ``publish()`` will wait for this message's verdict
        (:meth:`wait_for_verdict`)."""
        self._waiter = Signal()

    def conclude(self, error: BaseException | None = None) -> None:
        """Internal: the message's verdict (None: it was taken, else the
        error the awaiting ``publish()`` raises); wakes that ``publish()``.
        Only the first verdict counts."""
        waiter = self._waiter
        if waiter is not None and not waiter.is_set():
            self._error = error
            waiter.set()

    @property
    def awaited(self) -> bool:
        """Internal: a ``publish()`` waits for a verdict not given yet."""
        return self._waiter is not None and not self._waiter.is_set()

    async def wait_for_verdict(self, connection: Connection | None) -> None:
        """Internal: wait for :meth:`conclude` and raise its error, if any;
        through ``connection`` (which may read the verdict from the broker
        itself), else on the message alone."""
        waiter = self._waiter
        assert waiter is not None, "await_verdict() first"
        if connection is None:
            await waiter.wait()
        else:
            await connection.wait_for(waiter)
        if self._error is not None:
            raise self._error


#: A message as a FIRE_AND_FORGET producer holds it: body, exchange, routing
#: key, mandatory, sequence and encoded properties in a tuple.  Cheaper to
#: make than a Message, and with no object in it for the cyclic garbage
#: collector to walk again and again while it waits in the buffer (the
#: caller's BasicProperties are not kept: their bytes are).
#: :func:`as_message` makes the Message when one is needed (to report a
#: drop, to publish it again).  CONFIRM mode needs a Message per message.
Fields = tuple[bytes, str, str, bool, int, bytes]
#: What a producer's buffer holds.
Buffered = Message | Fields


def as_message(item: Buffered) -> Message:
    """``item`` as a :class:`Message`; a :data:`Fields`' properties are
    decoded from the bytes it would have been published with (what a
    consumer would have received)."""
    if isinstance(item, Message):
        return item
    body, exchange, routing_key, mandatory, sequence, encoded = item
    properties = (
        None if encoded is EMPTY_PROPERTIES else decode_properties(encoded, 0, len(encoded))
    )
    return Message(body, properties, exchange, routing_key, mandatory, sequence, encoded)


DropCallback = Callable[[Message, str, DropReason], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class ProducerStatistics:
    """A snapshot of :meth:`Producer.statistics`; the counts only grow.

    ``buffered`` and ``in_flight`` are the messages waiting and published but
    not confirmed.  ``returned`` counts unroutable ``mandatory`` messages: in
    CONFIRM mode they are also dropped (reason RETURNED); in FIRE_AND_FORGET
    mode they were already done, so only this count tells.
    """

    #: The producer's :attr:`Producer.target`.
    target: str
    buffered: int
    in_flight: int
    published: int
    republished: int
    confirmed: int
    #: Messages dropped because the broker nacked them (after the retries).
    nacked: int
    #: basic.nacks answered by publishing the message again.
    retries: int
    returned: int
    dropped: dict[DropReason, int]
    #: Why publishing is paused now (``connection.blocked``, or LavinMQ
    #: refusing publishes when low on disk); None while it is not.
    paused: str | None = None
    #: Pauses so far (see :class:`~trio_lavin.PublishingPaused`).
    pauses: int = 0


def encode_message(
    body: bytes | bytearray | memoryview,
    properties: BasicProperties | None,
    headers: dict[str, Any] | None,
    routing_key: str | None,
) -> tuple[bytes, bytes]:
    """A message's body as bytes and its properties encoded (with ``headers``
    standing in for ``properties.headers``), checked now with its
    ``routing_key`` (None: one checked before), so that what cannot be sent is
    refused by the call that hands it over, not by the sender task later; the
    bytes are kept for every (re)publication.

    Raises:
        TypeError, ValueError: the body, a property or the routing key
            cannot be sent; the message names it.
    """
    if not isinstance(body, bytes):
        if not isinstance(body, (bytearray, memoryview)):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        body = bytes(body)
    encoded = (
        EMPTY_PROPERTIES
        if properties is None and headers is None
        else encode_properties(properties, headers)
    )
    if routing_key is not None and not (
        type(routing_key) is str and routing_key.isascii() and len(routing_key) < 256
    ):
        encode_shortstr(routing_key, "routing key")
    return body, encoded


def with_headers(
    properties: BasicProperties | None, headers: dict[str, Any] | None
) -> BasicProperties | None:
    """``properties`` with ``headers`` standing in for its own (a copy)."""
    if headers is None:
        return properties
    if properties is None:
        return BasicProperties(headers=headers)
    return properties.replace(headers=headers)


def is_low_disk(error: BaseException | None) -> bool:
    """Is ``error`` LavinMQ refusing a publish because it is low on disk (406
    PRECONDITION_FAILED "Server low on disk space"), which waiting fixes?  A
    406 for anything else (RabbitMQ: an invalid ``expiration``, a wrong
    ``user_id``, a message over its size limit) is not."""
    return (
        isinstance(error, ChannelClosed)
        and error.reply_code == PRECONDITION_FAILED
        and "disk" in error.reply_text.lower()
    )


def is_rejection(error: BaseException | None) -> bool:
    """Did the broker close the publishing channel with an error that no
    amount of waiting fixes (not LavinMQ's low disk)?"""
    return (
        isinstance(error, ChannelClosed)
        and error.reply_code is not None
        and not is_low_disk(error)
    )


def drop_error(message: Message, reason: DropReason) -> AMQPError:
    """What a ``publish()`` waiting for ``message`` raises when it is dropped."""
    if reason is DropReason.NACKED:
        return MessageNacked(message.sequence)
    if reason is DropReason.CLOSED:
        return ProducerClosed("the client closed before the message was confirmed")
    return PublishError(f"message {message.sequence} was dropped: {reason.value}")


def queue_on(channel: Channel, message: Buffered, *, kick: bool) -> Confirmation | None:
    """Queue ``message`` for sending on ``channel``; ``kick``: wake the
    connection's writer to send it (else the caller sends it, or wakes the
    writer)."""
    if not isinstance(message, Message):
        body, exchange, routing_key, mandatory, _, properties = message
        return channel.queue_message(body, exchange, routing_key, properties, mandatory, kick=kick)
    return channel.queue_message(
        message.body,
        message.exchange,
        message.routing_key,
        message.encoded_properties,
        message.mandatory,
        kick=kick,
    )
