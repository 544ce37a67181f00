"""The real trio client against the FakeBroker, as a hypothesis state machine.

``open_client`` runs in a background trio thread (see ``_trio_thread``) under
a MockClock that only moves when a rule says time passes; after every action
the system settles (every task blocked) before anything is checked.  The
rules are faults and user actions: sever, blackhole, refuse/accept
connections, a broker-forced close (320), time passing, publishing with
confirms on a plain channel, consuming through the recovering consumer, and
another client publishing to the consumed queue.

Invariants, checked in the trio thread after every rule:

* at most one connection at a time: the client never opens a stream while
  another of its streams is open, and the broker serves at most one live
  connection;
* the client is never caught mid-attempt once settled, and it is connected
  exactly when it says so;
* every state change is reported, in order, through allowed moves;
* backoff follows the policy, measured on the clock: every wait between a
  failure or loss and the next attempt is within ``[base(k) * (1 - jitter),
  min(max, base(k) * (1 + jitter))]`` for the k-th wait since the last
  healthy connection; so once the broker accepts again, the client is
  connected after at most that much time;
* a blackholed connection is given up within two heartbeat intervals;
* ``statistics()`` agrees with what the broker and the stream factory saw;
* a message confirmed by the broker is in its queue; a consumed queue has
  nothing ready while the client is connected, and every message published
  to it was received or is held unacked;
* no user call fails with anything but a connection or channel error, and
  ``consume`` does not fail at all (the client recovers it);
* no task busy-loops while the virtual clock stands still (``SpinGuard``);
* after teardown no task of the client is left and ``trio.run`` returned,
  within a real-time deadline, with no exception.

Bugs the machine found have a focused test each at the end of the module.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import trio_lavin as tl
from trio_lavin._robust._client import Client
from trio_lavin._robust._consumer import RecoveringConsumer
from trio_lavin._robust._events import ClientEvent
from trio_lavin._robust._supervisor import broke_the_protocol
from trio_lavin.testing import FakeBrokerServer, open_fake_broker
from trio_lavin.testing._trio_thread import TrioThread, advance, settle

#: Heartbeat interval proposed by the broker and asked for by the client.
HEARTBEAT = 2
#: Slack for comparing virtual times (the clock lands exactly on deadlines).
EPS = 1e-6
PUBLISHED_QUEUE = "published"
CONSUMED_QUEUE = "jobs"

ALLOWED_CHANGES = {
    (tl.ClientState.DISCONNECTED, tl.ClientState.CONNECTING),
    (tl.ClientState.CONNECTING, tl.ClientState.CONNECTED),
    (tl.ClientState.CONNECTING, tl.ClientState.DISCONNECTED),
    (tl.ClientState.CONNECTED, tl.ClientState.DISCONNECTED),
}
#: What a user call may fail with while the network misbehaves.
EXPECTED_ERRORS = (tl.AMQPConnectionError, tl.ChannelClosed)


def delay_bounds(config: tl.Config, k: int) -> tuple[float, float]:
    """The shortest and longest k-th wait since the last healthy connection."""
    initial, maximum = config.reconnect_initial_delay, config.reconnect_max_delay
    multiplier, jitter = config.reconnect_multiplier, config.reconnect_jitter
    if multiplier > 1 and k * math.log(multiplier) >= math.log(maximum / initial):
        base = maximum
    else:
        base = min(maximum, initial * multiplier**k)
    return base * (1 - jitter), min(maximum, base * (1 + jitter))


def client_tasks() -> list[str]:
    """Names of the living tasks that belong to a client or a connection."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    names: list[str] = []
    stack = [root]
    while stack:
        task = stack.pop()
        names.append(task.name)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return [n for n in names if n.startswith(("trio-lavin", "<Connection"))]


class ClientStream(trio.abc.Stream):
    """A stream handed to the client.  It remembers whether the client closed
    it and when the network blackholed it; its writes wait for :attr:`gate`
    while :attr:`hold` is set (to stretch the moment the client spends
    flushing a frame)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self._inner = inner
        self.closed = False
        self.blackholed_at: float | None = None
        self.hold = False
        self.gate = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.hold:
            await self.gate.wait()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self._inner.aclose()


@dataclass
class World:
    """Everything that lives in the trio thread."""

    clock: trio.testing.MockClock
    config: tl.Config
    broker: FakeBrokerServer
    client: Client
    events: trio.MemoryReceiveChannel[ClientEvent]
    user: trio.Nursery
    #: Calls of the stream factory, refused ones, and the streams handed out.
    factory_calls: int = 0
    refused: int = 0
    streams: list[ClientStream] = field(default_factory=list)
    #: Broken promises seen inside tasks, reported by the invariant.
    violations: list[str] = field(default_factory=list)
    changes: list[tl.StateChange] = field(default_factory=list)
    # Publishing (plain channel, confirm mode) and consuming.
    next_body: int = 0
    attempted: set[bytes] = field(default_factory=set)
    confirmed: set[bytes] = field(default_factory=set)
    consumed_queue_declared: bool = False
    consumer: RecoveringConsumer | None = None
    published_to_consumer: set[bytes] = field(default_factory=set)
    received: list[bytes] = field(default_factory=list)

    async def connect(self) -> trio.abc.Stream:
        """The client's stream factory."""
        self.factory_calls += 1
        still_open = [s for s in self.streams if not s.closed]
        if still_open:
            self.violations.append(
                f"attempt #{self.factory_calls} started while {len(still_open)} stream(s) "
                f"of the client are open"
            )
        try:
            inner = await self.broker.connect()
        except ConnectionRefusedError:
            self.refused += 1
            raise
        stream = ClientStream(inner)
        self.streams.append(stream)
        return stream

    def body(self) -> bytes:
        self.next_body += 1
        return f"m{self.next_body}".encode()

    def spawn(self, name: str, afn: Callable[[], Awaitable[None]], *, may_fail: bool) -> None:
        """Run a user call as a task of its own (it may wait for a long time);
        an error it should not raise is recorded as a violation."""

        async def task() -> None:
            try:
                await afn()
            except EXPECTED_ERRORS as exc:
                if not may_fail:
                    self.violations.append(f"{name} failed with {exc!r}")
            except Exception as exc:
                self.violations.append(f"{name} failed with {exc!r}")

        self.user.start_soon(task, name=f"user {name}")


@asynccontextmanager
async def open_world(
    clock: trio.testing.MockClock, config: tl.Config, seed: int
) -> AsyncIterator[World]:
    async with open_fake_broker(heartbeat=HEARTBEAT) as broker:
        holder: list[World] = []

        async def factory() -> trio.abc.Stream:
            return await holder[0].connect()

        async with (
            tl.open_client(
                config=config, stream_factory=factory, rng=random.Random(seed)
            ) as client,
            client.events() as events,
            trio.open_nursery() as user,
        ):
            world = World(clock, config, broker, client, events, user)
            holder.append(world)
            await settle()
            yield world
            user.cancel_scope.cancel()
        leftover = client_tasks()
        assert leftover == [], f"client tasks outlived the client: {leftover}"


class ClientMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.thread: TrioThread[World] | None = None
        self.declaring = False
        self.consuming = False

    @initialize(
        multiplier=st.sampled_from([1.0, 2.0, 3.0]),
        max_delay=st.sampled_from([0.4, 1.0, 3.0]),
        jitter=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
        seed=st.integers(0, 2**32 - 1),
    )
    def start_client(self, multiplier: float, max_delay: float, jitter: float, seed: int) -> None:
        config = tl.Config(
            heartbeat=HEARTBEAT,
            reconnect_initial_delay=0.1,
            reconnect_multiplier=multiplier,
            reconnect_max_delay=max_delay,
            reconnect_jitter=jitter,
        )
        self.thread = TrioThread(lambda clock: open_world(clock, config, seed))
        self.thread.start()

    @property
    def world(self) -> World:
        assert self.thread is not None
        return self.thread.world

    def act(self, action: Callable[[World], None]) -> None:
        """Do ``action`` in the trio thread, then let the system settle."""
        assert self.thread is not None
        world = self.world

        async def step() -> None:
            action(world)
            await settle()

        self.thread.run(step)

    # -- faults ----------------------------------------------------------------------------------

    @rule()
    def broker_severs_connections(self) -> None:
        self.act(lambda w: w.broker.sever_all())

    @rule()
    def network_blackholes_connections(self) -> None:
        def blackhole(w: World) -> None:
            w.broker.blackhole_all()
            for stream in w.streams:
                if not stream.closed and stream.blackholed_at is None:
                    stream.blackholed_at = trio.current_time()

        self.act(blackhole)

    @rule()
    def broker_refuses_connections(self) -> None:
        self.act(lambda w: setattr(w.broker, "refuse_connections", True))

    @rule()
    def broker_accepts_connections_again(self) -> None:
        self.act(lambda w: setattr(w.broker, "refuse_connections", False))

    @rule()
    def broker_closes_connections_320(self) -> None:
        self.act(lambda w: w.broker.close_all_connections())

    @rule(seconds=st.sampled_from([0.05, 0.1, 0.3, 1.0, 2.5, 4.5]))
    def time_passes(self, seconds: float) -> None:
        assert self.thread is not None
        clock = self.thread.clock
        self.thread.run(lambda: advance(clock, seconds))

    # -- users -----------------------------------------------------------------------------------

    @rule()
    def user_publishes_with_confirms(self) -> None:
        def publish(w: World) -> None:
            connection = w.client.connection
            if connection is None or not connection.is_open:
                return
            body = w.body()

            async def run() -> None:
                async with await connection.channel() as channel:
                    await channel.queue_declare(PUBLISHED_QUEUE, durable=True)
                    await channel.confirm_select()
                    w.attempted.add(body)
                    await channel.publish(body, routing_key=PUBLISHED_QUEUE)
                    w.confirmed.add(body)

            w.spawn("publish", run, may_fail=True)

        self.act(publish)

    @precondition(lambda self: not self.declaring)
    @rule()
    def user_declares_the_consumed_queue(self) -> None:
        self.declaring = True

        def declare(w: World) -> None:
            async def run() -> None:
                await w.client.declare_queue(CONSUMED_QUEUE)
                w.consumed_queue_declared = True

            # Declarations wait for the connection and survive its loss.
            w.spawn("declare_queue", run, may_fail=False)

        self.act(declare)

    @precondition(lambda self: self.declared and not self.consuming)
    @rule()
    def user_consumes(self) -> None:
        self.consuming = True

        def consume(w: World) -> None:
            async def run() -> None:
                async with w.client.consume(CONSUMED_QUEUE, prefetch=50) as consumer:
                    w.consumer = consumer
                    async for delivery in consumer:
                        w.received.append(delivery.body)
                        await delivery.ack()

            # The client re-subscribes consumers: consuming never fails.
            w.spawn("consume", run, may_fail=False)

        self.act(consume)

    @property
    def declared(self) -> bool:
        return self.thread is not None and self.world.consumed_queue_declared

    @precondition(lambda self: self.consuming)
    @rule()
    def another_client_publishes_to_the_consumed_queue(self) -> None:
        def publish(w: World) -> None:
            body = w.body()
            if w.broker.publish("", CONSUMED_QUEUE, body) == 1:
                w.published_to_consumer.add(body)

        self.act(publish)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def client_keeps_its_promises(self) -> None:
        if self.thread is None:
            return

        async def check() -> Summary:
            await settle()
            return check_world(self.world)

        summary = self.thread.run(check)
        note(summary.line)
        for name in summary.happened:
            event(name)

    def teardown(self) -> None:
        if self.thread is not None:
            self.thread.stop()


@dataclass
class Summary:
    """What :func:`check_world` saw: a line for the example's notes, and
    which interesting things happened so far (hypothesis events)."""

    line: str
    happened: list[str]


def check_world(w: World) -> Summary:
    """Every invariant of the module doc, on a settled world."""
    now = trio.current_time()
    client = w.client
    assert w.violations == []

    # The changes so far, as a subscriber sees them.
    while True:
        try:
            item = w.events.receive_nowait()
        except trio.WouldBlock:
            break
        if isinstance(item, tl.StateChange):
            w.changes.append(item)
    state = client.state

    # One chain of allowed changes; backoff measured on the clock.
    previous = tl.ClientState.DISCONNECTED
    waits = 0  # waits since the last healthy connection was lost
    pending: tuple[float, int] | None = None  # (start, k) of the wait in progress
    losses = 0
    for change in w.changes:
        assert change.old is previous, (change, previous)
        assert (change.old, change.new) in ALLOWED_CHANGES, change
        if change.new is tl.ClientState.DISCONNECTED:
            healthy = change.error is None or not broke_the_protocol(change.error)
            if change.old is tl.ClientState.CONNECTED and healthy:
                waits = 0  # a healthy connection was lost: the backoff starts over
            pending = (change.at, waits)
            waits += 1
            losses += change.old is tl.ClientState.CONNECTED
        elif change.new is tl.ClientState.CONNECTING:
            if pending is None:
                assert change.at == 0.0  # the first attempt starts at once
            else:
                start, k = pending
                low, high = delay_bounds(w.config, k)
                waited = change.at - start
                assert low - EPS <= waited <= high + EPS, (k, waited, low, high)
            pending = None
        previous = change.new
    assert previous is state

    # Settled: never caught mid-attempt; connected exactly when it says so.
    assert state in (tl.ClientState.CONNECTED, tl.ClientState.DISCONNECTED)
    assert client.connected == (state is tl.ClientState.CONNECTED)
    if state is tl.ClientState.DISCONNECTED:
        # The wait is not over yet: once it is, the client tries again, and
        # the try succeeds when the broker accepts (failed_attempts == refused,
        # below).  So the client is connected at most one wait after the
        # broker accepts again.
        assert pending is not None
        start, k = pending
        _low, high = delay_bounds(w.config, k)
        assert now - start < high + EPS, (
            f"disconnected since {start}, wait #{k} is at most {high} s, and now is {now}"
        )

    # At most one connection at a time.
    open_streams = [s for s in w.streams if not s.closed]
    assert len(open_streams) == (1 if state is tl.ClientState.CONNECTED else 0)
    served = [s for s in w.broker._served if not s.blackholed]
    assert len(served) <= 1
    for stream in open_streams:
        if stream.blackholed_at is not None:
            assert now - stream.blackholed_at < 2 * HEARTBEAT + EPS
        else:
            assert len(served) == 1

    # Statistics agree with the broker and the stream factory.
    stats = client.statistics()
    assert stats.state is state
    assert stats.connect_attempts == w.factory_calls
    assert stats.failed_attempts == w.refused
    assert stats.connects == len(w.streams) == w.broker.connection_count
    assert stats.reconnects == max(0, stats.connects - 1)
    assert stats.detections_by_event + stats.detections_by_poll == losses
    assert stats.recovery_failures == 0
    assert stats.events_dropped == 0

    # Messages: nothing confirmed is lost; consumers recover.
    if PUBLISHED_QUEUE in w.broker.queue_names():
        stored = [m.body for m in w.broker.queue(PUBLISHED_QUEUE).messages]
        assert len(stored) == len(set(stored))
        assert w.confirmed <= set(stored) <= w.attempted
    else:
        assert not w.confirmed
    consumer = w.consumer
    if consumer is not None:
        info = w.broker.queue(CONSUMED_QUEUE)
        ready = {m.body for m in info.messages}
        missing = w.published_to_consumer - set(w.received) - ready
        assert len(missing) <= info.messages_unacknowledged
        live = client.connection
        if (
            live is not None
            and live.is_open
            and all(s.blackholed_at is None for s in open_streams)
        ):
            assert consumer.channel is not None
            assert consumer.channel.connection is live
            assert not ready, f"{len(ready)} messages wait while the consumer is connected"
    return Summary(
        f"t={now}: {state.value}, {stats.connects} connects, {stats.failed_attempts} failed",
        [
            name
            for name, seen in [
                ("reconnected", stats.reconnects > 0),
                ("an attempt was refused", stats.failed_attempts > 0),
                (
                    "a blackholed connection was given up",
                    any(s.closed and s.blackholed_at is not None for s in w.streams),
                ),
                ("a publish was confirmed", bool(w.confirmed)),
                ("the consumer received", bool(w.received)),
                ("a wait was longer than the first", waits >= 2),
            ]
            if seen
        ],
    )


TestClientKeepsItsPromisesThroughFaults = ClientMachine.TestCase
TestClientKeepsItsPromisesThroughFaults.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None
)


# -- bugs the machine found, one focused test each ---------------------------------------------


class StepCounter(trio.abc.Instrument):
    """Counts the steps of the connections' heartbeat tasks."""

    def __init__(self) -> None:
        self.heartbeat_steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(" heartbeats"):
            self.heartbeat_steps += 1


async def test_closing_while_the_broker_is_silent_does_not_busy_loop_the_heartbeat_task(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Closing waits up to 5 s for the broker's CloseOk.  Meanwhile the
    connection is CLOSING, so no heartbeat may be sent, but the heartbeat task
    still wakes at the (passed) send deadline: it must sleep, not spin."""
    config = tl.Config(heartbeat=HEARTBEAT, reconnect_jitter=0.0)
    counter = StepCounter()
    async with open_fake_broker(heartbeat=HEARTBEAT) as broker, trio.open_nursery() as nursery:
        closed = trio.Event()

        async def use_then_close() -> None:
            async with tl.open_client(config=config, stream_factory=broker.connect) as client:
                await client.wait_connected()
                broker.blackhole_all()  # the CloseOk will never come
            closed.set()

        nursery.start_soon(use_then_close)
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()  # waiting for the CloseOk
        trio.lowlevel.add_instrument(counter)
        mock_clock.jump(HEARTBEAT / 2)  # the heartbeat send deadline passes
        for _ in range(100):
            await trio.lowlevel.checkpoint()
        trio.lowlevel.remove_instrument(counter)
        mock_clock.jump(10)  # past the close timeout: the close ends either way
        await closed.wait()
    assert counter.heartbeat_steps <= 2, (
        f"the heartbeat task ran {counter.heartbeat_steps} times while the clock stood still"
    )


async def test_ack_racing_a_broker_close_returns_false_not_a_protocol_error() -> None:
    """A delivery arrives right before the broker's Connection.Close.  While
    the client flushes its CloseOk, the consumer acks: the connection is over,
    so ``ack()`` must return False (its documented answer for a dead
    channel), not raise ``LocalProtocolError``."""
    async with open_fake_broker() as broker:
        streams: list[ClientStream] = []

        async def factory() -> trio.abc.Stream:
            streams.append(ClientStream(await broker.connect()))
            return streams[-1]

        async with tl.open_connection(stream_factory=factory) as connection:
            channel = await connection.channel()
            await channel.queue_declare("jobs")
            consumer = await channel.basic_consume("jobs")
            streams[0].hold = True  # the CloseOk waits
            broker.publish("", "jobs", b"m")
            broker.close_connection(broker.connections[0])  # right behind the delivery
            delivery = await consumer.__anext__()
            await trio.testing.wait_all_tasks_blocked()  # the Close was read
            try:
                acked: bool | BaseException = await delivery.ack()
            except Exception as exc:
                acked = exc
            streams[0].gate.set()
            error = await connection.wait_closed()
    assert acked is False
    assert isinstance(error, tl.ConnectionClosedByBroker)


async def test_publish_racing_a_broker_close_raises_connection_lost_not_a_protocol_error() -> None:
    """As above, for a publish: ``basic_publish`` documents ChannelClosed,
    ConnectionLost or ConnectionClosed once the connection is over."""
    async with open_fake_broker() as broker:
        streams: list[ClientStream] = []

        async def factory() -> trio.abc.Stream:
            streams.append(ClientStream(await broker.connect()))
            return streams[-1]

        async with tl.open_connection(stream_factory=factory) as connection:
            channel = await connection.channel()
            streams[0].hold = True  # the CloseOk waits
            broker.close_connection(broker.connections[0])
            await trio.testing.wait_all_tasks_blocked()  # the Close was read
            try:
                await channel.basic_publish(b"x", routing_key="jobs")
                raised: BaseException | None = None
            except Exception as exc:
                raised = exc
            streams[0].gate.set()
            await connection.wait_closed()
    assert isinstance(raised, (tl.ConnectionLost, tl.ChannelClosed)), repr(raised)


async def test_consume_started_on_a_dying_connection_waits_for_the_next_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``client.consume()`` is called while the connection is silently dead:
    the subscription fails with it, and the client must wait for the next
    connection (as declarations do), not raise ``ConnectionLost``."""
    config = tl.Config(heartbeat=HEARTBEAT, reconnect_jitter=0.0)
    async with (
        open_fake_broker(heartbeat=HEARTBEAT) as broker,
        tl.open_client(config=config, stream_factory=broker.connect) as client,
    ):
        await client.declare_queue("jobs")
        broker.blackhole_all()  # the subscription below never gets an answer
        try:
            async with client.consume("jobs") as consumer:
                broker.publish("", "jobs", b"after")
                with trio.fail_after(10):
                    delivery = await consumer.__anext__()
                outcome: bytes | BaseException = delivery.body
        except tl.AMQPConnectionError as exc:
            outcome = exc
        reconnects = client.statistics().reconnects
    assert outcome == b"after"
    assert reconnects == 1
