"""A hypothesis state machine for an application under faults: :class:`FaultMachine`.

An application's own property ("every order is processed exactly once", "the outbox
drains") has to hold while the network fails and the application itself crashes.
:class:`FaultMachine` is a :class:`~hypothesis.stateful.RuleBasedStateMachine` whose
world is a :class:`FakeBrokerServer` and the application, run in a trio thread under a
:class:`trio.testing.MockClock` that moves only when a rule lets time pass, so a run is
fast and the same every time.  Its rules are the faults: sever every connection,
blackhole them, refuse new ones for a while, crash the application (cancel it and
start it again, with a new client, as a restarted process would), and let time pass.
A subclass adds the application (:meth:`application`), its own rules (publish an order,
say, through :meth:`call`) and its invariants, and :meth:`check_at_end`, which runs
after the faults have stopped and time has passed for everything to settle.

Needs hypothesis (``pip install 'trio-lavin[testing]'``).  See
``examples/test_exactly_once_under_faults.py`` for a whole one.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

import trio_lavin as lavin

from ._fake_server import FakeBrokerServer, open_fake_broker
from ._trio_thread import TrioThread, advance, settle

__all__ = ["FaultMachine"]

T = TypeVar("T")


class FaultMachine(RuleBasedStateMachine):
    """The base of an application's state machine under faults (see the module doc).

    Override :meth:`application` (it runs until cancelled) and :meth:`check_at_end`,
    optionally :meth:`prepare` (declarations, before the application first starts);
    add ``@rule`` methods that act through :meth:`call` and ``@invariant`` methods.
    Run it as any hypothesis machine: ``TestOrders = OrderMachine.TestCase``.

    Attributes available to subclasses: :attr:`broker` (the fake broker), :attr:`client`
    (a client of the test's own, for publishing and inspecting; it stays up across the
    application's crashes, and reconnects after severs like any other), :attr:`crashes`.

    A subclass's ``__init__`` sets its own attributes *before* it calls
    ``super().__init__()``: that starts the world, which runs :meth:`prepare` and
    :meth:`application` at once.
    """

    #: The configuration of every client (the application's and :attr:`client`):
    #: quick reconnects, on the virtual clock.
    config = lavin.Config(
        reconnect_initial_delay=0.05, reconnect_max_delay=1.0, heartbeat=2, connect_timeout=2
    )
    #: Virtual seconds :meth:`teardown` lets pass, with the faults stopped, before
    #: :meth:`check_at_end` (enough for a blackholed connection to be found dead, two
    #: heartbeats, and for the clients to reconnect and catch up).
    quiet_time = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.crashes = 0
        self._app_scope: trio.CancelScope | None = None
        #: The client ends of the running application's connections.
        self._app_streams: list[trio.abc.Stream] = []
        self._nursery: trio.Nursery | None = None
        self._thread: TrioThread[FaultMachine] = TrioThread(self._world, name=type(self).__name__)
        self._thread.start()

    # -- for subclasses ------------------------------------------------------------------

    async def prepare(self, client: lavin.Client) -> None:
        """Declare what the application needs, once, before it first starts."""

    async def application(self, client: lavin.Client) -> None:
        """The application under test, on ``client``: runs until cancelled (a crash)."""
        raise NotImplementedError("a FaultMachine subclass defines application()")

    async def check_at_end(self) -> None:
        """The property that must hold once the faults stopped and everything settled."""

    def call(self, afn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await afn(*args)`` in the trio world, then let every task settle; its result.

        Rules run in hypothesis's thread: everything that touches trio (a producer, a
        client, the broker) must go through this."""

        async def call_and_settle() -> T:
            result = await afn(*args)
            await settle()
            return result

        return self._thread.run(call_and_settle)

    @property
    def broker(self) -> FakeBrokerServer:
        """The fake broker."""
        return self._broker

    @property
    def client(self) -> lavin.Client:
        """The test's own client."""
        return self._client

    # -- the world -----------------------------------------------------------------------

    @asynccontextmanager
    async def _world(self, clock: trio.testing.MockClock) -> AsyncIterator[FaultMachine]:
        async with (
            open_fake_broker() as broker,
            lavin.open_client(stream_factory=broker.connect, config=self.config) as client,
            trio.open_nursery() as nursery,
        ):
            self._broker, self._client, self._nursery = broker, client, nursery
            await self.prepare(client)
            self._start_application()
            await settle()
            yield self
            nursery.cancel_scope.cancel()

    def _start_application(self) -> None:
        assert self._nursery is not None
        scope = self._app_scope = trio.CancelScope()
        self._nursery.start_soon(self._run_application, scope, name="application")

    async def _run_application(self, scope: trio.CancelScope) -> None:
        streams: list[trio.abc.Stream] = []
        self._app_streams = streams

        async def connect() -> trio.abc.Stream:
            if scope.cancel_called:  # crashed: a dead process does not reconnect
                raise ConnectionRefusedError(errno.ECONNREFUSED, "the application crashed")
            stream = await self._broker.connect()
            streams.append(stream)
            return stream

        with scope:
            async with lavin.open_client(stream_factory=connect, config=self.config) as client:
                await self.application(client)

    async def _advance(self, seconds: float) -> None:
        await advance(self._thread.clock, seconds)

    # -- the faults ----------------------------------------------------------------------

    @rule()
    def sever(self) -> None:
        """Every connection is reset (a broker crash, a load balancer)."""
        self.call(_sync, self._broker.sever_all)

    @rule()
    def blackhole(self) -> None:
        """Nothing passes on the open connections, and nothing closes (a partition):
        the clients find out through their heartbeats, and the broker, as a real
        one does, drops them (requeueing what they held unacked) two heartbeat
        intervals later."""
        timeout = 2 * self.config.heartbeat
        self.call(_sync, lambda: self._broker.blackhole_all(broker_timeout=timeout))

    @precondition(lambda self: not self._broker.refuse_connections)
    @rule()
    def refuse_connections(self) -> None:
        """New connections are refused (the broker is down) until :meth:`accept_connections`."""
        self.call(_sync, lambda: setattr(self._broker, "refuse_connections", True))

    @precondition(lambda self: self._broker.refuse_connections)
    @rule()
    def accept_connections(self) -> None:
        """The broker takes connections again."""
        self.call(_sync, lambda: setattr(self._broker, "refuse_connections", False))

    @rule()
    def crash_application(self) -> None:
        """The application dies and starts again with a new client, as a killed and
        restarted process would: its connections are severed first (the broker
        requeues what it held unacked, and no ack it sends afterwards arrives),
        then it is cancelled.  Code the application shields from cancellation
        (a worker's handlers, during their grace period) may still run to its
        end in the trio world, but nothing it sends reaches the broker."""
        assert self._app_scope is not None
        self.crashes += 1

        async def crash_and_restart() -> None:
            assert self._app_scope is not None
            for stream in self._app_streams:
                self._broker.sever(stream)
            self._app_scope.cancel()
            await settle()
            self._start_application()

        self.call(crash_and_restart)

    @rule(seconds=st.floats(0, 3, allow_nan=False))
    def let_time_pass(self, seconds: float) -> None:
        """Virtual time passes: timers fire, clients reconnect."""
        self.call(self._advance, seconds)

    # -- the end -------------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop the faults, let :attr:`quiet_time` pass, check the end state, and stop
        the world (an error in any of these fails the example)."""
        try:
            self.call(_sync, lambda: setattr(self._broker, "refuse_connections", False))
            self.call(self._advance, self.quiet_time)
            self.call(self.check_at_end)
        finally:
            self._thread.stop()


async def _sync(fn: Callable[[], object]) -> None:
    fn()
    await trio.lowlevel.checkpoint()
