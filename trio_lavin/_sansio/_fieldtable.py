"""Field tables both ways, and the methods and content headers that carry them.

A field table is what AMQP carries headers, arguments and server properties
in: a 32-bit length, then (short-string key, type octet, value) entries.
This module encodes and decodes every value type of RabbitMQ's errata to the
0-9-1 specification, faithfully both ways:

====  =================  ========================  =================================
type  on the wire        decoded as                encoded from
====  =================  ========================  =================================
t     boolean octet      bool                      bool
b     int8               int                       int in [-128, 127]
B     uint8              int                       (decoded only)
s     int16              int                       int in [-32768, 32767]
u     uint16             int                       int in [32768, 65535]
I     int32              int                       int in [-2**31, 2**31)
i     uint32             int                       int in [2**31, 2**32)
l     int64              int                       int in [-2**63, 2**63), else
                                                   ValueError
L     int64              int                       (decoded only; py-amqp sends it;
                                                   signed as RabbitMQ reads it, though
                                                   0-9-1 says unsigned)
f     float32            float                     (decoded only: floats go as d)
d     float64            float                     float
D     scale + int32      decimal.Decimal           decimal.Decimal
S     long string        str                       str
x     byte array         bytes                     bytes, bytearray, memoryview
A     array              list                      list, tuple
T     uint64 seconds     datetime (UTC), or int    datetime (naive ones are UTC),
                         past the year 9999
F     table              dict                      dict (or any Mapping) of str keys
V     void               None                      None
====  =================  ========================  =================================

Text is UTF-8.  Text that is not (RabbitMQ relays whatever bytes a publisher
sent) is decoded with ``surrogateescape``, so the application still gets the
message, and a str so decoded encodes back to the very bytes it came from.

Decoding works by offset on the received buffer, in linear time (pamqp's
decoder copies the rest of the frame for every value, so a 1 MiB field array
costs it 85 s), and refuses nesting deeper than :data:`MAX_FIELD_TABLE_DEPTH`
(no ``RecursionError``).  Malformed input raises :class:`ValueError` (or
:class:`struct.error`), which the frame reader reports as a ``FrameError``
(501).  Encoding raises :class:`ValueError` naming the key and the value.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import struct
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

from pamqp import base, commands, decode

#: How deep field tables and arrays may nest (a table in a table is depth 2).
#: Real headers nest 3 deep at most (RabbitMQ's ``x-death``: an array of
#: tables holding arrays); 64 leaves room for any application and keeps the
#: recursion (two Python frames per level) far from the interpreter's limit.
MAX_FIELD_TABLE_DEPTH: Final = 64

#: The largest timestamp a ``datetime`` holds (9999-12-31 23:59:59 UTC); later
#: ones are decoded as int seconds.
MAX_DATETIME_SECONDS: Final = 253_402_300_799

UTC: Final = datetime.UTC
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=UTC)


class FieldTableTooDeep(ValueError):
    """A field table or array nests deeper than :data:`MAX_FIELD_TABLE_DEPTH`."""


_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_DECIMAL: Final = struct.Struct(">Bi")

# -- decoding ------------------------------------------------------------------------

#: Numbers: type octet -> the struct that reads its value.
_NUMBERS: Final[dict[int, struct.Struct]] = {
    ord("b"): struct.Struct(">b"),
    ord("B"): struct.Struct(">B"),
    ord("s"): struct.Struct(">h"),
    ord("u"): struct.Struct(">H"),
    ord("I"): struct.Struct(">i"),
    ord("i"): struct.Struct(">I"),
    ord("l"): struct.Struct(">q"),
    ord("L"): struct.Struct(">q"),  # signed, as RabbitMQ, pika and py-amqp have it
    ord("f"): struct.Struct(">f"),
    ord("d"): struct.Struct(">d"),
}


def decode_text(raw: bytes | bytearray) -> str:
    """UTF-8 text, with bytes that are not UTF-8 kept as surrogates."""
    return raw.decode("utf-8", "surrogateescape")


#: The last timestamp decoded, (seconds, value): messages that follow each
#: other mostly carry the same second.  One tuple, replaced whole, so threads
#: decoding at once never see a mismatched pair.
_last_timestamp: tuple[int, datetime.datetime | int] = (-1, -1)


def decode_timestamp(seconds: int) -> datetime.datetime | int:
    """A timestamp's seconds as an aware UTC datetime (an immutable value,
    shared between messages with the same one), or as the int itself past
    what a datetime holds."""
    global _last_timestamp
    last = _last_timestamp
    if last[0] == seconds:
        return last[1]
    value = (
        seconds
        if seconds > MAX_DATETIME_SECONDS
        else datetime.datetime.fromtimestamp(seconds, UTC)
    )
    _last_timestamp = (seconds, value)
    return value


def _check_depth(depth: int) -> None:
    if depth > MAX_FIELD_TABLE_DEPTH:
        raise FieldTableTooDeep(f"field tables nested more than {MAX_FIELD_TABLE_DEPTH} deep")


def _other_value(data: bytes | bytearray, pos: int, kind: int, depth: int) -> tuple[Any, int]:
    """A value of a type other than S and the numbers, whose type octet
    ``kind`` was at ``pos - 1``: (value, end)."""
    if kind == 0x46:  # F
        return table(data, pos, depth + 1)
    if kind == 0x41:  # A
        return array(data, pos, depth + 1)
    if kind == 0x74:  # t
        if pos >= len(data):
            raise ValueError("truncated boolean")
        return data[pos] != 0, pos + 1
    if kind == 0x78:  # x
        (size,) = _U32.unpack_from(data, pos)
        pos += 4
        return bytes(data[pos : pos + size]), pos + size
    if kind == 0x54:  # T
        (seconds,) = _U64.unpack_from(data, pos)
        return decode_timestamp(seconds), pos + 8
    if kind == 0x44:  # D
        scale, mantissa = _DECIMAL.unpack_from(data, pos)
        # From text, exactly: arithmetic would round to the caller's decimal context.
        return decimal.Decimal(f"{mantissa}E-{scale}"), pos + 5
    if kind == 0x56 or kind == 0:  # V, and NUL as some clients send it
        return None, pos
    raise ValueError(f"unknown field value type {bytes([kind])!r} at offset {pos - 1}")


def table(data: bytes | bytearray, pos: int, depth: int = 1) -> tuple[dict[str, Any], int]:
    """The field table at ``pos`` of ``data``: (table, end offset)."""
    if depth > MAX_FIELD_TABLE_DEPTH:
        _check_depth(depth)
    (length,) = _U32.unpack_from(data, pos)
    pos += 4
    end = pos + length
    if end > len(data):
        raise ValueError(f"field table of {length} bytes runs past the end of the frame")
    result: dict[str, Any] = {}
    numbers = _NUMBERS
    unpack_length = _U32.unpack_from
    while pos < end:
        key_end = pos + 1 + data[pos]
        raw = data[pos + 1 : key_end]
        try:
            key = raw.decode()
        except UnicodeDecodeError:
            key = raw.decode("utf-8", "surrogateescape")
        if key_end >= end:
            raise ValueError(f"field table entry {key!r} runs past the end of the table")
        kind = data[key_end]
        pos = key_end + 1
        if kind == 0x53:  # S, the usual header value
            start = pos + 4
            pos = start + unpack_length(data, pos)[0]
            raw = data[start:pos]
            try:
                result[key] = raw.decode()
            except UnicodeDecodeError:
                result[key] = raw.decode("utf-8", "surrogateescape")
        else:
            number = numbers.get(kind)
            if number is not None:
                result[key] = number.unpack_from(data, pos)[0]
                pos += number.size
            else:
                result[key], pos = _other_value(data, pos, kind, depth)
    if pos != end:
        raise ValueError(f"a value runs past the end of its {length}-byte field table")
    return result, end


def array(data: bytes | bytearray, pos: int, depth: int = 1) -> tuple[list[Any], int]:
    """The field array at ``pos`` of ``data``: (list, end offset)."""
    _check_depth(depth)
    (length,) = _U32.unpack_from(data, pos)
    pos += 4
    end = pos + length
    if end > len(data):
        raise ValueError(f"field array of {length} bytes runs past the end of the frame")
    result: list[Any] = []
    numbers = _NUMBERS
    while pos < end:
        kind = data[pos]
        pos += 1
        if kind == 0x53:
            (size,) = _U32.unpack_from(data, pos)
            start = pos + 4
            pos = start + size
            result.append(data[start:pos].decode("utf-8", "surrogateescape"))
        else:
            number = numbers.get(kind)
            if number is not None:
                result.append(number.unpack_from(data, pos)[0])
                pos += number.size
            else:
                value, pos = _other_value(data, pos, kind, depth)
                result.append(value)
    if pos != end:
        raise ValueError(f"a value runs past the end of its {length}-byte field array")
    return result, end


# -- encoding ------------------------------------------------------------------------

_LENGTH_BYTE: Final = tuple(bytes((n,)) for n in range(256))
_STRING: Final = struct.Struct(">BI")  # type octet S or x, length
_BYTE: Final = struct.Struct(">Bb")
_SHORT: Final = struct.Struct(">Bh")
_USHORT: Final = struct.Struct(">BH")
_INT: Final = struct.Struct(">Bi")
_UINT: Final = struct.Struct(">BI")
_LONG: Final = struct.Struct(">Bq")
_DOUBLE: Final = struct.Struct(">Bd")
_TIMESTAMP: Final = struct.Struct(">BQ")
_DECIMAL_VALUE: Final = struct.Struct(">BBi")
#: Type octet b and value of -128 .. 127, by value (negative: from the end).
_SMALL_INTS: Final = tuple(_BYTE.pack(0x62, n) for n in (*range(128), *range(-128, 0)))

#: Encoded keys (length octet and UTF-8), by key: keys repeat from message to
#: message.  Starts over when full.
_KEYS: dict[str, bytes] = {}
_KEYS_MAX: Final = 4_096


def encode_shortstr(value: str, what: str) -> bytes:
    """A short string: length octet and UTF-8 (surrogate-escaped bytes as
    they were).

    Raises:
        TypeError: not a str.
        ValueError: not encodable, or longer than 255 bytes; ``what`` names
            it in the message.
    """
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except AttributeError:
        raise TypeError(f"{what} must be a str, not {type(value).__name__} ({value!r})") from None
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} {value!r} cannot be encoded as UTF-8: {exc.reason}") from None
    if len(raw) > 255:
        raise ValueError(
            f"{what} {_clip(value)} is {len(raw)} bytes in UTF-8; a short string holds at most 255"
        )
    return _LENGTH_BYTE[len(raw)] + raw


def _clip(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def _key(key: Any, path: str) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"{path} has the key {key!r}: field table keys must be str")
    encoded = encode_shortstr(key, f"the key of {path}")
    if len(_KEYS) >= _KEYS_MAX:
        _KEYS.clear()
    _KEYS[key] = encoded
    return encoded


def encode_table(value: Mapping[str, Any], what: str = "the field table", depth: int = 1) -> bytes:
    """A field table: 32-bit length and entries, in the mapping's order
    (``depth``: how deep it is nested, 1 at the top).

    Raises:
        TypeError: a key or a value of a type a field table cannot carry
            (the message names it as ``what[key]...``).
        ValueError: a value out of range, text that is not encodable, a key
            over 255 bytes, or tables nested too deep.
    """
    if depth > MAX_FIELD_TABLE_DEPTH:
        raise FieldTableTooDeep(
            f"{what} nests field tables more than {MAX_FIELD_TABLE_DEPTH} deep"
        )
    parts: list[bytes] = []
    append = parts.append
    keys = _KEYS
    small = _SMALL_INTS
    try:
        items = value.items()
    except AttributeError:
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}") from None
    for key, item in items:
        encoded_key = keys.get(key) if type(key) is str else None
        append(encoded_key or _key(key, what))
        kind = type(item)
        if kind is str:
            try:
                raw = item.encode()
            except UnicodeEncodeError:
                raw = _escaped(item, f"{what}[{key!r}]")
            append(_STRING.pack(0x53, len(raw)))
            append(raw)
        elif kind is int and -128 <= item <= 127:
            append(small[item])
        else:
            append(_value_bytes(item, f"{what}[{key!r}]", depth))
    body = b"".join(parts)
    return _U32.pack(len(body)) + body


def _escaped(value: str, path: str) -> bytes:
    """``value`` in UTF-8, its surrogate-escaped bytes as they were."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"{path} {value!r} cannot be encoded as UTF-8") from None


def _integer(value: int) -> bytes:
    """Type octet and value of the narrowest integer type that holds
    ``value`` (as pamqp chooses), or b"" if none does."""
    if -128 <= value <= 127:
        return _BYTE.pack(0x62, value)
    if -32_768 <= value <= 32_767:
        return _SHORT.pack(0x73, value)
    if 0 <= value <= 65_535:
        return _USHORT.pack(0x75, value)
    if -(2**31) <= value < 2**31:
        return _INT.pack(0x49, value)
    if 0 <= value < 2**32:
        return _UINT.pack(0x69, value)
    if -(2**63) <= value < 2**63:
        return _LONG.pack(0x6C, value)
    return b""


def _out_of_range(value: int, path: str) -> bytes:
    raise ValueError(f"{path} {value} is outside the signed 64-bit range field tables carry")


def encode_timestamp(value: Any, what: str) -> int:
    """The seconds a timestamp carries, from a datetime (naive: UTC) or int.

    Raises:
        TypeError: not a datetime or int.
        ValueError: outside 0 .. 2**64 - 1 seconds.
    """
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=UTC)
        seconds: int = (value - _EPOCH) // datetime.timedelta(seconds=1)
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        raise TypeError(
            f"{what} {value!r} must be a datetime or an int of seconds since 1970, "
            f"not {type(value).__name__}"
        )
    if not 0 <= seconds < 2**64:
        raise ValueError(
            f"{what} {value!r} is outside what AMQP carries (0 to 2**64 - 1 seconds since 1970)"
        )
    return seconds


def _value_bytes(value: Any, path: str, depth: int) -> bytes:
    """Type octet and value, for any value but a str or an int."""
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        return _integer(value) or _out_of_range(value, path)
    if isinstance(value, float):
        return _DOUBLE.pack(0x64, value)
    if isinstance(value, str):
        raw = _escaped(value, path)
        return _STRING.pack(0x53, len(raw)) + raw
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return _STRING.pack(0x78, len(raw)) + raw
    if isinstance(value, Mapping):
        return b"F" + encode_table(value, path, depth + 1)
    if isinstance(value, (list, tuple)):
        return b"A" + _array_bytes(value, path, depth + 1)
    if isinstance(value, datetime.datetime):
        return _TIMESTAMP.pack(0x54, encode_timestamp(value, path))
    if isinstance(value, decimal.Decimal):
        return _decimal_bytes(value, path)
    raise TypeError(
        f"{path} {value!r}: a {type(value).__name__} cannot go in a field table "
        f"(str, int, float, bool, bytes, Decimal, datetime, None, list or dict)"
    )


def _array_bytes(values: list[Any] | tuple[Any, ...], path: str, depth: int) -> bytes:
    if depth > MAX_FIELD_TABLE_DEPTH:
        raise FieldTableTooDeep(
            f"{path} nests field tables more than {MAX_FIELD_TABLE_DEPTH} deep"
        )
    body = b"".join([_value_bytes(item, f"{path}[{i}]", depth) for i, item in enumerate(values)])
    return _U32.pack(len(body)) + body


def _decimal_bytes(value: decimal.Decimal, path: str) -> bytes:
    """Type octet, scale and value of a Decimal, exactly (by its digits,
    not by arithmetic in the caller's decimal context), refused before any
    work on digits that cannot fit."""
    if not value.is_finite():
        raise ValueError(f"{path} {value!r} is not a finite number")
    sign, digits, exponent = value.as_tuple()
    exponent = cast("int", exponent)
    nonzero = digits != (0,)
    # Past 10 digits (or a power of ten past 10**9) no value fits 32 bits.
    if -exponent > 255 or (nonzero and (len(digits) > 10 or exponent + len(digits) > 10)):
        mantissa = None
    else:
        mantissa = int("".join(map(str, digits))) * 10 ** max(exponent, 0) if nonzero else 0
        if sign:
            mantissa = -mantissa
    if mantissa is None or not -(2**31) <= mantissa < 2**31:
        raise ValueError(
            f"{path} {value!r} does not fit an AMQP decimal (a scale of 0-255 digits "
            f"and a signed 32-bit value)"
        )
    return _DECIMAL_VALUE.pack(0x44, max(-exponent, 0), mantissa)


# -- methods with tables (decoded here, not by pamqp) ---------------------------------


def _unsigned_long_long(value: bytes) -> tuple[int, int]:
    return 8, _U64.unpack_from(value)[0]


#: Fixed-size method arguments by pamqp type name: (size, decoder as pamqp's).
_ARGUMENTS: Final[dict[str, tuple[int, Callable[[bytes], tuple[int, Any]]]]] = {
    "octet": (1, decode.octet),
    "short": (2, decode.short_uint),
    "long": (4, decode.long_uint),
    "longlong": (8, _unsigned_long_long),  # unsigned in AMQP; pamqp's is signed
}


def _argument(kind: str, data: bytes, pos: int) -> tuple[Any, int]:
    """A method argument of pamqp type ``kind`` at ``pos``."""
    fixed = _ARGUMENTS.get(kind)
    if fixed is not None:
        size, decoder = fixed
        return decoder(data[pos : pos + size])[1], pos + size
    if kind == "shortstr":
        if pos >= len(data):
            raise ValueError("truncated short string")
        end = pos + 1 + data[pos]
        if end > len(data):
            raise ValueError("short string runs past the end of the frame")
        return decode_text(data[pos + 1 : end]), end
    if kind == "longstr":
        (size,) = _U32.unpack_from(data, pos)
        end = pos + 4 + size
        if end > len(data):
            raise ValueError("long string runs past the end of the frame")
        return decode_text(data[pos + 4 : end]), end
    if kind == "table":
        return table(data, pos)
    raise ValueError(f"no decoder for {kind} arguments")  # pragma: no cover (not in 0-9-1)


def decode_method(method_class: type[base.Frame], payload: bytes) -> base.Frame:
    """A method frame's payload (method id first), decoded as pamqp's
    ``Frame.unmarshal`` would, with this module's tables and text."""
    method = method_class()
    pos = 4
    bit = 0
    in_bits = False
    for name in method_class.__slots__:
        kind = method_class.amqp_type(name)
        if in_bits and (kind != "bit" or bit == 8):
            pos += 1
            bit = 0
            in_bits = False
        if kind == "bit":
            if pos >= len(payload):
                raise ValueError(f"truncated {method_class.name} bits")
            value: Any = bool(payload[pos] & (1 << bit))
            bit += 1
            in_bits = True
        else:
            value, pos = _argument(kind, payload, pos)
            if name in _MESSAGES_FOR_PEOPLE and not value.isascii():
                # Only read, never sent back: stray bytes become U+FFFD, which
                # any log or terminal can show (a lone surrogate cannot be printed).
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        setattr(method, name, value)
    return method


#: Method arguments that are messages for people (reply texts, a blocked reason).
_MESSAGES_FOR_PEOPLE: Final = frozenset({"reply_text", "reason"})


#: Decoders for every method with a field-table argument, by method id (only
#: Connection.Start may come from a broker; the others are refused after
#: decoding, and must not be slow to refuse either).
TABLE_METHOD_DECODERS: Final[dict[int, Callable[[bytes], base.Frame]]] = {
    method_class.index: functools.partial(decode_method, method_class)
    for method_class in cast("list[type[base.Frame]]", list(commands.INDEX_MAPPING.values()))
    if any(method_class.amqp_type(name) == "table" for name in method_class.__slots__)
}
