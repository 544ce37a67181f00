"""The sans-IO core of the fake broker: AMQP 0-9-1 server semantics, no I/O, no clock.

:class:`FakeBroker` holds what a broker node shares between connections (users,
vhosts, exchanges, queues, bindings).  :meth:`FakeBroker.new_connection` makes
a :class:`BrokerConnection`, the server side of one client connection: feed it
the client's bytes with :meth:`~BrokerConnection.receive_data` and send what
:meth:`~BrokerConnection.data_to_send` returns.  Work that crosses connections
(a publish on one delivering to a consumer on another) queues bytes on the
other connection; an I/O layer learns about it through :meth:`FakeBroker.wakeup`.

Errors follow RabbitMQ: a reply code in :data:`_HARD_ERRORS` closes the
connection, any other closes the channel, and reply texts look like
RabbitMQ's (``"NOT_FOUND - no queue 'q' in vhost '/'"``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from pamqp import commands

from .._sansio._errors import (
    CONNECTION_FORCED,
)
from .._sansio._framing import (
    FRAME_MIN_SIZE,
)
from .._sansio._properties import BasicProperties
from ._fake_connection import BrokerConnection
from ._fake_model import (
    _EXCHANGE_TYPES,
    _FORCED,
    DEFAULT_CHANNEL_MAX,
    DEFAULT_FRAME_MAX,
    DEFAULT_HEARTBEAT,
    Message,
    QueueInfo,
    _Channel,
    _Consumer,
    _Delivery,
    _Queue,
    _VHost,
)


class FakeBroker:
    """An in-process AMQP 0-9-1 broker for fast tests: the shared state of one node.

    This is the sans-IO core: it never does I/O and never reads a clock.  Make
    a :class:`BrokerConnection` per client connection with
    :meth:`new_connection`; for a broker served over trio streams use
    :func:`trio_lavin.testing.open_fake_broker`.

    The broker behaves like a single RabbitMQ node with everything in memory:
    ``durable`` is recorded but nothing survives the object.  The test-control
    methods (:meth:`close_connection`, :meth:`block`, :meth:`nack_next`, ...)
    queue the frames a real broker would send on the affected connections.

    It is a test double, not a broker: it implements the behaviour a client
    library depends on, and it never replaces tests against a real broker.
    """

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        vhosts: Iterable[str] = ("/",),
        frame_max: int = DEFAULT_FRAME_MAX,
        channel_max: int = DEFAULT_CHANNEL_MAX,
        heartbeat: int = DEFAULT_HEARTBEAT,
    ) -> None:
        """
        Args:
            users: username to password, for PLAIN authentication; default
                ``{"guest": "guest"}``.  Every user may use every vhost.
            vhosts: the virtual hosts that exist.
            frame_max, channel_max, heartbeat: the values proposed in
                Connection.Tune; a client asking for a larger frame_max or
                channel_max than proposed (or 0, "unlimited") is refused
                with 530 NOT_ALLOWED, as RabbitMQ does.
        """
        if frame_max and frame_max < FRAME_MIN_SIZE:
            raise ValueError(
                f"frame_max must be 0 or at least {FRAME_MIN_SIZE}, not {frame_max!r}"
            )
        if not 0 <= channel_max <= 65535:
            raise ValueError(f"channel_max must be in 0..65535, not {channel_max!r}")
        if not 0 <= heartbeat <= 65535:
            raise ValueError(f"heartbeat must be in 0..65535, not {heartbeat!r}")
        self.users = dict(users if users is not None else {"guest": "guest"})
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = heartbeat
        self._vhosts = {name: _VHost(name) for name in vhosts}
        self._connections: list[BrokerConnection] = []
        self._names = itertools.count(1)
        self._nacks_left = 0
        self._blocked: str | None = None
        #: While True, every publish is refused with 406 (see low_on_disk).
        self.refusing_publishes = False
        #: The exchange types it knows.  Add a plugin's type, or take one
        #: away to play a broker that lost a plugin: declaring an exchange of
        #: a type not in here closes the connection with 503 COMMAND_INVALID.
        self.exchange_types: set[str] = set(_EXCHANGE_TYPES)
        #: ``(reply_code, reply_text)``: close every connection with it right
        #: after its ``Connection.OpenOk`` (a broker that refuses clients
        #: once they are in, e.g. 541 INTERNAL_ERROR); None: do not.
        self.close_after_open: tuple[int, str] | None = None

    # -- connections ----------------------------------------------------------------------

    def new_connection(self) -> BrokerConnection:
        """The server side of a new client connection, waiting for the protocol header."""
        conn = BrokerConnection(self)
        self._connections.append(conn)
        return conn

    @property
    def connections(self) -> list[BrokerConnection]:
        """The connections that are not closed yet (including those mid-handshake)."""
        return list(self._connections)

    # -- inspection -----------------------------------------------------------------------

    def queue(self, name: str, vhost: str = "/") -> QueueInfo:
        """A snapshot of queue ``name``.

        Raises:
            KeyError: there is no such queue.
        """
        q = self._vhost(vhost).queues.get(name)
        if q is None:
            raise KeyError(f"no queue {name!r} in vhost {vhost!r}")
        unacked = sum(
            d.queue is q
            for conn in self._connections
            for ch in conn._channels.values()
            for d in ch.unacked.values()
        )
        return QueueInfo(
            name=q.name,
            vhost=vhost,
            durable=q.durable,
            exclusive=q.exclusive,
            auto_delete=q.auto_delete,
            arguments=dict(q.arguments),
            messages=tuple(q.messages),
            messages_unacknowledged=unacked,
            consumer_count=len(q.consumers),
        )

    def queue_names(self, vhost: str = "/") -> list[str]:
        """The names of the queues in ``vhost``, in declaration order."""
        return list(self._vhost(vhost).queues)

    def exchange_names(self, vhost: str = "/") -> list[str]:
        """The names of the exchanges in ``vhost``, including the predeclared ones."""
        return list(self._vhost(vhost).exchanges)

    # -- test controls --------------------------------------------------------------------

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: BasicProperties | None = None,
        *,
        vhost: str = "/",
    ) -> int:
        """Publish a message as if some other client had; returns the number
        of queues it was routed to (0: dropped).

        Raises:
            KeyError: the exchange does not exist.
        """
        vh = self._vhost(vhost)
        ex = vh.exchanges.get(exchange)
        if ex is None:
            raise KeyError(f"no exchange {exchange!r} in vhost {vhost!r}")
        props = properties or BasicProperties()
        queues = vh.route(ex, routing_key, props.headers or {})
        for q in queues:
            q.enqueue(Message(body, props, exchange, routing_key))
        self.dispatch_all()
        return len(queues)

    def close_connection(
        self,
        conn: BrokerConnection,
        reply_code: int = CONNECTION_FORCED,
        reply_text: str = _FORCED,
    ) -> None:
        """Close ``conn`` from the broker side, as ``rabbitmqctl close_connection``
        does: Connection.Close is queued, the connection's unacked messages are
        requeued, and the broker waits for Connection.CloseOk.  Closing a
        connection mid-handshake sends the Close and finishes at once; a
        connection already closing or closed is left alone."""
        conn._server_close(reply_code, reply_text)
        self.dispatch_all()

    def close_all_connections(
        self,
        reply_code: int = CONNECTION_FORCED,
        reply_text: str = _FORCED,
    ) -> None:
        """:meth:`close_connection` for every connection (a broker shutdown)."""
        for conn in self.connections:
            self.close_connection(conn, reply_code, reply_text)

    def close_channel(
        self, conn: BrokerConnection, channel_id: int, reply_code: int, reply_text: str
    ) -> None:
        """Close one channel from the broker side (Channel.Close); its unacked
        messages are requeued and its consumers dropped.

        Raises:
            KeyError: ``conn`` has no open channel ``channel_id``.
        """
        ch = conn._channels.get(channel_id)
        if ch is None or ch.closing:
            raise KeyError(f"connection has no open channel {channel_id!r}")
        conn._close_channel(ch, reply_code, reply_text)
        self.dispatch_all()

    def cancel_consumers(self, queue_name: str, vhost: str = "/") -> int:
        """Cancel every consumer of a queue from the broker side (as when a
        queue's leader moves): clients that advertised ``consumer_cancel_notify``
        get a Basic.Cancel, the others are dropped silently, as RabbitMQ does.
        Returns the number of consumers cancelled.

        Raises:
            KeyError: there is no such queue.
        """
        q = self._vhost(vhost).queues.get(queue_name)
        if q is None:
            raise KeyError(f"no queue {queue_name!r} in vhost {vhost!r}")
        consumers = list(q.consumers)
        for consumer in consumers:
            self._cancel_consumer(consumer)
        return len(consumers)

    def block(self, reason: str = "low on memory") -> None:
        """Raise a resource alarm: Connection.Blocked goes to every open
        connection whose client advertised ``connection.blocked``, and to
        those opened later, until :meth:`unblock`.  Publishing still works
        (unlike RabbitMQ, which stops reading from publishers)."""
        self._blocked = reason
        for conn in self._connections:
            conn._notify_blocked()

    def unblock(self) -> None:
        """Clear the alarm: Connection.Unblocked goes to every connection that got Blocked."""
        self._blocked = None
        for conn in self._connections:
            conn._notify_blocked()

    def low_on_disk(self, low: bool = True) -> None:
        """Be low on disk as LavinMQ is (or, ``low=False``, not any more):
        every basic.publish closes its channel with 406 PRECONDITION_FAILED
        "Server low on disk space", and no Connection.Blocked is sent."""
        self.refusing_publishes = low

    def nack_next(self, n: int) -> None:
        """Make the next ``n`` publishes on channels in confirm mode get a
        Basic.Nack instead of a Basic.Ack; a nacked message is dropped.
        Replaces any earlier count."""
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n!r}")
        self._nacks_left = n

    # -- internals shared by connections --------------------------------------------------

    def wakeup(self) -> None:
        """Internal: called whenever bytes are queued on any connection; the I/O layer
        overrides it to flush connections other than the one it is feeding."""

    def _vhost(self, name: str) -> _VHost:
        try:
            return self._vhosts[name]
        except KeyError:
            raise KeyError(f"no vhost {name!r}") from None

    def new_name(self, prefix: str) -> str:
        """Internal: a fresh server-chosen name starting with ``prefix``."""
        return f"{prefix}{next(self._names):06d}"

    def take_nack(self) -> bool:
        """Internal: True (once per ``nack_next`` count) when the next publish is to be nacked."""
        if self._nacks_left:
            self._nacks_left -= 1
            return True
        return False

    def dispatch_all(self) -> None:
        """Internal: Deliver ready messages to consumers that can take them, round-robin."""
        for vh in self._vhosts.values():
            for q in list(vh.queues.values()):
                while q.messages:
                    consumer = next((c for c in q.consumers if c.ready()), None)
                    if consumer is None:
                        break
                    q.consumers.remove(consumer)
                    q.consumers.append(consumer)
                    consumer.channel.conn._deliver(consumer, q.messages.popleft())

    def settle_deliveries(self, ch: _Channel, tags: list[int], requeue: bool) -> None:
        """Internal: ack (or requeue) the deliveries ``tags`` of ``ch``."""
        deliveries = [ch.unacked.pop(tag) for tag in tags]
        for d in deliveries:
            if d.consumer is not None:
                d.consumer.unacked -= 1
                ch.consumer_unacked -= 1
        if requeue:
            self._requeue(deliveries)

    def _requeue(self, deliveries: list[_Delivery]) -> None:
        """Put messages back in their queues, each where it was."""
        for d in deliveries:
            if not d.queue.deleted:
                d.queue.requeue(d.message)

    def remove_consumer(self, consumer: _Consumer, *, auto_delete: bool) -> None:
        """Internal: drop ``consumer`` (and an auto-delete queue left without any)."""
        consumer.channel.consumers.pop(consumer.tag, None)
        q = consumer.queue
        if consumer in q.consumers:
            q.consumers.remove(consumer)
        if auto_delete and q.auto_delete and not q.consumers and not q.deleted:
            self.delete_queue_object(q)

    def _cancel_consumer(self, consumer: _Consumer) -> None:
        """Cancel from the broker side, telling the client if it wants to know."""
        self.remove_consumer(consumer, auto_delete=False)
        conn = consumer.channel.conn
        if conn._wants("consumer_cancel_notify") and not consumer.channel.closing:
            conn._send(consumer.channel.id, commands.Basic.Cancel(consumer.tag, nowait=True))

    def delete_queue_object(self, q: _Queue) -> None:
        """Internal: delete ``q`` and what refers to it."""
        q.deleted = True
        for vh in self._vhosts.values():
            if vh.queues.get(q.name) is q:
                del vh.queues[q.name]
                vh.unbind_everywhere(q.name, to_queue=True)
        for consumer in list(q.consumers):
            self._cancel_consumer(consumer)

    def teardown_channel(self, ch: _Channel) -> None:
        """Internal: A channel is gone: drop its consumers, requeue its unacked messages."""
        for consumer in list(ch.consumers.values()):
            self.remove_consumer(consumer, auto_delete=True)
        deliveries = [ch.unacked[tag] for tag in sorted(ch.unacked)]
        ch.unacked.clear()
        ch.consumer_unacked = 0
        self._requeue(deliveries)
        ch.tx_ops.clear()
        ch.tx_settled.clear()
        ch.content = None
