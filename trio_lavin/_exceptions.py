"""The exceptions trio-lavin raises to its users.

In trio's vocabulary, *closed* means you closed it and *lost* (broken) means it
happened to you: :class:`ConnectionClosed` is raised when you use a connection
you closed; :class:`ConnectionLost` when the network or the broker ended it.

Protocol violations detected on the wire are the sans-IO layer's
:class:`~trio_lavin._sansio.ProtocolError` family; the connection they broke
then raises :class:`ConnectionLost` with that error as ``__cause__``.

No message ever contains a password.
"""

from __future__ import annotations

from ._sansio._errors import (
    ACCESS_REFUSED,
    CONNECTION_FORCED,
    NOT_ALLOWED,
    command_name,
    reply_name,
)


class AMQPError(Exception):
    """Base class of every trio-lavin error."""


class AMQPConnectionError(AMQPError):
    """The connection is not usable.

    Attributes:
        reply_code: the AMQP reply code when the broker gave one (e.g. 320
            CONNECTION_FORCED, 403 ACCESS_REFUSED), else ``None``.
        reply_text: the broker's reply text, or a description.
    """

    def __init__(self, reply_text: str, reply_code: int | None = None) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(reply_text)

    def __str__(self) -> str:
        if self.reply_code is None:
            return self.reply_text
        return f"{self.reply_code} {reply_name(self.reply_code)}: {self.reply_text}"


class ConnectionLost(AMQPConnectionError):
    """The network or the broker ended the connection: EOF, a reset, a
    heartbeat timeout, a protocol error, or a ``Connection.Close`` from the
    broker (then :attr:`reply_code` is set).  Transient unless the code says
    otherwise; see :attr:`fatal`."""

    @property
    def fatal(self) -> bool:
        """True when retrying cannot help: bad credentials (403) or a missing
        virtual host / missing permission (530)."""
        return self.reply_code in (ACCESS_REFUSED, NOT_ALLOWED)


class ConnectionClosedByBroker(ConnectionLost):
    """The broker sent ``Connection.Close`` (for example 320
    CONNECTION_FORCED when an operator closed the connection, 403
    ACCESS_REFUSED for bad credentials, 530 NOT_ALLOWED for a missing
    vhost, 503 COMMAND_INVALID for a command it refuses outright).

    Attributes:
        class_id, method_id: the command the broker names as the cause (0
            and 0 when it names none, as for an operator's close).
        command: that command's name, e.g. ``"exchange.declare"``, or None.
    """

    def __init__(
        self,
        reply_text: str,
        reply_code: int = CONNECTION_FORCED,
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        super().__init__(reply_text, reply_code)
        self.class_id = class_id
        self.method_id = method_id

    @property
    def command(self) -> str | None:
        return command_name(self.class_id, self.method_id)

    def __str__(self) -> str:
        text = super().__str__()
        command = self.command
        return text if command is None else f"{text} (on {command})"


class ConnectionClosed(AMQPConnectionError):
    """The connection was closed by this side (``aclose()`` or leaving its
    ``async with`` block) and cannot be used any more."""


class ChannelClosed(AMQPError):
    """The channel is closed.

    When the broker closed it (a soft error such as 404 NOT_FOUND or 406
    PRECONDITION_FAILED), or this side refused a message larger than
    ``max_body_size`` (311 CONTENT_TOO_LARGE), :attr:`reply_code` and
    :attr:`reply_text` say why and the connection stays usable.  When the connection died, the
    connection's error is the ``__cause__``.
    """

    def __init__(self, reply_text: str, reply_code: int | None = None) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        super().__init__(reply_text)

    def __str__(self) -> str:
        if self.reply_code is None:
            return self.reply_text
        return f"{self.reply_code} {reply_name(self.reply_code)}: {self.reply_text}"


class CommandRefused(ChannelClosed):
    """The broker refused a command with a *hard* error: instead of closing
    the command's channel it closed the whole connection, naming the command
    (for example 503 COMMAND_INVALID for ``exchange.declare`` of a type it
    does not know, or 540 NOT_IMPLEMENTED for a ``basic.qos`` it does not
    support).

    It is raised to the call that sent the command, and that call is not
    repeated: the broker would refuse it again.  Everything else goes on: a
    client made by :func:`~trio_lavin.open_client` reconnects, as after any
    loss.  It is a :class:`ChannelClosed`, as a refusal with a soft error
    (404, 406) is.

    Attributes:
        reply_code, reply_text: the broker's reason.
        command: the refused command's name, e.g. ``"exchange.declare"``.
        class_id, method_id: its AMQP numbers.

    The :class:`ConnectionClosedByBroker` is the ``__cause__``.
    """

    def __init__(self, reply_text: str, reply_code: int, class_id: int, method_id: int) -> None:
        super().__init__(reply_text, reply_code)
        self.class_id = class_id
        self.method_id = method_id
        self.command = command_name(class_id, method_id) or f"{class_id}.{method_id}"

    @classmethod
    def from_close(cls, close: ConnectionClosedByBroker) -> CommandRefused:
        """The refusal that ``close`` stands for (with ``close`` as its cause)."""
        refused = cls(close.reply_text, close.reply_code or 0, close.class_id, close.method_id)
        refused.__cause__ = close
        return refused

    def __str__(self) -> str:
        return f"the broker refused {self.command} and closed the connection: {super().__str__()}"


class ConsumerCancelled(AMQPError):
    """The broker cancelled the consumer (``Basic.Cancel`` from the server,
    e.g. because its queue was deleted)."""

    def __init__(self, consumer_tag: str) -> None:
        self.consumer_tag = consumer_tag
        super().__init__(f"the broker cancelled consumer {consumer_tag!r}")


class DeliveryAlreadySettled(AMQPError):
    """A delivery was acked, nacked or rejected a second time.  Nothing was
    sent: the broker would have closed the channel with 406
    PRECONDITION_FAILED ("unknown delivery tag"), taking every other unacked
    delivery of the channel with it."""

    def __init__(self, delivery_tag: int, channel: int) -> None:
        self.delivery_tag = delivery_tag
        self.channel = channel
        super().__init__(
            f"delivery {delivery_tag} on channel {channel} was already acked, nacked or rejected"
        )


class PublishError(AMQPError):
    """A published message was not accepted."""


class MessageNacked(PublishError):
    """The broker answered a publish with ``Basic.Nack`` (publisher confirms):
    it did not take responsibility for the message."""

    def __init__(self, delivery_tag: int) -> None:
        self.delivery_tag = delivery_tag
        super().__init__(f"the broker nacked publish {delivery_tag}")


class _MessageRefused(PublishError):
    """A message the broker gave back or threw away, with its reason."""

    #: What happened to it, for the message ("returned", "rejected").
    outcome = "refused"

    def __init__(self, reply_code: int, reply_text: str, exchange: str, routing_key: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} was "
            f"{self.outcome}: {reply_code} {reply_name(reply_code)}: {reply_text}"
        )


class MessageRejected(_MessageRefused):
    """The broker closed the publishing channel on the message, every time
    it was published (``Config.publish_retries`` times over): for example 404
    NOT_FOUND when its exchange does not exist, or 403 ACCESS_REFUSED without
    write permission."""

    outcome = "rejected"


class MessageReturned(_MessageRefused):
    """A ``mandatory`` message could not be routed to any queue and came back
    (``Basic.Return``, usually 312 NO_ROUTE)."""

    outcome = "returned"


__all__ = [
    "AMQPConnectionError",
    "AMQPError",
    "ChannelClosed",
    "CommandRefused",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionLost",
    "ConsumerCancelled",
    "DeliveryAlreadySettled",
    "MessageNacked",
    "MessageRejected",
    "MessageReturned",
    "PublishError",
]
