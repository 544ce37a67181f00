"""Message properties: :class:`BasicProperties`, and its encoding in a
content header, both ways.

The content header carries a 16-bit flag word (one bit per property set, in
the order below), then the set properties in that order: short strings
(length octet and UTF-8), ``headers`` as a field table (see
:mod:`._fieldtable` for its types), ``delivery_mode`` and ``priority`` as
octets and ``timestamp`` as unsigned 64-bit seconds.  Faithful both ways: an
empty string is a property set to ``""`` (not one left out), a timestamp is
the seconds on the wire (no guessing at milliseconds), and text that is not
UTF-8 is decoded with ``surrogateescape`` and encoded back to the same bytes.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import datetime
import os
import struct
from typing import Any, Final

from ._fieldtable import (
    UTC,
    decode_timestamp,
    encode_shortstr,
    encode_table,
    encode_timestamp,
    table,
)

try:
    from . import _speedups
except ImportError:  # built without a C compiler: the Python functions below
    _speedups = None  # type: ignore[assignment]

_FLAGS: Final = struct.Struct(">H")
_U64: Final = struct.Struct(">Q")
_OCTET: Final = tuple(bytes((n,)) for n in range(256))

#: The properties in their wire order, with their flag bits.
PROPERTY_FLAGS: Final = {
    "content_type": 0x8000,
    "content_encoding": 0x4000,
    "headers": 0x2000,
    "delivery_mode": 0x1000,
    "priority": 0x0800,
    "correlation_id": 0x0400,
    "reply_to": 0x0200,
    "expiration": 0x0100,
    "message_id": 0x0080,
    "timestamp": 0x0040,
    "message_type": 0x0020,
    "user_id": 0x0010,
    "app_id": 0x0008,
    "cluster_id": 0x0004,
}


class BasicProperties:
    """A message's properties, as published and as delivered.

    Every property is None when the message does not carry it, and only
    what is not None goes on the wire (an empty string is sent as one).
    Values are checked when the message is published: a property that
    cannot be encoded makes that publish raise :class:`ValueError` naming
    it, and nothing is sent.

    - ``content_type``, ``content_encoding``, ``correlation_id``,
      ``reply_to``, ``expiration``, ``message_id``, ``message_type`` (AMQP's
      ``type``), ``user_id``, ``app_id``, ``cluster_id``: str, at most 255
      bytes of UTF-8.  Received text that is not UTF-8 arrives with its
      stray bytes as surrogates (``surrogateescape``), and publishing such
      a str sends the original bytes.
    - ``headers``: a dict; see "Header values" in docs/producing.md for
      the types it may hold and what each becomes on the wire.
    - ``delivery_mode`` (1 transient, 2 persistent) and ``priority``: int,
      0 to 255.
    - ``timestamp``: a datetime (a naive one is taken as UTC) or int
      seconds since 1970; received as an aware UTC datetime (an int past
      the year 9999).
    """

    __slots__ = (
        "app_id",
        "cluster_id",
        "content_encoding",
        "content_type",
        "correlation_id",
        "delivery_mode",
        "expiration",
        "headers",
        "message_id",
        "message_type",
        "priority",
        "reply_to",
        "timestamp",
        "user_id",
    )

    def __init__(
        self,
        *,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | None = None,
        message_id: str | None = None,
        timestamp: datetime.datetime | int | None = None,
        message_type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.headers = headers
        self.delivery_mode = delivery_mode
        self.priority = priority
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.expiration = expiration
        self.message_id = message_id
        self.timestamp = timestamp
        self.message_type = message_type
        self.user_id = user_id
        self.app_id = app_id
        self.cluster_id = cluster_id

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in PROPERTY_FLAGS])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BasicProperties):
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in PROPERTY_FLAGS
            if getattr(self, name) is not None
        )
        return f"BasicProperties({shown})"

    def is_empty(self) -> bool:
        """True when no property is set."""
        return all(getattr(self, name) is None for name in PROPERTY_FLAGS)

    def replace(self, **changes: Any) -> BasicProperties:
        """A copy with ``changes`` applied (keyword arguments as for the
        constructor); ``headers`` is shared with this one unless changed.

        Raises:
            TypeError: a name that is not a property.
        """
        unknown = changes.keys() - PROPERTY_FLAGS.keys()
        if unknown:
            raise TypeError(f"not message properties: {', '.join(sorted(unknown))}")
        copy = BasicProperties.__new__(BasicProperties)
        copy.content_type = self.content_type
        copy.content_encoding = self.content_encoding
        copy.headers = self.headers
        copy.delivery_mode = self.delivery_mode
        copy.priority = self.priority
        copy.correlation_id = self.correlation_id
        copy.reply_to = self.reply_to
        copy.expiration = self.expiration
        copy.message_id = self.message_id
        copy.timestamp = self.timestamp
        copy.message_type = self.message_type
        copy.user_id = self.user_id
        copy.app_id = self.app_id
        copy.cluster_id = self.cluster_id
        for name, value in changes.items():
            setattr(copy, name, value)
        return copy


#: Encoded short strings of the properties whose values repeat (content
#: type, app id, ...), by value; starts over when full.
_SHORTSTRS: dict[str, bytes] = {}
_SHORTSTRS_MAX: Final = 1_024


def _repeating(value: str, what: str) -> bytes:
    encoded = _SHORTSTRS.get(value) if type(value) is str else None
    if encoded is None:
        encoded = encode_shortstr(value, what)
        if len(_SHORTSTRS) >= _SHORTSTRS_MAX:
            _SHORTSTRS.clear()
        _SHORTSTRS[value] = encoded
    return encoded


def _octet(value: Any, what: str) -> bytes:
    if type(value) is int and 0 <= value <= 255:
        return _OCTET[value]
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} {value!r} must be an int from 0 to 255")
    if not 0 <= value <= 255:
        raise ValueError(f"{what} {value} must be from 0 to 255")
    return _OCTET[int(value)]  # an int subclass: an IntEnum member


#: The last timestamp encoded, (value, bytes): messages that follow each
#: other mostly carry the same second.  One tuple, replaced whole, so threads
#: encoding at once never see a mismatched pair.
_last_timestamp: tuple[Any, bytes] = (None, b"")


def _timestamp(value: Any) -> bytes:
    """The timestamp property's 8 bytes, from a datetime or int seconds."""
    global _last_timestamp
    last, encoded = _last_timestamp
    # Aware datetimes with the same tzinfo compare by wall time, ignoring
    # ``fold``: 01:30 before and after a DST change compare equal.
    if (
        type(value) is type(last)
        and value == last
        and (
            type(value) is int
            or (isinstance(value, datetime.datetime) and value.fold == last.fold)
        )
    ):
        return encoded
    if type(value) is int and 0 <= value < 2**64:
        encoded = _U64.pack(value)
    elif type(value) is datetime.datetime and value.tzinfo is UTC and 1970 <= value.year < 2200:
        # A float of seconds keeps the microseconds from rounding up to the next
        # second until 2**34 seconds (2514); from 2200 on they are counted exactly.
        encoded = _U64.pack(int(value.timestamp()))
    else:
        encoded = _U64.pack(encode_timestamp(value, "timestamp"))
    _last_timestamp = (value, encoded)
    return encoded


def encode_properties_py(
    properties: BasicProperties | None, headers: dict[str, Any] | None = None
) -> bytes:
    """The property flags and values of a content header; ``headers``, when
    not None, stands in for ``properties.headers``.

    Raises:
        TypeError: a property of the wrong type; the message names it.
        ValueError: a property out of range or too long; likewise.
    """
    if properties is None:
        if headers is None:
            return b"\x00\x00"
        return b"\x20\x00" + encode_table(headers, "headers")
    flags = 0
    parts = [b""]
    append = parts.append
    value: Any = properties.content_type
    if value is not None:
        flags = 0x8000
        append(_repeating(value, "content_type"))
    value = properties.content_encoding
    if value is not None:
        flags |= 0x4000
        append(_repeating(value, "content_encoding"))
    if headers is None:
        headers = properties.headers
    if headers is not None:
        flags |= 0x2000
        append(encode_table(headers, "headers"))
    value = properties.delivery_mode
    if value is not None:
        flags |= 0x1000
        append(_octet(value, "delivery_mode"))
    value = properties.priority
    if value is not None:
        flags |= 0x0800
        append(_octet(value, "priority"))
    value = properties.correlation_id
    if value is not None:
        flags |= 0x0400
        append(encode_shortstr(value, "correlation_id"))
    value = properties.reply_to
    if value is not None:
        flags |= 0x0200
        append(_repeating(value, "reply_to"))
    value = properties.expiration
    if value is not None:
        flags |= 0x0100
        append(_repeating(value, "expiration"))
    value = properties.message_id
    if value is not None:
        flags |= 0x0080
        append(encode_shortstr(value, "message_id"))
    value = properties.timestamp
    if value is not None:
        flags |= 0x0040
        append(_timestamp(value))
    value = properties.message_type
    if value is not None:
        flags |= 0x0020
        append(_repeating(value, "message_type"))
    value = properties.user_id
    if value is not None:
        flags |= 0x0010
        append(_repeating(value, "user_id"))
    value = properties.app_id
    if value is not None:
        flags |= 0x0008
        append(_repeating(value, "app_id"))
    value = properties.cluster_id
    if value is not None:
        flags |= 0x0004
        append(_repeating(value, "cluster_id"))
    parts[0] = _FLAGS.pack(flags)
    return b"".join(parts)


def _text(raw: bytes | bytearray) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def decode_properties_py(data: bytes | bytearray, pos: int, end: int) -> BasicProperties:
    """The properties at ``pos`` of ``data`` (the flag word first), which
    must end by ``end``.  Flag words after the first (bit 0 set) are
    skipped: no property of Basic has a bit there.

    Raises:
        ValueError, struct.error, IndexError: malformed, or running past
            ``end``.
    """
    flags = (data[pos] << 8) | data[pos + 1]
    pos += 2
    if flags & 1:
        word = flags
        while word & 1:
            word = (data[pos] << 8) | data[pos + 1]
            pos += 2
    properties = BasicProperties()
    if flags & 0x8000:
        start = pos + 1
        pos = start + data[pos]
        properties.content_type = _text(data[start:pos])
    if flags & 0x4000:
        start = pos + 1
        pos = start + data[pos]
        properties.content_encoding = _text(data[start:pos])
    if flags & 0x2000:
        properties.headers, pos = table(data, pos)
    if flags & 0x1000:
        properties.delivery_mode = data[pos]
        pos += 1
    if flags & 0x0800:
        properties.priority = data[pos]
        pos += 1
    if flags & 0x0400:
        start = pos + 1
        pos = start + data[pos]
        properties.correlation_id = _text(data[start:pos])
    if flags & 0x0200:
        start = pos + 1
        pos = start + data[pos]
        properties.reply_to = _text(data[start:pos])
    if flags & 0x0100:
        start = pos + 1
        pos = start + data[pos]
        properties.expiration = _text(data[start:pos])
    if flags & 0x0080:
        start = pos + 1
        pos = start + data[pos]
        properties.message_id = _text(data[start:pos])
    if flags & 0x007C:  # timestamp, type, user id, app id, cluster id
        if flags & 0x0040:
            properties.timestamp = decode_timestamp(_U64.unpack_from(data, pos)[0])
            pos += 8
        if flags & 0x0020:
            start = pos + 1
            pos = start + data[pos]
            properties.message_type = _text(data[start:pos])
        if flags & 0x0010:
            start = pos + 1
            pos = start + data[pos]
            properties.user_id = _text(data[start:pos])
        if flags & 0x0008:
            start = pos + 1
            pos = start + data[pos]
            properties.app_id = _text(data[start:pos])
        if flags & 0x0004:
            start = pos + 1
            pos = start + data[pos]
            properties.cluster_id = _text(data[start:pos])
    if pos > end:
        raise ValueError("the properties run past the end of the content header")
    return properties


#: Whether the C codec of ``_speedups.c`` is in use: it is built with the
#: package where there is a C compiler, and ``TRIO_LAVIN_NO_EXTENSIONS`` (set to
#: anything but "" or "0") makes the client use the Python functions above.
SPEEDUPS: Final = _speedups is not None and os.environ.get("TRIO_LAVIN_NO_EXTENSIONS", "") in (
    "",
    "0",
)

if _speedups is not None:
    # Set up even when it is not used, so it can be compared with the Python
    # functions (fuzz/fuzz_properties.py, tests/sansio/test_speedups.py).
    _speedups.setup(
        BasicProperties, decode_properties_py, encode_properties_py, decode_timestamp, _timestamp
    )
if _speedups is not None and SPEEDUPS:
    encode_properties = _speedups.encode_properties
    decode_properties = _speedups.decode_properties
else:
    encode_properties = encode_properties_py
    decode_properties = decode_properties_py


_CONTENT_HEADER_FIXED: Final = struct.Struct(">HHQ")
#: class 60 (Basic), weight 0, then the body size
_BASIC_HEADER: Final = struct.Struct(">BHIHHQ")


class ContentHeader:
    """A content header frame: the class (60, Basic), the weight (0), the
    body's size and the message's properties (None: none set)."""

    __slots__ = ("body_size", "class_id", "properties", "weight")

    #: As pamqp's frames name themselves, for logs and errors.
    name: Final = "ContentHeader"

    def __init__(
        self,
        body_size: int,
        properties: BasicProperties | None = None,
        class_id: int = 60,
        weight: int = 0,
    ) -> None:
        self.body_size = body_size
        self.properties = properties
        self.class_id = class_id
        self.weight = weight

    def __repr__(self) -> str:
        return f"ContentHeader(body_size={self.body_size}, properties={self.properties!r})"


def decode_content_header(
    payload: bytes | bytearray, pos: int = 0, end: int | None = None
) -> ContentHeader:
    """A content header frame's payload (from ``pos`` to ``end``).

    Raises:
        ValueError, struct.error, IndexError: malformed or truncated.
    """
    if end is None:
        end = len(payload)
    if end - pos < 14:
        raise ValueError(f"content header of {end - pos} bytes, at least 14 expected")
    class_id, weight, body_size = _CONTENT_HEADER_FIXED.unpack_from(payload, pos)
    if payload[pos + 12] == 0 and payload[pos + 13] == 0:
        properties = None  # none set: the usual case
    else:
        properties = decode_properties(payload, pos + 12, end)
    return ContentHeader(body_size, properties, class_id, weight)


def encode_content_header(channel: int, body_size: int, properties: bytes) -> bytes:
    """A whole Basic content header frame, from encoded ``properties``."""
    return b"".join(
        (
            _BASIC_HEADER.pack(2, channel, 12 + len(properties), 60, 0, body_size),
            properties,
            b"\xce",
        )
    )
