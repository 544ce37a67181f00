"""The sans-IO AMQP 0-9-1 client connection.

:class:`AMQPConnection` is the whole protocol, with no I/O and no clock:

* bytes from the broker go in through :meth:`~AMQPConnection.receive_data`;
* :meth:`~AMQPConnection.next_event` turns them into :mod:`events <._events>`;
* requests (open a channel, declare a queue, publish, ack, close) are queued
  as frames by methods such as :meth:`~AMQPConnection.send_method` and
  :meth:`~AMQPConnection.publish`;
* every byte to write, including automatic replies (the handshake, ``CloseOk``,
  ``FlowOk``, heartbeats), comes out of :meth:`~AMQPConnection.data_to_send`.

Which input is legal when is decided by the tables in
:mod:`._connection_state` and :mod:`._channel_state`; this module adds what a
table cannot express: which reply answers which request, publisher-confirm
numbering, and content assembly.
"""

from __future__ import annotations

import platform
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any, Final

from pamqp import base, body, commands, heartbeat

from . import _events as ev
from ._channel_state import (
    CHANNEL_TRANSITIONS,
    ChannelInput,
    ChannelState,
    channel_transition,
)
from ._connection_state import (
    CONNECTION_TRANSITIONS,
    ConnectionInput,
    ConnectionState,
    connection_transition,
)
from ._content import DEFAULT_MAX_BODY_SIZE, BodyTooLarge, ContentAssembler
from ._errors import (
    CHANNEL_ERROR,
    CONTENT_TOO_LARGE,
    NOT_IMPLEMENTED,
    REPLY_SUCCESS,
    CommandInvalid,
    LocalProtocolError,
    RemoteProtocolError,
    UnexpectedFrame,
)
from ._framing import (
    ABSOLUTE_FRAME_MAX,
    FRAME_END,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    PROTOCOL_HEADER,
    FrameReader,
    encode_frame,
)
from ._properties import BasicProperties, ContentHeader
from ._publishing import PublishEncoder, PublishFields

CI = ConnectionInput

# The frame handlers skip the table lookup for input that keeps an OPEN
# connection or channel OPEN; these rows make that shortcut true.
assert CONNECTION_TRANSITIONS[ConnectionState.OPEN, CI.RECV_CHANNEL_FRAME] is ConnectionState.OPEN
assert CHANNEL_TRANSITIONS[ChannelState.OPEN, ChannelInput.RECV_CONTENT] is ChannelState.OPEN
assert CHANNEL_TRANSITIONS[ChannelState.OPEN, ChannelInput.RECV_METHOD] is ChannelState.OPEN

# The states the hot paths test on every frame, looked up once: on Python
# 3.11 reading an Enum member off its class costs about 57 ns more than a
# global (66 against 9 ns, measured), several times per message.
_OPEN: Final = ConnectionState.OPEN
_CLOSED: Final = ConnectionState.CLOSED
_CHANNEL_OPEN: Final = ChannelState.OPEN

#: Heartbeat frame bytes: type 8, channel 0, size 0, end octet.
HEARTBEAT_FRAME: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"

#: The largest channel number the protocol can carry.
MAX_CHANNEL_MAX: Final = 65_535

#: Default wishes sent in TuneOk (the broker's limits win when lower).
DEFAULT_FRAME_MAX: Final = 131_072
DEFAULT_CHANNEL_MAX: Final = 2_047
DEFAULT_HEARTBEAT: Final = 60

#: A whole Basic.Ack / Basic.Nack frame: header, class, method, tag, bits, end.
_ACK: Final = struct.Struct(">BHIHHQBB")

#: Methods the broker may send as the reply to one of our synchronous requests.
_REPLY_NAMES: Final = frozenset(
    {
        "Exchange.DeclareOk",
        "Exchange.DeleteOk",
        "Exchange.BindOk",
        "Exchange.UnbindOk",
        "Queue.DeclareOk",
        "Queue.BindOk",
        "Queue.UnbindOk",
        "Queue.PurgeOk",
        "Queue.DeleteOk",
        "Basic.QosOk",
        "Basic.ConsumeOk",
        "Basic.CancelOk",
        "Basic.GetEmpty",
        "Basic.RecoverOk",
        "Channel.FlowOk",
        "Confirm.SelectOk",
        "Tx.SelectOk",
        "Tx.CommitOk",
        "Tx.RollbackOk",
    }
)

#: Our methods that the channel table handles itself (not via send_method).
_CHANNEL_LIFECYCLE = (commands.Channel.Open, commands.Channel.Close, commands.Channel.CloseOk)


def negotiate(client: int, server: int) -> int:
    """The tuning rule for frame_max, channel_max and heartbeat: 0 means "no
    limit" (or "no heartbeat"), so when either side says 0 the other side's
    value holds; otherwise the lower value wins."""
    if client == 0 or server == 0:
        return max(client, server)
    return min(client, server)


def default_client_properties(connection_name: str | None = None) -> dict[str, Any]:
    from .._version import __version__

    properties: dict[str, Any] = {
        "product": "trio-lavin",
        "version": __version__,
        "platform": f"Python {platform.python_version()}",
        "information": "https://pypi.org/project/trio-lavin/",
        "capabilities": {
            "publisher_confirms": True,
            "consumer_cancel_notify": True,
            "connection.blocked": True,
            "basic.nack": True,
            "exchange_exchange_bindings": True,
            "per_consumer_qos": True,
            "authentication_failure_close": True,
        },
    }
    if connection_name:
        properties["connection_name"] = connection_name
    return properties


def _truncate_shortstr(text: str) -> str:
    """Truncate to the 255 bytes a shortstr can carry, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= 255:
        return text
    return data[:255].decode("utf-8", "ignore")


class _Channel:
    __slots__ = ("confirming", "content", "number", "publish_seq", "replies", "state")

    def __init__(self, number: int, max_body_size: int) -> None:
        self.number = number
        self.state = ChannelState.CLOSED
        #: For each request still waiting for its reply: the acceptable reply names.
        self.replies: deque[tuple[str, frozenset[str]]] = deque()
        self.content = ContentAssembler(number, max_body_size)
        self.confirming = False
        self.publish_seq = 0

    def reset(self) -> None:
        self.state = ChannelState.CLOSED
        self.replies.clear()
        self.content = ContentAssembler(self.number, self.content.max_body_size)
        self.confirming = False
        self.publish_seq = 0


class AMQPConnection:
    """The client side of one AMQP 0-9-1 connection, without I/O.

    Typical use by an I/O layer::

        conn = AMQPConnection(username="guest", password="guest")
        conn.initiate()
        send(conn.data_to_send())
        while conn.state is not ConnectionState.CLOSED:
            conn.receive_data(receive())
            while (event := conn.next_event()) is not None:
                handle(event)
            send(conn.data_to_send())

    Errors: :meth:`next_event` raises a :class:`~._errors.RemoteProtocolError`
    subclass when the broker breaks the protocol; the ``Connection.Close`` with
    its reply code is then queued in :meth:`data_to_send` and the machine
    ignores all further input.  Methods that queue requests raise
    :class:`~._errors.LocalProtocolError` when the request is not valid in
    the current state, and leave everything unchanged.  Any other exception is
    a bug.

    The password is used for the handshake only and never appears in
    ``repr()`` or in any error message.
    """

    def __init__(
        self,
        *,
        username: str = "guest",
        password: str = "guest",
        virtual_host: str = "/",
        heartbeat: int = DEFAULT_HEARTBEAT,
        frame_max: int = DEFAULT_FRAME_MAX,
        channel_max: int = DEFAULT_CHANNEL_MAX,
        client_properties: dict[str, Any] | None = None,
        locale: str = "en_US",
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        if frame_max != 0 and frame_max < FRAME_MIN_SIZE:
            raise ValueError(f"frame_max must be 0 or >= {FRAME_MIN_SIZE}, not {frame_max!r}")
        if not 0 <= channel_max <= MAX_CHANNEL_MAX:
            raise ValueError(f"channel_max must be in 0..{MAX_CHANNEL_MAX}, not {channel_max!r}")
        if not 0 <= heartbeat <= 65_535:
            raise ValueError(f"heartbeat must be in 0..65535 seconds, not {heartbeat!r}")
        if max_body_size < 0:
            raise ValueError(f"max_body_size must be >= 0, not {max_body_size!r}")
        self.username = username
        self._password = password
        self.virtual_host = virtual_host
        self.locale = locale
        self.client_properties = (
            default_client_properties() if client_properties is None else client_properties
        )
        self.max_body_size = max_body_size
        #: Our wishes until Tune, then the negotiated values.
        self.frame_max = frame_max
        self.channel_max = channel_max
        self.heartbeat = heartbeat
        self.server_properties: dict[str, Any] = {}
        #: True between Connection.Blocked and Connection.Unblocked.
        self.blocked = False
        self._state = ConnectionState.INITIAL
        self._reader = FrameReader()
        self._out: list[bytes] = []
        self._channels: dict[int, _Channel] = {}
        self._pending: deque[ev.Event] = deque()
        self._error: RemoteProtocolError | None = None
        #: Encodes publishes, with caches of what repeats between them.
        self._publishing = PublishEncoder()

    def __repr__(self) -> str:
        return (
            f"<AMQPConnection {self.username}@vhost {self.virtual_host!r} "
            f"state={self._state.value}>"
        )

    # -- state -----------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def error(self) -> RemoteProtocolError | None:
        """The protocol error that broke the connection, if any."""
        return self._error

    def channel_state(self, channel: int) -> ChannelState:
        record = self._channels.get(channel)
        return ChannelState.CLOSED if record is None else record.state

    def _transition(self, input_: ConnectionInput) -> None:
        self._state = connection_transition(self._state, input_)

    # -- output ----------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """All bytes queued for the broker, in order; empties the queue."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def _queue(self, channel: int, value: base.Frame | ContentHeader) -> None:
        self._out.append(encode_frame(channel, value))

    # -- handshake and connection-level requests --------------------------------

    def initiate(self) -> None:
        """Queue the protocol header that starts the handshake."""
        self._transition(CI.SEND_PROTOCOL_HEADER)
        self._out.append(PROTOCOL_HEADER)

    def send_heartbeat(self) -> None:
        """Queue a heartbeat frame."""
        self._transition(CI.SEND_HEARTBEAT)
        self._out.append(HEARTBEAT_FRAME)

    def close(
        self,
        reply_code: int = REPLY_SUCCESS,
        reply_text: str = "Normal shutdown",
        class_id: int = 0,
        method_id: int = 0,
    ) -> None:
        """Queue ``Connection.Close``; :class:`~._events.ConnectionCloseOk` follows."""
        self._transition(CI.SEND_CLOSE)
        self._queue(
            0,
            commands.Connection.Close(
                reply_code, _truncate_shortstr(reply_text), class_id, method_id
            ),
        )

    # -- channel-level requests ---------------------------------------------------

    def open_channel(self) -> int:
        """Queue ``Channel.Open`` on the lowest free channel number and return
        it; :class:`~._events.ChannelOpened` follows.

        Raises:
            LocalProtocolError: every channel number up to ``channel_max`` is
                in use, or the connection is not open.
        """
        limit = self.channel_max or MAX_CHANNEL_MAX
        for number in range(1, limit + 1):
            record = self._channels.get(number)
            if record is None or record.state is ChannelState.CLOSED:
                break
        else:
            raise LocalProtocolError(f"all {limit} channels are in use (channel_max)")
        self._transition(CI.SEND_CHANNEL_FRAME)
        if record is None:
            record = self._channels[number] = _Channel(number, self.max_body_size)
        record.state = channel_transition(record.state, ChannelInput.SEND_OPEN, number)
        self._queue(number, commands.Channel.Open())
        return number

    def close_channel(
        self, channel: int, reply_code: int = REPLY_SUCCESS, reply_text: str = "Normal shutdown"
    ) -> None:
        """Queue ``Channel.Close``; :class:`~._events.ChannelCloseOk` follows.
        Frames that arrive for the channel meanwhile are discarded."""
        record = self._channels.get(channel)
        state = ChannelState.CLOSED if record is None else record.state
        new_state = channel_transition(state, ChannelInput.SEND_CLOSE, channel)
        self._transition(CI.SEND_CHANNEL_FRAME)
        assert record is not None
        record.state = new_state
        record.replies.clear()
        self._queue(
            channel, commands.Channel.Close(reply_code, _truncate_shortstr(reply_text), 0, 0)
        )

    def _sending_channel(self, channel: int) -> _Channel:
        """The record of an open channel we may send on, or LocalProtocolError."""
        record = self._channels.get(channel)
        state = ChannelState.CLOSED if record is None else record.state
        if self._state is not _OPEN:
            connection_transition(self._state, CI.SEND_CHANNEL_FRAME)
        channel_transition(state, ChannelInput.SEND_METHOD, channel)
        assert record is not None
        return record

    def send_method(self, channel: int, method: base.Frame) -> bool:
        """Queue any method other than channel open/close on an open channel.

        Returns True when the method expects a reply: the broker then answers
        with exactly one :class:`~._events.MethodReply` (or, for
        ``Basic.Get``, a :class:`~._events.GetReceived`), in request order.

        Raises:
            LocalProtocolError: the channel is not open, or ``method`` is a
                channel open/close (use :meth:`open_channel` /
                :meth:`close_channel`) or not a client method.
            ValueError: a field of ``method`` cannot be encoded.
        """
        if isinstance(method, _CHANNEL_LIFECYCLE) or method.name.startswith("Connection."):
            raise LocalProtocolError(
                f"{method.name} cannot be sent with send_method; "
                "use open_channel(), close_channel() or close()"
            )
        if isinstance(method, commands.Basic.Publish):
            raise LocalProtocolError("Basic.Publish carries content: use publish()")
        record = self._sending_channel(channel)
        data = encode_frame(channel, method)
        expects_reply = method.synchronous and not getattr(method, "nowait", False)
        if isinstance(method, commands.Confirm.Select) and not record.confirming:
            record.confirming = True
            record.publish_seq = 0
        if expects_reply:
            record.replies.append((method.name, frozenset(method.valid_responses)))
        self._out.append(data)
        return expects_reply

    def acknowledge(
        self,
        channel: int,
        delivery_tag: int,
        *,
        multiple: bool = False,
        requeue: bool | None = None,
    ) -> None:
        """Queue ``Basic.Ack`` (``requeue`` None) or ``Basic.Nack`` for a
        delivery: the hot path of consuming, encoded without pamqp.

        Raises:
            LocalProtocolError: the channel is not open.
            ValueError: ``delivery_tag`` is not in 0..2**64-1.
        """
        record = self._channels.get(channel)
        if record is None or record.state is not _CHANNEL_OPEN or self._state is not _OPEN:
            self._sending_channel(channel)  # raises the right error
        if not 0 <= delivery_tag < 2**64:
            raise ValueError(f"delivery_tag must be in 0..2**64-1, not {delivery_tag!r}")
        if requeue is None:
            self._out.append(
                _ACK.pack(FRAME_METHOD, channel, 13, 60, 80, delivery_tag, multiple, FRAME_END)
            )
        else:
            bits = multiple | (requeue << 1)
            self._out.append(
                _ACK.pack(FRAME_METHOD, channel, 13, 60, 120, delivery_tag, bits, FRAME_END)
            )

    def publish(
        self,
        channel: int,
        body: bytes,
        exchange: str = "",
        routing_key: str = "",
        properties: BasicProperties | bytes | None = None,
        mandatory: bool = False,
        immediate: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> int:
        """Queue ``Basic.Publish`` with its content header and body frames
        (split to fit the negotiated ``frame_max``).  ``headers``, when not
        None, stand in for ``properties.headers``; ``properties`` may also be
        the bytes :func:`~._properties.encode_properties` made of them.

        Returns the message's publish sequence number when the channel is in
        confirm mode (1, 2, ... after ``Confirm.Select``; the broker's
        :class:`~._events.PublishAcked` / :class:`~._events.PublishNacked`
        refer to it), else 0.

        Raises:
            LocalProtocolError: the channel is not open.
            ValueError: the exchange or routing key or a property cannot be
                encoded (e.g. longer than 255 bytes).
        """
        record = self._channels.get(channel)
        if record is None or record.state is not _CHANNEL_OPEN or self._state is not _OPEN:
            record = self._sending_channel(channel)  # raises the right error
        self._publishing.encode(
            self._out,
            channel,
            body,
            exchange,
            routing_key,
            properties,
            mandatory,
            immediate,
            self.frame_max,
            headers,
        )
        if record.confirming:
            record.publish_seq += 1
            return record.publish_seq
        return 0

    def publish_many(self, channel: int, messages: Sequence[PublishFields]) -> None:
        """Queue several messages on a channel not in confirm mode, in order,
        as :meth:`publish` queues each: every one a :data:`PublishFields`
        (properties encoded, exchange and routing key valid).

        Raises:
            LocalProtocolError: the channel is not open, or is in confirm mode.
            ValueError: as :meth:`publish` (the messages before the one
                that cannot be encoded were queued).
        """
        record = self._channels.get(channel)
        if record is None or record.state is not _CHANNEL_OPEN or self._state is not _OPEN:
            record = self._sending_channel(channel)  # raises the right error
        if record.confirming:
            raise LocalProtocolError(
                f"channel {channel} is in confirm mode: publish each message to get its number"
            )
        self._publishing.encode_many(self._out, channel, messages, self.frame_max)

    # -- input -----------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes received from the broker; :meth:`next_event` parses
        them.  Bytes that arrive after the connection closed or broke are
        discarded."""
        if self._state is _CLOSED or self._error is not None:
            return
        self._reader.receive_data(data)

    @property
    def buffered(self) -> int:
        """Received bytes not parsed yet: at most one incomplete frame once
        :meth:`next_event` returned ``None``.  They shrink only when whole
        frames are taken, so a caller can tell a frame arrived."""
        return self._reader.buffered

    def next_event(self) -> ev.Event | None:
        """The next event from the received bytes, or ``None`` when more
        bytes are needed (or the connection is closed or broken).

        Raises:
            RemoteProtocolError: (a subclass) the broker broke the protocol.
                ``Connection.Close`` with the error's reply code is queued in
                :meth:`data_to_send`; later calls return ``None``.
        """
        pending = self._pending
        while not pending:
            if self._state is _CLOSED or self._error is not None:
                return None
            try:
                if self._state is _OPEN:
                    delivery = self._reader.take_delivery(self._can_take_delivery)
                    if delivery is not None:
                        return ev.DeliveryReceived(*delivery)
                frame = self._reader.next_frame()
                if frame is None:
                    return None
                self._handle_frame(frame[0], frame[1])
            except RemoteProtocolError as exc:
                self._fail(exc)
                raise
        return pending.popleft()

    def _can_take_delivery(self, channel: int, body_size: int) -> bool:
        """May a whole delivery skip frame-by-frame handling?  Only where the
        frame path would accept it as is: an open channel, no message half
        assembled, a body within the limit."""
        record = self._channels.get(channel)
        return (
            record is not None
            and record.state is _CHANNEL_OPEN
            and not record.content.in_progress
            and body_size <= record.content.max_body_size
        )

    def _fail(self, error: RemoteProtocolError) -> None:
        self._error = error
        if self._state in (ConnectionState.AWAIT_OPEN_OK, ConnectionState.OPEN):
            self._queue(
                0,
                commands.Connection.Close(
                    error.reply_code, _truncate_shortstr(error.reply_text), 0, 0
                ),
            )
            self._state = ConnectionState.CLOSING
        elif self._state is not ConnectionState.CLOSING:
            # Before Tune there is no Close to send: the socket is dropped.
            self._state = _CLOSED

    def _handle_frame(self, channel: int, value: Any) -> None:
        if channel:
            if self._state is not _OPEN:  # OPEN -> OPEN, per the table
                self._transition(CI.RECV_CHANNEL_FRAME)
            if self._state is _OPEN:
                self._handle_channel_frame(channel, value)
            return
        if isinstance(value, heartbeat.Heartbeat):
            self._transition(CI.RECV_HEARTBEAT)
        elif isinstance(value, (ContentHeader, body.ContentBody)):
            self._transition(CI.RECV_CONTENT)
        elif isinstance(value, commands.Connection.Start):
            self._transition(CI.RECV_START)
            self._on_start(value)
        elif isinstance(value, commands.Connection.Tune):
            self._transition(CI.RECV_TUNE)
            self._on_tune(value)
        elif isinstance(value, commands.Connection.OpenOk):
            self._transition(CI.RECV_OPEN_OK)
            self._pending.append(
                ev.ConnectionOpened(
                    self.server_properties, self.frame_max, self.channel_max, self.heartbeat
                )
            )
        elif isinstance(value, commands.Connection.Close):
            self._transition(CI.RECV_CLOSE)
            self._queue(0, commands.Connection.CloseOk())
            self._pending.append(
                ev.BrokerClosedConnection(
                    value.reply_code or 0,
                    value.reply_text or "",
                    value.class_id or 0,
                    value.method_id or 0,
                )
            )
        elif isinstance(value, commands.Connection.CloseOk):
            self._transition(CI.RECV_CLOSE_OK)
            self._pending.append(ev.ConnectionCloseOk())
        elif isinstance(value, commands.Connection.Blocked):
            self._transition(CI.RECV_BLOCKED)
            self.blocked = True
            self._pending.append(ev.ConnectionBlocked(value.reason))
        elif isinstance(value, commands.Connection.Unblocked):
            self._transition(CI.RECV_UNBLOCKED)
            self.blocked = False
            self._pending.append(ev.ConnectionUnblocked())
        else:
            self._transition(CI.RECV_OTHER_METHOD)

    def _on_start(self, start: commands.Connection.Start) -> None:
        if (start.version_major, start.version_minor) != (0, 9):
            raise RemoteProtocolError(
                f"broker speaks AMQP {start.version_major}-{start.version_minor}, not 0-9-1",
                NOT_IMPLEMENTED,
            )
        mechanisms = str(start.mechanisms).split()
        if "PLAIN" not in mechanisms:
            raise RemoteProtocolError(
                f"broker offers authentication mechanisms {mechanisms!r}; only PLAIN is supported",
                NOT_IMPLEMENTED,
            )
        self.server_properties = dict(start.server_properties or {})
        self._queue(
            0,
            commands.Connection.StartOk(
                client_properties=self.client_properties,
                mechanism="PLAIN",
                response=f"\0{self.username}\0{self._password}",
                locale=self.locale,
            ),
        )

    def _on_tune(self, tune: commands.Connection.Tune) -> None:
        self.channel_max = negotiate(self.channel_max, tune.channel_max) or MAX_CHANNEL_MAX
        # At most what our reader takes, also where both sides said "no limit".
        self.frame_max = min(
            negotiate(self.frame_max, tune.frame_max) or ABSOLUTE_FRAME_MAX, ABSOLUTE_FRAME_MAX
        )
        if self.frame_max < FRAME_MIN_SIZE:
            raise RemoteProtocolError(
                f"broker's frame_max {tune.frame_max} is below the minimum {FRAME_MIN_SIZE}",
                NOT_IMPLEMENTED,
            )
        self.heartbeat = negotiate(self.heartbeat, tune.heartbeat)
        self._reader.frame_max = self.frame_max
        self._queue(
            0, commands.Connection.TuneOk(self.channel_max, self.frame_max, self.heartbeat)
        )
        self._queue(0, commands.Connection.Open(virtual_host=self.virtual_host))

    # -- channel frames ------------------------------------------------------------

    def _handle_channel_frame(self, number: int, value: Any) -> None:
        record = self._channels.get(number)
        if record is None:
            if number > (self.channel_max or MAX_CHANNEL_MAX):
                raise UnexpectedFrame(
                    f"frame on channel {number}, above channel_max {self.channel_max}",
                    CHANNEL_ERROR,
                )
            record = self._channels[number] = _Channel(number, self.max_body_size)
        if isinstance(value, (ContentHeader, body.ContentBody)):
            if record.state is not _CHANNEL_OPEN:  # OPEN -> OPEN, per the table
                record.state = channel_transition(record.state, ChannelInput.RECV_CONTENT, number)
                if record.state is not _CHANNEL_OPEN:
                    return
            if isinstance(value, body.ContentBody):
                message = record.content.body(value.value)
            else:
                try:
                    message = record.content.header(value.body_size, value.properties)
                except BodyTooLarge as exc:
                    self._refuse_content(record, exc)
                    return
            if message is not None:
                self._pending.append(_message_event(number, *message))
            return
        if isinstance(value, heartbeat.Heartbeat):
            raise UnexpectedFrame(f"heartbeat frame on channel {number}, not on channel 0")
        if record.content.in_progress and record.state is _CHANNEL_OPEN:
            raise UnexpectedFrame(
                f"{value.name} on channel {number} while a message's content is incomplete"
            )
        if isinstance(value, commands.Channel.OpenOk):
            record.state = channel_transition(record.state, ChannelInput.RECV_OPEN_OK, number)
            if record.state is _CHANNEL_OPEN:
                self._pending.append(ev.ChannelOpened(number))
        elif isinstance(value, commands.Channel.Close):
            record.state = channel_transition(record.state, ChannelInput.RECV_CLOSE, number)
            self._queue(number, commands.Channel.CloseOk())
            if record.state is ChannelState.CLOSED:
                record.reset()
                self._pending.append(
                    ev.BrokerClosedChannel(
                        number,
                        value.reply_code or 0,
                        value.reply_text or "",
                        value.class_id or 0,
                        value.method_id or 0,
                    )
                )
        elif isinstance(value, commands.Channel.CloseOk):
            record.state = channel_transition(record.state, ChannelInput.RECV_CLOSE_OK, number)
            record.reset()
            self._pending.append(ev.ChannelCloseOk(number))
        else:
            if record.state is not _CHANNEL_OPEN:  # OPEN -> OPEN, per the table
                record.state = channel_transition(record.state, ChannelInput.RECV_METHOD, number)
            if record.state is _CHANNEL_OPEN:
                self._handle_channel_method(record, value)

    def _refuse_content(self, record: _Channel, refused: BodyTooLarge) -> None:
        """A message larger than ``max_body_size`` arrived on an open channel:
        close the channel (311 CONTENT_TOO_LARGE).  Its body frames, and
        whatever else the broker sent on the channel before our Close, are
        discarded as they arrive, never buffered; the broker requeues the
        message like any unacknowledged one on a closed channel."""
        number = record.number
        text = (
            f"{refused.method.name} on channel {number} carries a body of "
            f"{refused.body_size} bytes, more than max_body_size {refused.limit}"
        )
        self.close_channel(number, CONTENT_TOO_LARGE, text)
        self._pending.append(
            ev.ContentTooLarge(number, CONTENT_TOO_LARGE, text, refused.body_size)
        )

    def _handle_channel_method(self, record: _Channel, method: base.Frame) -> None:
        number = record.number
        pending = self._pending
        if isinstance(method, commands.Basic.Deliver):
            record.content.start(method)
        elif isinstance(method, (commands.Basic.Ack, commands.Basic.Nack)):
            if not record.confirming:
                raise CommandInvalid(
                    f"{method.name} on channel {number}, which is not in confirm mode"
                )
            if method.delivery_tag > record.publish_seq:
                raise CommandInvalid(
                    f"{method.name} for publish {method.delivery_tag} on channel {number}, "
                    f"but only {record.publish_seq} were published"
                )
            if isinstance(method, commands.Basic.Ack):
                pending.append(ev.PublishAcked(number, method.delivery_tag, method.multiple))
            else:
                pending.append(ev.PublishNacked(number, method.delivery_tag, method.multiple))
        elif isinstance(method, commands.Basic.Return):
            record.content.start(method)
        elif isinstance(method, commands.Basic.Cancel):
            if not method.nowait:
                self._queue(number, commands.Basic.CancelOk(method.consumer_tag))
            pending.append(ev.BrokerCancelledConsumer(number, method.consumer_tag or ""))
        elif isinstance(method, commands.Channel.Flow):
            self._queue(number, commands.Channel.FlowOk(method.active))
            pending.append(ev.ChannelFlow(number, bool(method.active)))
        elif isinstance(method, commands.Basic.GetOk):
            self._take_reply(record, method)
            record.content.start(method)
        elif method.name in _REPLY_NAMES:
            self._take_reply(record, method)
            pending.append(ev.MethodReply(number, method))
        else:
            raise CommandInvalid(f"{method.name} is not a method a client accepts")

    def _take_reply(self, record: _Channel, method: base.Frame) -> None:
        if not record.replies or method.name not in record.replies[0][1]:
            waiting = record.replies[0][0] if record.replies else "nothing"
            raise CommandInvalid(
                f"{method.name} on channel {record.number}, which is waiting for "
                f"{'a reply to ' if record.replies else ''}{waiting}"
            )
        record.replies.popleft()


def _message_event(
    channel: int, method: base.Frame, properties: BasicProperties | None, payload: bytes
) -> ev.Event:
    if isinstance(method, commands.Basic.Deliver):
        return ev.DeliveryReceived(
            channel,
            method.consumer_tag or "",
            method.delivery_tag or 0,
            bool(method.redelivered),
            method.exchange or "",
            method.routing_key or "",
            properties,
            payload,
        )
    if isinstance(method, commands.Basic.GetOk):
        return ev.GetReceived(
            channel,
            method.delivery_tag or 0,
            bool(method.redelivered),
            method.exchange or "",
            method.routing_key or "",
            method.message_count or 0,
            BasicProperties() if properties is None else properties,
            payload,
        )
    assert isinstance(method, commands.Basic.Return)
    return ev.ReturnedMessage(
        channel,
        method.reply_code or 0,
        method.reply_text or "",
        method.exchange or "",
        method.routing_key or "",
        BasicProperties() if properties is None else properties,
        payload,
    )
