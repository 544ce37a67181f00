"""Field tables, and the frames that carry them, decoded in linear time with
bounded nesting.

A broker sends field tables in ``Connection.Start`` (server properties) and in
content headers (message headers); a broken or hostile one can make them as
large as a frame and nest them as deep as it likes.  pamqp's decoder copies
the rest of the frame for every value it reads, so a table of *n* values
costs *n* times the frame size: a 128 KiB field array of empty values keeps
the reader busy for about 2 s, a 1 MiB one for 85 s (and the connection's
heartbeats with it).  It also recurses once per nesting level, so a deep
table ends in ``RecursionError``.

This module decodes the same bytes into the same values as pamqp does
(tests/sansio/test_fieldtable.py checks it against pamqp), by offset instead
of by copy, and refuses tables nested deeper than
:data:`MAX_FIELD_TABLE_DEPTH`.  Malformed input raises :class:`ValueError`
(or :class:`struct.error`), which the frame reader reports as a
``FrameError`` (501).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any, Final, cast

from pamqp import base, commands, decode, header

#: How deep field tables and arrays may nest (a table in a table is depth 2).
#: Real headers nest 3 deep at most (RabbitMQ's ``x-death``: an array of
#: tables holding arrays); 64 leaves room for any application and keeps the
#: decoder's recursion (two Python frames per level) far from the
#: interpreter's limit, so a hostile peer gets a clear error, never a
#: ``RecursionError``.
MAX_FIELD_TABLE_DEPTH: Final = 64


class FieldTableTooDeep(ValueError):
    """A field table or array nests deeper than :data:`MAX_FIELD_TABLE_DEPTH`."""


_U32: Final = struct.Struct(">I")
_FLAGS: Final = struct.Struct(">H")
_CONTENT_HEADER: Final = struct.Struct(">HHQ")

#: Fixed-size field values: type octet -> (size, pamqp's decoder).  pamqp's
#: own decoders are used, on a slice of exactly that size, so the values
#: (and the errors on truncated input) are pamqp's.
_SCALARS: Final[dict[int, tuple[int, Callable[[bytes], tuple[int, Any]]]]] = {
    ord("t"): (1, decode.boolean),
    ord("b"): (1, decode.short_short_int),
    ord("B"): (1, decode.short_short_uint),
    ord("s"): (2, decode.short_int),
    ord("u"): (2, decode.short_uint),
    ord("I"): (4, decode.long_int),
    ord("i"): (4, decode.long_uint),
    ord("l"): (8, decode.long_long_int),
    ord("L"): (8, decode.long_long_int),
    ord("f"): (4, decode.floating_point),
    ord("d"): (8, decode.double),
    ord("D"): (5, decode.decimal),
    ord("T"): (8, decode.timestamp),
}

#: Fixed-size method arguments by pamqp type name, likewise.
_ARGUMENTS: Final[dict[str, tuple[int, Callable[[bytes], tuple[int, Any]]]]] = {
    "octet": (1, decode.octet),
    "short": (2, decode.short_uint),
    "long": (4, decode.long_uint),
    "longlong": (8, decode.long_long_int),
    "timestamp": (8, decode.timestamp),
}


def _long_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    # Like pamqp, a length running past the end yields what is there.
    try:
        (length,) = _U32.unpack_from(data, pos)
    except struct.error:
        raise ValueError("truncated long string") from None
    end = pos + 4 + length
    return data[pos + 4 : end], end


def _value(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """One field value (type octet and value) at ``pos``: (value, end)."""
    if pos >= len(data):
        return None, pos  # pamqp: an empty rest decodes as None
    kind = data[pos]
    pos += 1
    scalar = _SCALARS.get(kind)
    if scalar is not None:
        size, decoder = scalar
        return decoder(data[pos : pos + size])[1], pos + size
    if kind == 0x46:  # F
        return table(data, pos, depth + 1)
    if kind == 0x41:  # A
        return array(data, pos, depth + 1)
    if kind == 0x53:  # S
        raw, pos = _long_bytes(data, pos)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            return raw, pos
    if kind == 0x78:  # x
        raw, pos = _long_bytes(data, pos)
        return bytearray(raw), pos
    if kind in (0x56, 0x00):  # V, and NUL as seen in the wild
        return None, pos
    raise ValueError(f"unknown field value type {bytes([kind])!r} at offset {pos - 1}")


def _check_depth(depth: int) -> None:
    if depth > MAX_FIELD_TABLE_DEPTH:
        raise FieldTableTooDeep(f"field tables nested more than {MAX_FIELD_TABLE_DEPTH} deep")


def table(data: bytes, pos: int, depth: int = 1) -> tuple[dict[str, Any], int]:
    """The field table at ``pos`` of ``data``: (table, end offset)."""
    _check_depth(depth)
    try:
        (length,) = _U32.unpack_from(data, pos)
    except struct.error:
        raise ValueError("truncated field table length") from None
    end = pos + 4 + length
    if end > len(data):
        raise ValueError(f"field table of {length} bytes runs past the end of the frame")
    result: dict[str, Any] = {}
    pos += 4
    while pos < end:
        key_end = pos + 1 + data[pos]
        if key_end > end:
            raise ValueError("field table key runs past the end of the table")
        key = data[pos + 1 : key_end].decode("utf-8")
        result[key], pos = _value(data, key_end, depth)
    return result, end


def array(data: bytes, pos: int, depth: int = 1) -> tuple[list[Any], int]:
    """The field array at ``pos`` of ``data``: (list, end offset)."""
    _check_depth(depth)
    try:
        (length,) = _U32.unpack_from(data, pos)
    except struct.error:
        raise ValueError("truncated field array length") from None
    end = pos + 4 + length
    if end > len(data):
        raise ValueError(f"field array of {length} bytes runs past the end of the frame")
    result: list[Any] = []
    pos += 4
    while pos < end:
        value, pos = _value(data, pos, depth)
        result.append(value)
    return result, pos


def _argument(kind: str, data: bytes, pos: int) -> tuple[Any, int]:
    """A method argument or property of pamqp type ``kind`` at ``pos``."""
    fixed = _ARGUMENTS.get(kind)
    if fixed is not None:
        size, decoder = fixed
        return decoder(data[pos : pos + size])[1], pos + size
    if kind == "shortstr":
        if pos >= len(data):
            raise ValueError("truncated short string")
        end = pos + 1 + data[pos]
        return data[pos + 1 : end].decode("utf-8"), end
    if kind == "longstr":
        raw, pos = _long_bytes(data, pos)
        try:
            return raw.decode("utf-8"), pos
        except UnicodeDecodeError:
            return raw, pos
    if kind == "table":
        return table(data, pos)
    raise ValueError(f"no decoder for {kind} arguments")  # pragma: no cover (not in 0-9-1)


def decode_method(method_class: type[base.Frame], payload: bytes) -> base.Frame:
    """A method frame's payload (method id first), as pamqp's
    ``Frame.unmarshal`` would decode it, with this module's tables."""
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
        setattr(method, name, value)
    return method


#: Decoders for every method with a field-table argument, by method id (only
#: Connection.Start may come from a broker; the others are refused after
#: decoding, and must not be slow to refuse either).
TABLE_METHOD_DECODERS: Final[dict[int, Callable[[bytes], base.Frame]]] = {
    method_class.index: functools.partial(decode_method, method_class)
    for method_class in cast("list[type[base.Frame]]", list(commands.INDEX_MAPPING.values()))
    if any(method_class.amqp_type(name) == "table" for name in method_class.__slots__)
}

_PROPERTIES: Final = [
    (name, commands.Basic.Properties.flags[name], commands.Basic.Properties.amqp_type(name))
    for name in commands.Basic.Properties.__slots__
]


def decode_content_header(payload: bytes) -> header.ContentHeader:
    """A content header frame's payload, as pamqp's
    ``ContentHeader.unmarshal`` would decode it, with this module's tables.

    Only the first property-flags word names properties of
    ``Basic.Properties``; continuation words are skipped.
    """
    try:
        class_id, weight, body_size = _CONTENT_HEADER.unpack_from(payload)
        (flags,) = _FLAGS.unpack_from(payload, 12)
    except struct.error:
        raise ValueError("truncated content header") from None
    pos = 14
    word = flags
    while word & 1:  # another flags word follows
        if pos + 2 > len(payload):
            raise ValueError("Content header flags are truncated")
        (word,) = _FLAGS.unpack_from(payload, pos)
        pos += 2
    properties = commands.Basic.Properties()
    for name, flag, kind in _PROPERTIES:
        if flags & flag:
            value, pos = _argument(kind, payload, pos)
            setattr(properties, name, value)
    content_header = header.ContentHeader(weight, body_size, properties)
    content_header.class_id = class_id
    return content_header
