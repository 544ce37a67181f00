"""The worker (``client.serve``) as a hypothesis state machine on the fake broker, built
on the public ``FaultMachine``: rules publish messages (some failing their first
attempt, some failing every attempt), and the machine's own rules sever, blackhole,
refuse connections, crash the worker's process and let virtual time pass.

Invariants: the handler never sees a message that was not published, nor more than
``CONCURRENCY`` at once; at the end, with the faults stopped, every message that can
succeed succeeded at least once, exactly once unless the worker crashed (a restarted
worker's duplicate window starts empty), every always-failing one is in the parking
queue, nothing is left in the work queue, and the producer gave up on nothing."""

from __future__ import annotations

import collections

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

import trio_lavin as tl
from trio_lavin.testing.machines import FaultMachine

QUEUE, PARKED = "work", "parked"
CONCURRENCY = 4
ATTEMPT = "x-trio-lavin-attempt"


class WorkerMachine(FaultMachine):
    def __init__(self) -> None:
        self.published: dict[str, str] = {}  # message id -> "ok", "flaky" or "poison"
        self.succeeded: collections.Counter[str] = collections.Counter()
        self.most_running = 0  # the most handlers one worker ran at once
        self.dropped: list[bytes] = []
        super().__init__()

    async def prepare(self, client: tl.Client) -> None:
        await client.declare_queue(QUEUE, durable=True)
        self.producer = client.producer(QUEUE)
        self.producer.on_drop(lambda message, target, reason: self.dropped.append(message.body))

    async def application(self, client: tl.Client) -> None:
        # Counted per worker: a crashed worker's handlers may finish their grace
        # period while the restarted one already runs its own.
        running = 0

        async def handle(delivery: tl.Delivery) -> None:
            nonlocal running
            message_id = delivery.properties.message_id
            assert message_id in self.published, f"{message_id!r} was never published"
            running += 1
            self.most_running = max(self.most_running, running)
            try:
                await trio.sleep(0.1)  # handlers overlap, and faults strike while they run
                kind = self.published[message_id]
                first = ATTEMPT not in (delivery.properties.headers or {})
                if kind == "poison" or (kind == "flaky" and first):
                    raise RuntimeError(f"{message_id} fails")
                self.succeeded[message_id] += 1
            finally:
                running -= 1

        retry = tl.Retry(attempts=2, delays=(0,), dead_letter_queue=PARKED)
        await client.serve(
            QUEUE, handle, concurrency=CONCURRENCY, retry=retry, duplicate_window=1000
        )

    @rule(kinds=st.lists(st.sampled_from(["ok", "ok", "ok", "flaky", "poison"]), max_size=6))
    def publish(self, kinds: list[str]) -> None:
        self.call(self.publish_now, kinds)

    async def publish_now(self, kinds: list[str]) -> None:
        for kind in kinds:
            message_id = f"m{len(self.published)}"
            self.published[message_id] = kind
            properties = tl.BasicProperties(message_id=message_id)
            self.producer.publish_nowait(kind.encode(), properties=properties)

    @invariant()
    def never_more_handlers_than_the_concurrency(self) -> None:
        assert self.most_running <= CONCURRENCY

    async def check_at_end(self) -> None:
        assert self.dropped == []
        good = {m for m, kind in self.published.items() if kind != "poison"}
        assert set(self.succeeded) == good
        if not self.crashes:
            assert [m for m, n in self.succeeded.items() if n > 1] == []
        parked = {message.properties.message_id for message in self.broker.queue(PARKED).messages}
        assert parked == {m for m, kind in self.published.items() if kind == "poison"}
        assert self.broker.queue(QUEUE).messages == ()


WorkerMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestWorkerUnderFaults = WorkerMachine.TestCase


def test_a_crashed_workers_handlers_do_not_count_against_the_restarted_one() -> None:
    # The steps hypothesis found: three handlers still in their grace period after
    # the crash, three more in the restarted worker (6 at once, neither over 4).
    machine = WorkerMachine()
    try:
        machine.blackhole()
        machine.publish(kinds=["ok", "ok", "ok"])
        machine.refuse_connections()
        machine.sever()
        machine.accept_connections()
        machine.let_time_pass(seconds=0.125)
        machine.crash_application()
        machine.never_more_handlers_than_the_concurrency()
    finally:
        machine.teardown()
    assert 1 <= machine.most_running <= CONCURRENCY
