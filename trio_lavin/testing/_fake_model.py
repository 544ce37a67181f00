"""The fake broker's model of a node: vhosts, exchanges, queues, bindings,
consumers and routing, with the constants and errors its connections use.
Pure data and functions; no I/O, no clock."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final

from pamqp import base, commands, common

from .._sansio._errors import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_ERROR,
    INTERNAL_ERROR,
    INVALID_PATH,
    NOT_ALLOWED,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_ERROR,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
    reply_name,
)
from .._sansio._framing import FrameValue
from .._sansio._properties import BasicProperties

if TYPE_CHECKING:
    from ._fake_connection import BrokerConnection

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
    properties: BasicProperties = field(default_factory=BasicProperties)
    exchange: str = ""
    routing_key: str = ""
    redelivered: bool = False
    #: Its place in its queue: a requeued message goes back there.
    position: int = field(default=0, compare=False, repr=False)


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
    #: Messages enqueued so far (their positions).
    enqueued: int = 0

    def enqueue(self, message: Message) -> None:
        """Add ``message`` at the tail, noting its place."""
        self.enqueued += 1
        self.messages.append(replace(message, position=self.enqueued))

    def requeue(self, message: Message) -> None:
        """Put a delivered message back where it was, as redelivered (RabbitMQ
        keeps a requeued message's place: the ready ones after it follow it)."""
        place = next(
            (i for i, m in enumerate(self.messages) if m.position > message.position),
            len(self.messages),
        )
        self.messages.insert(place, replace(message, redelivered=True))


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
        return not ch.global_prefetch or ch.consumer_unacked < ch.global_prefetch


@dataclass(eq=False)
class _Delivery:
    queue: _Queue
    message: Message
    consumer: _Consumer | None  # None for Basic.Get


@dataclass(eq=False)
class _Content:
    """A Basic.Publish whose content header and body frames are arriving."""

    method: commands.Basic.Publish
    properties: BasicProperties | None = None
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
    #: Of ``unacked``, the deliveries to consumers (cancelled ones too): what
    #: ``global_prefetch`` limits.
    consumer_unacked: int = 0
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
        for ex in list(self.exchanges.values()):
            kept = [
                b for b in ex.bindings if (b.destination, b.to_queue) != (destination, to_queue)
            ]
            if len(kept) < len(ex.bindings):
                ex.bindings = kept
                self.unbound(ex)

    def unbound(self, ex: _Exchange) -> None:
        """A binding from ``ex`` went: an auto-delete exchange without any goes too."""
        if ex.auto_delete and not ex.bindings and self.exchanges.get(ex.name) is ex:
            del self.exchanges[ex.name]
            self.unbind_everywhere(ex.name, to_queue=False)


def _binding_matches(
    exchange_type: str, binding: _Binding, routing_key: str, headers: common.FieldTable
) -> bool:
    if exchange_type == "fanout":
        return True
    if exchange_type == "direct":
        return binding.routing_key == routing_key
    if exchange_type == "topic":
        return _topic_matches(_words(binding.routing_key), _words(routing_key))
    return _headers_match(binding.arguments, headers)


def _words(key: str) -> list[str]:
    """A routing key's words: none in the empty key (it is not one empty word)."""
    return key.split(".") if key else []


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
    hits = [
        k in headers and (v is None or (type(headers[k]) is type(v) and headers[k] == v))
        for k, v in wanted.items()
    ]
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


#: The queue arguments RabbitMQ 3.10 compares when a queue is declared again.
QUEUE_EQUIVALENCE_ARGUMENTS: Final = frozenset(
    {
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-dead-letter-strategy",
        "x-expires",
        "x-max-in-memory-bytes",
        "x-max-in-memory-length",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-message-ttl",
        "x-overflow",
        "x-queue-mode",
        "x-queue-type",
        "x-queue-version",
        "x-quorum-initial-group-size",
        "x-single-active-consumer",
    }
)
#: The exchange arguments it compares.
EXCHANGE_EQUIVALENCE_ARGUMENTS: Final = frozenset({"alternate-exchange"})


def _check_declarable(name: str) -> None:
    """Exchanges a client may not declare or delete (RabbitMQ's rules)."""
    if name == "":
        raise _AmqpError(ACCESS_REFUSED, "operation not permitted on the default exchange")
    if name.startswith("amq."):
        raise _AmqpError(
            ACCESS_REFUSED, f"exchange name {name!r} contains reserved prefix 'amq.*'"
        )


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


def _check_equivalent(
    vhost: str,
    what: str,
    fields: list[tuple[str, object, object]],
    current_args: common.FieldTable,
    received_args: common.Arguments,
    known: frozenset[str],
    defaults: Mapping[str, object] | None = None,
) -> None:
    """Re-declaring ``what`` must repeat its settings, and the arguments
    RabbitMQ compares (``known``; a missing one as its default in
    ``defaults``), else 406 PRECONDITION_FAILED, as RabbitMQ says it."""
    received_args = received_args or {}
    for key in sorted((current_args.keys() | received_args.keys()) & known):
        default = (defaults or {}).get(key)
        fields.append((key, current_args.get(key, default), received_args.get(key, default)))
    for name, current, received in fields:
        if current != received:
            raise _AmqpError(
                PRECONDITION_FAILED,
                f"inequivalent arg {name!r} for {what} in vhost {vhost!r}: "
                f"received {_fmt(received)} but current is {_fmt(current)}",
            )
