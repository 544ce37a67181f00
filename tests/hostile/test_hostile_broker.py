"""A broken, hostile or overloaded broker never crashes, hangs or bloats the client.

Each case of the misbehaving broker (tests/hostile/_server.py, loopback TCP) is
run twice: under ``open_connection``, where the specific error type and reply
code are asserted along with what the client told the broker before hanging
up; and under ``open_client``, which must back off, retry, and - once the
broker behaves - connect and work.  A last test cycles through the cases many
times and checks that neither tasks nor memory accumulate.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import struct
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pamqp
import pytest
import trio
from pamqp import commands

import trio_lavin as tl
from trio_lavin._robust._supervisor import ClientState, StateChange
from trio_lavin._sansio._errors import (
    ChannelError,
    FrameError,
    ProtocolVersionMismatch,
    RemoteProtocolError,
    UnexpectedFrame,
)
from trio_lavin._sansio._framing import PRE_TUNE_FRAME_MAX
from trio_lavin.testing import BrokerConnection, FakeBroker

from ._server import (
    Behaviour,
    HostileBroker,
    Session,
    content_frames,
    method_frame,
    open_hostile_broker,
    raw_frame,
)

#: How long the client may take to report any of the errors below.
REPORT_TIMEOUT = 10.0


def _channel_open(conn: BrokerConnection) -> bool:
    return bool(conn.channel_ids)


def _start_with(server_properties: dict[str, Any]) -> bytes:
    start = commands.Connection.Start(server_properties=server_properties)
    return method_frame(0, start)


def _nested_table(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        table = {"k": table}
    return table


# -- the behaviours ---------------------------------------------------------------------------


async def garbage_after_handshake(session: Session, broker: FakeBroker) -> None:
    await session.handshake(broker)
    await session.send(b"\xffTHIS IS NOT AMQP\xce")
    await session.finish()


async def garbage_with_open_ok(session: Session, broker: FakeBroker) -> None:
    # In the very write that completes the handshake: the client must not
    # leave these bytes unparsed until more data arrives.
    await session.handshake(broker, then=b"\xffTHIS IS NOT AMQP\xce")
    await session.finish()


async def frame_larger_than_frame_max(session: Session, broker: FakeBroker) -> None:
    conn = await session.handshake(broker)
    # The header announces a payload of frame_max bytes: with the 8 bytes of
    # framing that is more than frame_max.  The payload never needs to come.
    await session.send(struct.pack(">BHI", 1, 0, conn.frame_max) + b"\x00" * 64)
    await session.finish()


async def never_answers_start(session: Session, broker: FakeBroker) -> None:
    await session.receive_protocol_header()
    await session.sleep_until_hung_up()


async def other_protocol_version(session: Session, broker: FakeBroker) -> None:
    await session.receive_protocol_header()
    await session.send(b"AMQP\x00\x01\x00\x00")  # AMQP 1.0; then hang up, as the spec says
    await session.stream.send_eof()
    await session.finish()


async def body_longer_than_announced(session: Session, broker: FakeBroker) -> None:
    frames = content_frames(1, commands.Basic.Deliver("ctag", 1, False, "", "q"), b"12345")
    # The content header says 4 bytes; the body frame carries 5.
    frames = frames.replace(struct.pack(">HHQ", 60, 0, 5), struct.pack(">HHQ", 60, 0, 4), 1)
    await session.handshake(broker, until=_channel_open, then=frames)
    await session.finish()


async def frames_on_unopened_channel(session: Session, broker: FakeBroker) -> None:
    await session.handshake(broker)
    await session.send(method_frame(7, commands.Basic.Deliver("ctag", 1, False, "", "q")))
    await session.finish()


async def slowloris_handshake(session: Session, broker: FakeBroker) -> None:
    await session.receive_protocol_header()
    await session.trickle(_start_with({"product": "slow"}), 0.1)
    await session.finish()


async def slowloris_after_handshake(session: Session, broker: FakeBroker) -> None:
    await session.handshake(broker)
    # A frame of 4 KiB, one byte per 100 ms: bytes keep coming, frames never do.
    await session.trickle(raw_frame(3, 1, b"x" * 4096), 0.1)
    await session.finish()


async def close_with_unknown_reply_code(session: Session, broker: FakeBroker) -> None:
    await session.handshake(broker)
    await session.send(method_frame(0, commands.Connection.Close(999, "strange", 0, 0)))
    await session.finish()


async def huge_field_table(session: Session, broker: FakeBroker) -> None:
    await session.receive_protocol_header()
    big = {f"key-{i}": "v" * 200 for i in range(1000)}  # about 210 kB
    await session.send(_start_with(big))
    await session.finish()


async def deeply_nested_field_table(session: Session, broker: FakeBroker) -> None:
    await session.receive_protocol_header()
    await session.send(_start_with({"capabilities": _nested_table(100)}))
    await session.finish()


# -- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    behaviour: Behaviour
    #: The exception open_connection reports and its reply code.
    error: type[BaseException]
    code: int | None
    match: str
    #: The sans-IO error behind it (``__cause__``), if any.
    cause: type[RemoteProtocolError] | None = None
    #: The Connection.Close the client sends the broker, or the frame that
    #: ends the conversation ("Connection.CloseOk"); None: it just hangs up.
    client_says: int | str | None = None
    #: Does the client open a channel (needed for content on a channel)?
    opens_channel: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return self.behaviour.__name__


CASES = [
    Case(
        garbage_after_handshake,
        tl.ConnectionLost,
        501,
        "unknown frame type 255",
        FrameError,
        client_says=501,
    ),
    Case(
        garbage_with_open_ok,
        tl.ConnectionLost,
        501,
        "unknown frame type 255",
        FrameError,
        client_says=501,
    ),
    Case(
        frame_larger_than_frame_max,
        tl.ConnectionLost,
        501,
        r"frame of 131080 bytes on channel 0 exceeds frame_max 131072",
        FrameError,
        client_says=501,
    ),
    Case(
        never_answers_start,
        TimeoutError,
        None,
        r"took longer than 0\.5 s",
        options=(("connect_timeout", 0.5),),
    ),
    Case(
        other_protocol_version,
        tl.ConnectionLost,
        540,
        r"protocol header b'AMQP\\x00\\x01\\x00\\x00'",
        ProtocolVersionMismatch,
    ),
    Case(
        body_longer_than_announced,
        tl.ConnectionLost,
        505,
        "overruns the announced size by 1 bytes",
        UnexpectedFrame,
        client_says=505,
        opens_channel=True,
    ),
    Case(
        frames_on_unopened_channel,
        tl.ConnectionLost,
        504,
        "on channel 7 in state CLOSED",
        ChannelError,
        client_says=504,
    ),
    Case(
        slowloris_handshake,
        TimeoutError,
        None,
        r"took longer than 0\.5 s",
        options=(("connect_timeout", 0.5),),
    ),
    Case(
        slowloris_after_handshake,
        tl.ConnectionLost,
        None,
        r"heartbeat timeout, interval 1 s",
        options=(("heartbeat", 1),),
    ),
    Case(
        close_with_unknown_reply_code,
        tl.ConnectionClosedByBroker,
        999,
        "999 UNKNOWN_999: strange",
        client_says="Connection.CloseOk",
    ),
    Case(
        huge_field_table,
        tl.ConnectionLost,
        501,
        rf"exceeds frame_max {PRE_TUNE_FRAME_MAX}",
        FrameError,
    ),
    Case(
        deeply_nested_field_table,
        tl.ConnectionLost,
        501,
        "field tables nested more than 64 deep",
        FrameError,
    ),
]


async def _error_of(url: str, case: Case) -> BaseException:
    """Connect to the misbehaving broker; the error open_connection reports."""
    options = {"connect_timeout": 5.0, **dict(case.options)}
    with trio.fail_after(REPORT_TIMEOUT):
        try:
            async with tl.open_connection(url, **options) as conn:
                if case.opens_channel:
                    await conn.channel()
                return await conn.wait_closed()
        except (tl.AMQPError, TimeoutError) as exc:
            return exc


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_misbehaving_broker_gets_a_specific_error_and_a_clean_close(case: Case) -> None:
    async with open_hostile_broker([case.behaviour]) as hostile:
        error = await _error_of(hostile.url, case)
        with trio.fail_after(REPORT_TIMEOUT):
            while hostile.active:
                await trio.sleep(0.01)
    assert type(error) is case.error, repr(error)
    assert getattr(error, "reply_code", None) == case.code
    assert re.search(case.match, str(error)), str(error)
    if case.cause is not None:
        assert type(error.__cause__) is case.cause
    [session] = hostile.sessions
    assert session.hung_up, "the client did not close the socket"
    if isinstance(case.client_says, int):
        assert session.client_close is not None, session.client_frames
        assert session.client_close.reply_code == case.client_says
    elif case.client_says is not None:
        assert session.client_frames[-1:] == [case.client_says]
    else:
        assert session.client_close is None


def _failures(changes: list[StateChange]) -> list[BaseException]:
    return [change.error for change in changes if change.error is not None]


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_client_backs_off_and_recovers_from_misbehaving_broker(case: Case) -> None:
    misbehaviours = 2
    options = dict(case.options)
    config = tl.Config(
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.5,
        reconnect_jitter=0.0,
        connect_timeout=options.get("connect_timeout", 5.0),
        heartbeat=options.get("heartbeat", 30),
    )
    async with open_hostile_broker([case.behaviour] * misbehaviours) as hostile:
        started = trio.current_time()
        async with tl.open_client(hostile.url, config) as client:
            changes: list[StateChange] = []
            async with client.events() as events:
                with trio.fail_after(REPORT_TIMEOUT * misbehaviours):
                    await client.wait_connected()
                while True:
                    try:
                        event = events.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if isinstance(event, StateChange):
                        changes.append(event)
            # Recovered: the client works against the well-behaved broker.
            await client.declare_queue("after-recovery")
            producer = client.producer("after-recovery")
            await producer.publish(b"hello")
            async with client.consume("after-recovery") as deliveries:
                async for delivery in deliveries:
                    assert delivery.body == b"hello"
                    assert await delivery.ack()
                    break
            stats = client.statistics()
            delays = list(client._supervisor.delays)
    assert hostile.forwarded >= 1
    assert len(hostile.sessions) == misbehaviours
    assert stats.connect_attempts == misbehaviours + 1
    assert stats.state is ClientState.CONNECTED
    failures = _failures(changes)
    assert len(failures) == misbehaviours, failures
    for failure in failures:
        assert type(failure) is case.error, repr(failure)
        assert getattr(failure, "reply_code", None) == case.code
    # It waited before each retry, per the backoff policy.
    assert len(delays) == misbehaviours
    assert all(delay >= 0.05 for delay in delays), delays
    assert trio.current_time() - started >= sum(delays)


def _task_count() -> int:
    """Every task of this trio run."""
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Keep trio_lavin's records out of pytest's log capture, which keeps them
    all (and would look like a leak to tracemalloc)."""
    logger = logging.getLogger("trio_lavin")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(previous)


def _memory_in_use() -> int:
    """Bytes allocated since tracemalloc started and still alive, except
    what is bounded by design elsewhere: trio's stale deadline entries (up to
    1000, pruned in batches: pruned here), a socket read buffer in flight, the
    attribute names pamqp builds with ``"_" + name`` (CPython's type attribute
    cache keeps the last one of each of its 4096 slots) and tracemalloc's own."""
    from trio._core._run import GLOBAL_RUN_CONTEXT

    GLOBAL_RUN_CONTEXT.runner.deadlines._prune()
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, str(Path(trio.__file__).parent / "_socket.py")),
            tracemalloc.Filter(False, str(Path(pamqp.__file__).parent / "base.py")),
            tracemalloc.Filter(False, tracemalloc.__file__),
        ]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


FAST_CASES = [
    case.behaviour
    for case in CASES
    if case.behaviour not in (never_answers_start, slowloris_handshake, slowloris_after_handshake)
]


async def test_repeated_misbehaviour_leaks_no_task_and_no_memory(quiet_logs: None) -> None:
    rounds = 3
    config = tl.Config(
        reconnect_initial_delay=0.001, reconnect_max_delay=0.002, reconnect_jitter=0.0
    )

    async def recovered(client: tl.Client, hostile: HostileBroker, forwarded: int) -> None:
        """Wait until the client is connected through the ``forwarded``-th
        well-behaved connection and every misbehaving one has ended."""
        with trio.fail_after(REPORT_TIMEOUT * 2):
            while not (
                hostile.forwarded == forwarded and client.connected and hostile.active == 1
            ):
                await trio.sleep(0.001)

    tracemalloc.start()
    try:
        async with (
            open_hostile_broker(FAST_CASES) as hostile,  # the warm-up round
            tl.open_client(hostile.url, config) as client,
        ):
            await recovered(client, hostile, 1)
            hostile.sessions.clear()  # the server's records, kept for other tests
            tasks_before = _task_count()
            memory_before = _memory_in_use()
            hostile.script.extend(FAST_CASES * rounds)
            hostile.fake.sever_all()
            await recovered(client, hostile, 2)
            hostile.sessions.clear()
            tasks_after = _task_count()
            memory_after = _memory_in_use()
            attempts = client.statistics().connect_attempts
    finally:
        tracemalloc.stop()
    assert attempts == len(FAST_CASES) * (rounds + 1) + 2
    assert tasks_after == tasks_before
    # 27 more misbehaving connections (about 6 kB are measured); a leak of
    # one connection per attempt (its buffers, tasks and channels) is more.
    assert memory_after - memory_before < 32 * 1024, memory_after - memory_before


async def test_absurd_body_size_closes_only_its_channel() -> None:
    """A content header announcing 2**62 bytes: the default max_body_size
    (128 MiB) refuses it on its channel; the connection stays up."""
    deliver = method_frame(1, commands.Basic.Deliver("ctag", 1, False, "", "q"))
    content_header = raw_frame(2, 1, struct.pack(">HHQH", 60, 0, 2**62, 0))

    async def announce_absurd_body(session: Session, broker: FakeBroker) -> None:
        await session.handshake(broker, until=_channel_open, then=deliver + content_header)
        await session.play_on()

    async with open_hostile_broker([announce_absurd_body]) as hostile:
        with trio.fail_after(REPORT_TIMEOUT):
            async with tl.open_connection(hostile.url) as conn:
                channel = await conn.channel()
                with pytest.raises(tl.ChannelClosed) as excinfo:
                    await channel.basic_qos(1)
                assert excinfo.value.reply_code == 311
                assert "body of 4611686018427387904 bytes" in str(excinfo.value)
                assert conn.is_open
                other = await conn.channel()
                await other.basic_qos(1)
    [session] = hostile.sessions
    assert session.client_frames[0] == "Channel.Close"
    assert session.client_channel_closes[0] == (1, 311)
    assert session.client_close is not None
    assert session.client_close.reply_code == 200  # the normal close at the end
    assert session.hung_up


async def test_client_recovers_onto_the_real_broker_after_misbehaviour(amqp_url: str) -> None:
    """The same, with a real broker behind the misbehaving one: the client
    ends up connected to RabbitMQ and works."""
    params = tl.parse_url(amqp_url)
    script = [garbage_after_handshake, frames_on_unopened_channel, huge_field_table]
    config = tl.Config(reconnect_initial_delay=0.05, reconnect_jitter=0.0)
    queue = f"hostile-{uuid.uuid4().hex[:8]}"
    async with open_hostile_broker(script, upstream=f"{params.host}:{params.port}") as hostile:
        hostile.scripted.users[params.username] = params.password
        url = dataclasses.replace(params, host="127.0.0.1", port=hostile.port)
        async with tl.open_client(url, config) as client:
            changes: list[StateChange] = []
            async with client.events() as events:
                with trio.fail_after(REPORT_TIMEOUT):
                    await client.wait_connected()
                while True:
                    try:
                        event = events.receive_nowait()
                    except trio.WouldBlock:
                        break
                    if isinstance(event, StateChange):
                        changes.append(event)
            connection = client.connection
            assert connection is not None
            assert connection.server_properties["product"] != "trio-lavin FakeBroker"
            await client.declare_queue(queue, auto_delete=True)
            await client.producer(queue).publish(b"real")
            async with client.consume(queue) as deliveries:
                async for delivery in deliveries:
                    assert delivery.body == b"real"
                    assert await delivery.ack()
                    break
            stats = client.statistics()
    assert stats.connect_attempts == len(script) + 1
    failures = _failures(changes)
    assert [getattr(error, "reply_code", None) for error in failures] == [501, 504, 501]
    assert all(type(error) is tl.ConnectionLost for error in failures)
