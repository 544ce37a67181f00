"""The field-table decoder: pamqp's values, in linear time, with bounded nesting."""

from __future__ import annotations

import datetime
import struct
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pamqp import base, commands, decode, encode, header

from trio_lavin._sansio._errors import FrameError
from trio_lavin._sansio._fieldtable import (
    MAX_FIELD_TABLE_DEPTH,
    TABLE_METHOD_DECODERS,
    FieldTableTooDeep,
    decode_content_header,
    decode_method,
    table,
)
from trio_lavin._sansio._framing import FrameReader

from .helpers import method

keys = st.text(max_size=8).filter(lambda key: len(key.encode()) < 256)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.binary(max_size=20).map(bytearray),
    st.decimals(min_value=-(10**6), max_value=10**6, places=2),
    st.datetimes(
        min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
tables = st.dictionaries(keys, values, max_size=6)


def _outcome(decoder: Any, *args: Any) -> str:
    """What a decoder made of the input, comparable across decoders: the repr
    of the value, or "error" (the frame reader turns any error into 501)."""
    try:
        return repr(decoder(*args))
    except (ValueError, struct.error, TypeError, OverflowError, OSError):
        return "error"


@given(tables)
def test_tables_decode_to_what_pamqp_decodes(value: dict[str, Any]) -> None:
    data = encode.field_table(value)
    assert table(data, 0) == decode.field_table(data)[::-1]


@given(st.binary(max_size=64))
@example(b"\x00\x00\x00\x03\x01kS")  # a value with no room for its length
@example(b"\x00\x00\x00\x06\x01kS\x00\x00\x00\x09ab")  # a string longer than its table
@example(b"\x00\x00\x00\x02\x00\xff")  # unknown value type
def test_garbage_tables_decode_or_fail_as_in_pamqp(data: bytes) -> None:
    ours = _outcome(lambda: table(data, 0)[::-1])
    assert ours == _outcome(decode.field_table, data)


@given(
    st.builds(
        commands.Basic.Properties,
        content_type=st.none() | st.text(max_size=10),
        headers=st.none() | tables,
        delivery_mode=st.none() | st.sampled_from([1, 2]),
        priority=st.none() | st.integers(0, 255),
        correlation_id=st.none() | st.text(max_size=10),
        timestamp=st.none()
        | st.datetimes(
            min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
        ).map(lambda d: d.replace(microsecond=0, tzinfo=datetime.UTC)),
        app_id=st.none() | st.text(max_size=10),
    ),
    st.integers(0, 2**63 - 1),
)
def test_content_headers_decode_to_what_pamqp_decodes(
    properties: commands.Basic.Properties, body_size: int
) -> None:
    payload = header.ContentHeader(0, body_size, properties).marshal()
    expected = header.ContentHeader()
    expected.unmarshal(payload)
    got = decode_content_header(payload)
    class_id: object = got.class_id
    assert (class_id, got.weight, got.body_size) == (60, 0, body_size)
    assert dict(got.properties) == dict(expected.properties)


@given(st.binary(max_size=48))
@example(b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x01")  # truncated continuation word
@example(b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\xff\xfe\x00")  # every property, no data
def test_garbage_content_headers_decode_or_fail_as_in_pamqp(tail: bytes) -> None:
    payload = tail

    def pamqp_decode() -> tuple[Any, ...]:
        content_header = header.ContentHeader()
        content_header.unmarshal(payload)
        return (content_header.body_size, dict(content_header.properties))

    def our_decode() -> tuple[Any, ...]:
        content_header = decode_content_header(payload)
        return (content_header.body_size, dict(content_header.properties))

    assert _outcome(our_decode) == _outcome(pamqp_decode)


@given(
    st.sampled_from(sorted(TABLE_METHOD_DECODERS)),
    tables,
    st.text(alphabet="abc-_.:", max_size=10),
    st.booleans(),
)
def test_methods_with_tables_decode_to_what_pamqp_decodes(
    method_id: int, arguments: dict[str, Any], name: str, flag: bool
) -> None:
    method_class: type[base.Frame] = commands.INDEX_MAPPING[method_id]
    original = method_class()
    for slot in method_class.__slots__:
        kind = method_class.amqp_type(slot)
        if kind == "table":
            setattr(original, slot, arguments)
        elif kind == "shortstr":
            setattr(original, slot, name)
        elif kind == "bit":
            setattr(original, slot, flag)
    payload = struct.pack(">I", method_id) + original.marshal()
    expected = method_class()
    expected.unmarshal(payload[4:])
    assert dict(decode_method(method_class, payload)) == dict(expected)


@given(st.sampled_from(sorted(TABLE_METHOD_DECODERS)), st.binary(max_size=48))
def test_garbage_methods_with_tables_decode_or_fail_as_in_pamqp(
    method_id: int, data: bytes
) -> None:
    method_class: type[base.Frame] = commands.INDEX_MAPPING[method_id]

    def pamqp_decode() -> dict[str, Any]:
        method = method_class()
        method.unmarshal(data)
        return dict(method)

    ours = _outcome(lambda: dict(decode_method(method_class, struct.pack(">I", 0) + data)))
    assert ours == _outcome(pamqp_decode)


def _nested(depth: int, kind: str = "F") -> bytes:
    """A field table nested ``depth`` deep (arrays inside when ``kind`` is A)."""
    data = struct.pack(">I", 0)
    for level in range(depth - 1):
        if kind == "A" and level % 2 == 0:
            inner = b"F" + data
            data = struct.pack(">I", len(inner)) + inner
            data = b"A" + data
        else:
            data = b"F" + data
        entry = b"\x01k" + data
        data = struct.pack(">I", len(entry)) + entry
    return data


@pytest.mark.parametrize("kind", ["F", "A"])
def test_nesting_up_to_the_limit_is_accepted_and_beyond_refused(kind: str) -> None:
    value, end = table(_nested(MAX_FIELD_TABLE_DEPTH // 2), 0)
    assert end == len(_nested(MAX_FIELD_TABLE_DEPTH // 2))
    assert value.keys() == {"k"}
    deep = _nested(MAX_FIELD_TABLE_DEPTH * 2, kind)
    with pytest.raises(FieldTableTooDeep, match=f"nested more than {MAX_FIELD_TABLE_DEPTH} deep"):
        table(deep, 0)


def test_depth_limit_counts_each_table_and_array() -> None:
    at_limit = b"\x00\x00\x00\x00"
    for _ in range(MAX_FIELD_TABLE_DEPTH - 1):
        entry = b"\x01kF" + at_limit
        at_limit = struct.pack(">I", len(entry)) + entry
    assert table(at_limit, 0)[1] == len(at_limit)
    entry = b"\x01kF" + at_limit
    with pytest.raises(FieldTableTooDeep):
        table(struct.pack(">I", len(entry)) + entry, 0)


def test_deep_table_in_connection_start_is_a_frame_error() -> None:
    server_properties = _nested(MAX_FIELD_TABLE_DEPTH + 1)
    payload = b"\x00\x0a\x00\x0a\x00\x09" + server_properties + b"\x00\x00\x00\x05PLAIN"
    payload += b"\x00\x00\x00\x05en_US"
    reader = FrameReader()
    reader.receive_data(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")
    with pytest.raises(FrameError, match="field tables nested more than 64 deep") as excinfo:
        reader.next_frame()
    assert excinfo.value.reply_code == 501


def test_connection_start_is_decoded_like_pamqp() -> None:
    start = commands.Connection.Start(server_properties={"product": "x", "capabilities": {}})
    reader = FrameReader()
    reader.receive_data(method(0, start))
    frame = reader.next_frame()
    assert frame is not None
    assert isinstance(frame[1], commands.Connection.Start)
    assert dict(frame[1]) == dict(start)


@pytest.mark.parametrize(
    "payload",
    [
        # One field array of 512 Ki empty values (pamqp: about 20 s).
        struct.pack(">I", 2**19 + 5) + b"\x01aA" + struct.pack(">I", 2**19) + b"V" * 2**19,
        # A table of 256 Ki entries with empty keys (pamqp: about 9 s).
        struct.pack(">I", 2**19) + b"\x00V" * 2**18,
    ],
    ids=["array", "table"],
)
def test_a_frame_sized_table_decodes_in_linear_time(payload: bytes) -> None:
    headers = struct.pack(">HHQH", 60, 0, 0, 0x2000) + payload
    reader = FrameReader(0)
    reader.receive_data(struct.pack(">BHI", 2, 1, len(headers)) + headers + b"\xce")
    started = time.perf_counter()
    frame = reader.next_frame()
    elapsed = time.perf_counter() - started
    assert frame is not None
    assert isinstance(frame[1], header.ContentHeader)
    assert frame[1].properties.headers is not None
    # Linear: about 0.1 s here (a loaded CI machine may take several times as
    # long); the quadratic decoder took 9 s and more.
    assert elapsed < 3.0, elapsed


def test_decimal_and_timestamp_values_keep_their_types() -> None:
    data = encode.field_table(
        {"d": Decimal("1.25"), "t": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}
    )
    value, _ = table(data, 0)
    assert value == {"d": Decimal("1.25"), "t": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}
