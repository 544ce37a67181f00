"""Differential tests: the hot-path encoders and decoders produce exactly
what pamqp produces, for any valid input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pamqp_body
from pamqp import commands, header
from pamqp import frame as pamqp_frame

from trio_lavin import BasicProperties
from trio_lavin._sansio import ChannelError, FrameError, FrameReader, LocalProtocolError
from trio_lavin._sansio import _events as ev
from trio_lavin._sansio._framing import encode_content
from trio_lavin._sansio._properties import ContentHeader, encode_properties

from .codec_strategies import from_pamqp, sorted_headers, to_pamqp
from .codec_strategies import properties as codec_properties
from .helpers import content, open_channel
from .helpers import open_connection as handshake

names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
exchange_names = st.from_regex(r"[a-zA-Z0-9\-_.:@#,/+ ]{0,60}", fullmatch=True)
short_text = st.text(max_size=20)
properties = st.none() | codec_properties(pamqp_safe=True).map(sorted_headers)


def _pamqp_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    props: BasicProperties | None,
    body: bytes,
    frame_max: int,
) -> bytes:
    """A publish as pamqp encodes it."""
    frames = [
        pamqp_frame.marshal(
            commands.Basic.Publish(
                exchange=exchange, routing_key=routing_key, mandatory=mandatory
            ),
            channel,
        ),
        pamqp_frame.marshal(
            header.ContentHeader(
                0, len(body), commands.Basic.Properties() if props is None else to_pamqp(props)
            ),
            channel,
        ),
    ]
    step = (frame_max - 8) if frame_max else max(len(body), 1)
    frames += [
        pamqp_frame.marshal(pamqp_body.ContentBody(body[i : i + step]), channel)
        for i in range(0, len(body), step)
    ]
    return b"".join(frames)


@settings(max_examples=300)
@given(
    exchange=exchange_names,
    routing_key=names,
    body=st.binary(max_size=20_000),
    props=properties,
    mandatory=st.booleans(),
    frame_max=st.sampled_from([4096, 5000, 131_072, 0]),
    repeat=st.integers(1, 3),
)
def test_publish_fast_path_is_byte_identical_to_pamqp(
    exchange: str,
    routing_key: str,
    body: bytes,
    props: BasicProperties | None,
    mandatory: bool,
    frame_max: int,
    repeat: int,
) -> None:
    conn = handshake(frame_max=frame_max)
    number = open_channel(conn)
    for _ in range(repeat):  # the second time comes from the caches
        conn.publish(
            number,
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=props,
            mandatory=mandatory,
        )
        expected = _pamqp_publish(
            number, exchange, routing_key, mandatory, props, body, conn.frame_max
        )
        assert conn.data_to_send() == expected
        assert (
            b"".join(
                encode_content(
                    number,
                    commands.Basic.Publish(
                        exchange=exchange, routing_key=routing_key, mandatory=mandatory
                    ),
                    props,
                    body,
                    conn.frame_max,
                )
            )
            == expected
        )


def test_publish_refuses_what_it_cannot_send_and_sends_nothing() -> None:
    conn = handshake()
    number = open_channel(conn)
    with pytest.raises(ValueError, match="exchange 'bad!exchange' is not a valid exchange name"):
        conn.publish(number, b"x", exchange="bad!exchange")
    with pytest.raises(ValueError, match=r"exchange 'e{37}\.\.\.' is 128 characters, at most 127"):
        conn.publish(number, b"x", exchange="e" * 128)
    with pytest.raises(ValueError, match=r"routing key 'r{37}\.\.\.' is 256 bytes in UTF-8"):
        conn.publish(number, b"x", routing_key="r" * 256)
    props = BasicProperties(message_id=5)  # type: ignore[arg-type]  # not a str
    with pytest.raises(TypeError, match="message_id must be a str, not int"):
        conn.publish(number, b"x", properties=props)
    with pytest.raises(TypeError, match=r"headers\['when'\] .* a set cannot go in a field table"):
        conn.publish(number, b"x", headers={"when": {1}})
    assert conn.data_to_send() == b""


def test_mutated_properties_object_is_encoded_afresh() -> None:
    conn = handshake()
    number = open_channel(conn)
    props = BasicProperties(message_id="a")
    conn.publish(number, b"x", properties=props)
    first = conn.data_to_send()
    props.message_id = "b"
    conn.publish(number, b"x", properties=props)
    second = conn.data_to_send()
    assert b"\x01a" in first
    assert b"\x01b" in second


def test_floats_in_headers_are_published_as_doubles() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.publish(number, b"x", properties=BasicProperties(headers={"big": 1e300}))
    assert b"\x03bigd" + struct.pack(">d", 1e300) in conn.data_to_send()


def _pamqp_decode(data: bytes) -> object:
    _, _, value = pamqp_frame.unmarshal(data)
    return value


def _fast_decode(data: bytes) -> object:
    reader = FrameReader()
    reader.receive_data(data)
    frame = reader.next_frame()
    assert frame is not None
    assert reader.buffered == 0
    return frame[1]


def _fields(value: object) -> dict[str, object]:
    slots: list[str] = getattr(type(value), "__slots__", [])
    return {name: getattr(value, name) for name in slots}


@settings(max_examples=300)
@given(
    consumer_tag=names,
    delivery_tag=st.integers(0, 2**63 - 1),
    redelivered=st.booleans(),
    exchange=exchange_names,
    routing_key=names,
)
def test_deliver_fast_decoder_agrees_with_pamqp(
    consumer_tag: str, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> None:
    data = pamqp_frame.marshal(
        commands.Basic.Deliver(consumer_tag, delivery_tag, redelivered, exchange, routing_key), 3
    )
    fast, slow = _fast_decode(data), _pamqp_decode(data)
    assert type(fast) is type(slow) is commands.Basic.Deliver
    assert _fields(fast) == _fields(slow)


@given(st.integers(0, 2**63 - 1), st.booleans(), st.booleans())
def test_ack_and_nack_fast_decoders_agree_with_pamqp(
    tag: int, multiple: bool, requeue: bool
) -> None:
    for method in (
        commands.Basic.Ack(tag, multiple),
        commands.Basic.Nack(tag, multiple, requeue),
    ):
        data = pamqp_frame.marshal(method, 1)
        fast, slow = _fast_decode(data), _pamqp_decode(data)
        assert type(fast) is type(slow)
        assert _fields(fast) == _fields(slow)


@given(st.integers(0, 2**63 - 1), properties)
def test_content_header_decoding_agrees_with_pamqp(
    size: int, props: BasicProperties | None
) -> None:
    data = pamqp_frame.marshal(
        header.ContentHeader(
            0, size, commands.Basic.Properties() if props is None else to_pamqp(props)
        ),
        1,
    )
    fast, slow = _fast_decode(data), _pamqp_decode(data)
    assert isinstance(fast, ContentHeader)
    assert isinstance(slow, header.ContentHeader)
    slow_class_id: object = slow.class_id  # pamqp types it as None until unmarshalled
    assert (fast.class_id, fast.weight, fast.body_size) == (
        slow_class_id,
        slow.weight,
        slow.body_size,
    )
    assert (fast.properties or BasicProperties()) == from_pamqp(slow.properties)


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x3c\x00\x3c\x05ab",  # consumer tag runs past the end
        b"\x00\x3c\x00\x3c\x00\x00\x00",  # delivery tag truncated
        b"\x00\x3c\x00\x3c\x00" + b"\x00" * 8,  # bits missing
        b"\x00\x3c\x00\x50\x00",  # ack truncated
        b"\x00\x3c\x00\x78" + b"\x00" * 8,  # nack without bits
    ],
)
def test_truncated_hot_frames_are_frame_errors(payload: bytes) -> None:
    data = struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"
    reader = FrameReader()
    reader.receive_data(data)
    with pytest.raises(FrameError) as excinfo:
        reader.next_frame()
    assert excinfo.value.reply_code == 501


def test_a_deliver_whose_text_is_not_utf8_decodes_with_its_bytes_kept() -> None:
    payload = b"\x00\x3c\x00\x3c\x01\xff" + b"\x00" * 8 + b"\x00" + b"\x00" + b"\x02\xc3("
    reader = FrameReader()
    reader.receive_data(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    frame = reader.next_frame()
    assert frame is not None
    deliver = frame[1]
    assert isinstance(deliver, commands.Basic.Deliver)
    assert deliver.consumer_tag == "\udcff"
    assert deliver.routing_key is not None
    assert deliver.routing_key.encode("utf-8", "surrogateescape") == b"\xc3("


@given(
    tag=st.integers(0, 2**63 - 1),
    multiple=st.booleans(),
    requeue=st.one_of(st.none(), st.booleans()),
)
def test_ack_and_nack_encoding_is_byte_identical_to_pamqp(
    tag: int, multiple: bool, requeue: bool | None
) -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.acknowledge(number, tag, multiple=multiple, requeue=requeue)
    method: commands.Basic.Ack | commands.Basic.Nack = (
        commands.Basic.Ack(tag, multiple)
        if requeue is None
        else commands.Basic.Nack(tag, multiple, requeue)
    )
    assert conn.data_to_send() == pamqp_frame.marshal(method, number)


def test_acknowledge_refuses_a_closed_channel_and_a_bad_tag() -> None:
    conn = handshake()
    number = open_channel(conn)
    with pytest.raises(ValueError, match=r"delivery_tag must be in 0\.\.2\*\*64-1, not -1"):
        conn.acknowledge(number, -1)
    with pytest.raises(LocalProtocolError, match="channel 9 in state CLOSED"):
        conn.acknowledge(9, 1)
    assert conn.data_to_send() == b""


@settings(max_examples=150)
@given(
    bodies=st.lists(st.binary(max_size=9000), min_size=1, max_size=6),
    frame_size=st.sampled_from([4000, 8000, 131_000]),
    chunk=st.integers(1, 3000),
    props=properties,
    # Names that repeat or change, at the same length or not: take_delivery
    # reuses the last Deliver's decoded names when its bytes match.
    names=st.lists(
        st.tuples(
            st.sampled_from(["ctag", "ctah", "c"]),
            st.sampled_from(["ex", "ey", ""]),
            st.sampled_from(["rk", "rl", "long.key"]),
        ),
        min_size=6,
        max_size=6,
    ),
)
def test_whole_delivery_shortcut_gives_the_same_events_as_frame_by_frame(
    bodies: list[bytes],
    frame_size: int,
    chunk: int,
    props: BasicProperties | None,
    names: list[tuple[str, str, str]],
) -> None:
    data = b"".join(
        content(
            1,
            commands.Basic.Deliver(names[i][0], i + 1, i % 2 == 0, names[i][1], names[i][2]),
            body,
            props,
            frame_size,
        )
        for i, body in enumerate(bodies)
    )

    def run(shortcut: bool) -> list[ev.Event]:
        conn = handshake()
        open_channel(conn)
        if not shortcut:
            conn._reader.take_delivery = lambda accept: None  # type: ignore[method-assign]
        events: list[ev.Event] = []
        for offset in range(0, len(data), chunk):
            conn.receive_data(data[offset : offset + chunk])
            while (event := conn.next_event()) is not None:
                events.append(event)
        return events

    fast, slow = run(True), run(False)
    assert fast == slow
    assert [e.body for e in fast] == bodies  # type: ignore[attr-defined]
    assert all(e.properties == slow[i].properties for i, e in enumerate(fast))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("ctag", "ex", "rk"), ("ctag", "ex", "rl")),  # routing key, same length
        (("ctag", "ex", "rk"), ("ctag", "ey", "rk")),  # exchange, same length
        (("ctag", "ex", "rk"), ("ctah", "ex", "rk")),  # consumer tag, same length
        (("ctag", "ex", "rk"), ("ctag", "ex", "rk")),  # nothing
    ],
)
def test_a_delivery_gets_its_own_names_after_one_with_other_names(
    first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    reader = FrameReader(frame_max=131_072)
    reader.receive_data(pamqp_frame.marshal(commands.Connection.Tune(), 0))
    assert reader.next_frame() is not None  # the shortcut starts after a first frame
    for number, (tag, exchange, routing_key) in enumerate((first, second), start=1):
        method = commands.Basic.Deliver(tag, number, number == 2, exchange, routing_key)
        reader.receive_data(content(3, method, b"body", None, 131_072))
        taken = reader.take_delivery(lambda channel, size: True)
        assert taken == (3, tag, number, number == 2, exchange, routing_key, None, b"body")


def test_delivery_on_a_channel_never_opened_is_still_a_channel_error() -> None:
    conn = handshake()
    conn.receive_data(content(7, commands.Basic.Deliver("c", 1, False, "", "q"), b"hello"))
    with pytest.raises(ChannelError, match="channel 7"):
        conn.next_event()


def test_delivery_on_a_closing_channel_is_discarded() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.close_channel(number)
    conn.receive_data(
        content(number, commands.Basic.Deliver("c", 1, False, "", "q"), b"late")
        + pamqp_frame.marshal(commands.Channel.CloseOk(), number)
    )
    assert conn.next_event() == ev.ChannelCloseOk(number)
    assert conn.next_event() is None


def test_shortcut_leaves_a_delivery_with_an_undecodable_header_to_next_frame() -> None:
    # Found by fuzz/fuzz_frame_reader.py: the shortcut raised at once, so the
    # Deliver that the frame-by-frame path returns before the error was lost.
    heartbeat = b"\x08\x00\x00\x00\x00\x00\x00\xce"
    deliver = pamqp_frame.marshal(commands.Basic.Deliver("c", 1, False, "", "q"), 1)
    bad_header = struct.pack(">BHIHHQH", 2, 1, 15, 60, 0, 2, 0x2000) + b"\x05\xce"  # cut table
    body = struct.pack(">BHI", 3, 1, 2) + b"{}\xce"
    reader = FrameReader()
    reader.receive_data(heartbeat + deliver + bad_header + body)
    assert reader.next_frame() is not None  # the heartbeat
    assert reader.take_delivery(lambda channel, size: True) is None
    channel, method = reader.next_frame()  # type: ignore[misc]
    assert (channel, method.name) == (1, "Basic.Deliver")
    with pytest.raises(FrameError, match="undecodable content header frame on channel 1"):
        reader.next_frame()
    assert reader.take_delivery(lambda channel, size: True) is None


def test_delivery_tags_above_2_63_decode_unsigned() -> None:
    # Found by fuzz/fuzz_frame_reader.py's differential check: pamqp reads the
    # tag as signed; the fast decoder reads it as the specification says.
    tag = 2**64 - 2
    payload = b"\x00\x3c\x00\x3c\x01c" + struct.pack(">Q", tag) + b"\x00\x00\x01q"
    reader = FrameReader()
    reader.receive_data(struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce")
    frame = reader.next_frame()
    assert frame is not None
    assert isinstance(frame[1], commands.Basic.Deliver)
    assert frame[1].delivery_tag == tag


@settings(max_examples=200)
@given(
    messages=st.lists(
        st.tuples(
            st.binary(max_size=6000), st.sampled_from(["", "amq.topic"]), short_text, st.booleans()
        ),
        max_size=8,
    ),
    props=properties,
    frame_max=st.sampled_from([4096, 131_072, 0]),
)
def test_publish_many_sends_the_bytes_of_one_publish_each(
    messages: list[tuple[bytes, str, str, bool]],
    props: BasicProperties | None,
    frame_max: int,
) -> None:
    conn = handshake(frame_max=frame_max)
    number = open_channel(conn)
    encoded = encode_properties(props)
    conn.publish_many(
        number,
        [
            (body, exchange, key, mandatory, i, encoded)
            for i, (body, exchange, key, mandatory) in enumerate(messages)
        ],
    )
    expected = b"".join(
        _pamqp_publish(number, exchange, key, mandatory, props, body, conn.frame_max)
        for body, exchange, key, mandatory in messages
    )
    assert conn.data_to_send() == expected


def test_publish_many_refuses_a_channel_in_confirm_mode_or_not_open_and_sends_nothing() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.send_method(number, commands.Confirm.Select())
    conn.data_to_send()
    one = [(b"x", "", "q", False, 0, b"\x00\x00")]
    with pytest.raises(LocalProtocolError, match=f"channel {number} is in confirm mode"):
        conn.publish_many(number, one)
    with pytest.raises(LocalProtocolError):
        conn.publish_many(number + 1, one)  # never opened
    assert conn.data_to_send() == b""
