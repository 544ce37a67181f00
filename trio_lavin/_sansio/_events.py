"""Events: what :meth:`AMQPConnection.receive_data` reports.

Every event is a value object (a slotted dataclass compared by value).  They
are not frozen only because a frozen dataclass takes several times longer to
construct, and deliveries and confirms are made once per message: treat them
as read-only.  Replies the protocol makes by itself
(``CloseOk`` to a broker ``Close``, ``FlowOk``, ``CancelOk``, the handshake's
``StartOk``/``TuneOk``/``Open``) are already queued in ``data_to_send()`` when
the event is returned; the caller only has to flush.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pamqp import base

from ._properties import BasicProperties


@dataclass(slots=True)
class Event:
    """Base class of all events."""


# -- connection ---------------------------------------------------------------


@dataclass(slots=True)
class ConnectionOpened(Event):
    """The handshake finished: the connection is open with these tuned values.

    ``frame_max`` 0 and ``heartbeat`` 0 mean "no limit" and "no heartbeats".
    """

    server_properties: dict[str, Any] = field(compare=False)
    frame_max: int
    channel_max: int
    heartbeat: int


@dataclass(slots=True)
class BrokerClosedConnection(Event):
    """The broker closed the connection (``Connection.Close``); the
    ``CloseOk`` is queued.  ``reply_code`` says why, e.g. 320 CONNECTION_FORCED,
    403 ACCESS_REFUSED, 530 NOT_ALLOWED."""

    reply_code: int
    reply_text: str
    class_id: int = 0
    method_id: int = 0


@dataclass(slots=True)
class ConnectionCloseOk(Event):
    """The broker acknowledged the ``Connection.Close`` we sent."""


@dataclass(slots=True)
class ConnectionBlocked(Event):
    """The broker stopped accepting publishes (e.g. memory or disk alarm)."""

    reason: str


@dataclass(slots=True)
class ConnectionUnblocked(Event):
    """The broker accepts publishes again."""


# -- channels -----------------------------------------------------------------


@dataclass(slots=True)
class ChannelEvent(Event):
    """Base class of events about one channel."""

    channel: int


@dataclass(slots=True)
class ChannelOpened(ChannelEvent):
    """``Channel.OpenOk``: the channel is ready."""


@dataclass(slots=True)
class BrokerClosedChannel(ChannelEvent):
    """The broker closed the channel (a soft error such as 404 NOT_FOUND or
    406 PRECONDITION_FAILED); the ``CloseOk`` is queued and the channel number
    is free again."""

    reply_code: int
    reply_text: str
    class_id: int = 0
    method_id: int = 0


@dataclass(slots=True)
class ChannelCloseOk(ChannelEvent):
    """The broker acknowledged the ``Channel.Close`` we sent."""


@dataclass(slots=True)
class ContentTooLarge(ChannelEvent):
    """A message on the channel has a body larger than ``max_body_size``: the
    machine queued ``Channel.Close`` with ``reply_code`` 311
    (CONTENT_TOO_LARGE) and discards the message's body frames as they come
    (the broker requeues the message).  The channel is unusable from now on;
    :class:`ChannelCloseOk` follows when the broker confirms."""

    reply_code: int
    reply_text: str
    body_size: int


@dataclass(slots=True)
class ChannelFlow(ChannelEvent):
    """The broker asks us to pause (``active=False``) or resume publishing;
    the ``FlowOk`` is queued."""

    active: bool


@dataclass(slots=True)
class MethodReply(ChannelEvent):
    """The reply to a synchronous method we sent, e.g. ``Queue.DeclareOk``.

    Replies come back in the order the requests were sent; each request that
    expects a reply gets exactly one (or the channel closes).
    """

    method: base.Frame = field(compare=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MethodReply):
            return NotImplemented
        return (self.channel, self.method.name, dict(self.method)) == (
            other.channel,
            other.method.name,
            dict(other.method),
        )

    def __hash__(self) -> int:
        return hash((self.channel, self.method.name))


@dataclass(slots=True)
class BrokerCancelledConsumer(ChannelEvent):
    """The broker cancelled a consumer (``Basic.Cancel`` from the server,
    e.g. its queue was deleted).  A ``CancelOk`` is queued unless the broker
    asked for no reply."""

    consumer_tag: str


@dataclass(slots=True)
class DeliveryReceived(ChannelEvent):
    """A message pushed to a consumer (``Basic.Deliver`` + content)."""

    consumer_tag: str
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    #: None when the message carries no properties (the common case, decoded
    #: without making an empty :class:`BasicProperties`).
    properties: BasicProperties | None = field(compare=False)
    body: bytes


@dataclass(slots=True)
class GetReceived(ChannelEvent):
    """The answer to ``Basic.Get`` when the queue had a message
    (``Basic.GetOk`` + content).  An empty queue answers with a
    :class:`MethodReply` carrying ``Basic.GetEmpty``."""

    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    message_count: int
    properties: BasicProperties = field(compare=False)
    body: bytes


@dataclass(slots=True)
class ReturnedMessage(ChannelEvent):
    """A ``mandatory`` message the broker could not route (``Basic.Return``
    + content).  With publisher confirms on, the return arrives before the
    ack of the same message."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    properties: BasicProperties = field(compare=False)
    body: bytes


@dataclass(slots=True)
class PublishAcked(ChannelEvent):
    """Publisher confirm: the broker took responsibility for the message with
    this publish sequence number (and all before it, when ``multiple``)."""

    delivery_tag: int
    multiple: bool


@dataclass(slots=True)
class PublishNacked(ChannelEvent):
    """Publisher confirm: the broker could not take the message(s)."""

    delivery_tag: int
    multiple: bool
