"""The reconnect state machine against the real broker through FaultProxy:
few examples (real time passes), same promises as the FakeBroker variant in
tests/robust/test_client_machine.py."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import trio_lavin as tl
from trio_lavin.testing import FaultProxy, open_fault_proxy
from trio_lavin.testing._trio_thread import TrioThread

T = TypeVar("T")

CONFIG = tl.Config(heartbeat=5, reconnect_initial_delay=0.05, reconnect_max_delay=0.5)


@dataclass
class World:
    proxy: FaultProxy
    client: tl.Client
    producer: tl.Producer
    queue: str
    dropped: list[tl.DropReason]


class RealBrokerReconnects(RuleBasedStateMachine):
    """Sever, refuse and publish in random order; the client must always
    come back, never hold two connections, and confirm every message."""

    url: ClassVar[str] = ""

    def __init__(self) -> None:
        super().__init__()
        self.published = 0
        self.thread: TrioThread[World] = TrioThread(self.world, name="real-broker machine")
        self.thread.clock.rate = 1.0  # real time: the broker does not know our mock clock
        self.thread.start()

    @asynccontextmanager
    async def world(self, clock: trio.testing.MockClock) -> AsyncIterator[World]:
        del clock
        params = tl.parse_url(self.url)
        queue = f"trio-lavin-test.machine.{secrets.token_hex(6)}"
        async with (
            open_fault_proxy(params.host, params.port) as proxy,
            tl.open_client(proxy.url_for(self.url), CONFIG) as client,
        ):
            await client.declare_queue(queue)
            producer = client.producer(queue, confirm_window=50)
            dropped: list[tl.DropReason] = []
            producer.on_drop(lambda message, target, reason: dropped.append(reason))
            yield World(proxy, client, producer, queue, dropped)

    def call(self, afn: Callable[[], Awaitable[T]]) -> T:
        return self.thread.run(afn)

    @rule(mode=st.sampled_from(["rst", "fin"]))
    def sever(self, mode: Literal["rst", "fin"]) -> None:
        async def sever() -> None:
            self.thread.world.proxy.sever(mode)
            await trio.sleep(0.02)

        self.call(sever)

    @rule(refuse=st.booleans())
    def set_refuse(self, refuse: bool) -> None:
        async def set_refuse() -> None:
            self.thread.world.proxy.refuse = refuse
            await trio.lowlevel.checkpoint()

        self.call(set_refuse)

    @rule(count=st.integers(1, 40))
    def publish(self, count: int) -> None:
        async def publish() -> None:
            for _ in range(count):
                await self.thread.world.producer.enqueue(b"%d" % self.published)
                self.published += 1

        self.call(publish)

    @rule(seconds=st.floats(0.01, 0.3))
    def time_passes(self, seconds: float) -> None:
        async def sleep() -> None:
            await trio.sleep(seconds)

        self.call(sleep)

    @invariant()
    def at_most_one_connection(self) -> None:
        async def count() -> int:
            return self.thread.world.proxy.active_connections

        assert self.call(count) <= 1

    @invariant()
    def nothing_is_dropped(self) -> None:
        async def dropped() -> list[tl.DropReason]:
            return list(self.thread.world.dropped)

        assert self.call(dropped) == []

    def teardown(self) -> None:
        async def recover() -> tuple[tl.ProducerStatistics, tl.ClientStatistics]:
            world = self.thread.world
            world.proxy.refuse = False
            with trio.fail_after(20):
                await world.client.wait_connected()
                await world.producer.drain()
                stats = world.producer.statistics(), world.client.statistics()
                # Done here, in real time: stop() lets the clock jump.
                await world.client.delete_queue(world.queue)
            return stats

        try:
            producer_stats, client_stats = self.call(recover)
            assert producer_stats.confirmed == self.published
            assert sum(producer_stats.dropped.values()) == 0
            assert client_stats.state is tl.ClientState.CONNECTED
        finally:
            self.thread.stop()


@pytest.mark.broker
def test_reconnect_state_machine_against_the_real_broker(amqp_url: str) -> None:
    RealBrokerReconnects.url = amqp_url
    run_state_machine_as_test(  # type: ignore[no-untyped-call, unused-ignore]
        RealBrokerReconnects,
        settings=settings(max_examples=8, stateful_step_count=10, deadline=None),
    )
