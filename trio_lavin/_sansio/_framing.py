"""AMQP 0-9-1 framing: bytes to frames and frames to bytes, on top of pamqp.

Every frame on the wire is::

    type:octet  channel:short  size:long  payload:size octets  0xCE

:class:`FrameReader` reads that 7-byte header itself and checks, in this order,
the frame type, the size against the negotiated ``frame_max``, and the end
octet, before it hands the payload to pamqp.  pamqp raises many kinds of
exceptions on bad input (its own ``UnmarshalingException``, but also bare
``ValueError``, ``struct.error`` and ``KeyError``); all of them become
:class:`FrameError` (reply code 501), so a caller has exactly one exception
type to handle.  Frames with field tables (content headers,
``Connection.Start``) are decoded by :mod:`._properties` and
:mod:`._fieldtable` instead, in linear time, with their nesting bounded and
text that is not UTF-8 kept (``surrogateescape``), so that nothing a message
contains can make the connection fail.

The reader is incremental: bytes may arrive in chunks of any size, including
one byte at a time, and the frames that come out are the same.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Final, NoReturn, TypeAlias

from pamqp import base, body, commands, heartbeat
from pamqp import frame as pamqp_frame

from ._errors import FrameError, ProtocolVersionMismatch, RemoteProtocolError
from ._fieldtable import TABLE_METHOD_DECODERS, decode_method
from ._properties import (
    BasicProperties,
    ContentHeader,
    decode_content_header,
    decode_properties,
    encode_content_header,
    encode_properties,
)

FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_END_BYTES: Final = b"\xce"

#: type (1) + channel (2) + size (4)
FRAME_HEADER_SIZE: Final = 7
#: the header plus the end octet: a frame's size on the wire is payload + 8.
FRAME_OVERHEAD: Final = FRAME_HEADER_SIZE + 1

#: The specification's frame-min-size: every peer accepts frames this large.
FRAME_MIN_SIZE: Final = 4096

#: The largest frame accepted before Connection.Tune has fixed frame_max.  The
#: only frames the broker sends before that are Connection.Start/Secure/Tune,
#: and a Start carrying server properties fits easily; 128 KiB is RabbitMQ's
#: default frame_max, so a broker never needs more, and a hostile peer cannot
#: make us buffer more than this before the handshake.
PRE_TUNE_FRAME_MAX: Final = 131_072

#: The largest frame_max we ever accept, whatever is negotiated: frame sizes
#: travel in a 32-bit field, but buffering a 4 GiB frame is a denial of
#: service.  RabbitMQ caps frame_max at 128 KiB by default and LavinMQ at 1 MiB.
ABSOLUTE_FRAME_MAX: Final = 16 * 1024 * 1024

#: The protocol header a client sends first: "AMQP" 0 0 9 1.
PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"

_HEADER = struct.Struct(">BHI")

FrameValue: TypeAlias = base.Frame | ContentHeader | body.ContentBody | heartbeat.Heartbeat
#: A decoded frame: (channel number, pamqp frame object).
Frame: TypeAlias = tuple[int, FrameValue]
#: A whole delivery from :meth:`FrameReader.take_delivery`: channel, consumer tag, delivery
#: tag, redelivered, exchange, routing key, properties (None: none set) and body.
DeliveryFields: TypeAlias = tuple[int, str, int, bool, str, str, BasicProperties | None, bytes]


_CONTENT_HEADER_FIXED = struct.Struct(">HHQ")
#: The class and method id that start a Basic.Deliver method payload.
_DELIVER_ID: Final = b"\x00\x3c\x00\x3c"
_TAG = struct.Struct(">Q")
#: No Deliver decoded yet: a frame type that take_delivery never gets this far with.
_NO_DELIVER: Final = (b"\x00", b"", (0, "", "", ""))


def _read_shortstr(payload: bytes, offset: int) -> tuple[str, int]:
    """A short string at ``offset``; text that is not UTF-8 is kept with
    ``surrogateescape`` (a broker relays routing keys as it got them)."""
    end = offset + 1 + payload[offset]
    if end > len(payload):
        raise ValueError("short string runs past the end of the frame")
    return payload[offset + 1 : end].decode("utf-8", "surrogateescape"), end


def _read_shortstr_in(buf: bytearray, offset: int, limit: int) -> tuple[str, int]:
    """A short string at ``offset`` of ``buf`` that must end by ``limit``."""
    if offset >= limit:
        raise ValueError("short string starts past the end of the frame")
    end = offset + 1 + buf[offset]
    if end > limit:
        raise ValueError("short string runs past the end of the frame")
    return buf[offset + 1 : end].decode("utf-8", "surrogateescape"), end


def _decode_deliver(payload: bytes) -> commands.Basic.Deliver:
    """Basic.Deliver without pamqp's generic decoder (the hottest frame)."""
    consumer_tag, offset = _read_shortstr(payload, 4)
    (delivery_tag,) = _TAG.unpack_from(payload, offset)
    redelivered = bool(payload[offset + 8] & 1)
    exchange, offset = _read_shortstr(payload, offset + 9)
    routing_key, offset = _read_shortstr(payload, offset)
    method = commands.Basic.Deliver.__new__(commands.Basic.Deliver)
    method.consumer_tag = consumer_tag
    method.delivery_tag = delivery_tag
    method.redelivered = redelivered
    method.exchange = exchange
    method.routing_key = routing_key
    return method


def _decode_ack(payload: bytes) -> commands.Basic.Ack:
    (delivery_tag,) = _TAG.unpack_from(payload, 4)
    method = commands.Basic.Ack.__new__(commands.Basic.Ack)
    method.delivery_tag = delivery_tag
    method.multiple = bool(payload[12] & 1)
    return method


def _decode_nack(payload: bytes) -> commands.Basic.Nack:
    (delivery_tag,) = _TAG.unpack_from(payload, 4)
    bits = payload[12]
    method = commands.Basic.Nack.__new__(commands.Basic.Nack)
    method.delivery_tag = delivery_tag
    method.multiple = bool(bits & 1)
    method.requeue = bool(bits & 2)
    return method


#: Hand-written decoders for the hot methods, by method id, and for methods
#: with field tables (pamqp's decoder is quadratic and recursive, see
#: _fieldtable.py); everything else goes through pamqp.
#: tests/sansio/test_fastpath.py and test_fieldtable.py check they agree.
_FAST_METHODS: Final[dict[int, Callable[[bytes], base.Frame]]] = {
    **TABLE_METHOD_DECODERS,
    # Methods whose text may not be UTF-8, which pamqp's decoder refuses: what
    # a publisher sent (exchange, routing key), and reply texts RabbitMQ cuts
    # at 252 bytes wherever a character ends.
    **{
        method_class.index: functools.partial(decode_method, method_class)
        for method_class in (
            commands.Basic.Return,
            commands.Basic.GetOk,
            commands.Connection.Close,
            commands.Channel.Close,
            commands.Connection.Blocked,
        )
    },
    commands.Basic.Deliver.index: _decode_deliver,
    commands.Basic.Ack.index: _decode_ack,
    commands.Basic.Nack.index: _decode_nack,
}


class FrameReader:
    """Turns a byte stream from the broker into frames.

    Feed bytes with :meth:`receive_data`, then call :meth:`next_frame` until it
    returns ``None`` (more bytes needed).  What stays buffered then is one
    incomplete frame, whose header was already checked against
    :attr:`frame_max`: less than ``frame_max`` bytes, so a caller that reads
    at most N bytes at a time holds at most ``frame_max + N``.  After a :class:`FrameError` the
    reader is broken: every later call raises the same error again, because
    there is no way to find the next frame boundary in a corrupt stream.
    """

    def __init__(self, frame_max: int = PRE_TUNE_FRAME_MAX) -> None:
        self._buffer = bytearray()
        self._start = 0
        self._seen_first_frame = False
        self._error: RemoteProtocolError | None = None
        #: The last Deliver frame take_delivery decoded, as (its bytes up to
        #: the delivery tag, its bytes after the redelivered octet, (channel,
        #: consumer tag, exchange, routing key)).
        self._last_deliver: tuple[bytes, bytes, tuple[int, str, str, str]] = _NO_DELIVER
        self.frame_max = frame_max

    @property
    def frame_max(self) -> int:
        """The largest frame (payload + 8) accepted; 0 in AMQP means "no
        limit", which here means :data:`ABSOLUTE_FRAME_MAX`."""
        return self._frame_max

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"frame_max must be >= 0, not {value!r}")
        self._frame_max = ABSOLUTE_FRAME_MAX if value == 0 else min(value, ABSOLUTE_FRAME_MAX)
        self._last_deliver = _NO_DELIVER  # checked against the old frame_max

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as frames."""
        return len(self._buffer) - self._start

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the broker."""
        if self._start and self._start * 2 >= len(self._buffer):
            # Drop consumed bytes once they are at least half the buffer: the
            # copy is amortised over many frames instead of one per frame.
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or ``None`` if more bytes are needed.

        Raises:
            FrameError: the bytes are not a valid frame (reply code 501).
            ProtocolVersionMismatch: the broker answered with its own protocol
                header instead of a frame (it does not speak AMQP 0-9-1).
        """
        if self._error is not None:
            raise self._error
        buf = self._buffer
        start = self._start
        available = len(buf) - start
        if available < FRAME_HEADER_SIZE:
            if not self._seen_first_frame and available and buf[start] == PROTOCOL_HEADER[0]:
                self._check_protocol_header()
            return None
        frame_type, channel, size = _HEADER.unpack_from(buf, start)
        if not self._seen_first_frame and frame_type == PROTOCOL_HEADER[0]:
            self._check_protocol_header()
            return None
        if frame_type not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT):
            self._fail(f"unknown frame type {frame_type} on channel {channel}")
        if size + FRAME_OVERHEAD > self._frame_max:
            self._fail(
                f"frame of {size + FRAME_OVERHEAD} bytes on channel {channel} "
                f"exceeds frame_max {self._frame_max}"
            )
        end = start + FRAME_HEADER_SIZE + size
        if len(buf) <= end:
            return None
        if buf[end] != FRAME_END:
            self._fail(f"frame end octet is {buf[end]:#04x}, expected {FRAME_END:#04x}")
        self._start = end + 1
        self._seen_first_frame = True
        payload = bytes(buf[start + FRAME_HEADER_SIZE : end])
        return channel, self._decode(frame_type, channel, payload)

    def take_delivery(self, accept: Callable[[int, int], bool]) -> DeliveryFields | None:
        """The hot path of consuming: if the buffer starts with a complete
        ``Basic.Deliver`` + content header + (at most one) body frame, all
        well-formed and on one channel, and ``accept(channel, body_size)``
        agrees, consume the three frames and return them decoded: (channel,
        consumer tag, delivery tag, redelivered, exchange, routing key,
        properties or None when the message has none, body).

        Anything else - an incomplete message, another frame type, a body in
        several frames, any irregularity - returns None without consuming a
        byte, and :meth:`next_frame` then handles (or rejects) the frames one
        by one, exactly as without this shortcut.
        """
        if self._error is not None or not self._seen_first_frame:
            return None
        buf = self._buffer
        start = self._start
        end = len(buf)
        limit = self._frame_max
        if end - start < 11 or buf[start] != FRAME_METHOD:
            return None
        prefix, suffix, last = self._last_deliver
        tag_at = start + len(prefix)
        names: tuple[int, str, str, str] | None = None
        if buf.startswith(prefix, start) and buf.startswith(suffix, tag_at + 9):
            # The last Deliver's frame but for the delivery tag and the
            # redelivered octet: the same channel, consumer, exchange and
            # routing key, as a consumer's deliveries mostly are.
            names = last
            channel = last[0]
            method_end = tag_at + 8 + len(suffix)
        else:
            _, channel, size = _HEADER.unpack_from(buf, start)
            if buf[start + 7 : start + 11] != _DELIVER_ID or size + FRAME_OVERHEAD > limit:
                return None
            method_end = start + FRAME_HEADER_SIZE + size
        header_start = method_end + 1
        if header_start + FRAME_HEADER_SIZE > end or buf[method_end] != FRAME_END:
            return None
        frame_type, header_channel, header_size = _HEADER.unpack_from(buf, header_start)
        if (
            frame_type != FRAME_HEADER
            or header_channel != channel
            or header_size < 14
            or header_size + FRAME_OVERHEAD > limit
        ):
            return None
        header_end = header_start + FRAME_HEADER_SIZE + header_size
        if header_end >= end or buf[header_end] != FRAME_END:
            return None
        class_id, weight, body_size = _CONTENT_HEADER_FIXED.unpack_from(
            buf, header_start + FRAME_HEADER_SIZE
        )
        if class_id != commands.Basic.frame_id or weight:
            return None
        if body_size:
            body_start = header_end + 1
            if body_start + FRAME_HEADER_SIZE > end:
                return None
            frame_type, body_channel, body_frame_size = _HEADER.unpack_from(buf, body_start)
            if (
                frame_type != FRAME_BODY
                or body_channel != channel
                or body_frame_size != body_size
                or body_size + FRAME_OVERHEAD > limit
            ):
                return None
            body_end = body_start + FRAME_HEADER_SIZE + body_size
            if body_end >= end or buf[body_end] != FRAME_END:
                return None
            payload = bytes(buf[body_start + FRAME_HEADER_SIZE : body_end])
            after = body_end + 1
        else:
            payload = b""
            after = header_end + 1
        if not accept(channel, body_size):
            return None
        if names is not None:
            _, consumer_tag, exchange, routing_key = names
        else:
            try:
                consumer_tag, tag_at = _read_shortstr_in(
                    buf, start + FRAME_HEADER_SIZE + 4, method_end
                )
                if tag_at + 9 > method_end:
                    return None
                exchange, offset = _read_shortstr_in(buf, tag_at + 9, method_end)
                routing_key, offset = _read_shortstr_in(buf, offset, method_end)
            except ValueError:  # a string that runs past the frame
                return None
            names = (channel, consumer_tag, exchange, routing_key)
            self._last_deliver = (
                bytes(buf[start:tag_at]),
                bytes(buf[tag_at + 9 : method_end + 1]),
                names,
            )
        (delivery_tag,) = _TAG.unpack_from(buf, tag_at)
        redelivered = bool(buf[tag_at + 8] & 1)
        flags_at = header_start + FRAME_HEADER_SIZE + 12
        if buf[flags_at] == 0 and buf[flags_at + 1] == 0:
            properties = None  # no property flags: the usual case
        else:
            try:
                properties = decode_properties(buf, flags_at, header_end)
            except Exception:
                # Undecodable: leave it to next_frame, which returns the frames
                # before the bad one (the Deliver) first, then fails.
                return None
        self._start = after
        return (
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            properties,
            payload,
        )

    def _check_protocol_header(self) -> None:
        got = bytes(self._buffer[self._start : self._start + len(PROTOCOL_HEADER)])
        if not b"AMQP".startswith(got[:4]):
            self._fail(f"stream starts with {got!r}, which is neither a frame nor AMQP")
        if len(got) < len(PROTOCOL_HEADER):
            return
        self._error = ProtocolVersionMismatch(
            f"broker answered with protocol header {got!r}: it does not accept "
            f"AMQP 0-9-1 ({PROTOCOL_HEADER!r})"
        )
        raise self._error

    def _decode(self, frame_type: int, channel: int, payload: bytes) -> FrameValue:
        if frame_type == FRAME_BODY:
            return body.ContentBody(payload)
        if frame_type == FRAME_HEARTBEAT:
            if payload:
                self._fail(f"heartbeat frame with a {len(payload)}-byte payload")
            return heartbeat.Heartbeat()
        try:
            if frame_type == FRAME_METHOD:
                if len(payload) < 4:
                    self._fail(f"method frame of {len(payload)} bytes has no method id")
                method_id = int.from_bytes(payload[:4], "big")
                fast = _FAST_METHODS.get(method_id)
                if fast is not None:
                    return fast(payload)
                try:
                    method = commands.INDEX_MAPPING[method_id]()
                except KeyError:
                    self._fail(f"unknown method id {method_id:#010x} on channel {channel}")
                method.unmarshal(payload[4:])
                return method  # type: ignore[no-any-return]
            return decode_content_header(payload)
        except FrameError:
            raise
        except Exception as exc:  # pamqp raises many types on bad input; see module doc
            kind = "method" if frame_type == FRAME_METHOD else "content header"
            self._fail(
                f"undecodable {kind} frame on channel {channel}: {type(exc).__name__}: {exc}",
                cause=exc,
            )

    def _fail(self, message: str, cause: BaseException | None = None) -> NoReturn:
        self._error = FrameError(message)
        raise self._error from cause


def encode_frame(channel: int, value: FrameValue) -> bytes:
    """Encode one frame (methods with pamqp).

    Raises:
        ValueError: ``value`` cannot be encoded (a bad field value); the
            message names the method.
    """
    if isinstance(value, ContentHeader):
        return encode_content_header(channel, value.body_size, encode_properties(value.properties))
    try:
        return pamqp_frame.marshal(value, channel)
    except (ValueError, TypeError, OverflowError, struct.error) as exc:
        raise ValueError(f"cannot encode {value.name} on channel {channel}: {exc}") from exc


def encode_content(
    channel: int,
    method: base.Frame,
    properties: BasicProperties | None,
    payload: bytes,
    frame_max: int,
) -> list[bytes]:
    """Encode a content-bearing method (e.g. Basic.Publish) with its content
    header and as many body frames as ``frame_max`` requires.

    Each body frame carries at most ``frame_max - 8`` bytes; an empty body
    sends no body frame at all.  ``frame_max`` 0 means no limit.
    """
    frames = [
        encode_frame(channel, method),
        encode_content_header(channel, len(payload), encode_properties(properties)),
    ]
    if payload:
        chunk = (frame_max - FRAME_OVERHEAD) if frame_max else len(payload)
        if chunk <= 0:
            raise ValueError(f"frame_max {frame_max} leaves no room for a body")
        view = memoryview(payload)
        for offset in range(0, len(payload), chunk):
            piece = view[offset : offset + chunk]
            frames.append(
                b"".join((_HEADER.pack(FRAME_BODY, channel, len(piece)), piece, FRAME_END_BYTES))
            )
    return frames
