"""The sans-IO connection machine, driven by broker frames built with pamqp."""

from __future__ import annotations

import math
import struct

import pytest
from pamqp import commands

from trio_lavin import BasicProperties
from trio_lavin._sansio import (
    AMQPConnection,
    ChannelState,
    CommandInvalid,
    ConnectionState,
    HeartbeatTimer,
    LocalProtocolError,
    RemoteProtocolError,
    UnexpectedFrame,
    negotiate,
)
from trio_lavin._sansio import _events as ev

from .helpers import FEED_MODES, content, decode_all, feed, method, names, open_channel
from .helpers import open_connection as handshake


def close_frame(conn: AMQPConnection) -> commands.Connection.Close:
    frames = decode_all(conn.data_to_send())
    closes = [v for _, v in frames if isinstance(v, commands.Connection.Close)]
    assert len(closes) == 1, frames
    return closes[0]


# -- handshake ------------------------------------------------------------------


@pytest.mark.parametrize("mode", FEED_MODES)
def test_handshake_answers_start_tune_and_reports_opened(mode: str) -> None:
    conn = AMQPConnection(username="alice", password="s3cret", virtual_host="prod", heartbeat=30)
    conn.initiate()
    assert conn.data_to_send() == b"AMQP\x00\x00\x09\x01"
    assert conn.state is ConnectionState.AWAIT_START

    events = feed(conn, method(0, commands.Connection.Start(mechanisms="AMQPLAIN PLAIN")), mode)
    assert events == []
    [(_, start_ok)] = decode_all(conn.data_to_send())
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.mechanism == "PLAIN"
    assert start_ok.response == "\0alice\0s3cret"
    assert start_ok.client_properties is not None
    capabilities = start_ok.client_properties["capabilities"]
    assert isinstance(capabilities, dict)
    for name in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
    ):
        assert capabilities[name] is True

    conn2 = AMQPConnection(username="alice", password="s3cret", virtual_host="prod", heartbeat=30)
    conn2.initiate()
    conn2.data_to_send()
    data = (
        method(0, commands.Connection.Start(server_properties={"product": "LavinMQ"}))
        + method(0, commands.Connection.Tune(channel_max=128, frame_max=4096, heartbeat=300))
        + method(0, commands.Connection.OpenOk())
    )
    events = feed(conn2, data, mode)
    assert events == [ev.ConnectionOpened({}, frame_max=4096, channel_max=128, heartbeat=30)]
    assert events[0].server_properties == {"product": "LavinMQ"}  # type: ignore[attr-defined]
    frames = decode_all(conn2.data_to_send())
    assert [v.name for _, v in frames] == [  # type: ignore[attr-defined]
        "Connection.StartOk",
        "Connection.TuneOk",
        "Connection.Open",
    ]
    tune_ok, open_ = frames[1][1], frames[2][1]
    assert isinstance(tune_ok, commands.Connection.TuneOk)
    assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (128, 4096, 30)
    assert isinstance(open_, commands.Connection.Open)
    assert open_.virtual_host == "prod"
    assert conn2.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [(60, 300, 60), (0, 300, 300), (60, 0, 60), (0, 0, 0), (131072, 4096, 4096)],
)
def test_tuning_takes_the_lower_value_unless_one_side_says_zero(
    client: int, server: int, expected: int
) -> None:
    assert negotiate(client, server) == expected


def test_password_never_appears_in_repr() -> None:
    conn = AMQPConnection(username="alice", password="hunter2-very-secret")
    assert "hunter2" not in repr(conn)
    assert "alice" in repr(conn)


def test_bad_credentials_close_403_is_reported_and_close_ok_sent() -> None:
    conn = AMQPConnection()
    conn.initiate()
    data = method(0, commands.Connection.Start()) + method(
        0, commands.Connection.Close(403, "ACCESS_REFUSED - Login was refused", 0, 0)
    )
    events = feed(conn, data, "all-at-once")
    assert events == [ev.BrokerClosedConnection(403, "ACCESS_REFUSED - Login was refused")]
    assert names(conn.data_to_send()) == ["Connection.StartOk", "Connection.CloseOk"]
    assert conn.state is ConnectionState.CLOSED


def test_missing_vhost_close_530_after_open() -> None:
    conn = AMQPConnection(virtual_host="nope")
    conn.initiate()
    data = (
        method(0, commands.Connection.Start())
        + method(0, commands.Connection.Tune(0, 0, 0))
        + method(0, commands.Connection.Close(530, "NOT_ALLOWED - vhost nope not found", 10, 40))
    )
    events = feed(conn, data, "byte-at-a-time")
    assert events == [ev.BrokerClosedConnection(530, "NOT_ALLOWED - vhost nope not found", 10, 40)]
    assert conn.state is ConnectionState.CLOSED


def test_broker_without_plain_is_refused_with_540() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.receive_data(method(0, commands.Connection.Start(mechanisms="EXTERNAL")))
    with pytest.raises(RemoteProtocolError, match="only PLAIN") as excinfo:
        conn.next_event()
    assert excinfo.value.reply_code == 540
    assert conn.state is ConnectionState.CLOSED


def test_tune_before_start_is_command_invalid() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.receive_data(method(0, commands.Connection.Tune(0, 0, 0)))
    with pytest.raises(CommandInvalid, match="RECV_TUNE in connection state AWAIT_START"):
        conn.next_event()


# -- connection close ------------------------------------------------------------


@pytest.mark.parametrize("mode", FEED_MODES)
def test_broker_close_is_answered_and_later_bytes_ignored(mode: str) -> None:
    conn = handshake()
    data = method(0, commands.Connection.Close(320, "CONNECTION_FORCED - bye", 0, 0))
    events = feed(conn, data, mode)
    assert events == [ev.BrokerClosedConnection(320, "CONNECTION_FORCED - bye")]
    assert names(conn.data_to_send()) == ["Connection.CloseOk"]
    assert conn.state is ConnectionState.CLOSED
    assert feed(conn, method(0, commands.Connection.Close(320, "again", 0, 0)), mode) == []


def test_client_close_discards_channel_frames_until_close_ok() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.close()
    assert names(conn.data_to_send()) == ["Connection.Close"]
    data = content(number, commands.Basic.Deliver("c", 1, False, "", "q"), b"hi") + method(
        0, commands.Connection.CloseOk()
    )
    assert feed(conn, data, "all-at-once") == [ev.ConnectionCloseOk()]
    assert conn.state is ConnectionState.CLOSED


def test_close_twice_is_a_local_error_and_changes_nothing() -> None:
    conn = handshake()
    conn.close()
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match="SEND_CLOSE in connection state CLOSING"):
        conn.close()
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.CLOSING


def test_blocked_and_unblocked_are_reported() -> None:
    conn = handshake()
    blocked = method(0, commands.Connection.Blocked("low on disk"))
    data = blocked + method(0, commands.Connection.Unblocked())
    cut = len(blocked) + 3  # the blocked frame and 3 bytes of the next
    conn.receive_data(data[:cut])
    assert conn.next_event() == ev.ConnectionBlocked("low on disk")
    assert conn.next_event() is None
    assert conn.blocked
    conn.receive_data(data[cut:])
    assert conn.next_event() == ev.ConnectionUnblocked()
    assert not conn.blocked


# -- channels -----------------------------------------------------------------------


def test_channel_numbers_are_reused_after_close() -> None:
    conn = handshake()
    first = open_channel(conn)
    second = open_channel(conn)
    assert (first, second) == (1, 2)
    conn.close_channel(first)
    assert conn.channel_state(first) is ChannelState.CLOSING
    conn.receive_data(method(first, commands.Channel.CloseOk()))
    assert conn.next_event() == ev.ChannelCloseOk(first)
    assert conn.open_channel() == first


def test_channel_max_limits_open_channels() -> None:
    conn = handshake(channel_max=2)
    open_channel(conn)
    open_channel(conn)
    with pytest.raises(LocalProtocolError, match="all 2 channels are in use"):
        conn.open_channel()


@pytest.mark.parametrize("mode", FEED_MODES)
def test_broker_channel_close_is_answered_and_reported(mode: str) -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.send_method(number, commands.Queue.Declare(queue="q", durable=True))
    conn.data_to_send()
    data = method(
        number, commands.Channel.Close(406, "PRECONDITION_FAILED - inequivalent arg", 50, 10)
    )
    events = feed(conn, data, mode)
    assert events == [
        ev.BrokerClosedChannel(number, 406, "PRECONDITION_FAILED - inequivalent arg", 50, 10)
    ]
    assert names(conn.data_to_send()) == ["Channel.CloseOk"]
    assert conn.channel_state(number) is ChannelState.CLOSED
    assert conn.state is ConnectionState.OPEN


def test_sending_on_a_channel_that_is_not_open_is_a_local_error() -> None:
    conn = handshake()
    with pytest.raises(LocalProtocolError, match="SEND_METHOD on channel 5 in state CLOSED"):
        conn.send_method(5, commands.Basic.Qos(prefetch_count=1))
    assert conn.data_to_send() == b""


def test_send_method_refuses_lifecycle_and_publish() -> None:
    conn = handshake()
    number = open_channel(conn)
    with pytest.raises(LocalProtocolError, match="use open_channel"):
        conn.send_method(number, commands.Channel.Close())
    with pytest.raises(LocalProtocolError, match="use publish"):
        conn.send_method(number, commands.Basic.Publish())


@pytest.mark.parametrize("mode", FEED_MODES)
def test_replies_are_matched_to_requests_in_order(mode: str) -> None:
    conn = handshake()
    number = open_channel(conn)
    assert conn.send_method(number, commands.Queue.Declare(queue="a"))
    assert conn.send_method(number, commands.Basic.Qos(prefetch_count=10))
    assert not conn.send_method(number, commands.Exchange.Declare(exchange="x", nowait=True))
    data = method(number, commands.Queue.DeclareOk("a", 0, 0)) + method(
        number, commands.Basic.QosOk()
    )
    events = feed(conn, data, mode)
    assert events == [
        ev.MethodReply(number, commands.Queue.DeclareOk("a", 0, 0)),
        ev.MethodReply(number, commands.Basic.QosOk()),
    ]


def test_reply_nobody_asked_for_is_command_invalid_and_closes_503() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.send_method(number, commands.Queue.Declare(queue="a"))
    conn.receive_data(method(number, commands.Basic.QosOk()))
    with pytest.raises(CommandInvalid, match=r"waiting for a reply to Queue\.Declare"):
        conn.next_event()
    close = close_frame(conn)
    assert close.reply_code == 503
    assert conn.state is ConnectionState.CLOSING
    # A broken connection ignores everything afterwards.
    conn.receive_data(method(number, commands.Queue.DeclareOk("a", 0, 0)))
    assert conn.next_event() is None


def test_frame_on_a_channel_never_opened_is_channel_error_504() -> None:
    conn = handshake()
    conn.receive_data(method(9, commands.Basic.QosOk()))
    with pytest.raises(RemoteProtocolError, match="on channel 9 in state CLOSED") as excinfo:
        conn.next_event()
    assert excinfo.value.reply_code == 504
    assert close_frame(conn).reply_code == 504


def test_heartbeat_on_a_channel_is_unexpected_frame() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.receive_data(b"\x08\x00" + bytes([number]) + b"\x00\x00\x00\x00\xce")
    with pytest.raises(UnexpectedFrame, match="heartbeat frame on channel 1"):
        conn.next_event()
    assert close_frame(conn).reply_code == 505


def test_flow_and_server_cancel_are_answered_automatically() -> None:
    conn = handshake()
    number = open_channel(conn)
    data = method(number, commands.Channel.Flow(active=False)) + method(
        number, commands.Basic.Cancel(consumer_tag="ctag-1")
    )
    assert feed(conn, data, "all-at-once") == [
        ev.ChannelFlow(number, False),
        ev.BrokerCancelledConsumer(number, "ctag-1"),
    ]
    assert names(conn.data_to_send()) == ["Channel.FlowOk", "Basic.CancelOk"]


# -- content ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", FEED_MODES)
@pytest.mark.parametrize("size", [0, 1, 5000, 300_000])
def test_delivery_is_assembled_from_header_and_body_frames(mode: str, size: int) -> None:
    conn = handshake()
    number = open_channel(conn)
    payload = bytes(i % 253 for i in range(size))
    props = BasicProperties(message_id="m1", delivery_mode=2)
    data = content(
        number, commands.Basic.Deliver("ctag", 42, True, "ex", "rk"), payload, props, 4000
    )
    if mode == "byte-at-a-time" and size > 5000:
        mode = "all-at-once"  # 300 000 single-byte feeds add nothing but time
    events = feed(conn, data, mode)
    assert events == [ev.DeliveryReceived(number, "ctag", 42, True, "ex", "rk", props, payload)]
    delivery = events[0]
    assert isinstance(delivery, ev.DeliveryReceived)
    assert delivery.properties is not None
    assert delivery.properties.message_id == "m1"


def test_method_inside_content_is_unexpected_frame_505() -> None:
    conn = handshake()
    number = open_channel(conn)
    data = content(number, commands.Basic.Deliver("c", 1, False, "", "q"), b"0123456789")
    cut = data[: -(10 + 8)]  # drop the body frame: an underrun
    conn.receive_data(cut + method(number, commands.Basic.Deliver("c", 2, False, "", "q")))
    with pytest.raises(UnexpectedFrame, match="incomplete") as excinfo:
        conn.next_event()
    assert excinfo.value.reply_code == 505
    assert close_frame(conn).reply_code == 505


def test_body_longer_than_announced_is_unexpected_frame() -> None:
    conn = handshake()
    number = open_channel(conn)
    data = content(number, commands.Basic.Deliver("c", 1, False, "", "q"), b"0123456789")
    extra = content(number, commands.Basic.Deliver("c", 1, False, "", "q"), b"X")[-9:]
    conn.receive_data(data[:-18] + b"\x03\x00\x01\x00\x00\x00\x0b" + b"0123456789X" + b"\xce")
    with pytest.raises(UnexpectedFrame, match="overruns the announced size by 1 bytes"):
        conn.next_event()
    assert extra  # the body frame shape used above


def test_body_without_header_is_unexpected_frame() -> None:
    conn = handshake()
    assert open_channel(conn) == 1
    conn.receive_data(b"\x03\x00\x01\x00\x00\x00\x01X\xce")
    with pytest.raises(UnexpectedFrame, match="before a header"):
        conn.next_event()


@pytest.mark.parametrize("mode", FEED_MODES)
def test_too_large_a_body_closes_its_channel_with_311_and_is_skipped(mode: str) -> None:
    conn = handshake(factory=lambda: AMQPConnection(max_body_size=100))
    number = open_channel(conn)
    other = open_channel(conn)
    deliver = commands.Basic.Deliver("c", 7, False, "", "q")
    data = content(number, deliver, b"x" * 250, frame_size=90)  # 3 body frames
    data += content(other, deliver, b"fits")
    events = feed(conn, data, mode)
    text = "Basic.Deliver on channel 1 carries a body of 250 bytes, more than max_body_size 100"
    assert events[0] == ev.ContentTooLarge(number, 311, text, 250)
    assert events[1:] == [
        ev.DeliveryReceived(other, "c", 7, False, "", "q", BasicProperties(), b"fits")
    ]
    [(channel, close)] = decode_all(conn.data_to_send())
    assert channel == number
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (311, text)
    # The connection stays open; the channel is released by the broker's CloseOk.
    assert conn.state is ConnectionState.OPEN
    assert conn.channel_state(number) is ChannelState.CLOSING
    if mode == "with-trailing-bytes":
        return  # an incomplete frame is pending
    conn.receive_data(method(number, commands.Channel.CloseOk()))
    assert conn.next_event() == ev.ChannelCloseOk(number)
    assert conn.channel_state(number) is ChannelState.CLOSED
    assert conn.open_channel() == number


def test_too_large_a_body_is_never_buffered() -> None:
    conn = handshake(factory=lambda: AMQPConnection(max_body_size=10), frame_max=4096)
    number = open_channel(conn)
    size = 50 * 4088
    frames = content(
        number, commands.Basic.Deliver("c", 1, False, "", "q"), b"y" * size, None, 4088
    )
    [event] = feed(conn, frames, "all-at-once")
    assert isinstance(event, ev.ContentTooLarge)
    assert event.body_size == size
    assert conn.buffered == 0
    assert not conn._channels[number].content.in_progress


def test_header_without_its_method_is_still_unexpected_even_when_too_large() -> None:
    conn = handshake(factory=lambda: AMQPConnection(max_body_size=100))
    number = open_channel(conn)
    data = content(number, commands.Basic.Deliver("c", 1, False, "", "q"), b"x" * 101)
    first_frame_end = len(method(number, commands.Basic.Deliver("c", 1, False, "", "q")))
    conn.receive_data(data[first_frame_end:])
    with pytest.raises(UnexpectedFrame, match="content header on channel 1 where none"):
        conn.next_event()


def test_get_ok_and_get_empty_answer_basic_get() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.send_method(number, commands.Basic.Get(queue="q"))
    conn.send_method(number, commands.Basic.Get(queue="q"))
    data = content(number, commands.Basic.GetOk(5, False, "", "q", 3), b"body") + method(
        number, commands.Basic.GetEmpty()
    )
    events = feed(conn, data, "byte-at-a-time")
    assert events[0] == ev.GetReceived(number, 5, False, "", "q", 3, BasicProperties(), b"body")
    assert events[1] == ev.MethodReply(number, commands.Basic.GetEmpty())


def test_return_carries_the_message() -> None:
    conn = handshake()
    number = open_channel(conn)
    data = content(number, commands.Basic.Return(312, "NO_ROUTE", "", "nowhere"), b"lost")
    [event] = feed(conn, data, "with-trailing-bytes")
    assert event == ev.ReturnedMessage(
        number, 312, "NO_ROUTE", "", "nowhere", BasicProperties(), b"lost"
    )


# -- confirms -----------------------------------------------------------------------


def test_confirm_mode_numbers_publishes_and_reports_acks() -> None:
    conn = handshake()
    number = open_channel(conn)
    assert conn.publish(number, b"before", routing_key="q") == 0
    conn.send_method(number, commands.Confirm.Select())
    conn.receive_data(method(number, commands.Confirm.SelectOk()))
    assert conn.next_event() == ev.MethodReply(number, commands.Confirm.SelectOk())
    tags = [conn.publish(number, b"m", routing_key="q") for _ in range(3)]
    assert tags == [1, 2, 3]
    data = method(number, commands.Basic.Ack(2, multiple=True)) + method(
        number, commands.Basic.Nack(3, multiple=False, requeue=False)
    )
    assert feed(conn, data, "all-at-once") == [
        ev.PublishAcked(number, 2, True),
        ev.PublishNacked(number, 3, False),
    ]


def test_ack_outside_confirm_mode_is_command_invalid() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.receive_data(method(number, commands.Basic.Ack(1)))
    with pytest.raises(CommandInvalid, match="not in confirm mode"):
        conn.next_event()


def test_ack_for_a_message_never_published_is_command_invalid() -> None:
    conn = handshake()
    number = open_channel(conn)
    conn.send_method(number, commands.Confirm.Select(nowait=True))
    conn.publish(number, b"m")
    conn.receive_data(method(number, commands.Basic.Ack(5)))
    with pytest.raises(CommandInvalid, match="publish 5 on channel 1, but only 1 were published"):
        conn.next_event()


def test_publish_splits_large_bodies_by_negotiated_frame_max() -> None:
    conn = handshake(frame_max=4096)
    number = open_channel(conn)
    conn.publish(number, b"z" * 10_000, routing_key="q")
    frames = decode_all(conn.data_to_send())
    assert [type(v).__name__ for _, v in frames] == [
        "Publish",
        "ContentHeader",
        "ContentBody",
        "ContentBody",
        "ContentBody",
    ]
    bodies = [v.value for _, v in frames[2:]]  # type: ignore[attr-defined]
    assert sum(len(b) for b in bodies) == 10_000


# -- heartbeats -----------------------------------------------------------------------


def test_heartbeat_deadlines_follow_the_interval() -> None:
    timer = HeartbeatTimer(interval=10, last_sent=100.0, last_received=100.0)
    assert timer.send_deadline() == 105.0
    assert timer.receive_deadline() == 120.0
    assert not timer.should_send(104.9)
    assert timer.should_send(105.0)
    timer.data_sent(105.0)
    assert timer.send_deadline() == 110.0
    timer.data_received(119.0)
    assert not timer.timed_out(138.9)
    assert timer.timed_out(139.0)


def test_heartbeat_zero_disables_deadlines() -> None:
    timer = HeartbeatTimer(interval=0, last_sent=0.0, last_received=0.0)
    assert timer.send_deadline() == math.inf
    assert not timer.timed_out(1e12)
    with pytest.raises(ValueError, match="heartbeat interval must be >= 0 seconds, not -1"):
        HeartbeatTimer(interval=-1, last_sent=0.0, last_received=0.0)


def test_send_heartbeat_queues_the_heartbeat_frame() -> None:
    conn = handshake()
    conn.send_heartbeat()
    assert conn.data_to_send() == b"\x08\x00\x00\x00\x00\x00\x00\xce"
    conn.receive_data(b"\x08\x00\x00\x00\x00\x00\x00\xce")
    assert conn.next_event() is None
    assert conn.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_max": 100}, "frame_max must be 0 or >= 4096, not 100"),
        ({"channel_max": 70000}, "channel_max must be in 0..65535, not 70000"),
        ({"heartbeat": -1}, "heartbeat must be in 0..65535 seconds, not -1"),
    ],
)
def test_bad_tuning_options_name_the_value(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AMQPConnection(**kwargs)  # type: ignore[arg-type]


# -- text the broker cut mid-character --------------------------------------------------

#: RabbitMQ cuts a reply text of over 255 bytes at byte 252 and adds "...",
#: wherever a character ends: "x" and 125 "é" (2 bytes each) end in half an "é".
CUT_TEXT = ("x" + "é" * 200).encode()[:252] + b"..."


def raw_method(channel: int, class_id: int, method_id: int, arguments: bytes) -> bytes:
    """A method frame made by hand (pamqp cannot encode text that is not UTF-8)."""
    payload = struct.pack(">HH", class_id, method_id) + arguments
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


def shortstr(raw: bytes) -> bytes:
    return bytes([len(raw)]) + raw


@pytest.mark.parametrize("mode", FEED_MODES)
def test_a_connection_close_whose_text_is_not_utf8_keeps_its_reply_code(mode: str) -> None:
    """A 320 with a reply text cut mid-character is a 320, answered with
    CloseOk (it was a 501 FrameError, answered with our own Close); the
    stray byte of the text becomes U+FFFD (a text for people: printable)."""
    conn = handshake()
    data = raw_method(0, 10, 50, struct.pack(">H", 320) + shortstr(CUT_TEXT) + b"\0\0\0\0")
    [event] = feed(conn, data, mode)
    assert isinstance(event, ev.BrokerClosedConnection)
    assert event.reply_code == 320
    assert event.reply_text == CUT_TEXT.decode("utf-8", "replace")
    assert event.reply_text.endswith("é\ufffd...")
    assert names(conn.data_to_send()) == ["Connection.CloseOk"]


@pytest.mark.parametrize("mode", FEED_MODES)
def test_a_channel_close_whose_text_is_not_utf8_closes_only_the_channel(mode: str) -> None:
    conn = handshake()
    number = open_channel(conn)
    data = raw_method(
        number, 20, 40, struct.pack(">H", 406) + shortstr(CUT_TEXT) + b"\0\x32\0\x0a"
    )
    [event] = feed(conn, data, mode)
    assert isinstance(event, ev.BrokerClosedChannel)
    assert (event.reply_code, event.class_id, event.method_id) == (406, 50, 10)
    assert names(conn.data_to_send()) == ["Channel.CloseOk"]
    assert conn.state is ConnectionState.OPEN


def test_a_blocked_reason_that_is_not_utf8_is_reported() -> None:
    conn = handshake()
    conn.receive_data(raw_method(0, 10, 60, shortstr(b"low on \xe9")))
    event = conn.next_event()
    assert isinstance(event, ev.ConnectionBlocked)
    assert event.reason == "low on \ufffd"
    assert conn.blocked


@pytest.mark.parametrize(
    ("client", "server"), [(0, 0), (0, 64 * 1024 * 1024), (32 * 1024 * 1024, 64 * 1024 * 1024)]
)
def test_tune_ok_never_offers_frames_larger_than_the_reader_takes(
    client: int, server: int
) -> None:
    """The reader refuses frames over 16 MiB, so TuneOk says 16 MiB where
    both sides allowed more (or said 0, no limit): it told the broker 0 or
    32 MiB, then closed the connection with 501 on a 20 MiB frame."""
    conn = AMQPConnection(username="u", password="pw", frame_max=client)
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(
        method(0, commands.Connection.Start(server_properties={"product": "test"}))
        + method(0, commands.Connection.Tune(2047, server, 60))
    )
    while conn.next_event() is not None:
        pass
    tune_ok = next(
        frame
        for _, frame in decode_all(conn.data_to_send())
        if isinstance(frame, commands.Connection.TuneOk)
    )
    assert tune_ok.frame_max == conn.frame_max == 16 * 1024 * 1024
