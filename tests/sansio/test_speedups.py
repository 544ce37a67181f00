"""The C properties codec (``_speedups.c``) against the Python one: the same bytes,
the same properties of the same types, the same errors with the same messages, for
every property, every field type, malformed and truncated input and input at an
offset in the frame reader's bytearray; and the switch that turns it off."""

from __future__ import annotations

import datetime
import decimal
import enum
import functools
import importlib
import os
import struct
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from trio_lavin import BasicProperties
from trio_lavin._sansio import _properties, _publishing
from trio_lavin._sansio._fieldtable import MAX_FIELD_TABLE_DEPTH
from trio_lavin._sansio._properties import (
    PROPERTY_FLAGS,
    decode_properties_py,
    encode_properties_py,
)
from trio_lavin._sansio._publishing import encode_publish_method, frame_message_py
from trio_lavin.testing import strategies

from .test_fuzz_harnesses import HARNESSES

UTC = datetime.UTC
fuzz_properties = HARNESSES["properties"]
same = fuzz_properties.same
outcome = fuzz_properties.outcome


@functools.cache
def c_codec() -> ModuleType:
    """The C module; imported when a test runs, so that a checkout that was not built
    still collects the suite (the docs' commands test copies one), and fails here."""
    try:
        return importlib.import_module("trio_lavin._sansio._speedups")
    except ImportError as exc:
        pytest.fail(f"the C codec was not built (pip install -e . builds it): {exc}")


class Mode(enum.IntEnum):
    PERSISTENT = 2


class Text(str):
    pass


def assert_encodes_alike(props: Any, headers: Any = None) -> tuple[str, Any]:
    fast: tuple[str, Any] = outcome(c_codec().encode_properties, props, headers)
    slow = outcome(encode_properties_py, props, headers)
    assert fast[0] == slow[0], (fast, slow)
    assert fast[1] == slow[1]
    return fast


def assert_decodes_alike(data: bytes | bytearray, pos: int = 0, end: int | None = None) -> Any:
    end = len(data) if end is None else end
    fast = outcome(c_codec().decode_properties, data, pos, end)
    slow = outcome(decode_properties_py, data, pos, end)
    assert fast[0] == slow[0], (fast, slow)
    if slow[0] == "value":
        assert same(fast[1], slow[1]), (fast, slow)
    else:
        assert fast[1] == slow[1]
    return fast


# -- what a client sends ------------------------------------------------------------------


@given(strategies.properties())
@example(BasicProperties())
@example(BasicProperties(content_type="", correlation_id="", cluster_id=""))
@example(BasicProperties(timestamp=2**64 - 1, delivery_mode=255, priority=0))
def test_c_encodes_every_property_to_the_python_bytes(props: BasicProperties) -> None:
    kind, data = assert_encodes_alike(props)
    assert kind == "value"
    decoded = assert_decodes_alike(data)
    assert decoded[0] == "value"


@given(st.none() | strategies.properties(), strategies.field_tables())
def test_c_encodes_headers_given_beside_the_properties_as_python(
    props: BasicProperties | None, headers: dict[str, Any]
) -> None:
    kind, data = assert_encodes_alike(props, headers)
    assert kind == "value"
    decoded = decode_properties_py(data, 0, len(data))
    assert same(list(decoded.headers or {}), list(headers))


def test_c_encodes_one_of_each_field_type_as_python() -> None:
    naive = datetime.datetime(2026, 12, 4, 1, 2, 3)
    headers: dict[str, Any] = {
        "void": None,
        "bool": True,
        "int8": -128,
        "int16": -32768,
        "uint16": 65535,
        "int32": -(2**31),
        "uint32": 2**32 - 1,
        "int64": -(2**63),
        "double": 0.1,
        "decimal": decimal.Decimal("-12.345"),
        "text": "héllo",
        "relayed": b"\xff".decode("utf-8", "surrogateescape"),
        "bytes": b"\x00\x01",
        "bytearray": bytearray(b"\x02"),
        "stamp": datetime.datetime(2026, 12, 4, 1, 2, 3, tzinfo=UTC),
        "naive": naive,
        "eastern": datetime.datetime(
            2026, 12, 4, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))
        ),
        "far": datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        "array": [1, "a", [None, {"x": b""}]],
        "table": {"nested": {"deeper": 1.5}},
        "enum": Mode.PERSISTENT,
    }
    kind, data = assert_encodes_alike(BasicProperties(headers=headers))
    assert kind == "value"
    assert decode_properties_py(data, 0, len(data)).headers == {
        **headers,
        "bytearray": b"\x02",
        "naive": naive.replace(tzinfo=UTC),
        "enum": 2,
    }


def _nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        table = {"t": table}
    return table


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        2**63,
        -(2**63) - 1,
        float("nan"),
        float("inf"),
        decimal.Decimal("NaN"),
        decimal.Decimal("1e-300"),
        decimal.Decimal(2**40),
        datetime.date(2026, 1, 1),
        datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
        {1: "a key that is not text"},
        {"k" * 256: "a key too long"},
        [object()],
        _nested(MAX_FIELD_TABLE_DEPTH),
        _nested(MAX_FIELD_TABLE_DEPTH + 1),
        Text("a str subclass"),
    ],
    ids=repr,
)
def test_c_takes_or_refuses_an_unusual_header_value_as_python(value: Any) -> None:
    assert_encodes_alike(BasicProperties(headers={"h": value}))
    assert_encodes_alike(None, {"h": value})


@pytest.mark.parametrize("name", PROPERTY_FLAGS)
@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 255,
        "x" * 256,
        "é" * 128,
        b"bytes",
        0,
        -1,
        256,
        2**64,
        True,
        1.0,
        Mode.PERSISTENT,
        Text("sub"),
        datetime.datetime(2026, 1, 1, tzinfo=UTC),
        {"a": 1},
        object(),
    ],
    ids=repr,
)
def test_c_takes_or_refuses_any_value_of_any_property_as_python(name: str, value: Any) -> None:
    props = BasicProperties()
    object.__setattr__(props, name, value)
    assert_encodes_alike(props)


# -- what a client receives ---------------------------------------------------------------


def _entry(key: bytes, kind: bytes, payload: bytes) -> bytes:
    return bytes([len(key)]) + key + kind + payload


def _headers_only(*entries: bytes) -> bytes:
    table = b"".join(entries)
    return b"\x20\x00" + struct.pack(">I", len(table)) + table


WIRE_ENTRIES = {
    "t": _entry(b"t", b"t", b"\x01"),
    "b": _entry(b"b", b"b", b"\x80"),
    "B": _entry(b"B", b"B", b"\xff"),
    "s": _entry(b"s", b"s", b"\x80\x00"),
    "u": _entry(b"u", b"u", b"\xff\xff"),
    "I": _entry(b"I", b"I", b"\x80\x00\x00\x00"),
    "i": _entry(b"i", b"i", b"\xff\xff\xff\xff"),
    "l": _entry(b"l", b"l", b"\x80" + b"\x00" * 7),
    "L": _entry(b"L", b"L", b"\xff" * 8),
    "f": _entry(b"f", b"f", struct.pack(">f", 0.1)),
    "d": _entry(b"d", b"d", struct.pack(">d", -0.0)),
    "D": _entry(b"D", b"D", b"\x03\xff\xff\xff\xfe"),
    "S": _entry(b"S", b"S", b"\x00\x00\x00\x02\xc3\xa9"),
    "S not UTF-8": _entry(b"S not UTF-8", b"S", b"\x00\x00\x00\x02\xff\xfe"),
    "x": _entry(b"x", b"x", b"\x00\x00\x00\x01\x00"),
    "A": _entry(b"A", b"A", b"\x00\x00\x00\x04Vb\x01V"),
    "T": _entry(b"T", b"T", struct.pack(">Q", 1_764_800_000)),
    "T past 9999": _entry(b"T past 9999", b"T", struct.pack(">Q", 2**40)),
    "T past 2**63": _entry(b"T past 2**63", b"T", b"\xff" * 8),
    "F": _entry(b"F", b"F", b"\x00\x00\x00\x03\x01kV"),
    "V": _entry(b"V", b"V", b""),
    "key not UTF-8": _entry(b"\xff", b"V", b""),
    "unknown type": _entry(b"unknown type", b"?", b""),
}


@pytest.mark.parametrize("name", list(WIRE_ENTRIES))
def test_c_decodes_each_field_type_from_the_wire_as_python(name: str) -> None:
    data = _headers_only(WIRE_ENTRIES[name])
    assert_decodes_alike(data)
    # the same at an offset in a bytearray, as the frame reader holds it
    framed = bytearray(b"\xce" * 5) + data + b"\xce"
    assert_decodes_alike(framed, 5, len(framed) - 1)


def test_c_decodes_all_field_types_in_one_table_as_python() -> None:
    data = _headers_only(*(e for n, e in WIRE_ENTRIES.items() if n != "unknown type"))
    kind, props = assert_decodes_alike(data)
    assert kind == "value"
    assert props.headers["f"] == struct.unpack(">f", struct.pack(">f", 0.1))[0]
    assert props.headers["L"] == -1
    assert props.headers["T past 9999"] == 2**40


def _nested_wire(depth: int) -> bytes:
    table = b"\x01kV"
    for _ in range(depth - 1):
        table = b"\x01kF" + struct.pack(">I", len(table)) + table
    return b"\x20\x00" + struct.pack(">I", len(table)) + table


@pytest.mark.parametrize("depth", [MAX_FIELD_TABLE_DEPTH, MAX_FIELD_TABLE_DEPTH + 1])
def test_c_takes_tables_as_deep_as_python_and_refuses_deeper_alike(depth: int) -> None:
    kind, _ = assert_decodes_alike(_nested_wire(depth))
    assert kind == ("value" if depth <= MAX_FIELD_TABLE_DEPTH else "error")


@given(strategies.properties(), st.data())
def test_c_decodes_truncated_and_flipped_properties_as_python(
    props: BasicProperties, data: st.DataObject
) -> None:
    wire = bytearray(encode_properties_py(props))
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    assert_decodes_alike(wire, 0, cut)
    assert_decodes_alike(bytes(wire[:cut]))
    at = data.draw(st.integers(0, len(wire) - 1), label="at")
    wire[at] ^= data.draw(st.integers(1, 255), label="flip")
    assert_decodes_alike(wire)
    fuzz_properties.check(bytes(wire))


@given(st.binary(max_size=300))
def test_c_decodes_any_bytes_as_python(data: bytes) -> None:
    fuzz_properties.check(data)


# -- which codec the client uses ----------------------------------------------------------


def test_the_client_uses_the_c_codec_when_it_is_built() -> None:
    if os.environ.get("TRIO_LAVIN_NO_EXTENSIONS", "") not in ("", "0"):
        assert _properties.SPEEDUPS is False
        assert _properties.decode_properties is decode_properties_py
        assert _properties.encode_properties is encode_properties_py
    else:
        assert _properties.SPEEDUPS is True
        assert _properties.decode_properties is c_codec().decode_properties
        assert _properties.encode_properties is c_codec().encode_properties


@pytest.mark.parametrize(("setting", "used"), [("", True), ("0", True), ("1", False)])
def test_trio_lavin_no_extensions_switches_to_the_python_codec(setting: str, used: bool) -> None:
    code = (
        "from trio_lavin._sansio import _properties as p, _speedups as s\n"
        "print(p.SPEEDUPS, p.decode_properties is s.decode_properties,"
        " p.encode_properties is s.encode_properties)\n"
    )
    env = {**os.environ, "TRIO_LAVIN_NO_EXTENSIONS": setting}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(used)] * 3


@given(
    st.datetimes(
        min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2300, 12, 31)
    ),
    st.sampled_from([UTC, None, datetime.timezone(datetime.timedelta(hours=-5))]),
)
@example(datetime.datetime(1970, 1, 1), UTC)
@example(datetime.datetime(2199, 12, 31, 23, 59, 59, 999_999), UTC)
@example(datetime.datetime(2200, 1, 1), UTC)
@example(datetime.datetime(2000, 2, 29, 12), UTC)
@example(datetime.datetime(1969, 12, 31, 23, 59, 59, 999_999), UTC)
def test_c_encodes_a_timestamp_datetime_to_the_python_seconds(
    moment: datetime.datetime, zone: datetime.tzinfo | None
) -> None:
    assert_encodes_alike(BasicProperties(timestamp=moment.replace(tzinfo=zone)))


# -- a whole publish ------------------------------------------------------------------------


@given(
    st.integers(0, 65535),
    st.binary(min_size=2, max_size=40),
    st.binary(max_size=300),
    st.text(max_size=10),
)
def test_c_frames_a_message_as_python(
    channel: int, props: bytes, body: bytes, routing_key: str
) -> None:
    method = encode_publish_method(channel, "", routing_key, False, False)
    framed = c_codec().frame_message(method, channel, props, body)
    assert framed == frame_message_py(method, channel, props, body)
    header_at = len(method)
    assert framed[header_at] == 2
    assert struct.unpack_from(">Q", framed, header_at + 11) == (len(body),)
    assert framed.endswith(body + b"\xce")


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((b"m", -1, b"", b"b"), ValueError, "channel -1"),
        ((b"m", 65536, b"", b"b"), ValueError, "channel 65536"),
        ((b"m", 1, bytearray(b""), b"b"), TypeError, "takes bytes"),
        ((b"m", "1", b"", b"b"), TypeError, "integer"),
        ((b"m", 1, b""), TypeError, "4 arguments"),
    ],
)
def test_c_frame_message_refuses_what_cannot_be_framed(
    args: tuple[Any, ...], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        c_codec().frame_message(*args)


def test_the_publish_encoder_uses_the_c_framing_when_the_codec_is() -> None:
    expected = c_codec().frame_message if _properties.SPEEDUPS else frame_message_py
    assert _publishing.frame_message is expected
