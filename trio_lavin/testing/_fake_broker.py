"""The sans-IO core of the fake broker: AMQP 0-9-1 server semantics, no I/O, no clock.

:class:`FakeBroker` holds what a broker node shares between connections (users,
vhosts, exchanges, queues, bindings).  :meth:`FakeBroker.new_connection` makes
a :class:`BrokerConnection`, the server side of one client connection: feed it
the client's bytes with :meth:`~BrokerConnection.receive_data` and send what
:meth:`~BrokerConnection.data_to_send` returns.  Work that crosses connections
(a publish on one delivering to a consumer on another) queues bytes on the
other connection; an I/O layer learns about it through :meth:`FakeBroker._wakeup`.

Errors follow RabbitMQ: a reply code in :data:`_HARD_ERRORS` closes the
connection, any other closes the channel, and reply texts look like
RabbitMQ's (``"NOT_FOUND - no queue 'q' in vhost '/'"``).
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from pamqp import base, body, commands, common, header, heartbeat

from .._sansio._errors import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    INTERNAL_ERROR,
    INVALID_PATH,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_ERROR,
    RESOURCE_LOCKED,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
    RemoteProtocolError,
    reply_name,
)
from .._sansio._framing import (
    FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
    FrameReader,
    FrameValue,
    encode_content,
    encode_frame,
)

DEFAULT_FRAME_MAX: Final = 131_072  # RabbitMQ's default
DEFAULT_CHANNEL_MAX: Final = 2047  # RabbitMQ's default
DEFAULT_HEARTBEAT: Final = 60  # seconds, RabbitMQ's default

#: Reply codes that close the connection (the specification's "hard errors");
#: every other code closes only the channel the failing method was sent on.
_HARD_ERRORS: Final = frozenset(
    {
        CONNECTION_FORCED,
        INVALID_PATH,
        FRAME_ERROR,
        SYNTAX_ERROR,
        COMMAND_INVALID,
        CHANNEL_ERROR,
        UNEXPECTED_FRAME,
        RESOURCE_ERROR,
        NOT_ALLOWED,
        NOT_IMPLEMENTED,
        INTERNAL_ERROR,
    }
)

SERVER_CAPABILITIES: Final[common.FieldTable] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "per_consumer_qos": True,
    "authentication_failure_close": True,
}

_FORCED: Final = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
_EXCHANGE_TYPES: Final = frozenset({"direct", "fanout", "topic", "headers"})
_DEFAULT_EXCHANGES: Final = (
    ("", "direct"),
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
)
_LOGIN_REFUSED: Final = (
    "Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
)


class ConnectionState(enum.Enum):
    """Where the server side of a connection is in its life."""

    #: Waiting for the client's 8-byte protocol header.
    AWAIT_HEADER = "await_header"
    #: Connection.Start sent; waiting for Connection.StartOk.
    AWAIT_START_OK = "await_start_ok"
    #: Connection.Tune sent; waiting for Connection.TuneOk.
    AWAIT_TUNE_OK = "await_tune_ok"
    #: Waiting for Connection.Open.
    AWAIT_OPEN = "await_open"
    #: Connection.OpenOk sent: channels may be used.
    OPEN = "open"
    #: The broker sent Connection.Close and discards everything but Close/CloseOk.
    CLOSING = "closing"
    #: Finished: the I/O layer flushes data_to_send() and closes the transport.
    CLOSED = "closed"


@dataclass(frozen=True)
class Message:
    """A message as the broker stores it: what the publisher sent, plus where
    it was published and whether it has been delivered before."""

    body: bytes
    properties: commands.Basic.Properties = field(default_factory=commands.Basic.Properties)
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False


@dataclass(frozen=True)
class QueueInfo:
    """A snapshot of one queue, from :meth:`FakeBroker.queue`."""

    name: str
    vhost: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: common.FieldTable
    #: The ready messages, head of the queue first.
    messages: tuple[Message, ...]
    #: Delivered (by Basic.Deliver or Basic.GetOk) and not yet acked/nacked/rejected.
    messages_unacknowledged: int
    consumer_count: int

    @property
    def messages_ready(self) -> int:
        """Messages waiting in the queue, not delivered to anyone."""
        return len(self.messages)


class _AmqpError(Exception):
    """A channel or connection exception, as a reply code and RabbitMQ-like text."""

    def __init__(self, reply_code: int, text: str) -> None:
        self.reply_code = reply_code
        self.reply_text = f"{reply_name(reply_code)} - {text}"
        super().__init__(self.reply_text)


@dataclass(frozen=True)
class _Binding:
    destination: str
    to_queue: bool
    routing_key: str
    arguments: common.FieldTable


@dataclass(eq=False)
class _Exchange:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: common.FieldTable = field(default_factory=dict)
    bindings: list[_Binding] = field(default_factory=list)


@dataclass(eq=False)
class _Queue:
    name: str
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: common.FieldTable
    owner: BrokerConnection | None
    messages: deque[Message] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    deleted: bool = False


@dataclass(eq=False)
class _Consumer:
    tag: str
    queue: _Queue
    channel: _Channel
    no_ack: bool
    exclusive: bool
    prefetch: int
    unacked: int = 0

    def ready(self) -> bool:
        """Whether a message may be delivered to this consumer now."""
        ch = self.channel
        if not ch.active or ch.closing or ch.conn.state is not ConnectionState.OPEN:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        in_flight = sum(c.unacked for c in ch.consumers.values())
        return not ch.global_prefetch or in_flight < ch.global_prefetch


@dataclass(eq=False)
class _Delivery:
    queue: _Queue
    message: Message
    consumer: _Consumer | None  # None for Basic.Get


@dataclass(eq=False)
class _Content:
    """A Basic.Publish whose content header and body frames are arriving."""

    method: commands.Basic.Publish
    properties: commands.Basic.Properties | None = None
    body_size: int = 0
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0


@dataclass(eq=False)
class _Channel:
    id: int
    conn: BrokerConnection
    closing: bool = False  # we sent Channel.Close and wait for CloseOk
    active: bool = True  # Channel.Flow
    prefetch: int = 0  # Basic.Qos global=False: for consumers created from now on
    global_prefetch: int = 0  # Basic.Qos global=True: shared by the channel's consumers
    consumers: dict[str, _Consumer] = field(default_factory=dict)
    unacked: dict[int, _Delivery] = field(default_factory=dict)
    next_tag: int = 1
    confirm: bool = False
    publish_seq: int = 0
    tx: bool = False
    tx_ops: list[Callable[[], None]] = field(default_factory=list)
    tx_settled: set[int] = field(default_factory=set)
    content: _Content | None = None
    last_queue: str = ""


class _VHost:
    def __init__(self, name: str) -> None:
        self.name = name
        self.exchanges = {n: _Exchange(n, t) for n, t in _DEFAULT_EXCHANGES}
        self.queues: dict[str, _Queue] = {}

    def route(
        self, exchange: _Exchange, routing_key: str, headers: common.FieldTable
    ) -> list[_Queue]:
        """The queues a message reaches, following exchange-to-exchange bindings."""
        if exchange.name == "":
            queue = self.queues.get(routing_key)
            return [queue] if queue is not None else []
        found: dict[str, _Queue] = {}
        seen: set[str] = set()
        stack = [exchange]
        while stack:
            ex = stack.pop()
            if ex.name in seen:
                continue
            seen.add(ex.name)
            for binding in ex.bindings:
                if not _binding_matches(ex.type, binding, routing_key, headers):
                    continue
                if binding.to_queue:
                    if binding.destination in self.queues:
                        found.setdefault(binding.destination, self.queues[binding.destination])
                elif binding.destination in self.exchanges:
                    stack.append(self.exchanges[binding.destination])
        return list(found.values())

    def unbind_everywhere(self, destination: str, to_queue: bool) -> None:
        for ex in self.exchanges.values():
            ex.bindings = [
                b for b in ex.bindings if (b.destination, b.to_queue) != (destination, to_queue)
            ]


def _binding_matches(
    exchange_type: str, binding: _Binding, routing_key: str, headers: common.FieldTable
) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding.routing_key == routing_key
    if exchange_type == "topic":
        return _topic_matches(binding.routing_key.split("."), routing_key.split("."))
    return _headers_match(binding.arguments, headers)


def _topic_matches(pattern: list[str], words: list[str]) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more."""
    if not pattern:
        return not words
    if pattern[0] == "#":
        return _topic_matches(pattern[1:], words) or (
            bool(words) and _topic_matches(pattern, words[1:])
        )
    return bool(words) and pattern[0] in ("*", words[0]) and _topic_matches(pattern[1:], words[1:])


def _headers_match(arguments: common.FieldTable, headers: common.FieldTable) -> bool:
    """Headers-exchange matching: ``x-match`` ``all`` (the default) or ``any``;
    a binding argument with no value (void) only requires the header to exist."""
    wanted = {k: v for k, v in arguments.items() if not k.startswith("x-")}
    hits = [k in headers and (v is None or headers[k] == v) for k, v in wanted.items()]
    if arguments.get("x-match") == "any":
        return any(hits)
    return all(hits)


def _fmt(value: object) -> str:
    """A value the way RabbitMQ quotes it in reply texts."""
    if isinstance(value, bool):
        return repr("true" if value else "false")
    return repr(value)


def _describe(value: FrameValue) -> str:
    return value.name


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
        properties: commands.Basic.Properties | None = None,
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
        props = properties or commands.Basic.Properties()
        queues = vh.route(ex, routing_key, props.headers or {})
        for q in queues:
            q.messages.append(Message(body, props, exchange, routing_key))
        self._dispatch_all()
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
        self._dispatch_all()

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
        self._dispatch_all()

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

    def nack_next(self, n: int) -> None:
        """Make the next ``n`` publishes on channels in confirm mode get a
        Basic.Nack instead of a Basic.Ack; a nacked message is dropped.
        Replaces any earlier count."""
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n!r}")
        self._nacks_left = n

    # -- internals shared by connections --------------------------------------------------

    def _wakeup(self) -> None:
        """Called whenever bytes are queued on any connection; the I/O layer
        overrides it to flush connections other than the one it is feeding."""

    def _vhost(self, name: str) -> _VHost:
        try:
            return self._vhosts[name]
        except KeyError:
            raise KeyError(f"no vhost {name!r}") from None

    def _new_name(self, prefix: str) -> str:
        return f"{prefix}{next(self._names):06d}"

    def _take_nack(self) -> bool:
        if self._nacks_left:
            self._nacks_left -= 1
            return True
        return False

    def _dispatch_all(self) -> None:
        """Deliver ready messages to consumers that can take them, round-robin."""
        for vh in self._vhosts.values():
            for q in list(vh.queues.values()):
                while q.messages:
                    consumer = next((c for c in q.consumers if c.ready()), None)
                    if consumer is None:
                        break
                    q.consumers.remove(consumer)
                    q.consumers.append(consumer)
                    consumer.channel.conn._deliver(consumer, q.messages.popleft())

    def _settle(self, ch: _Channel, tags: list[int], requeue: bool) -> None:
        deliveries = [ch.unacked.pop(tag) for tag in tags]
        for d in deliveries:
            if d.consumer is not None:
                d.consumer.unacked -= 1
        if requeue:
            self._requeue(deliveries)

    def _requeue(self, deliveries: list[_Delivery]) -> None:
        """Put messages back at the head of their queues, first delivered first."""
        for d in reversed(deliveries):
            if not d.queue.deleted:
                d.queue.messages.appendleft(replace(d.message, redelivered=True))

    def _remove_consumer(self, consumer: _Consumer, *, auto_delete: bool) -> None:
        consumer.channel.consumers.pop(consumer.tag, None)
        q = consumer.queue
        if consumer in q.consumers:
            q.consumers.remove(consumer)
        if auto_delete and q.auto_delete and not q.consumers and not q.deleted:
            self._delete_queue(q)

    def _cancel_consumer(self, consumer: _Consumer) -> None:
        """Cancel from the broker side, telling the client if it wants to know."""
        self._remove_consumer(consumer, auto_delete=False)
        conn = consumer.channel.conn
        if conn._wants("consumer_cancel_notify") and not consumer.channel.closing:
            conn._send(consumer.channel.id, commands.Basic.Cancel(consumer.tag, nowait=True))

    def _delete_queue(self, q: _Queue) -> None:
        q.deleted = True
        for vh in self._vhosts.values():
            if vh.queues.get(q.name) is q:
                del vh.queues[q.name]
                vh.unbind_everywhere(q.name, to_queue=True)
        for consumer in list(q.consumers):
            self._cancel_consumer(consumer)

    def _teardown_channel(self, ch: _Channel) -> None:
        """A channel is gone: drop its consumers, requeue its unacked messages."""
        for consumer in list(ch.consumers.values()):
            self._remove_consumer(consumer, auto_delete=True)
        deliveries = [ch.unacked[tag] for tag in sorted(ch.unacked)]
        ch.unacked.clear()
        self._requeue(deliveries)
        ch.tx_ops.clear()
        ch.tx_settled.clear()
        ch.content = None


class BrokerConnection:
    """The server side of one AMQP connection, sans-IO.

    Feed it everything the client sends with :meth:`receive_data` and send the
    client everything :meth:`data_to_send` returns, after every call (including
    calls on *other* connections and on the :class:`FakeBroker`, which may
    queue deliveries here).  When :attr:`closed` becomes true, flush
    :meth:`data_to_send` one last time and close the transport.

    Client protocol errors never raise: they become a Connection.Close or
    Channel.Close with the reply code RabbitMQ would use.  If these methods
    raise any exception, that's a bug in the fake broker.
    """

    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker
        self._out = bytearray()
        self._header = b""
        self._reader = FrameReader()
        self._channels: dict[int, _Channel] = {}
        self._capabilities: common.FieldTable = {}
        self._blocked_sent = False
        #: Where the connection is; see :class:`ConnectionState`.
        self.state = ConnectionState.AWAIT_HEADER
        #: The client's Connection.StartOk client_properties.
        self.client_properties: common.FieldTable = {}
        #: The authenticated user and the opened vhost ("" until known).
        self.user = ""
        self.vhost = ""
        #: The values the client chose in Connection.TuneOk (0 until then).
        self.frame_max = 0
        self.channel_max = 0
        self.heartbeat = 0

    @property
    def closed(self) -> bool:
        """True once the connection is finished and the transport should be closed."""
        return self.state is ConnectionState.CLOSED

    @property
    def channel_ids(self) -> list[int]:
        """The numbers of the channels that are open (not closing)."""
        return [n for n, ch in self._channels.items() if not ch.closing]

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call (may be ``b""``)."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def send_heartbeat(self) -> None:
        """Queue a heartbeat frame (the I/O layer calls this when the
        connection has been quiet for half the negotiated heartbeat)."""
        if self.state is ConnectionState.OPEN:
            self._out += encode_frame(0, heartbeat.Heartbeat())
            self._broker._wakeup()

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the client; ``b""`` means the client went away
        (EOF): its unacked messages are requeued and the connection is
        dropped.  Bytes received after the connection finished are ignored."""
        if not data:
            self._lost()
            return
        if self.state is ConnectionState.CLOSED:
            return
        if self.state is ConnectionState.AWAIT_HEADER:
            self._header += data
            if len(self._header) < len(PROTOCOL_HEADER):
                return
            got, data = self._header[: len(PROTOCOL_HEADER)], self._header[len(PROTOCOL_HEADER) :]
            if got != PROTOCOL_HEADER:
                # The specification: answer with the header we do speak, then close.
                self._out += PROTOCOL_HEADER
                self._finish()
                return
            start = commands.Connection.Start(
                server_properties={
                    "product": "trio-lavin FakeBroker",
                    "platform": "Python",
                    "cluster_name": "fake-broker",
                    "capabilities": dict(SERVER_CAPABILITIES),
                }
            )
            self._send(0, start)
            self.state = ConnectionState.AWAIT_START_OK
        self._reader.receive_data(data)
        while self.state is not ConnectionState.CLOSED:
            try:
                frame = self._reader.next_frame()
            except RemoteProtocolError as exc:
                # The stream cannot be parsed any further: say why and hang up.
                self._server_close(FRAME_ERROR, f"FRAME_ERROR - {exc.reply_text}")
                self._finish()
                break
            if frame is None:
                break
            channel_id, value = frame
            try:
                self._handle_frame(channel_id, value)
            except _AmqpError as exc:
                self._server_close(exc.reply_code, exc.reply_text, value)
            self._broker._dispatch_all()

    # -- frame handling -------------------------------------------------------------------

    def _handle_frame(self, channel_id: int, value: FrameValue) -> None:
        if isinstance(value, heartbeat.Heartbeat):
            if channel_id != 0:
                raise _AmqpError(FRAME_ERROR, f"heartbeat frame on channel {channel_id}")
            return
        if channel_id == 0 and isinstance(value, commands.Connection.Close):
            self._send(0, commands.Connection.CloseOk())  # in any state, even mid-handshake
            self._finish()
            return
        if self.state is ConnectionState.CLOSING:
            # After sending Close, discard everything until Close or CloseOk.
            if channel_id == 0 and isinstance(value, commands.Connection.CloseOk):
                self._finish()
            return
        step = _HANDSHAKE.get(self.state)
        if step is not None:
            expected, handler = step
            if channel_id != 0 or not isinstance(value, expected):
                raise _AmqpError(
                    COMMAND_INVALID,
                    f"expected {expected.name} on channel 0, "
                    f"got {_describe(value)} on channel {channel_id}",
                )
            handler(self, value)
            return
        if channel_id == 0:
            raise _AmqpError(COMMAND_INVALID, f"unexpected {_describe(value)} on channel 0")
        ch = self._channels.get(channel_id)
        if ch is None:
            self._open_channel(channel_id, value)
        elif ch.closing:
            # After sending Channel.Close, discard everything until Close or CloseOk.
            if isinstance(value, commands.Channel.Close):
                self._send(channel_id, commands.Channel.CloseOk())
            if isinstance(value, commands.Channel.Close | commands.Channel.CloseOk):
                del self._channels[channel_id]
        else:
            failing = ch.content.method if ch.content is not None else value
            try:
                self._handle_channel_frame(ch, value)
            except _AmqpError as exc:
                if exc.reply_code in _HARD_ERRORS:
                    raise
                self._close_channel(ch, exc.reply_code, exc.reply_text, failing)

    def _open_channel(self, channel_id: int, value: FrameValue) -> None:
        if not isinstance(value, commands.Channel.Open):
            raise _AmqpError(
                CHANNEL_ERROR,
                f"expected 'channel.open' on channel {channel_id}, got {_describe(value)}",
            )
        if self.channel_max and len(self._channels) >= self.channel_max:
            raise _AmqpError(
                NOT_ALLOWED,
                f"number of channels opened ({len(self._channels)}) has reached "
                f"the negotiated channel_max ({self.channel_max})",
            )
        self._channels[channel_id] = _Channel(channel_id, self)
        self._send(channel_id, commands.Channel.OpenOk())

    def _handle_channel_frame(self, ch: _Channel, value: FrameValue) -> None:
        if ch.content is not None:
            self._content_frame(ch, ch.content, value)
            return
        if not isinstance(value, base.Frame):
            raise _AmqpError(
                UNEXPECTED_FRAME,
                f"expected a method frame on channel {ch.id}, got {_describe(value)}",
            )
        if isinstance(value, commands.Channel.Open):
            raise _AmqpError(CHANNEL_ERROR, f"second 'channel.open' seen on channel {ch.id}")
        handler = _CHANNEL_HANDLERS.get(type(value))
        if handler is None:
            raise _AmqpError(
                COMMAND_INVALID, f"{value.name} is not a method a client sends on a channel"
            )
        handler(self, ch, value)

    def _content_frame(self, ch: _Channel, content: _Content, value: FrameValue) -> None:
        if content.properties is None:
            if not isinstance(value, header.ContentHeader):
                raise _AmqpError(
                    UNEXPECTED_FRAME,
                    f"expected content header for {content.method.name} on channel {ch.id}, "
                    f"got {_describe(value)}",
                )
            class_id: object = value.class_id  # pamqp types it as None until unmarshalled
            if class_id != commands.Basic.frame_id:
                raise _AmqpError(
                    UNEXPECTED_FRAME,
                    f"content header class id {class_id} does not match "
                    f"{content.method.name} on channel {ch.id}",
                )
            content.properties = value.properties
            content.body_size = value.body_size
        elif isinstance(value, body.ContentBody):
            content.chunks.append(value.value)
            content.received += len(value.value)
            if content.received > content.body_size:
                raise _AmqpError(
                    UNEXPECTED_FRAME,
                    f"content body frames carry {content.received} bytes on channel {ch.id}, "
                    f"more than body_size {content.body_size}",
                )
        else:
            raise _AmqpError(
                UNEXPECTED_FRAME,
                f"expected content body on channel {ch.id}, got {_describe(value)}",
            )
        if content.received == content.body_size:
            ch.content = None
            method, payload = content.method, b"".join(content.chunks)
            props = content.properties
            self._exchange(method.exchange)  # unknown exchange: 404 now, even in a transaction
            if ch.tx:
                ch.tx_ops.append(lambda: self._publish(ch, method, props, payload))
            else:
                self._publish(ch, method, props, payload)

    # -- handshake ------------------------------------------------------------------------

    def _start_ok(self, m: commands.Connection.StartOk) -> None:
        self.client_properties = m.client_properties
        caps = m.client_properties.get("capabilities")
        self._capabilities = caps if isinstance(caps, dict) else {}
        if m.mechanism != "PLAIN":
            raise _AmqpError(COMMAND_INVALID, f"unknown authentication mechanism {m.mechanism!r}")
        raw: str | bytes = m.response  # pamqp decodes a non-UTF-8 longstr to bytes
        response = raw.encode() if isinstance(raw, str) else raw
        parts = response.split(b"\0")
        user = parts[1].decode(errors="replace") if len(parts) == 3 else ""
        password = parts[2].decode(errors="replace") if len(parts) == 3 else None
        if self._broker.users.get(user) != password:
            raise _AmqpError(ACCESS_REFUSED, _LOGIN_REFUSED)
        self.user = user
        broker = self._broker
        self._send(
            0, commands.Connection.Tune(broker.channel_max, broker.frame_max, broker.heartbeat)
        )
        self.state = ConnectionState.AWAIT_TUNE_OK

    def _tune_ok(self, m: commands.Connection.TuneOk) -> None:
        _check_negotiated("frame_max", m.frame_max, self._broker.frame_max, FRAME_MIN_SIZE)
        _check_negotiated("channel_max", m.channel_max, self._broker.channel_max, 1)
        self.frame_max, self.channel_max, self.heartbeat = m.frame_max, m.channel_max, m.heartbeat
        self._reader.frame_max = m.frame_max
        self.state = ConnectionState.AWAIT_OPEN

    def _open(self, m: commands.Connection.Open) -> None:
        if m.virtual_host not in self._broker._vhosts:
            raise _AmqpError(NOT_ALLOWED, f"vhost {m.virtual_host} not found")
        self.vhost = m.virtual_host
        self._send(0, commands.Connection.OpenOk())
        self.state = ConnectionState.OPEN
        self._notify_blocked()
        if self._broker.close_after_open is not None:
            self._server_close(*self._broker.close_after_open)

    # -- channel class --------------------------------------------------------------------

    def _channel_flow(self, ch: _Channel, m: commands.Channel.Flow) -> None:
        ch.active = bool(m.active)
        self._send(ch.id, commands.Channel.FlowOk(ch.active))

    def _channel_close(self, ch: _Channel, m: commands.Channel.Close) -> None:
        self._broker._teardown_channel(ch)
        del self._channels[ch.id]
        self._send(ch.id, commands.Channel.CloseOk())

    # -- exchange class -------------------------------------------------------------------

    def _exchange_declare(self, ch: _Channel, m: commands.Exchange.Declare) -> None:
        vh = self._vh()
        if m.passive:
            self._exchange(m.exchange)
        else:
            self._check_declarable(m.exchange)
            if m.exchange_type not in _EXCHANGE_TYPES:
                raise _AmqpError(COMMAND_INVALID, f"unknown exchange type {m.exchange_type!r}")
            ex = vh.exchanges.get(m.exchange)
            if ex is None:
                vh.exchanges[m.exchange] = _Exchange(
                    m.exchange,
                    m.exchange_type,
                    m.durable,
                    m.auto_delete,
                    m.internal,
                    dict(m.arguments),
                )
            else:
                self._check_equivalent(
                    f"exchange {m.exchange!r}",
                    [
                        ("type", ex.type, m.exchange_type),
                        ("durable", ex.durable, m.durable),
                        ("auto_delete", ex.auto_delete, m.auto_delete),
                        ("internal", ex.internal, m.internal),
                    ],
                    ex.arguments,
                    m.arguments,
                )
        if not m.nowait:
            self._send(ch.id, commands.Exchange.DeclareOk())

    def _exchange_delete(self, ch: _Channel, m: commands.Exchange.Delete) -> None:
        self._check_declarable(m.exchange)
        vh = self._vh()
        ex = vh.exchanges.get(m.exchange)
        if ex is not None:
            if m.if_unused and ex.bindings:
                raise _AmqpError(
                    PRECONDITION_FAILED, f"exchange {ex.name!r} in vhost {vh.name!r} in use"
                )
            del vh.exchanges[ex.name]
            vh.unbind_everywhere(ex.name, to_queue=False)
        if not m.nowait:
            self._send(ch.id, commands.Exchange.DeleteOk())

    def _exchange_bind(self, ch: _Channel, m: commands.Exchange.Bind) -> None:
        self._bind(m.source, _Binding(m.destination, False, m.routing_key, dict(m.arguments)))
        if not m.nowait:
            self._send(ch.id, commands.Exchange.BindOk())

    def _exchange_unbind(self, ch: _Channel, m: commands.Exchange.Unbind) -> None:
        self._unbind(m.source, _Binding(m.destination, False, m.routing_key, dict(m.arguments)))
        if not m.nowait:
            self._send(ch.id, commands.Exchange.UnbindOk())

    # -- queue class ----------------------------------------------------------------------

    def _queue_declare(self, ch: _Channel, m: commands.Queue.Declare) -> None:
        vh = self._vh()
        if m.passive:
            q = self._queue(ch, m.queue)
        else:
            name = m.queue or self._broker._new_name("amq.gen-")
            if m.queue.startswith("amq."):
                raise _AmqpError(
                    ACCESS_REFUSED, f"queue name {name!r} contains reserved prefix 'amq.*'"
                )
            existing = vh.queues.get(name)
            if existing is None:
                q = _Queue(
                    name,
                    m.durable,
                    m.exclusive,
                    m.auto_delete,
                    dict(m.arguments),
                    owner=self if m.exclusive else None,
                )
                vh.queues[name] = q
            else:
                q = existing
                if q.exclusive != m.exclusive:
                    raise self._locked(q)
                self._check_owner(q)
                self._check_equivalent(
                    f"queue {name!r}",
                    [
                        ("durable", q.durable, m.durable),
                        ("auto_delete", q.auto_delete, m.auto_delete),
                    ],
                    q.arguments,
                    m.arguments,
                )
        ch.last_queue = q.name
        if not m.nowait:
            ok = commands.Queue.DeclareOk(q.name, len(q.messages), len(q.consumers))
            self._send(ch.id, ok)

    def _queue_bind(self, ch: _Channel, m: commands.Queue.Bind) -> None:
        q = self._queue(ch, m.queue)
        self._bind(m.exchange, _Binding(q.name, True, m.routing_key, dict(m.arguments)))
        if not m.nowait:
            self._send(ch.id, commands.Queue.BindOk())

    def _queue_unbind(self, ch: _Channel, m: commands.Queue.Unbind) -> None:
        q = self._queue(ch, m.queue)
        self._unbind(m.exchange, _Binding(q.name, True, m.routing_key, dict(m.arguments)))
        self._send(ch.id, commands.Queue.UnbindOk())

    def _queue_purge(self, ch: _Channel, m: commands.Queue.Purge) -> None:
        q = self._queue(ch, m.queue)
        count = len(q.messages)
        q.messages.clear()
        if not m.nowait:
            self._send(ch.id, commands.Queue.PurgeOk(count))

    def _queue_delete(self, ch: _Channel, m: commands.Queue.Delete) -> None:
        vh = self._vh()
        name = m.queue or ch.last_queue
        q = vh.queues.get(name)
        count = 0
        if q is not None:  # deleting a missing queue succeeds, as in RabbitMQ
            self._check_owner(q)
            where = f"queue {q.name!r} in vhost {vh.name!r}"
            if m.if_unused and q.consumers:
                raise _AmqpError(PRECONDITION_FAILED, f"{where} in use")
            if m.if_empty and q.messages:
                raise _AmqpError(PRECONDITION_FAILED, f"{where} not empty")
            count = len(q.messages)
            self._broker._delete_queue(q)
        if not m.nowait:
            self._send(ch.id, commands.Queue.DeleteOk(count))

    # -- basic class ----------------------------------------------------------------------

    def _basic_qos(self, ch: _Channel, m: commands.Basic.Qos) -> None:
        if m.prefetch_size:
            raise _AmqpError(NOT_IMPLEMENTED, f"prefetch_size!=0 ({m.prefetch_size})")
        if m.global_:
            ch.global_prefetch = m.prefetch_count
        else:
            ch.prefetch = m.prefetch_count
        self._send(ch.id, commands.Basic.QosOk())

    def _basic_consume(self, ch: _Channel, m: commands.Basic.Consume) -> None:
        q = self._queue(ch, m.queue)
        tag = m.consumer_tag or self._broker._new_name("amq.ctag-")
        if tag in ch.consumers:
            raise _AmqpError(NOT_ALLOWED, f"attempt to reuse consumer tag {tag!r}")
        if q.consumers and (m.exclusive or any(c.exclusive for c in q.consumers)):
            raise _AmqpError(
                ACCESS_REFUSED, f"queue {q.name!r} in vhost {self.vhost!r} in exclusive use"
            )
        consumer = _Consumer(tag, q, ch, bool(m.no_ack), bool(m.exclusive), ch.prefetch)
        q.consumers.append(consumer)
        ch.consumers[tag] = consumer
        if not m.nowait:
            self._send(ch.id, commands.Basic.ConsumeOk(tag))

    def _basic_cancel(self, ch: _Channel, m: commands.Basic.Cancel) -> None:
        tag = m.consumer_tag or ""
        consumer = ch.consumers.get(tag)
        if consumer is not None:  # an unknown tag is not an error, as in RabbitMQ
            self._broker._remove_consumer(consumer, auto_delete=True)
        if not m.nowait:
            self._send(ch.id, commands.Basic.CancelOk(tag))

    def _basic_publish(self, ch: _Channel, m: commands.Basic.Publish) -> None:
        if m.immediate:
            raise _AmqpError(NOT_IMPLEMENTED, "immediate=true")
        ch.content = _Content(m)

    def _basic_get(self, ch: _Channel, m: commands.Basic.Get) -> None:
        q = self._queue(ch, m.queue)
        if not q.messages:
            self._send(ch.id, commands.Basic.GetEmpty())
            return
        message = q.messages.popleft()
        tag = self._next_tag(ch)
        if not m.no_ack:
            ch.unacked[tag] = _Delivery(q, message, None)
        ok = commands.Basic.GetOk(
            tag, message.redelivered, message.exchange, message.routing_key, len(q.messages)
        )
        self._send_content(ch.id, ok, message)

    def _basic_ack(self, ch: _Channel, m: commands.Basic.Ack) -> None:
        self._settle(ch, m.delivery_tag, m.multiple, requeue=False)

    def _basic_nack(self, ch: _Channel, m: commands.Basic.Nack) -> None:
        self._settle(ch, m.delivery_tag, m.multiple, requeue=m.requeue)

    def _basic_reject(self, ch: _Channel, m: commands.Basic.Reject) -> None:
        self._settle(ch, m.delivery_tag or 0, False, requeue=m.requeue)

    def _basic_recover(self, ch: _Channel, m: commands.Basic.Recover) -> None:
        if not m.requeue:
            raise _AmqpError(NOT_IMPLEMENTED, "requeue=false")
        self._broker._settle(ch, sorted(ch.unacked.keys() - ch.tx_settled), requeue=True)
        self._send(ch.id, commands.Basic.RecoverOk())

    # -- confirm and tx classes -----------------------------------------------------------

    def _confirm_select(self, ch: _Channel, m: commands.Confirm.Select) -> None:
        if ch.tx:
            raise _AmqpError(PRECONDITION_FAILED, "cannot switch from tx to confirm mode")
        ch.confirm = True
        if not m.nowait:
            self._send(ch.id, commands.Confirm.SelectOk())

    def _tx_select(self, ch: _Channel, m: commands.Tx.Select) -> None:
        if ch.confirm:
            raise _AmqpError(PRECONDITION_FAILED, "cannot switch from confirm to tx mode")
        ch.tx = True
        self._send(ch.id, commands.Tx.SelectOk())

    def _tx_commit(self, ch: _Channel, m: commands.Tx.Commit) -> None:
        if not ch.tx:
            raise _AmqpError(PRECONDITION_FAILED, "channel is not transactional")
        ops = ch.tx_ops
        ch.tx_ops, ch.tx_settled = [], set()
        for op in ops:
            op()
        self._send(ch.id, commands.Tx.CommitOk())

    def _tx_rollback(self, ch: _Channel, m: commands.Tx.Rollback) -> None:
        if not ch.tx:
            raise _AmqpError(PRECONDITION_FAILED, "channel is not transactional")
        ch.tx_ops, ch.tx_settled = [], set()
        self._send(ch.id, commands.Tx.RollbackOk())

    # -- helpers --------------------------------------------------------------------------

    def _publish(
        self,
        ch: _Channel,
        m: commands.Basic.Publish,
        properties: commands.Basic.Properties,
        payload: bytes,
    ) -> None:
        vh = self._vh()
        ex = self._exchange(m.exchange)
        if ex.internal:
            raise _AmqpError(
                ACCESS_REFUSED,
                f"cannot publish to internal exchange {ex.name!r} in vhost {vh.name!r}",
            )
        nack = ch.confirm and self._broker._take_nack()
        message = Message(payload, properties, m.exchange, m.routing_key)
        queues = [] if nack else vh.route(ex, m.routing_key, properties.headers or {})
        for q in queues:
            q.messages.append(message)
        if m.mandatory and not queues and not nack:
            # RabbitMQ sends the Return before the confirm, so the client can match them up.
            returned = commands.Basic.Return(NO_ROUTE, "NO_ROUTE", m.exchange, m.routing_key)
            self._send_content(ch.id, returned, message)
        if ch.confirm:
            ch.publish_seq += 1
            confirm = commands.Basic.Nack if nack else commands.Basic.Ack
            self._send(ch.id, confirm(ch.publish_seq))

    def _settle(self, ch: _Channel, tag: int, multiple: bool, *, requeue: bool) -> None:
        pending = sorted(ch.unacked.keys() - ch.tx_settled)
        if multiple and tag == 0:
            tags = pending
        elif tag not in pending:
            raise _AmqpError(PRECONDITION_FAILED, f"unknown delivery tag {tag}")
        else:
            tags = [t for t in pending if t <= tag] if multiple else [tag]
        if ch.tx:
            ch.tx_settled.update(tags)
            ch.tx_ops.append(lambda: self._broker._settle(ch, tags, requeue))
        else:
            self._broker._settle(ch, tags, requeue)

    def _deliver(self, consumer: _Consumer, message: Message) -> None:
        ch = consumer.channel
        tag = self._next_tag(ch)
        if not consumer.no_ack:
            ch.unacked[tag] = _Delivery(consumer.queue, message, consumer)
            consumer.unacked += 1
        deliver = commands.Basic.Deliver(
            consumer.tag, tag, message.redelivered, message.exchange, message.routing_key
        )
        self._send_content(ch.id, deliver, message)

    @staticmethod
    def _next_tag(ch: _Channel) -> int:
        tag = ch.next_tag
        ch.next_tag += 1
        return tag

    def _vh(self) -> _VHost:
        return self._broker._vhosts[self.vhost]

    def _exchange(self, name: str) -> _Exchange:
        vh = self._vh()
        ex = vh.exchanges.get(name)
        if ex is None:
            raise _AmqpError(NOT_FOUND, f"no exchange {name!r} in vhost {vh.name!r}")
        return ex

    def _queue(self, ch: _Channel, name: str) -> _Queue:
        """The queue a method names; "" means the channel's last declared queue."""
        vh = self._vh()
        if not name:
            if not ch.last_queue:
                raise _AmqpError(NOT_FOUND, "no previously declared queue")
            name = ch.last_queue
        q = vh.queues.get(name)
        if q is None:
            raise _AmqpError(NOT_FOUND, f"no queue {name!r} in vhost {vh.name!r}")
        self._check_owner(q)
        return q

    def _check_owner(self, q: _Queue) -> None:
        if q.exclusive and q.owner is not self:
            raise self._locked(q)

    def _locked(self, q: _Queue) -> _AmqpError:
        return _AmqpError(
            RESOURCE_LOCKED,
            f"cannot obtain exclusive access to locked queue {q.name!r} in vhost "
            f"{self.vhost!r}. It could be originally declared on another connection or "
            "the exclusive property value does not match that of the original declaration.",
        )

    def _check_declarable(self, name: str) -> None:
        if name == "":
            raise _AmqpError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        if name.startswith("amq."):
            raise _AmqpError(
                ACCESS_REFUSED, f"exchange name {name!r} contains reserved prefix 'amq.*'"
            )

    def _check_equivalent(
        self,
        what: str,
        fields: list[tuple[str, object, object]],
        current_args: common.FieldTable,
        received_args: common.Arguments,
    ) -> None:
        received_args = received_args or {}
        for key in sorted(current_args.keys() | received_args.keys()):
            fields.append((key, current_args.get(key), received_args.get(key)))
        for name, current, received in fields:
            if current != received:
                raise _AmqpError(
                    PRECONDITION_FAILED,
                    f"inequivalent arg {name!r} for {what} in vhost {self.vhost!r}: "
                    f"received {_fmt(received)} but current is {_fmt(current)}",
                )

    def _bind(self, source: str, binding: _Binding) -> None:
        if source == "" or (binding.destination == "" and not binding.to_queue):
            raise _AmqpError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        ex = self._exchange(source)
        if not binding.to_queue:
            self._exchange(binding.destination)
        if binding not in ex.bindings:
            ex.bindings.append(binding)

    def _unbind(self, source: str, binding: _Binding) -> None:
        if source == "":
            raise _AmqpError(ACCESS_REFUSED, "operation not permitted on the default exchange")
        ex = self._exchange(source)
        if binding in ex.bindings:
            ex.bindings.remove(binding)

    def _wants(self, capability: str) -> bool:
        return bool(self._capabilities.get(capability))

    def _notify_blocked(self) -> None:
        """Send Connection.Blocked/Unblocked if the broker's alarm state changed."""
        blocked = self._broker._blocked
        if self.state is not ConnectionState.OPEN or not self._wants("connection.blocked"):
            return
        if blocked is not None and not self._blocked_sent:
            self._send(0, commands.Connection.Blocked(blocked))
        elif blocked is None and self._blocked_sent:
            self._send(0, commands.Connection.Unblocked())
        self._blocked_sent = blocked is not None

    def _send(self, channel_id: int, method: base.Frame) -> None:
        if self.state is not ConnectionState.CLOSED:
            self._out += encode_frame(channel_id, method)
            self._broker._wakeup()

    def _send_content(self, channel_id: int, method: base.Frame, message: Message) -> None:
        if self.state is not ConnectionState.CLOSED:
            frames = encode_content(
                channel_id, method, message.properties, message.body, self.frame_max
            )
            self._out += b"".join(frames)
            self._broker._wakeup()

    def _close_channel(
        self, ch: _Channel, reply_code: int, reply_text: str, failing: FrameValue | None = None
    ) -> None:
        class_id, method_id = _method_ids(failing)
        self._send(ch.id, commands.Channel.Close(reply_code, reply_text, class_id, method_id))
        ch.closing = True
        self._broker._teardown_channel(ch)

    def _server_close(
        self, reply_code: int, reply_text: str, failing: FrameValue | None = None
    ) -> None:
        """Send Connection.Close.  Once open, wait for CloseOk; during the
        handshake, hang up at once, as RabbitMQ does."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        if self.state is not ConnectionState.AWAIT_HEADER:
            class_id, method_id = _method_ids(failing)
            close = commands.Connection.Close(reply_code, reply_text, class_id, method_id)
            self._send(0, close)
        if self.state is ConnectionState.OPEN:
            self._teardown()
            self.state = ConnectionState.CLOSING
        else:
            self._finish()

    def _teardown(self) -> None:
        for ch in self._channels.values():
            self._broker._teardown_channel(ch)
        self._channels.clear()
        for vh in self._broker._vhosts.values():
            for q in list(vh.queues.values()):
                if q.owner is self:
                    self._broker._delete_queue(q)

    def _finish(self) -> None:
        self._teardown()
        self.state = ConnectionState.CLOSED
        if self in self._broker._connections:
            self._broker._connections.remove(self)
        self._broker._wakeup()

    def _lost(self) -> None:
        if self.state is not ConnectionState.CLOSED:
            self._finish()
            self._broker._dispatch_all()


def _method_ids(value: FrameValue | None) -> tuple[int, int]:
    if isinstance(value, base.Frame):
        return value.index >> 16, value.index & 0xFFFF
    return 0, 0


def _check_negotiated(name: str, value: int, server: int, minimum: int) -> None:
    if value and value < minimum:
        raise _AmqpError(
            NOT_ALLOWED,
            f"negotiated {name} = {value} is lower than the minimum allowed value ({minimum})",
        )
    if server and (value == 0 or value > server):
        raise _AmqpError(
            NOT_ALLOWED,
            f"negotiated {name} = {value} is higher than the maximum allowed value ({server})",
        )


#: The handshake, as data: in each state, the only method the client may send
#: (on channel 0, besides Connection.Close) and what the broker does with it.
_HANDSHAKE: Final[
    dict[ConnectionState, tuple[type[base.Frame], Callable[[BrokerConnection, Any], None]]]
] = {
    ConnectionState.AWAIT_START_OK: (commands.Connection.StartOk, BrokerConnection._start_ok),
    ConnectionState.AWAIT_TUNE_OK: (commands.Connection.TuneOk, BrokerConnection._tune_ok),
    ConnectionState.AWAIT_OPEN: (commands.Connection.Open, BrokerConnection._open),
}

#: What the broker does with each method a client may send on an open channel;
#: any other method is 503 COMMAND_INVALID.
_CHANNEL_HANDLERS: Final[
    dict[type[base.Frame], Callable[[BrokerConnection, _Channel, Any], None]]
] = {
    commands.Channel.Flow: BrokerConnection._channel_flow,
    commands.Channel.Close: BrokerConnection._channel_close,
    commands.Exchange.Declare: BrokerConnection._exchange_declare,
    commands.Exchange.Delete: BrokerConnection._exchange_delete,
    commands.Exchange.Bind: BrokerConnection._exchange_bind,
    commands.Exchange.Unbind: BrokerConnection._exchange_unbind,
    commands.Queue.Declare: BrokerConnection._queue_declare,
    commands.Queue.Bind: BrokerConnection._queue_bind,
    commands.Queue.Unbind: BrokerConnection._queue_unbind,
    commands.Queue.Purge: BrokerConnection._queue_purge,
    commands.Queue.Delete: BrokerConnection._queue_delete,
    commands.Basic.Qos: BrokerConnection._basic_qos,
    commands.Basic.Consume: BrokerConnection._basic_consume,
    commands.Basic.Cancel: BrokerConnection._basic_cancel,
    commands.Basic.Publish: BrokerConnection._basic_publish,
    commands.Basic.Get: BrokerConnection._basic_get,
    commands.Basic.Ack: BrokerConnection._basic_ack,
    commands.Basic.Nack: BrokerConnection._basic_nack,
    commands.Basic.Reject: BrokerConnection._basic_reject,
    commands.Basic.Recover: BrokerConnection._basic_recover,
    commands.Confirm.Select: BrokerConnection._confirm_select,
    commands.Tx.Select: BrokerConnection._tx_select,
    commands.Tx.Commit: BrokerConnection._tx_commit,
    commands.Tx.Rollback: BrokerConnection._tx_rollback,
}
