"""Message properties: pamqp's bytes where pamqp is right, the wire's where it
is not (empty strings, timestamps past 2106, doubles and bytes in headers,
text that is not UTF-8), and a content header the frame reader decodes the
same on its shortcut and frame by frame."""

from __future__ import annotations

import datetime
import enum
import struct
import zoneinfo
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pamqp import commands, header

from trio_lavin import BasicProperties
from trio_lavin._sansio._errors import FrameError
from trio_lavin._sansio._framing import FrameReader
from trio_lavin._sansio._properties import (
    PROPERTY_FLAGS,
    ContentHeader,
    decode_content_header,
    decode_properties,
    encode_properties,
)

from .codec_strategies import from_pamqp, normalized, properties, sorted_headers, to_pamqp

UTC = datetime.UTC
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
FIVE_WEST = datetime.timezone(datetime.timedelta(hours=-5))


class Stamp(enum.IntEnum):
    DAY = 86_400


def _expected(props: BasicProperties) -> BasicProperties:
    """What decoding gives back for ``props``."""
    return props.replace(headers=normalized(props.headers))


# -- against pamqp, for what pamqp gets right --------------------------------------------


@given(properties(pamqp_safe=True))
def test_properties_encode_to_the_bytes_pamqp_encodes(props: BasicProperties) -> None:
    props = sorted_headers(props)
    assert encode_properties(props) == to_pamqp(props).marshal()


@given(properties(pamqp_safe=True), st.integers(0, 2**63 - 1))
def test_content_headers_from_pamqp_decode_to_its_values(
    props: BasicProperties, body_size: int
) -> None:
    payload = header.ContentHeader(0, body_size, to_pamqp(props)).marshal()
    expected = header.ContentHeader()
    expected.unmarshal(payload)
    got = decode_content_header(payload)
    assert (got.class_id, got.weight, got.body_size) == (60, 0, body_size)
    assert (got.properties or BasicProperties()) == from_pamqp(expected.properties)


# -- faithful both ways ---------------------------------------------------------------------


@given(properties())
@example(BasicProperties(content_type="", correlation_id="", cluster_id=""))
@example(BasicProperties(timestamp=datetime.datetime(2242, 3, 16, 12, 56, 32, tzinfo=UTC)))
@example(BasicProperties(timestamp=2**64 - 1))
@example(BasicProperties(headers={"f": 0.1, "b": b"\x00", "e": "", "n": None}))
@example(BasicProperties(message_id=b"\xff\xfeid".decode("utf-8", "surrogateescape")))
def test_every_property_comes_back_as_it_was_sent(props: BasicProperties) -> None:
    data = encode_properties(props)
    decoded = decode_properties(data, 0, len(data))
    assert decoded == _expected(props)
    assert encode_properties(decoded) == data


def test_empty_strings_are_properties_that_are_set() -> None:
    data = encode_properties(BasicProperties(content_type="", correlation_id=""))
    assert data == struct.pack(">H", 0x8000 | 0x0400) + b"\x00\x00"


def test_timestamps_are_seconds_on_the_wire_however_large() -> None:
    after_2106 = datetime.datetime(2242, 3, 16, 12, 56, 32, tzinfo=UTC)
    data = encode_properties(BasicProperties(timestamp=after_2106))
    assert data == struct.pack(">HQ", 0x0040, 2**33)
    assert decode_properties(data, 0, len(data)).timestamp == after_2106
    naive = encode_properties(BasicProperties(timestamp=datetime.datetime(1970, 1, 2)))
    assert naive == struct.pack(">HQ", 0x0040, 86_400)  # a naive datetime is UTC
    as_int = encode_properties(BasicProperties(timestamp=86_400))
    assert as_int == naive
    beyond = struct.pack(">HQ", 0x0040, 2**63)
    assert decode_properties(beyond, 0, len(beyond)).timestamp == 2**63


@given(
    st.lists(
        st.one_of(
            st.integers(0, 2**64 - 1),
            st.sampled_from([0, 1, 86_400, 2**33]),
            st.datetimes(
                min_value=datetime.datetime(1970, 1, 2),
                timezones=st.sampled_from([None, UTC, FIVE_WEST, NEW_YORK]),
                allow_imaginary=False,
            ),
        ),
        max_size=12,
    )
)
# The same wall time before and after New York's clocks went back (equal
# to Python, an hour apart on the wire).
@example(
    [
        datetime.datetime(2021, 11, 7, 1, 30, tzinfo=NEW_YORK),
        datetime.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=NEW_YORK),
        datetime.datetime(2021, 11, 7, 1, 30, tzinfo=NEW_YORK),
    ]
)
# Equal values in a row: an int and the datetime of that second; an aware
# UTC datetime and the same instant in another zone; naive and aware UTC.
@example([86_400, datetime.datetime(1970, 1, 2, tzinfo=UTC), 86_400])
@example(
    [
        datetime.datetime(2026, 12, 4, 6, 0, tzinfo=UTC),
        datetime.datetime(2026, 12, 4, 1, 0, tzinfo=NEW_YORK),
        datetime.datetime(2026, 12, 4, 1, 0, tzinfo=FIVE_WEST),
        datetime.datetime(2026, 12, 4, 6, 0),
    ]
)
# An int subclass (an IntEnum) twice in a row: not a datetime, no fold.
@example([Stamp.DAY, Stamp.DAY])
@example([datetime.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)])
@example([datetime.datetime(5000, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)])
def test_a_run_of_timestamps_encodes_each_to_its_own_seconds(stamps: list[Any]) -> None:
    """The encoder keeps the last timestamp's bytes for the next message:
    values in a row that Python finds equal (an int and a datetime, a naive
    and an aware one, one zone and another, a wall time either side of a DST
    change) each still get their own seconds; and a datetime's microseconds
    never round it up to the next second (a float of seconds since 1970
    cannot hold them past 2**34 seconds, in 2514)."""
    for stamp in stamps:
        if isinstance(stamp, datetime.datetime):
            aware = stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)
            seconds = (aware - EPOCH) // datetime.timedelta(seconds=1)
        else:
            seconds = stamp
        data = encode_properties(BasicProperties(timestamp=stamp))
        assert data == struct.pack(">HQ", 0x0040, seconds), stamp


def test_text_that_is_not_utf8_comes_back_as_the_same_bytes() -> None:
    data = struct.pack(">H", 0x0080) + b"\x03\xff\xfeA"
    props = decode_properties(data, 0, len(data))
    assert props.message_id == "\udcff\udcfeA"
    assert encode_properties(props) == data


def test_headers_given_apart_stand_in_for_the_properties_headers() -> None:
    props = BasicProperties(content_type="a", headers={"old": 1})
    data = encode_properties(props, {"new": 2})
    decoded = decode_properties(data, 0, len(data))
    assert decoded == BasicProperties(content_type="a", headers={"new": 2})
    assert props.headers == {"old": 1}
    assert encode_properties(None, {"new": 2}) == encode_properties(
        BasicProperties(headers={"new": 2})
    )
    assert encode_properties(None) == b"\x00\x00"


@pytest.mark.parametrize(
    ("props", "error", "message"),
    [
        (BasicProperties(message_id="x" * 256), ValueError, "message_id 'xxx.*' is 256 bytes"),
        (
            BasicProperties(content_type=b"json"),  # type: ignore[arg-type]
            TypeError,
            "content_type must be a str, not bytes",
        ),
        (
            BasicProperties(delivery_mode=256),
            ValueError,
            "delivery_mode 256 must be from 0 to 255",
        ),
        (BasicProperties(priority="1"), TypeError, "priority '1' must be an int"),  # type: ignore[arg-type]
        (BasicProperties(delivery_mode=True), TypeError, "delivery_mode True must be an int"),
        (BasicProperties(timestamp=1.5), TypeError, "timestamp 1.5 must be a datetime or an int"),  # type: ignore[arg-type]
        (BasicProperties(timestamp=-1), ValueError, "timestamp -1 is outside what AMQP carries"),
        (BasicProperties(timestamp=2**64), ValueError, "is outside what AMQP carries"),
        (BasicProperties(headers={"k": {1, 2}}), TypeError, r"headers\['k'\] \{1, 2\}"),
        (BasicProperties(headers=[("k", 1)]), TypeError, "headers must be a dict, not list"),  # type: ignore[arg-type]
        (BasicProperties(reply_to="\ud800"), ValueError, "reply_to '\\\\ud800' cannot be encoded"),
    ],
)
def test_properties_that_cannot_be_sent_are_refused_by_name(
    props: BasicProperties, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        encode_properties(props)


def test_properties_compare_copy_and_show_what_is_set() -> None:
    props = BasicProperties(message_id="1", headers={"a": 1})
    assert props == BasicProperties(message_id="1", headers={"a": 1})
    assert props != BasicProperties(message_id="2", headers={"a": 1})
    assert repr(props) == "BasicProperties(headers={'a': 1}, message_id='1')"
    copy = props.replace(priority=5)
    assert (copy.priority, copy.message_id, props.priority) == (5, "1", None)
    assert copy.headers is props.headers
    assert BasicProperties().is_empty()
    assert not props.is_empty()
    with pytest.raises(TypeError, match="not message properties: colour"):
        props.replace(colour="red")
    with pytest.raises(AttributeError):
        props.mesage_id = "typo"  # type: ignore[attr-defined]
    assert list(PROPERTY_FLAGS) == list(commands.Basic.Properties.flags)


# -- in frames: the shortcut and the frame-by-frame path agree --------------------------------

DELIVER = commands.Basic.Deliver("ctag", 7, False, "ex", "rk")


def _delivery_frames(channel: int, properties_bytes: bytes, body: bytes) -> bytes:
    deliver = struct.pack(">HH", 60, 60) + b"\x04ctag" + struct.pack(">Q", 7) + b"\x00\x02ex\x02rk"
    content = struct.pack(">HHQ", 60, 0, len(body)) + properties_bytes
    return b"".join(
        [
            struct.pack(">BHI", 1, channel, len(deliver)) + deliver + b"\xce",
            struct.pack(">BHI", 2, channel, len(content)) + content + b"\xce",
            struct.pack(">BHI", 3, channel, len(body)) + body + b"\xce" if body else b"",
        ]
    )


def _both_ways(data: bytes) -> tuple[Any, Any]:
    """(the shortcut's properties, the frame-by-frame path's)."""
    fast = FrameReader()
    fast._seen_first_frame = True
    fast.receive_data(data)
    taken = fast.take_delivery(lambda channel, size: True)
    slow = FrameReader()
    slow.receive_data(data)
    frames = []
    while (frame := slow.next_frame()) is not None:
        frames.append(frame)
    content_header = frames[1][1]
    assert isinstance(content_header, ContentHeader)
    assert taken is not None
    return taken[6], content_header.properties


@given(properties())
def test_properties_decode_the_same_on_the_shortcut_and_frame_by_frame(
    props: BasicProperties,
) -> None:
    fast, slow = _both_ways(_delivery_frames(1, encode_properties(props), b"body"))
    expected = None if props.is_empty() else _expected(props)
    assert fast == slow == expected


def test_a_delivery_whose_text_is_not_utf8_is_taken_whole() -> None:
    # message id and routing key not UTF-8: a broker relays them as it got them
    props = struct.pack(">H", 0x0080) + b"\x02\xff\xfe"
    data = _delivery_frames(1, props, b"body")
    data = data.replace(b"\x02rk", b"\x02\xc3(")
    reader = FrameReader()
    reader._seen_first_frame = True
    reader.receive_data(data)
    taken = reader.take_delivery(lambda channel, size: True)
    assert taken is not None
    channel, _, tag, _, exchange, routing_key, got, body = taken
    assert (channel, tag, exchange, body) == (1, 7, "ex", b"body")
    assert routing_key.encode("utf-8", "surrogateescape") == b"\xc3("
    assert got is not None
    assert got.message_id is not None
    assert got.message_id.encode("utf-8", "surrogateescape") == b"\xff\xfe"


@given(st.binary(min_size=2, max_size=40))
def test_garbage_properties_are_a_frame_error_and_never_a_crash(tail: bytes) -> None:
    reader = FrameReader()
    payload = struct.pack(">HHQ", 60, 0, 0) + tail
    reader.receive_data(struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce")
    error: FrameError | None = None
    try:
        frame = reader.next_frame()
    except FrameError as exc:
        error = exc
    if error is not None:
        assert error.reply_code == 501
        return
    assert frame is not None
    assert isinstance(frame[1], ContentHeader)


class DeliveryMode(enum.IntEnum):
    """As pika has it (``pika.DeliveryMode``)."""

    TRANSIENT = 1
    PERSISTENT = 2


def test_delivery_mode_and_priority_take_an_int_enum_as_its_int() -> None:
    """An IntEnum member is an int (field tables and timestamps take one):
    ``delivery_mode=DeliveryMode.PERSISTENT`` encodes as 2, decoded as the
    plain int; it raised TypeError ("must be an int from 0 to 255")."""
    encoded = encode_properties(
        BasicProperties(delivery_mode=DeliveryMode.PERSISTENT, priority=DeliveryMode.TRANSIENT)
    )
    assert encoded == encode_properties(BasicProperties(delivery_mode=2, priority=1))
    decoded = decode_properties(encoded, 0, len(encoded))
    assert (decoded.delivery_mode, decoded.priority) == (2, 1)
    assert type(decoded.delivery_mode) is int
