"""A minimal AMQP 0-9-1 wire codec for the ceiling clients and the suite's own housekeeping.

Hand-encoded with :mod:`struct`, no library: this is the least work a Python client can do
per message, so the two ceiling clients built on it (blocking sockets, trio streams) show what
the broker allows a Python process on this machine.  It covers only what the benchmarks use:
the handshake (PLAIN, no heartbeats), one channel, queue declare/delete, qos, consume,
confirm.select, publish (bodies that fit one frame), ack.  Parsing is minimal but correct:
every frame's size and end octet are checked, a delivery counts once its content header and
all of its body have arrived, and confirms are tracked with ``multiple`` ranges.

:class:`Wire` is sans-IO (bytes in, counters and replies out); :class:`SocketClient` drives
it with a blocking socket.  ``suite_ceiling.py`` drives it with trio streams as well.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote, urlsplit

from suite_common import (
    CONTENT_TYPE,
    HEADER_ATTEMPT,
    HEADER_SOURCE,
    PERSISTENT,
    message_ids,
)

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
#: The largest frame we ask for; bodies here are far smaller.
FRAME_MAX: Final = 131_072
#: Read this much per receive call.
RECEIVE_SIZE: Final = 256 * 1024

_HEADER = struct.Struct(">BHI")
_CLASS_METHOD = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _id(class_id: int, method_id: int) -> int:
    return class_id << 16 | method_id


START: Final = _id(10, 10)
TUNE: Final = _id(10, 30)
OPEN_OK: Final = _id(10, 41)
CLOSE: Final = _id(10, 50)
CLOSE_OK: Final = _id(10, 51)
CHANNEL_OPEN_OK: Final = _id(20, 11)
CHANNEL_CLOSE: Final = _id(20, 40)
DECLARE_OK: Final = _id(50, 11)
DELETE_OK: Final = _id(50, 41)
QOS_OK: Final = _id(60, 11)
CONSUME_OK: Final = _id(60, 21)
DELIVER: Final = _id(60, 60)
ACK: Final = _id(60, 80)
NACK: Final = _id(60, 120)
SELECT_OK: Final = _id(85, 11)


class WireError(Exception):
    """The broker closed the connection or channel, or sent something we cannot parse."""


def parse_url(url: str) -> tuple[str, int, str, str, str]:
    """``amqp://user:password@host:port/vhost`` -> (host, port, user, password, vhost)."""
    parts = urlsplit(url)
    if parts.scheme != "amqp":
        raise ValueError(f"only amqp:// URLs are supported here, not {parts.scheme!r}")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return (
        parts.hostname or "localhost",
        parts.port or 5672,
        unquote(parts.username or "guest"),
        unquote(parts.password or "guest"),
        unquote(path) if path else "/",
    )


# -- encoding ------------------------------------------------------------------------------


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, channel, len(payload)) + payload + b"\xce"


def method(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", class_id, method_id) + args)


def shortstr(value: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"shortstr longer than 255 bytes: {value!r}")
    return bytes([len(data)]) + data


def longstr(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


#: How pamqp (and so trio-lavin and aiormq) encodes an int in a field table: the smallest
#: of these types that holds it.
_TABLE_INTS: Final = (
    (-(1 << 7), (1 << 7) - 1, b"b", ">b"),
    (-(1 << 15), (1 << 15) - 1, b"s", ">h"),
    (0, (1 << 16) - 1, b"u", ">H"),
    (-(1 << 31), (1 << 31) - 1, b"I", ">i"),
    (0, (1 << 32) - 1, b"i", ">I"),
    (-(1 << 63), (1 << 63) - 1, b"l", ">q"),
)


def _table_int(value: int) -> bytes:
    for low, high, tag, fmt in _TABLE_INTS:
        if low <= value <= high:
            return tag + struct.pack(fmt, value)
    raise ValueError(f"int out of range for a field table: {value!r}")


def table(values: dict[str, int | str]) -> bytes:
    """A field table of ints and strings ('S'), as pamqp encodes it: keys sorted, each int
    as the smallest type that holds it."""
    out = bytearray()
    for key, value in sorted(values.items()):
        out += shortstr(key)
        if isinstance(value, int):
            out += _table_int(value)
        else:
            out += b"S" + longstr(value.encode())
    return longstr(bytes(out))


#: Property flags of a content header (AMQP 0-9-1, class basic), the ones used here.
_FLAG_CONTENT_TYPE: Final = 1 << 15
_FLAG_HEADERS: Final = 1 << 13
_FLAG_DELIVERY_MODE: Final = 1 << 12
_FLAG_MESSAGE_ID: Final = 1 << 7
_FLAG_TIMESTAMP: Final = 1 << 6
#: Encoded properties with none set: the flag word alone.
NO_PROPERTIES: Final = b"\x00\x00"


def basic_properties(
    *,
    content_type: str,
    headers: dict[str, int | str],
    delivery_mode: int,
    message_id: str,
    timestamp: int,
) -> bytes:
    """Content-header properties (flags, then the set fields in flag order), byte for byte
    as pamqp's ``Basic.Properties.marshal`` encodes the same values."""
    flags = (
        _FLAG_CONTENT_TYPE
        | _FLAG_HEADERS
        | _FLAG_DELIVERY_MODE
        | _FLAG_MESSAGE_ID
        | _FLAG_TIMESTAMP
    )
    return (
        struct.pack(">H", flags)
        + shortstr(content_type)
        + table(headers)
        + bytes([delivery_mode])
        + shortstr(message_id)
        + _U64.pack(timestamp)
    )


def bits(*flags: bool) -> bytes:
    return bytes([sum(1 << i for i, flag in enumerate(flags) if flag)])


def publish_frames(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: bytes = NO_PROPERTIES,
) -> bytes:
    """basic.publish + content header (``properties`` encoded, default none) + one body
    frame."""
    if len(body) > FRAME_MAX - 8:
        raise ValueError("this codec publishes bodies that fit one frame only")
    return (
        method(channel, 60, 40, b"\x00\x00" + shortstr(exchange) + shortstr(routing_key) + b"\0")
        + frame(FRAME_HEADER, channel, struct.pack(">HHQ", 60, 0, len(body)) + properties)
        + frame(FRAME_BODY, channel, body)
    )


def realistic_properties(seed: int | None = None) -> Iterator[bytes]:
    """Endless encoded properties of the ``realistic`` message profile, one per message
    (its own message_id and traceparent, the timestamp when it was encoded), all of the
    same size."""
    for message_id, traceparent in message_ids(seed):
        yield basic_properties(
            content_type=CONTENT_TYPE,
            headers={
                "source": HEADER_SOURCE,
                "attempt": HEADER_ATTEMPT,
                "traceparent": traceparent,
            },
            delivery_mode=PERSISTENT,
            message_id=message_id,
            timestamp=int(time.time()),
        )


def ack_frame(channel: int, delivery_tag: int, multiple: bool) -> bytes:
    return method(channel, 60, 80, _U64.pack(delivery_tag) + bits(multiple))


def queue_declare(
    channel: int,
    queue: str,
    *,
    passive: bool = False,
    arguments: dict[str, int | str] | None = None,
) -> bytes:
    flags = bits(passive, False, False, False, False)  # durable, exclusive, auto_delete, nowait
    return method(channel, 50, 10, b"\0\0" + shortstr(queue) + flags + table(arguments or {}))


def queue_delete(channel: int, queue: str) -> bytes:
    return method(channel, 50, 40, b"\0\0" + shortstr(queue) + b"\0")


def basic_qos(channel: int, prefetch_count: int) -> bytes:
    return method(channel, 60, 10, struct.pack(">IHB", 0, prefetch_count, 0))


def basic_consume(channel: int, queue: str, tag: str, *, no_ack: bool) -> bytes:
    args = b"\0\0" + shortstr(queue) + shortstr(tag) + bits(False, no_ack, False, False)
    return method(channel, 60, 20, args + table({}))


def confirm_select(channel: int) -> bytes:
    return method(channel, 85, 10, b"\0")


# -- decoding ------------------------------------------------------------------------------


class ConfirmTracker:
    """Publisher confirms with ``multiple`` ranges, O(1) amortised per confirm.

    Delivery tags are 1, 2, ... in publish order.  Everything up to ``floor`` is settled;
    ``above`` holds single settlements beyond it.
    """

    def __init__(self) -> None:
        self.floor = 0
        self.above: set[int] = set()
        self.nacked = 0

    @property
    def settled(self) -> int:
        return self.floor + len(self.above)

    def settle(self, tag: int, multiple: bool) -> None:
        if tag <= self.floor:
            return
        if multiple:
            self.above = {t for t in self.above if t > tag} if self.above else self.above
            self.floor = tag
        else:
            self.above.add(tag)
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)


class Wire:
    """Bytes in, counters and replies out, for channel ``channel`` of one connection.

    ``feed(data)`` parses every complete frame: deliveries bump ``delivered`` (and, when
    ``ack_every`` is set, queue a ``multiple`` ack every ``ack_every``-th delivery and at
    ``ack_target``), confirms go to ``confirms``, and other methods are appended to
    ``replies`` as ``(class_method_id, payload)``.  ``pending_output()`` returns the acks to
    send.  Connection.Close and Channel.Close raise :class:`WireError`.
    """

    def __init__(self, channel: int = 1) -> None:
        self.channel = channel
        self._buffer = bytearray()
        self.replies: deque[tuple[int, bytes]] = deque()
        self.confirms = ConfirmTracker()
        self.delivered = 0
        self.ack_every = 0
        self.ack_target = 0
        self._out = bytearray()
        # Content being received: delivery tag, body bytes still expected (-1: the header).
        self._tag = 0
        self._remaining: int | None = None

    def pending_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        size = len(buffer)
        pos = 0
        unpack_header = _HEADER.unpack_from
        while size - pos >= 7:
            kind, channel, length = unpack_header(buffer, pos)
            end = pos + 7 + length
            if length > FRAME_MAX:
                raise WireError(f"frame of {length} bytes exceeds frame_max {FRAME_MAX}")
            if end >= size:
                break
            if buffer[end] != FRAME_END:
                raise WireError(f"frame end octet is {buffer[end]:#x}, not 0xce")
            if kind == FRAME_METHOD:
                self._method(channel, bytes(buffer[pos + 7 : end]))
            elif kind == FRAME_HEADER:
                self._header(channel, buffer, pos + 7)
            elif kind == FRAME_BODY:
                self._body(channel, length)
            elif kind != FRAME_HEARTBEAT:
                raise WireError(f"unknown frame type {kind}")
            pos = end + 1
        del buffer[:pos]

    def _method(self, channel: int, payload: bytes) -> None:
        (cm,) = _CLASS_METHOD.unpack_from(payload)
        if cm == DELIVER:
            if self._remaining is not None:
                raise WireError("basic.deliver while a message's content was incomplete")
            (self._tag,) = _U64.unpack_from(payload, 5 + payload[4])
            self._remaining = -1
        elif cm in (ACK, NACK):
            (tag,) = _U64.unpack_from(payload, 4)
            if cm == NACK:
                self.confirms.nacked += 1
            self.confirms.settle(tag, bool(payload[12] & 1))
        elif cm in (CLOSE, CHANNEL_CLOSE):
            (code,) = struct.unpack_from(">H", payload, 4)
            text = payload[7 : 7 + payload[6]].decode(errors="replace")
            what = "connection" if cm == CLOSE else f"channel {channel}"
            raise WireError(f"the broker closed the {what}: {code} {text}")
        else:
            self.replies.append((cm, payload))

    def _header(self, channel: int, buffer: bytearray, at: int) -> None:
        if self._remaining != -1:
            raise WireError("content header without a basic.deliver before it")
        (body_size,) = _U64.unpack_from(buffer, at + 4)
        self._remaining = body_size
        if body_size == 0:
            self._delivered()

    def _body(self, channel: int, length: int) -> None:
        if self._remaining is None or self._remaining < length:
            raise WireError(f"unexpected body frame of {length} bytes")
        self._remaining -= length
        if self._remaining == 0:
            self._delivered()

    def _delivered(self) -> None:
        self._remaining = None
        self.delivered += 1
        if self.ack_every and (
            self.delivered % self.ack_every == 0 or self.delivered == self.ack_target
        ):
            self._out += ack_frame(self.channel, self._tag, True)

    def take_reply(self, expected: int) -> bytes | None:
        """The first reply, if one arrived; it must be ``expected``."""
        if not self.replies:
            return None
        cm, payload = self.replies.popleft()
        if cm != expected:
            raise WireError(f"expected method {expected:#x}, got {cm:#x}")
        return payload


def start_ok(user: str, password: str) -> bytes:
    response = b"\0" + user.encode() + b"\0" + password.encode()
    args = (
        table({"product": "trio-lavin benchmark ceiling client"})
        + shortstr("PLAIN")
        + longstr(response)
        + shortstr("en_US")
    )
    return method(0, 10, 11, args)


def tune_ok(payload: bytes) -> bytes:
    """Our TuneOk for the broker's Tune: its channel_max, min frame_max, no heartbeats."""
    channel_max, frame_max, _heartbeat = struct.unpack_from(">HIH", payload, 4)
    frame_max = min(frame_max or FRAME_MAX, FRAME_MAX)
    return method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))


def connection_open(vhost: str) -> bytes:
    return method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\0")


def connection_close() -> bytes:
    return method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0))


def channel_open(channel: int) -> bytes:
    return method(channel, 20, 10, shortstr(""))


def declare_ok_count(payload: bytes) -> int:
    """message_count from a queue.declare-ok payload."""
    (count,) = struct.unpack_from(">I", payload, 5 + payload[4])
    return int(count)


class SocketClient:
    """The wire codec over one blocking socket, with one channel (number 1).

    Every receive has a timeout; :meth:`call` and :meth:`wait_for` give up at their deadline.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.host, self.port, self.user, self.password, self.vhost = parse_url(url)
        self.timeout = timeout
        self.wire = Wire(1)
        self.sock = socket.create_connection((self.host, self.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._handshake()

    def _handshake(self) -> None:
        self.sock.sendall(PROTOCOL_HEADER)
        self.start_payload = self._wait_reply(START)
        self.sock.sendall(start_ok(self.user, self.password))
        tune = self._wait_reply(TUNE)
        self.sock.sendall(tune_ok(tune) + connection_open(self.vhost))
        self._wait_reply(OPEN_OK)
        self.call(channel_open(1), CHANNEL_OPEN_OK)

    def receive(self) -> None:
        """One receive (blocking, bounded by the socket timeout), fed to the wire."""
        data = self.sock.recv(RECEIVE_SIZE)
        if not data:
            raise WireError("the broker closed the TCP connection")
        self.wire.feed(data)
        out = self.wire.pending_output()
        if out:
            self.sock.sendall(out)

    def _wait_reply(self, expected: int) -> bytes:
        deadline = time.monotonic() + self.timeout
        while True:
            payload = self.wire.take_reply(expected)
            if payload is not None:
                return payload
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply {expected:#x} within {self.timeout} s")
            self.receive()

    def call(self, request: bytes, expected: int) -> bytes:
        self.sock.sendall(request)
        return self._wait_reply(expected)

    def message_count(self, queue: str) -> int:
        return declare_ok_count(self.call(queue_declare(1, queue, passive=True), DECLARE_OK))

    def declare(self, queue: str, arguments: dict[str, int | str] | None = None) -> None:
        self.call(queue_declare(1, queue, arguments=arguments), DECLARE_OK)

    def delete(self, queue: str) -> None:
        self.call(queue_delete(1, queue), DELETE_OK)

    def confirm_select(self) -> None:
        self.call(confirm_select(1), SELECT_OK)

    def close(self) -> None:
        try:
            self.sock.sendall(connection_close())
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not self.wire.replies:
                self.receive()
        except (OSError, WireError):
            pass
        finally:
            self.sock.close()

    def preload(
        self,
        queue: str,
        count: int,
        body: bytes,
        *,
        properties: Iterator[bytes] | None = None,
        batch: int = 1000,
    ) -> None:
        """Publish ``count`` messages to ``queue`` with confirms; return once all are acked.
        ``properties``: each message's encoded properties (default: none).

        The channel is in confirm mode afterwards."""
        self.confirm_select()
        start = self.wire.confirms.settled
        sent = 0
        while sent < count:
            n = min(batch, count - sent)
            if properties is None:
                self.sock.sendall(publish_frames(1, "", queue, body) * n)
            else:
                frames = [publish_frames(1, "", queue, body, next(properties)) for _ in range(n)]
                self.sock.sendall(b"".join(frames))
            sent += n
            while sent - (self.wire.confirms.settled - start) > 4 * batch:
                self.receive()
        deadline = time.monotonic() + max(30.0, count / 10_000)
        while self.wire.confirms.settled - start < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"preloading {count} messages took too long")
            self.receive()
        if self.wire.confirms.nacked:
            raise WireError(f"the broker nacked {self.wire.confirms.nacked} preloaded messages")
