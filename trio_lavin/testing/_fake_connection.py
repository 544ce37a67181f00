"""The fake broker's side of one client connection: the AMQP 0-9-1 server
state machine, frames in and out.  Made by :meth:`FakeBroker.new_connection`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pamqp import base, body, commands, common, heartbeat

from .._sansio._errors import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_ERROR,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    UNEXPECTED_FRAME,
    RemoteProtocolError,
)
from .._sansio._framing import (
    FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
    FrameReader,
    FrameValue,
    encode_content,
    encode_frame,
)
from .._sansio._properties import BasicProperties, ContentHeader
from ._fake_model import (
    _HARD_ERRORS,
    _LOGIN_REFUSED,
    EXCHANGE_EQUIVALENCE_ARGUMENTS,
    QUEUE_EQUIVALENCE_ARGUMENTS,
    SERVER_CAPABILITIES,
    ConnectionState,
    Message,
    _AmqpError,
    _Binding,
    _Channel,
    _check_declarable,
    _check_equivalent,
    _check_negotiated,
    _Consumer,
    _Content,
    _Delivery,
    _describe,
    _Exchange,
    _method_ids,
    _Queue,
    _VHost,
)

if TYPE_CHECKING:
    from ._fake_broker import FakeBroker


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
            self._broker.wakeup()

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
            self._broker.dispatch_all()

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
        step = self._HANDSHAKE.get(self.state)
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
        handler = self._CHANNEL_HANDLERS.get(type(value))
        if handler is None:
            raise _AmqpError(
                COMMAND_INVALID, f"{value.name} is not a method a client sends on a channel"
            )
        handler(self, ch, value)

    def _content_frame(self, ch: _Channel, content: _Content, value: FrameValue) -> None:
        if content.properties is None:
            if not isinstance(value, ContentHeader):
                raise _AmqpError(
                    UNEXPECTED_FRAME,
                    f"expected content header for {content.method.name} on channel {ch.id}, "
                    f"got {_describe(value)}",
                )
            class_id = value.class_id
            if class_id != commands.Basic.frame_id:
                raise _AmqpError(
                    UNEXPECTED_FRAME,
                    f"content header class id {class_id} does not match "
                    f"{content.method.name} on channel {ch.id}",
                )
            content.properties = value.properties or BasicProperties()
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
        if not m.active:
            raise _AmqpError(NOT_IMPLEMENTED, "active=false")  # as RabbitMQ
        ch.active = True
        self._send(ch.id, commands.Channel.FlowOk(ch.active))

    def _channel_close(self, ch: _Channel, m: commands.Channel.Close) -> None:
        self._broker.teardown_channel(ch)
        del self._channels[ch.id]
        self._send(ch.id, commands.Channel.CloseOk())

    # -- exchange class -------------------------------------------------------------------

    def _exchange_declare(self, ch: _Channel, m: commands.Exchange.Declare) -> None:
        vh = self._vh()
        if m.passive:
            self._exchange(m.exchange)
        else:
            ex = vh.exchanges.get(m.exchange)
            if ex is None or m.exchange == "":
                # Only a new one must have a name a client may give (an amq.*
                # exchange that exists may be declared again as it is).
                _check_declarable(m.exchange)
            if m.exchange_type not in self._broker.exchange_types:
                raise _AmqpError(COMMAND_INVALID, f"unknown exchange type {m.exchange_type!r}")
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
                _check_equivalent(
                    self.vhost,
                    f"exchange {m.exchange!r}",
                    [
                        ("type", ex.type, m.exchange_type),
                        ("durable", ex.durable, m.durable),
                        ("auto_delete", ex.auto_delete, m.auto_delete),
                        ("internal", ex.internal, m.internal),
                    ],
                    ex.arguments,
                    m.arguments,
                    EXCHANGE_EQUIVALENCE_ARGUMENTS,
                )
        if not m.nowait:
            self._send(ch.id, commands.Exchange.DeclareOk())

    def _exchange_delete(self, ch: _Channel, m: commands.Exchange.Delete) -> None:
        _check_declarable(m.exchange)
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
            name = m.queue or self._broker.new_name("amq.gen-")
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
                _check_equivalent(
                    self.vhost,
                    f"queue {name!r}",
                    [
                        ("durable", q.durable, m.durable),
                        ("auto_delete", q.auto_delete, m.auto_delete),
                    ],
                    q.arguments,
                    m.arguments,
                    QUEUE_EQUIVALENCE_ARGUMENTS,
                    {"x-queue-type": "classic"},
                )
        ch.last_queue = q.name
        if not m.nowait:
            ok = commands.Queue.DeclareOk(q.name, len(q.messages), len(q.consumers))
            self._send(ch.id, ok)

    def _queue_bind(self, ch: _Channel, m: commands.Queue.Bind) -> None:
        q = self._queue(ch, m.queue)
        # The last declared queue with no key either: bound by its name.
        key = m.routing_key or (q.name if not m.queue else "")
        self._bind(m.exchange, _Binding(q.name, True, key, dict(m.arguments)))
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
        if not m.queue and not ch.last_queue:
            raise _AmqpError(NOT_FOUND, "no previously declared queue")
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
            self._broker.delete_queue_object(q)
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
        tag = m.consumer_tag or self._broker.new_name("amq.ctag-")
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
            self._broker.remove_consumer(consumer, auto_delete=True)
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
        self._broker.settle_deliveries(ch, sorted(ch.unacked.keys() - ch.tx_settled), requeue=True)
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
        properties: BasicProperties,
        payload: bytes,
    ) -> None:
        if self._broker.refusing_publishes:
            raise _AmqpError(PRECONDITION_FAILED, "Server low on disk space")
        vh = self._vh()
        ex = self._exchange(m.exchange)
        if ex.internal:
            raise _AmqpError(
                ACCESS_REFUSED,
                f"cannot publish to internal exchange {ex.name!r} in vhost {vh.name!r}",
            )
        nack = ch.confirm and self._broker.take_nack()
        message = Message(payload, properties, m.exchange, m.routing_key)
        queues = [] if nack else vh.route(ex, m.routing_key, properties.headers or {})
        for q in queues:
            q.enqueue(message)
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
            ch.tx_ops.append(lambda: self._broker.settle_deliveries(ch, tags, requeue))
        else:
            self._broker.settle_deliveries(ch, tags, requeue)

    def _deliver(self, consumer: _Consumer, message: Message) -> None:
        ch = consumer.channel
        tag = self._next_tag(ch)
        if not consumer.no_ack:
            ch.unacked[tag] = _Delivery(consumer.queue, message, consumer)
            consumer.unacked += 1
            ch.consumer_unacked += 1
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
            self._vh().unbound(ex)

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
            self._broker.wakeup()

    def _send_content(self, channel_id: int, method: base.Frame, message: Message) -> None:
        if self.state is not ConnectionState.CLOSED:
            frames = encode_content(
                channel_id, method, message.properties, message.body, self.frame_max
            )
            self._out += b"".join(frames)
            self._broker.wakeup()

    def _close_channel(
        self, ch: _Channel, reply_code: int, reply_text: str, failing: FrameValue | None = None
    ) -> None:
        class_id, method_id = _method_ids(failing)
        self._send(ch.id, commands.Channel.Close(reply_code, reply_text, class_id, method_id))
        ch.closing = True
        self._broker.teardown_channel(ch)

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
            self._broker.teardown_channel(ch)
        self._channels.clear()
        for vh in self._broker._vhosts.values():
            for q in list(vh.queues.values()):
                if q.owner is self:
                    self._broker.delete_queue_object(q)

    def _finish(self) -> None:
        self._teardown()
        self.state = ConnectionState.CLOSED
        if self in self._broker._connections:
            self._broker._connections.remove(self)
        self._broker.wakeup()

    def _lost(self) -> None:
        if self.state is not ConnectionState.CLOSED:
            self._finish()
            self._broker.dispatch_all()

    #: The handshake, as data: in each state, the only method the client may send
    #: (on channel 0, besides Connection.Close) and what the broker does with it.
    _HANDSHAKE: Final[
        dict[ConnectionState, tuple[type[base.Frame], Callable[[BrokerConnection, Any], None]]]
    ] = {
        ConnectionState.AWAIT_START_OK: (commands.Connection.StartOk, _start_ok),
        ConnectionState.AWAIT_TUNE_OK: (commands.Connection.TuneOk, _tune_ok),
        ConnectionState.AWAIT_OPEN: (commands.Connection.Open, _open),
    }

    #: What the broker does with each method a client may send on an open channel;
    #: any other method is 503 COMMAND_INVALID.
    _CHANNEL_HANDLERS: Final[
        dict[type[base.Frame], Callable[[BrokerConnection, _Channel, Any], None]]
    ] = {
        commands.Channel.Flow: _channel_flow,
        commands.Channel.Close: _channel_close,
        commands.Exchange.Declare: _exchange_declare,
        commands.Exchange.Delete: _exchange_delete,
        commands.Exchange.Bind: _exchange_bind,
        commands.Exchange.Unbind: _exchange_unbind,
        commands.Queue.Declare: _queue_declare,
        commands.Queue.Bind: _queue_bind,
        commands.Queue.Unbind: _queue_unbind,
        commands.Queue.Purge: _queue_purge,
        commands.Queue.Delete: _queue_delete,
        commands.Basic.Qos: _basic_qos,
        commands.Basic.Consume: _basic_consume,
        commands.Basic.Cancel: _basic_cancel,
        commands.Basic.Publish: _basic_publish,
        commands.Basic.Get: _basic_get,
        commands.Basic.Ack: _basic_ack,
        commands.Basic.Nack: _basic_nack,
        commands.Basic.Reject: _basic_reject,
        commands.Basic.Recover: _basic_recover,
        commands.Confirm.Select: _confirm_select,
        commands.Tx.Select: _tx_select,
        commands.Tx.Commit: _tx_commit,
        commands.Tx.Rollback: _tx_rollback,
    }
