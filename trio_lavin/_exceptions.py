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
    vhost)."""

    def __init__(self, reply_text: str, reply_code: int = CONNECTION_FORCED) -> None:
        super().__init__(reply_text, reply_code)


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


class ConsumerCancelled(AMQPError):
    """The broker cancelled the consumer (``Basic.Cancel`` from the server,
    e.g. because its queue was deleted)."""

    def __init__(self, consumer_tag: str) -> None:
        self.consumer_tag = consumer_tag
        super().__init__(f"the broker cancelled consumer {consumer_tag!r}")


class PublishError(AMQPError):
    """A published message was not accepted."""


class MessageNacked(PublishError):
    """The broker answered a publish with ``Basic.Nack`` (publisher confirms):
    it did not take responsibility for the message."""

    def __init__(self, delivery_tag: int) -> None:
        self.delivery_tag = delivery_tag
        super().__init__(f"the broker nacked publish {delivery_tag}")


class MessageReturned(PublishError):
    """A ``mandatory`` message could not be routed to any queue and came back
    (``Basic.Return``, usually 312 NO_ROUTE)."""

    def __init__(self, reply_code: int, reply_text: str, exchange: str, routing_key: str) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        super().__init__(
            f"message to exchange {exchange!r} with routing key {routing_key!r} was returned: "
            f"{reply_code} {reply_text}"
        )


__all__ = [
    "AMQPConnectionError",
    "AMQPError",
    "ChannelClosed",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionLost",
    "ConsumerCancelled",
    "MessageNacked",
    "MessageReturned",
    "PublishError",
]
