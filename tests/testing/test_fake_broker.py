"""The fake broker, driven from the client side with raw pamqp frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import base, body, commands, common, heartbeat

from trio_lavin import BasicProperties
from trio_lavin._sansio._errors import ProtocolVersionMismatch
from trio_lavin._sansio._framing import (
    FRAME_OVERHEAD,
    PROTOCOL_HEADER,
    Frame,
    FrameReader,
    FrameValue,
    encode_content,
    encode_frame,
)
from trio_lavin._sansio._properties import ContentHeader
from trio_lavin.testing import (
    BrokerConnection,
    ConnectionState,
    FakeBroker,
    FakeBrokerServer,
    open_fake_broker,
)

CLIENT_CAPABILITIES: common.FieldTable = {
    "publisher_confirms": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "basic.nack": True,
}
#: Seconds a trio-layer test waits for the broker before failing (virtual under autojump_clock).
TIMEOUT = 60
CONTENT_METHODS = (commands.Basic.Deliver, commands.Basic.GetOk, commands.Basic.Return)
ContentMethod = TypeVar(
    "ContentMethod", commands.Basic.Deliver, commands.Basic.GetOk, commands.Basic.Return
)


def plain(user: str, password: str) -> str:
    return f"\0{user}\0{password}"


def method_names(frames: list[Frame]) -> list[tuple[int, str]]:
    return [(ch, v.name) for ch, v in frames if isinstance(v, base.Frame)]


def contents(
    frames: list[Frame], kind: type[ContentMethod]
) -> list[tuple[ContentMethod, BasicProperties | None, bytes]]:
    """The content-bearing methods in ``frames``, each with its properties and
    body; they must all be of type ``kind``."""
    found = []
    values = [v for _, v in frames]
    i = 0
    while i < len(values):
        method = values[i]
        i += 1
        if not isinstance(method, CONTENT_METHODS):
            continue
        assert isinstance(method, kind), method.name
        content_header = values[i]
        assert isinstance(content_header, ContentHeader)
        i += 1
        payload = b""
        while len(payload) < content_header.body_size:
            part = values[i]
            assert isinstance(part, body.ContentBody)
            payload += part.value
            i += 1
        found.append((method, content_header.properties, payload))
    return found


class RawClient:
    """The client side of one connection to a sans-IO :class:`FakeBroker`.

    Every send returns the frames the broker answered with on this connection.
    """

    def __init__(self, broker: FakeBroker) -> None:
        self.conn: BrokerConnection = broker.new_connection()
        self.reader = FrameReader()
        self.frame_max = 131_072

    def send_bytes(self, data: bytes) -> list[Frame]:
        self.conn.receive_data(data)
        return self.received()

    def received(self) -> list[Frame]:
        """The frames the broker queued for us since the last call."""
        self.reader.receive_data(self.conn.data_to_send())
        frames = []
        while (frame := self.reader.next_frame()) is not None:
            frames.append(frame)
        return frames

    def send(self, channel: int, *values: FrameValue) -> list[Frame]:
        return self.send_bytes(b"".join(encode_frame(channel, v) for v in values))

    def call(self, channel: int, method: base.Frame) -> FrameValue:
        """Send one method and return the single frame that answers it."""
        frames = self.send(channel, method)
        assert len(frames) == 1, method_names(frames)
        return frames[0][1]

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        payload: bytes,
        *,
        mandatory: bool = False,
        properties: BasicProperties | None = None,
    ) -> list[Frame]:
        publish = commands.Basic.Publish(
            exchange=exchange, routing_key=routing_key, mandatory=mandatory
        )
        frames = encode_content(channel, publish, properties, payload, self.frame_max)
        return self.send_bytes(b"".join(frames))

    def handshake(
        self,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        frame_max: int = 131_072,
    ) -> list[Frame]:
        """Header, StartOk, TuneOk, Open; returns the answer to Open."""
        [(_, start)] = self.send_bytes(PROTOCOL_HEADER)
        assert isinstance(start, commands.Connection.Start)
        client_properties: common.FieldTable = {
            "product": "RawClient",
            "capabilities": CLIENT_CAPABILITIES,
        }
        frames = self.send(
            0,
            commands.Connection.StartOk(client_properties, response=plain(user, password)),
        )
        if not frames or not isinstance(frames[0][1], commands.Connection.Tune):
            return frames
        tune = frames[0][1]
        self.frame_max = frame_max
        self.send(0, commands.Connection.TuneOk(tune.channel_max, frame_max, 0))
        self.reader.frame_max = frame_max
        return self.send(0, commands.Connection.Open(vhost))

    @classmethod
    def connected(cls, broker: FakeBroker, *channels: int, frame_max: int = 131_072) -> RawClient:
        """A client past the handshake, with ``channels`` (default: 1) open."""
        client = cls(broker)
        assert method_names(client.handshake(frame_max=frame_max)) == [(0, "Connection.OpenOk")]
        for channel in channels or (1,):
            assert isinstance(
                client.call(channel, commands.Channel.Open()), commands.Channel.OpenOk
            )
        return client

    def declare_queue(
        self, channel: int, name: str, *, passive: bool = False, exclusive: bool = False
    ) -> commands.Queue.DeclareOk:
        declare = commands.Queue.Declare(queue=name, passive=passive, exclusive=exclusive)
        ok = self.call(channel, declare)
        assert isinstance(ok, commands.Queue.DeclareOk)
        return ok


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


# -- handshake --------------------------------------------------------------------------------


def test_handshake_offers_plain_and_capabilities_then_tunes_and_opens(broker: FakeBroker) -> None:
    client = RawClient(broker)
    [(channel, start)] = client.send_bytes(PROTOCOL_HEADER)
    assert channel == 0
    assert isinstance(start, commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == "PLAIN"
    capabilities = start.server_properties["capabilities"]
    assert isinstance(capabilities, dict)
    for name in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "basic.nack",
        "exchange_exchange_bindings",
        "per_consumer_qos",
        "authentication_failure_close",
    ):
        assert capabilities[name] is True, name

    tune = client.call(0, commands.Connection.StartOk({}, response=plain("guest", "guest")))
    assert isinstance(tune, commands.Connection.Tune)
    assert (tune.channel_max, tune.frame_max, tune.heartbeat) == (2047, 131_072, 60)
    assert client.send(0, commands.Connection.TuneOk(2047, 131_072, 30)) == []
    assert isinstance(client.call(0, commands.Connection.Open("/")), commands.Connection.OpenOk)
    assert client.conn.state is ConnectionState.OPEN
    assert (client.conn.user, client.conn.vhost, client.conn.heartbeat) == ("guest", "/", 30)
    assert broker.connections == [client.conn]


def test_handshake_fed_one_byte_at_a_time_gives_the_same_frames(broker: FakeBroker) -> None:
    whole = RawClient(broker)
    whole.handshake()
    bytewise = RawClient(broker)
    data = PROTOCOL_HEADER + encode_frame(
        0, commands.Connection.StartOk({}, response=plain("guest", "guest"))
    )
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += bytewise.send_bytes(data[i : i + 1])
    assert method_names(frames) == [(0, "Connection.Start"), (0, "Connection.Tune")]


def test_wrong_protocol_header_gets_our_header_back_and_the_connection_closes(
    broker: FakeBroker,
) -> None:
    conn = broker.new_connection()
    conn.receive_data(b"AMQP\x00\x00\x08\x00")
    assert conn.data_to_send() == PROTOCOL_HEADER
    assert conn.closed
    assert broker.connections == []
    reader = FrameReader()
    reader.receive_data(PROTOCOL_HEADER)
    with pytest.raises(ProtocolVersionMismatch):
        reader.next_frame()


def test_bad_password_is_refused_with_403_and_the_connection_closes(broker: FakeBroker) -> None:
    client = RawClient(broker)
    [(channel, close)] = client.handshake(password="wrong")
    assert channel == 0
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused")
    assert client.conn.closed


def test_unknown_vhost_is_refused_with_530_not_allowed(broker: FakeBroker) -> None:
    client = RawClient(broker)
    [(_, close)] = client.handshake(vhost="/nope")
    assert isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text) == (530, "NOT_ALLOWED - vhost /nope not found")
    assert client.conn.closed


def test_tune_ok_above_the_proposed_frame_max_is_refused_with_530(broker: FakeBroker) -> None:
    client = RawClient(broker)
    client.send_bytes(PROTOCOL_HEADER)
    client.send(0, commands.Connection.StartOk({}, response=plain("guest", "guest")))
    [(_, close)] = client.send(0, commands.Connection.TuneOk(2047, 1_000_000, 0))
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 530
    assert "frame_max = 1000000 is higher than the maximum allowed value (131072)" in (
        close.reply_text
    )


def test_client_close_gets_close_ok_and_finishes_the_connection(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    [(_, ok)] = client.send(0, commands.Connection.Close(200, "bye", 0, 0))
    assert isinstance(ok, commands.Connection.CloseOk)
    assert client.conn.closed
    assert broker.connections == []


def test_client_close_during_the_handshake_gets_close_ok(broker: FakeBroker) -> None:
    client = RawClient(broker)
    client.send_bytes(PROTOCOL_HEADER)
    [(_, ok)] = client.send(0, commands.Connection.Close(200, "changed my mind", 0, 0))
    assert isinstance(ok, commands.Connection.CloseOk)
    assert client.conn.closed


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(min_size=1, max_size=64), chunk=st.integers(1, 16))
def test_arbitrary_bytes_after_the_handshake_never_raise_and_output_stays_parseable(
    garbage: bytes, chunk: int
) -> None:
    # Invariant: whatever a client sends, the broker never raises, answers with
    # well-formed frames (or nothing), and after its Connection.Close says at
    # most a CloseOk (to a Close of the client's crossing ours).
    client = RawClient.connected(FakeBroker())
    frames: list[Frame] = []
    for i in range(0, len(garbage), chunk):
        frames += client.send_bytes(garbage[i : i + chunk])
    names = [v.name for _, v in frames]
    if "Connection.Close" in names:
        after = names[names.index("Connection.Close") + 1 :]
        assert after in ([], ["Connection.CloseOk"])


def _publish_frames(channel: int) -> bytes:
    publish = commands.Basic.Publish(routing_key="q", mandatory=True)
    return b"".join(encode_content(channel, publish, None, b"body", 4096))


#: Client methods for either channel, sent in any order: a rough client, not a conformant one.
CLIENT_STEPS: list[Callable[[int], bytes]] = [
    _publish_frames,
    lambda ch: encode_frame(ch, commands.Basic.Get(queue="q")),
    lambda ch: encode_frame(ch, commands.Basic.Ack(delivery_tag=0, multiple=True)),
    lambda ch: encode_frame(ch, commands.Basic.Nack(delivery_tag=1, requeue=True)),
    lambda ch: encode_frame(ch, commands.Basic.Reject(delivery_tag=2, requeue=False)),
    lambda ch: encode_frame(ch, commands.Basic.Consume(queue="q", consumer_tag=f"c{ch}")),
    lambda ch: encode_frame(ch, commands.Basic.Cancel(consumer_tag=f"c{ch}")),
    lambda ch: encode_frame(ch, commands.Basic.Qos(prefetch_count=1)),
    lambda ch: encode_frame(ch, commands.Basic.Recover(requeue=True)),
    lambda ch: encode_frame(ch, commands.Confirm.Select()),
    lambda ch: encode_frame(ch, commands.Tx.Select()),
    lambda ch: encode_frame(ch, commands.Tx.Commit()),
    lambda ch: encode_frame(ch, commands.Tx.Rollback()),
    lambda ch: encode_frame(ch, commands.Queue.Declare(queue="q")),
    lambda ch: encode_frame(ch, commands.Queue.Delete(queue="q")),
    lambda ch: encode_frame(ch, commands.Queue.Purge(queue="q")),
    lambda ch: encode_frame(ch, commands.Channel.Flow(active=False)),
    lambda ch: encode_frame(ch, commands.Channel.Flow(active=True)),
    lambda ch: encode_frame(ch, commands.Channel.Open()),
    lambda ch: encode_frame(ch, commands.Channel.Close(200, "", 0, 0)),
    lambda ch: encode_frame(ch, commands.Channel.CloseOk()),
]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from([1, 2]), st.sampled_from(range(len(CLIENT_STEPS)))),
        max_size=40,
    )
)
def test_random_method_sequences_never_crash_and_leave_nothing_unacked_after_eof(
    steps: list[tuple[int, int]],
) -> None:
    # Invariant: no client sequence makes the broker raise, and once the client
    # is gone every message it held is back in its queue.
    broker = FakeBroker()
    client = RawClient.connected(broker, 1, 2)
    client.declare_queue(1, "q")
    for channel, step in steps:
        client.send_bytes(CLIENT_STEPS[step](channel))
    client.conn.receive_data(b"")
    assert broker.connections == []
    if "q" in broker.queue_names():
        info = broker.queue("q")
        assert (info.messages_unacknowledged, info.consumer_count) == (0, 0)


def test_heartbeats_from_the_client_are_ignored(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    assert client.send(0, heartbeat.Heartbeat()) == []
    assert client.conn.state is ConnectionState.OPEN


# -- connection-level protocol violations -----------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "value", "reply_code"),
    [
        pytest.param(5, commands.Basic.Qos(0, 1), 504, id="method-on-unopened-channel"),
        pytest.param(1, commands.Channel.Open(), 504, id="second-channel-open"),
        pytest.param(0, commands.Basic.Qos(0, 1), 503, id="channel-method-on-channel-0"),
        pytest.param(1, ContentHeader(3), 505, id="content-header-without-publish"),
        pytest.param(
            1, commands.Basic.Deliver("t", 1, False, "", ""), 503, id="server-only-method"
        ),
        pytest.param(1, heartbeat.Heartbeat(), 501, id="heartbeat-on-channel-1"),
    ],
)
def test_connection_level_violations_close_the_connection_with_rabbitmq_codes(
    broker: FakeBroker, channel: int, value: FrameValue, reply_code: int
) -> None:
    client = RawClient.connected(broker)
    # pamqp marshals heartbeats on channel 0 only, so build that frame by hand
    data = (
        b"\x08" + channel.to_bytes(2, "big") + b"\x00\x00\x00\x00\xce"
        if isinstance(value, heartbeat.Heartbeat)
        else encode_frame(channel, value)
    )
    [(ch, close)] = client.send_bytes(data)
    assert ch == 0
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == reply_code, close.reply_text
    assert client.conn.state is ConnectionState.CLOSING
    assert client.send(1, commands.Basic.Qos(0, 1)) == []  # discarded while closing
    client.send(0, commands.Connection.CloseOk())
    assert client.conn.closed


def test_method_frame_inside_content_is_505_unexpected_frame(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.send(1, commands.Basic.Publish(routing_key="q"))
    [(_, close)] = client.send(1, commands.Basic.Qos(0, 1))
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505


def test_undecodable_frame_is_501_and_the_connection_hangs_up(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    [(_, close)] = client.send_bytes(b"\x09\x00\x00\x00\x00\x00\x00\xce")
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 501
    assert "unknown frame type 9" in close.reply_text
    assert client.conn.closed


# -- exchanges, queues, routing ---------------------------------------------------------------


def test_declare_bind_publish_then_get_returns_the_message_with_its_properties(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    assert isinstance(
        client.call(1, commands.Exchange.Declare(exchange="logs", exchange_type="direct")),
        commands.Exchange.DeclareOk,
    )
    client.declare_queue(1, "q")
    assert isinstance(
        client.call(1, commands.Queue.Bind(queue="q", exchange="logs", routing_key="info")),
        commands.Queue.BindOk,
    )
    props = BasicProperties(content_type="text/plain", headers={"n": 1})
    assert client.publish(1, "logs", "info", b"hello", properties=props) == []
    assert client.publish(1, "logs", "debug", b"dropped") == []
    assert broker.queue("q").messages_ready == 1

    [(get_ok, got_props, payload)] = contents(
        client.send(1, commands.Basic.Get(queue="q")), commands.Basic.GetOk
    )
    assert (get_ok.delivery_tag, get_ok.redelivered, get_ok.message_count) == (1, False, 0)
    assert (get_ok.exchange, get_ok.routing_key) == ("logs", "info")
    assert got_props == props
    assert payload == b"hello"
    assert isinstance(client.call(1, commands.Basic.Get(queue="q")), commands.Basic.GetEmpty)
    assert broker.queue("q").messages_unacknowledged == 1


def test_default_exchange_routes_to_the_queue_named_by_the_routing_key(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "jobs")
    client.publish(1, "", "jobs", b"1")
    client.publish(1, "", "nobody", b"2")
    assert [m.body for m in broker.queue("jobs").messages] == [b"1"]


@pytest.mark.parametrize(
    ("pattern", "key", "routed"),
    [
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.c", False),
        ("a.*.c", "a.b.b.c", False),
        ("a.#", "a", True),
        ("a.#", "a.b.c", True),
        ("#.c", "a.b.c", True),
        ("#", "anything.at.all", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.x.y.c", True),
        ("a.#.c", "a.x.y.d", False),
        ("*", "a.b", False),
        ("a.b", "a.b", True),
    ],
)
def test_topic_exchange_matches_star_and_hash(
    broker: FakeBroker, pattern: str, key: str, routed: bool
) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.call(1, commands.Queue.Bind(queue="q", exchange="amq.topic", routing_key=pattern))
    client.publish(1, "amq.topic", key, b"m")
    assert broker.queue("q").messages_ready == (1 if routed else 0)


def test_fanout_copies_to_every_bound_queue_and_headers_exchange_matches_any(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    for name in ("a", "b"):
        client.declare_queue(1, name)
        client.call(1, commands.Queue.Bind(queue=name, exchange="amq.fanout"))
    client.declare_queue(1, "h")
    client.call(
        1,
        commands.Queue.Bind(
            queue="h", exchange="amq.headers", arguments={"x-match": "any", "k": "v", "z": 1}
        ),
    )
    client.publish(1, "amq.fanout", "ignored", b"fan")
    client.publish(1, "amq.headers", "", b"hit", properties=BasicProperties(headers={"k": "v"}))
    client.publish(1, "amq.headers", "", b"miss", properties=BasicProperties(headers={"k": "w"}))
    assert [m.body for m in broker.queue("a").messages] == [b"fan"]
    assert [m.body for m in broker.queue("b").messages] == [b"fan"]
    assert [m.body for m in broker.queue("h").messages] == [b"hit"]


def test_exchange_to_exchange_binding_routes_through_both(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Exchange.Declare(exchange="front", exchange_type="fanout"))
    client.declare_queue(1, "q")
    client.call(1, commands.Queue.Bind(queue="q", exchange="amq.direct", routing_key="k"))
    ok = client.call(1, commands.Exchange.Bind(destination="amq.direct", source="front"))
    assert isinstance(ok, commands.Exchange.BindOk)
    client.publish(1, "front", "k", b"m")
    assert broker.queue("q").messages_ready == 1


def test_redeclaring_an_exchange_with_another_type_closes_the_channel_with_406(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Exchange.Declare(exchange="x", exchange_type="direct"))
    close = client.call(1, commands.Exchange.Declare(exchange="x", exchange_type="fanout"))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406
    assert close.reply_text == (
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': "
        "received 'fanout' but current is 'direct'"
    )
    assert (close.class_id, close.method_id) == (40, 10)
    assert client.conn.state is ConnectionState.OPEN
    assert client.send(1, commands.Channel.CloseOk()) == []
    assert client.conn.channel_ids == []
    # the channel number can be reused once CloseOk was sent
    assert isinstance(client.call(1, commands.Channel.Open()), commands.Channel.OpenOk)


def test_passive_declare_of_a_missing_exchange_closes_the_channel_with_404(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    close = client.call(1, commands.Exchange.Declare(exchange="nope", passive=True))
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (
        404,
        "NOT_FOUND - no exchange 'nope' in vhost '/'",
    )


def test_publish_to_a_missing_exchange_closes_the_channel_with_404(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    [(_, close)] = client.publish(1, "nope", "k", b"m")
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 404
    assert (close.class_id, close.method_id) == (60, 40)


def test_server_named_queue_and_declare_ok_counts(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    name = client.declare_queue(1, "", exclusive=True).queue
    assert name is not None
    assert name.startswith("amq.gen-")
    client.publish(1, "", name, b"1")
    client.publish(1, "", name, b"2")
    client.send(1, commands.Basic.Consume(queue=name, consumer_tag="c"))
    again = client.declare_queue(1, name, passive=True)
    assert (again.queue, again.message_count, again.consumer_count) == (name, 0, 1)
    assert broker.queue(name).messages_unacknowledged == 2
    close = client.call(1, commands.Queue.Declare(queue=name, exclusive=True))
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (
        403,
        f"ACCESS_REFUSED - queue name {name!r} contains reserved prefix 'amq.*'",
    )


def test_redeclaring_a_queue_with_other_arguments_closes_the_channel_with_406(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Queue.Declare(queue="q", arguments={"x-max-length": 10}))
    close = client.call(1, commands.Queue.Declare(queue="q", arguments={"x-max-length": 20}))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406
    assert "inequivalent arg 'x-max-length' for queue 'q'" in close.reply_text
    assert "received 20 but current is 10" in close.reply_text


def test_passive_queue_declare_of_a_missing_queue_is_404(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    close = client.call(1, commands.Queue.Declare(queue="nope", passive=True))
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (
        404,
        "NOT_FOUND - no queue 'nope' in vhost '/'",
    )


def test_exclusive_queue_is_locked_for_others_and_deleted_with_its_owner(
    broker: FakeBroker,
) -> None:
    owner = RawClient.connected(broker)
    other = RawClient.connected(broker)
    owner.declare_queue(1, "mine", exclusive=True)
    close = other.call(1, commands.Basic.Consume(queue="mine"))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 405
    owner.send(0, commands.Connection.Close(200, "bye", 0, 0))
    assert "mine" not in broker.queue_names()


def test_purge_and_delete_report_message_counts(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    for i in range(3):
        client.publish(1, "", "q", bytes([i]))
    purge_ok = client.call(1, commands.Queue.Purge(queue="q"))
    assert isinstance(purge_ok, commands.Queue.PurgeOk)
    assert purge_ok.message_count == 3
    client.publish(1, "", "q", b"x")
    delete_ok = client.call(1, commands.Queue.Delete(queue="q"))
    assert isinstance(delete_ok, commands.Queue.DeleteOk)
    assert delete_ok.message_count == 1
    assert broker.queue_names() == []
    with pytest.raises(KeyError, match="no queue 'q'"):
        broker.queue("q")


# -- consumers and acknowledgements ----------------------------------------------------------


def test_consumer_with_prefetch_has_exactly_prefetch_deliveries_outstanding_until_an_ack(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    for i in range(5):
        client.publish(1, "", "q", f"m{i}".encode())
    assert isinstance(client.call(1, commands.Basic.Qos(prefetch_count=2)), commands.Basic.QosOk)
    frames = client.send(1, commands.Basic.Consume(queue="q"))
    ok = frames[0][1]
    assert isinstance(ok, commands.Basic.ConsumeOk)
    assert ok.consumer_tag is not None
    assert ok.consumer_tag.startswith("amq.ctag-")
    delivered = contents(frames[1:], commands.Basic.Deliver)
    assert [(m.delivery_tag, p) for m, _, p in delivered] == [(1, b"m0"), (2, b"m1")]
    assert all(m.consumer_tag == ok.consumer_tag for m, _, _ in delivered)
    assert broker.queue("q").messages_ready == 3

    [(third, _, payload)] = contents(
        client.send(1, commands.Basic.Ack(delivery_tag=1)), commands.Basic.Deliver
    )
    assert (third.delivery_tag, payload) == (3, b"m2")
    more = contents(
        client.send(1, commands.Basic.Ack(delivery_tag=3, multiple=True)), commands.Basic.Deliver
    )
    assert [m.delivery_tag for m, _, _ in more] == [4, 5]
    info = broker.queue("q")
    assert (info.messages_ready, info.messages_unacknowledged, info.consumer_count) == (0, 2, 1)


def test_consumers_of_one_queue_get_messages_round_robin(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.send(1, commands.Basic.Consume(queue="q", consumer_tag="a", no_ack=True))
    client.send(1, commands.Basic.Consume(queue="q", consumer_tag="b", no_ack=True))
    tags = []
    for _ in range(4):
        [(deliver, _, _)] = contents(client.publish(1, "", "q", b"m"), commands.Basic.Deliver)
        tags.append(deliver.consumer_tag)
    assert tags == ["a", "b", "a", "b"]
    assert broker.queue("q").messages_unacknowledged == 0


def test_nack_with_requeue_puts_the_message_back_at_the_head_as_redelivered(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"first")
    client.publish(1, "", "q", b"second")
    client.send(1, commands.Basic.Get(queue="q"))
    assert client.send(1, commands.Basic.Nack(delivery_tag=1, requeue=True)) == []
    assert [(m.body, m.redelivered) for m in broker.queue("q").messages] == [
        (b"first", True),
        (b"second", False),
    ]
    [(get_ok, _, payload)] = contents(
        client.send(1, commands.Basic.Get(queue="q")), commands.Basic.GetOk
    )
    assert (get_ok.delivery_tag, get_ok.redelivered, payload) == (2, True, b"first")


def test_reject_without_requeue_drops_the_message(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"m")
    client.send(1, commands.Basic.Get(queue="q"))
    client.send(1, commands.Basic.Reject(delivery_tag=1, requeue=False))
    info = broker.queue("q")
    assert (info.messages_ready, info.messages_unacknowledged) == (0, 0)


@pytest.mark.parametrize(
    "method",
    [
        commands.Basic.Ack(delivery_tag=7),
        commands.Basic.Ack(delivery_tag=7, multiple=True),
        commands.Basic.Nack(delivery_tag=7),
        commands.Basic.Reject(delivery_tag=7),
    ],
    ids=["ack", "ack-multiple", "nack", "reject"],
)
def test_unknown_delivery_tag_closes_the_channel_with_406(
    broker: FakeBroker, method: base.Frame
) -> None:
    client = RawClient.connected(broker)
    close = client.call(1, method)
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (
        406,
        "PRECONDITION_FAILED - unknown delivery tag 7",
    )
    assert client.conn.state is ConnectionState.OPEN


def test_acking_a_tag_twice_is_an_unknown_delivery_tag(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"m")
    client.send(1, commands.Basic.Get(queue="q"))
    assert client.send(1, commands.Basic.Ack(delivery_tag=1)) == []
    close = client.call(1, commands.Basic.Ack(delivery_tag=1))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406


def test_unacked_messages_of_a_closed_channel_are_requeued_as_redelivered(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker, 1, 2)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"m")
    client.send(2, commands.Basic.Consume(queue="q", consumer_tag="c"))
    assert broker.queue("q").messages_unacknowledged == 1
    [(_, ok)] = client.send(2, commands.Channel.Close(200, "", 0, 0))
    assert isinstance(ok, commands.Channel.CloseOk)
    info = broker.queue("q")
    assert (info.messages_ready, info.messages_unacknowledged, info.consumer_count) == (1, 0, 0)
    assert info.messages[0].redelivered


def test_basic_cancel_stops_deliveries(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.send(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    ok = client.call(1, commands.Basic.Cancel(consumer_tag="c"))
    assert isinstance(ok, commands.Basic.CancelOk)
    assert ok.consumer_tag == "c"
    assert client.publish(1, "", "q", b"m") == []
    assert broker.queue("q").messages_ready == 1


def test_auto_delete_queue_is_deleted_when_its_last_consumer_cancels(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Queue.Declare(queue="tmp", auto_delete=True))
    client.send(1, commands.Basic.Consume(queue="tmp", consumer_tag="c"))
    assert "tmp" in broker.queue_names()
    client.send(1, commands.Basic.Cancel(consumer_tag="c"))
    assert "tmp" not in broker.queue_names()


def test_global_qos_limits_the_whole_channel(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    for _ in range(4):
        client.publish(1, "", "q", b"m")
    client.call(1, commands.Basic.Qos(prefetch_count=3, global_=True))
    first = contents(
        client.send(1, commands.Basic.Consume(queue="q", consumer_tag="a")), commands.Basic.Deliver
    )
    second = contents(
        client.send(1, commands.Basic.Consume(queue="q", consumer_tag="b")), commands.Basic.Deliver
    )
    assert (len(first), len(second)) == (3, 0)


def test_a_cancelled_consumers_unacked_deliveries_still_count_against_the_channel(
    broker: FakeBroker,
) -> None:
    """Channel-wide prefetch counts every unacked delivery of the channel,
    also a cancelled consumer's, as RabbitMQ does (they stopped counting, so
    the next consumer got more)."""
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    for _ in range(4):
        client.publish(1, "", "q", b"m")
    client.call(1, commands.Basic.Qos(prefetch_count=2, global_=True))
    first = contents(
        client.send(1, commands.Basic.Consume(queue="q", consumer_tag="a")), commands.Basic.Deliver
    )
    client.call(1, commands.Basic.Cancel(consumer_tag="a"))
    second = contents(
        client.send(1, commands.Basic.Consume(queue="q", consumer_tag="b")), commands.Basic.Deliver
    )
    assert (len(first), len(second)) == (2, 0)
    frames = client.send(1, commands.Basic.Ack(delivery_tag=2, multiple=True))
    assert len(contents(frames, commands.Basic.Deliver)) == 2  # room again: b gets the rest


# -- publishing: confirms, returns, large bodies, transactions --------------------------------


def test_publisher_confirms_ack_each_publish_with_tags_from_one(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    assert isinstance(client.call(1, commands.Confirm.Select()), commands.Confirm.SelectOk)
    client.declare_queue(1, "q")
    acks = []
    for i in range(3):
        [(_, ack)] = client.publish(1, "", "q", bytes([i]))
        assert isinstance(ack, commands.Basic.Ack)
        acks.append((ack.delivery_tag, ack.multiple))
    assert acks == [(1, False), (2, False), (3, False)]
    assert broker.queue("q").messages_ready == 3


def test_nack_next_makes_the_broker_nack_and_drop_that_many_publishes(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Confirm.Select())
    client.declare_queue(1, "q")
    broker.nack_next(2)
    kinds = []
    for _ in range(3):
        [(_, confirm)] = client.publish(1, "", "q", b"m")
        assert isinstance(confirm, commands.Basic.Ack | commands.Basic.Nack)
        kinds.append((confirm.name, confirm.delivery_tag))
    assert kinds == [("Basic.Nack", 1), ("Basic.Nack", 2), ("Basic.Ack", 3)]
    assert broker.queue("q").messages_ready == 1


def test_mandatory_unroutable_publish_is_returned_before_the_confirm_ack(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Confirm.Select())
    frames = client.publish(1, "amq.direct", "nowhere", b"lost", mandatory=True)
    assert method_names(frames) == [(1, "Basic.Return"), (1, "Basic.Ack")]
    [(returned, _, payload)] = contents(frames, commands.Basic.Return)
    assert (returned.reply_code, returned.reply_text) == (312, "NO_ROUTE")
    assert (returned.exchange, returned.routing_key, payload) == ("amq.direct", "nowhere", b"lost")
    # not mandatory: silently dropped, still acked
    assert method_names(client.publish(1, "amq.direct", "nowhere", b"x")) == [(1, "Basic.Ack")]


def test_body_split_over_several_frames_is_reassembled_and_delivered_split(
    broker: FakeBroker,
) -> None:
    publisher = RawClient.connected(broker, frame_max=4096)
    payload = bytes(range(256)) * 40  # 10240 bytes: three body frames at frame_max 4096
    publisher.declare_queue(1, "q")
    frames = encode_content(1, commands.Basic.Publish(routing_key="q"), None, payload, 4096)
    assert len(frames) == 5
    for frame in frames:
        assert publisher.send_bytes(frame) == []
    assert broker.queue("q").messages[0].body == payload

    get_frames = publisher.send(1, commands.Basic.Get(queue="q"))
    bodies = [v for _, v in get_frames if isinstance(v, body.ContentBody)]
    assert [len(b.value) for b in bodies] == [4096 - FRAME_OVERHEAD] * 2 + [
        10240 - 2 * (4096 - FRAME_OVERHEAD)
    ]
    [(_, _, got)] = contents(get_frames, commands.Basic.GetOk)
    assert got == payload


def test_body_frames_larger_than_body_size_are_505(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.send(1, commands.Basic.Publish(routing_key="q"), ContentHeader(2))
    [(_, close)] = client.send(1, body.ContentBody(b"abc"))
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505


def test_transaction_applies_publishes_and_acks_on_commit_only(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"old")
    client.send(1, commands.Basic.Get(queue="q"))
    assert isinstance(client.call(1, commands.Tx.Select()), commands.Tx.SelectOk)
    client.publish(1, "", "q", b"new")
    client.send(1, commands.Basic.Ack(delivery_tag=1))
    info = broker.queue("q")
    assert (info.messages_ready, info.messages_unacknowledged) == (0, 1)

    assert isinstance(client.call(1, commands.Tx.Commit()), commands.Tx.CommitOk)
    info = broker.queue("q")
    assert ([m.body for m in info.messages], info.messages_unacknowledged) == ([b"new"], 0)

    client.publish(1, "", "q", b"rolled back")
    assert isinstance(client.call(1, commands.Tx.Rollback()), commands.Tx.RollbackOk)
    assert [m.body for m in broker.queue("q").messages] == [b"new"]


def test_confirm_select_on_a_transactional_channel_is_406(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.call(1, commands.Tx.Select())
    close = client.call(1, commands.Confirm.Select())
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406


# -- broker-initiated events ------------------------------------------------------------------


def test_deleting_a_queue_cancels_its_consumers_with_basic_cancel(broker: FakeBroker) -> None:
    consumer = RawClient.connected(broker)
    consumer.declare_queue(1, "q")
    consumer.send(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
    admin = RawClient.connected(broker)
    assert isinstance(admin.call(1, commands.Queue.Delete(queue="q")), commands.Queue.DeleteOk)
    [(channel, cancel)] = consumer.received()
    assert channel == 1
    assert isinstance(cancel, commands.Basic.Cancel)
    assert cancel.consumer_tag == "c"


def test_client_without_consumer_cancel_notify_is_not_sent_basic_cancel(
    broker: FakeBroker,
) -> None:
    client = RawClient(broker)
    client.send_bytes(PROTOCOL_HEADER)
    client.send(0, commands.Connection.StartOk({}, response=plain("guest", "guest")))
    client.send(0, commands.Connection.TuneOk(2047, 131_072, 0))
    client.send(0, commands.Connection.Open("/"))
    client.send(1, commands.Channel.Open())
    client.declare_queue(1, "q")
    client.send(1, commands.Basic.Consume(queue="q", consumer_tag="c"))
    assert broker.cancel_consumers("q") == 1
    assert client.received() == []
    assert broker.queue("q").consumer_count == 0


def test_close_connection_sends_320_requeues_and_waits_for_close_ok(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"m")
    client.send(1, commands.Basic.Get(queue="q"))
    broker.close_connection(client.conn)
    [(_, close)] = client.received()
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 320
    assert close.reply_text.startswith("CONNECTION_FORCED - ")
    assert client.conn.state is ConnectionState.CLOSING
    assert broker.queue("q").messages[0].redelivered
    assert client.send(0, commands.Connection.CloseOk()) == []
    assert client.conn.closed
    assert broker.connections == []


def test_close_channel_sends_channel_close_and_waits_for_close_ok(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    broker.close_channel(client.conn, 1, 406, "PRECONDITION_FAILED - test")
    [(channel, close)] = client.received()
    assert channel == 1
    assert isinstance(close, commands.Channel.Close)
    assert (close.reply_code, close.reply_text) == (406, "PRECONDITION_FAILED - test")
    assert client.send(1, commands.Basic.Qos(0, 1)) == []  # discarded until CloseOk
    client.send(1, commands.Channel.CloseOk())
    assert client.conn.channel_ids == []
    with pytest.raises(KeyError, match="no open channel 1"):
        broker.close_channel(client.conn, 1, 406, "again")


def test_block_and_unblock_notify_open_connections_and_ones_opened_later(
    broker: FakeBroker,
) -> None:
    early = RawClient.connected(broker)
    broker.block("low on memory")
    [(_, blocked)] = early.received()
    assert isinstance(blocked, commands.Connection.Blocked)
    assert blocked.reason == "low on memory"

    late = RawClient(broker)
    assert method_names(late.handshake()) == [(0, "Connection.OpenOk"), (0, "Connection.Blocked")]
    broker.unblock()
    assert method_names(early.received()) == [(0, "Connection.Unblocked")]
    assert method_names(late.received()) == [(0, "Connection.Unblocked")]


def test_client_eof_requeues_unacked_messages_and_drops_the_connection(
    broker: FakeBroker,
) -> None:
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.publish(1, "", "q", b"m")
    client.send(1, commands.Basic.Consume(queue="q"))
    client.conn.receive_data(b"")
    assert client.conn.closed
    assert broker.connections == []
    info = broker.queue("q")
    assert (info.messages_ready, info.consumer_count, info.messages[0].redelivered) == (
        1,
        0,
        True,
    )


def test_published_message_reaches_a_consumer_on_another_connection(broker: FakeBroker) -> None:
    consumer = RawClient.connected(broker)
    consumer.declare_queue(1, "q")
    consumer.send(1, commands.Basic.Consume(queue="q", consumer_tag="c", no_ack=True))
    publisher = RawClient.connected(broker)
    assert publisher.publish(1, "", "q", b"hi") == []
    [(deliver, _, payload)] = contents(consumer.received(), commands.Basic.Deliver)
    assert (deliver.consumer_tag, payload) == ("c", b"hi")


# -- the trio layer ---------------------------------------------------------------------------


class StreamClient:
    """Raw frames over a stream from :meth:`FakeBrokerServer.connect`."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = FrameReader()
        self.pending: list[Frame] = []

    async def send(self, channel: int, *values: FrameValue) -> None:
        await self.stream.send_all(b"".join(encode_frame(channel, v) for v in values))

    async def receive(self, count: int = 1) -> list[Frame]:
        with trio.fail_after(TIMEOUT):
            while len(self.pending) < count:
                data = await self.stream.receive_some()
                assert data, f"EOF while waiting for {count} frames, got {self.pending}"
                self.reader.receive_data(data)
                while (frame := self.reader.next_frame()) is not None:
                    self.pending.append(frame)
        frames, self.pending = self.pending[:count], self.pending[count:]
        return frames

    async def handshake(self, heartbeat: int = 0) -> None:
        await self.stream.send_all(PROTOCOL_HEADER)
        await self.receive()
        capabilities: common.FieldTable = {"capabilities": CLIENT_CAPABILITIES}
        await self.send(
            0, commands.Connection.StartOk(capabilities, response=plain("guest", "guest"))
        )
        await self.receive()
        await self.send(
            0, commands.Connection.TuneOk(2047, 131_072, heartbeat), commands.Connection.Open("/")
        )
        [(_, ok)] = await self.receive()
        assert isinstance(ok, commands.Connection.OpenOk)

    async def at_eof(self) -> bool:
        with trio.fail_after(TIMEOUT):
            try:
                return await self.stream.receive_some() == b""
            except trio.BrokenResourceError:
                return True


async def test_connect_serves_the_protocol_over_a_memory_stream() -> None:
    async with open_fake_broker() as broker:
        client = StreamClient(await broker.connect())
        await client.handshake()
        await client.send(1, commands.Channel.Open(), commands.Queue.Declare(queue="q"))
        [(_, open_ok), (_, declare_ok)] = await client.receive(2)
        assert isinstance(open_ok, commands.Channel.OpenOk)
        assert isinstance(declare_ok, commands.Queue.DeclareOk)
        assert (broker.connection_count, len(broker.connections)) == (1, 1)


async def test_deliveries_triggered_by_another_connection_are_flushed() -> None:
    async with open_fake_broker() as broker:
        consumer = StreamClient(await broker.connect())
        await consumer.handshake()
        await consumer.send(
            1,
            commands.Channel.Open(),
            commands.Queue.Declare(queue="q"),
            commands.Basic.Consume(queue="q", consumer_tag="c"),
        )
        await consumer.receive(3)
        broker.publish("", "q", b"x" * 300_000)
        frames = await consumer.receive(2 + 3)  # Deliver, header, three body frames
        [(deliver, _, payload)] = contents(frames, commands.Basic.Deliver)
        assert (deliver.consumer_tag, deliver.delivery_tag) == ("c", 1)
        assert payload == b"x" * 300_000


async def test_client_close_then_server_closes_the_stream() -> None:
    async with open_fake_broker() as broker:
        client = StreamClient(await broker.connect())
        await client.handshake()
        await client.send(0, commands.Connection.Close(200, "bye", 0, 0))
        [(_, ok)] = await client.receive()
        assert isinstance(ok, commands.Connection.CloseOk)
        assert await client.at_eof()
        assert broker.connections == []


async def test_broker_forced_close_reaches_the_client_and_the_stream_closes_after_close_ok() -> (
    None
):
    async with open_fake_broker() as broker:
        client = StreamClient(await broker.connect())
        await client.handshake()
        broker.close_all_connections()
        [(_, close)] = await client.receive()
        assert isinstance(close, commands.Connection.Close)
        assert close.reply_code == 320
        await client.send(0, commands.Connection.CloseOk())
        assert await client.at_eof()


async def test_sever_all_gives_the_client_eof_and_requeues_unacked_messages() -> None:
    async with open_fake_broker() as broker:
        stream = await broker.connect()
        client = StreamClient(stream)
        await client.handshake()
        broker.publish("", "q", b"never routed")  # no queue yet: dropped
        await client.send(
            1,
            commands.Channel.Open(),
            commands.Queue.Declare(queue="q"),
            commands.Basic.Consume(queue="q", consumer_tag="c"),
        )
        await client.receive(3)
        broker.publish("", "q", b"m")
        await client.receive(3)
        assert broker.queue("q").messages_unacknowledged == 1

        broker.sever_all()
        assert broker.connections == []
        info = broker.queue("q")
        assert (info.messages_ready, info.messages_unacknowledged) == (1, 0)
        assert await client.at_eof()
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")


async def test_refuse_connections_makes_connect_raise_connection_refused() -> None:
    async with open_fake_broker() as broker:
        broker.refuse_connections = True
        with pytest.raises(ConnectionRefusedError, match="refuse_connections") as excinfo:
            await broker.connect()
        broker.refuse_connections = False
        await broker.connect()
        assert broker.connection_count == 1
    assert isinstance(excinfo.value, OSError)
    with pytest.raises(ConnectionRefusedError, match="shut down"):
        await broker.connect()


async def test_blackhole_all_keeps_the_connection_open_but_silent() -> None:
    async with open_fake_broker() as broker:
        client = StreamClient(await broker.connect())
        await client.handshake()
        broker.blackhole_all()
        await client.send(1, commands.Channel.Open())
        with trio.move_on_after(0.05) as scope:
            await client.stream.receive_some()
        assert scope.cancelled_caught
        assert [c.state for c in broker.connections] == [ConnectionState.OPEN]
        assert broker.connections[0].channel_ids == []  # the Channel.Open was never read
        broker.sever_all()
        assert await client.at_eof()


@pytest.mark.parametrize(
    ("first", "second", "dropped"),
    [
        (None, 5.0, 5.0),  # regression: the first call's "for ever" stayed
        (10.0, 4.0, 4.0),  # counted from the first blackhole, not the second
        (3.0, None, None),  # never, after all
    ],
)
async def test_a_second_blackhole_sets_the_broker_timeout_from_the_first(
    autojump_clock: trio.testing.MockClock,
    first: float | None,
    second: float | None,
    dropped: float | None,
) -> None:
    """``blackhole_all(broker_timeout=t)`` on a connection blackholed already (at
    time 0) drops it ``t`` seconds after the first blackhole."""
    async with open_fake_broker() as broker:
        client = StreamClient(await broker.connect())
        await client.handshake()
        start = trio.current_time()
        broker.blackhole_all(broker_timeout=first)
        await trio.sleep(2)
        broker.blackhole_all(broker_timeout=second)
        if dropped is not None:
            assert await client.at_eof()
            assert trio.current_time() - start == pytest.approx(dropped)
            assert broker.connections == []
            return
        await trio.sleep(100)
        assert len(broker.connections) == 1  # still there, blackholed
        broker.sever_all()


async def test_server_sends_heartbeats_at_half_the_negotiated_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fake_broker() as broker:
        client = StreamClient(await broker.connect())
        await client.handshake(heartbeat=10)
        start = trio.current_time()
        [(channel, beat)] = await client.receive()
        assert (channel, type(beat)) == (0, heartbeat.Heartbeat)
        assert trio.current_time() - start == pytest.approx(5)
        assert isinstance(broker, FakeBrokerServer)


def test_public_api_is_exactly_the_documented_names() -> None:
    import trio_lavin.testing as testing

    assert sorted(testing.__all__) == [
        "Broker",
        "BrokerConnection",
        "BrokerError",
        "BrokerNode",
        "ClusterNode",
        "ConnectionState",
        "FakeBroker",
        "FakeBrokerServer",
        "Fault",
        "FaultProxy",
        "LavinNode",
        "LavinNotFound",
        "Message",
        "QueueInfo",
        "RabbitCluster",
        "RabbitNode",
        "RabbitNotInstalled",
        "find_lavinmq",
        "free_port",
        "open_fake_broker",
        "open_fault_proxy",
    ]
    assert testing.__doc__ is not None
    assert "never replaces tests" in testing.__doc__
    for name in testing.__all__:
        assert getattr(testing, name).__doc__, name


# -- as RabbitMQ 3.10 does it (helper-17's comparison) -------------------------------------


def test_messages_requeued_one_by_one_go_back_to_their_places(broker: FakeBroker) -> None:
    """Rejected one at a time with requeue, in any order, messages keep the
    queue's order, as RabbitMQ puts them back (m1 came before m0)."""
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    for payload in (b"m0", b"m1", b"m2", b"m3"):
        client.publish(1, "", "q", payload)
    for _ in range(3):
        client.send(1, commands.Basic.Get(queue="q"))  # tags 1-3: m0, m1, m2
    for tag in (2, 1, 3):
        client.send(1, commands.Basic.Reject(delivery_tag=tag, requeue=True))
    assert [(m.body, m.redelivered) for m in broker.queue("q").messages] == [
        (b"m0", True),
        (b"m1", True),
        (b"m2", True),
        (b"m3", False),
    ]


@pytest.mark.parametrize("pattern", ["*", "*.#", "#.*"])
def test_a_topic_pattern_needing_a_word_does_not_match_the_empty_routing_key(
    broker: FakeBroker, pattern: str
) -> None:
    """The empty routing key has no words ("" split on "." gave one empty word)."""
    client = RawClient.connected(broker)
    client.declare_queue(1, "q")
    client.call(1, commands.Queue.Bind(queue="q", exchange="amq.topic", routing_key=pattern))
    client.publish(1, "amq.topic", "", b"empty")
    client.publish(1, "amq.topic", "a", b"a")
    assert [m.body for m in broker.queue("q").messages] == [b"a"]


def test_a_built_in_exchange_may_be_declared_again_as_it_is(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    ok = client.call(
        1, commands.Exchange.Declare(exchange="amq.topic", exchange_type="topic", durable=True)
    )
    assert isinstance(ok, commands.Exchange.DeclareOk)
    close = client.call(
        1, commands.Exchange.Declare(exchange="amq.topic", exchange_type="fanout", durable=True)
    )
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406
    other = RawClient.connected(broker)
    close = other.call(1, commands.Exchange.Declare(exchange="amq.mine", exchange_type="topic"))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 403


def test_declaring_again_compares_only_the_arguments_rabbitmq_knows(broker: FakeBroker) -> None:
    """An argument RabbitMQ does not know ("bar", "x-foo") may differ; a
    missing x-queue-type is "classic"; a known one must match."""
    client = RawClient.connected(broker)
    client.call(1, commands.Queue.Declare(queue="q", arguments={"x-foo": 1, "bar": "baz"}))
    again: list[common.FieldTable] = [{}, {"x-foo": 2}, {"x-queue-type": "classic"}]
    for arguments in again:
        ok = client.call(1, commands.Queue.Declare(queue="q", arguments=arguments))
        assert isinstance(ok, commands.Queue.DeclareOk), arguments
    client.call(
        1, commands.Exchange.Declare(exchange="e", exchange_type="direct", arguments={"foo": 1})
    )
    ok = client.call(1, commands.Exchange.Declare(exchange="e", exchange_type="direct"))
    assert isinstance(ok, commands.Exchange.DeclareOk)
    close = client.call(1, commands.Queue.Declare(queue="q", arguments={"x-max-length": 5}))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 406


def test_channel_flow_off_from_the_client_is_not_implemented_540(broker: FakeBroker) -> None:
    """RabbitMQ closes the connection with 540 over flow(active=false)."""
    client = RawClient.connected(broker)
    client.send(1, commands.Channel.Flow(active=True))
    close = client.call(1, commands.Channel.Flow(active=False))
    assert isinstance(close, commands.Connection.Close)
    assert (close.reply_code, close.reply_text) == (540, "NOT_IMPLEMENTED - active=false")


def test_deleting_the_last_declared_queue_without_one_is_404(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    close = client.call(1, commands.Queue.Delete(queue=""))
    assert isinstance(close, commands.Channel.Close)
    assert close.reply_code == 404
    assert "no previously declared queue" in close.reply_text


def test_a_headers_binding_of_1_does_not_match_the_header_true(broker: FakeBroker) -> None:
    """Values compare with their types, as RabbitMQ does (1 == True in Python)."""
    client = RawClient.connected(broker)
    client.declare_queue(1, "h")
    client.call(1, commands.Queue.Bind(queue="h", exchange="amq.headers", arguments={"k": 1}))
    client.publish(1, "amq.headers", "", b"bool", properties=BasicProperties(headers={"k": True}))
    client.publish(1, "amq.headers", "", b"int", properties=BasicProperties(headers={"k": 1}))
    assert [m.body for m in broker.queue("h").messages] == [b"int"]


def test_binding_the_last_declared_queue_without_a_key_binds_it_by_its_name(
    broker: FakeBroker,
) -> None:
    """queue.bind with an empty queue name binds the channel's last declared
    queue, and with an empty routing key too, by that queue's name."""
    client = RawClient.connected(broker)
    client.declare_queue(1, "jobs")
    ok = client.call(1, commands.Queue.Bind(queue="", exchange="amq.direct", routing_key=""))
    assert isinstance(ok, commands.Queue.BindOk)
    client.publish(1, "amq.direct", "jobs", b"by name")
    client.publish(1, "amq.direct", "", b"by empty key")
    assert [m.body for m in broker.queue("jobs").messages] == [b"by name"]


def test_an_auto_delete_exchange_goes_when_its_last_binding_does(broker: FakeBroker) -> None:
    client = RawClient.connected(broker)
    client.call(
        1, commands.Exchange.Declare(exchange="tmp", exchange_type="fanout", auto_delete=True)
    )
    client.declare_queue(1, "a")
    client.declare_queue(1, "b")
    for name in ("a", "b"):
        client.call(1, commands.Queue.Bind(queue=name, exchange="tmp"))
    client.call(1, commands.Queue.Unbind(queue="a", exchange="tmp"))
    assert "tmp" in broker.exchange_names()  # b is still bound
    client.call(1, commands.Queue.Delete(queue="b"))
    assert "tmp" not in broker.exchange_names()
