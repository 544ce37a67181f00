"""FaultMachine's own faults, driven step by step (not by hypothesis): a crash
kills the application's connections as a dead process's would."""

from __future__ import annotations

import trio

import trio_lavin as tl
from trio_lavin.testing.machines import FaultMachine

QUEUE = "work"


class SlowWorker(FaultMachine):
    """A worker whose handler takes 1 s (well within its 10 s grace period)."""

    def __init__(self) -> None:
        self.started: list[bool] = []  # redelivered, per handler run
        self.finished = 0
        super().__init__()

    async def prepare(self, client: tl.Client) -> None:
        await client.declare_queue(QUEUE, durable=True)

    async def handle(self, delivery: tl.Delivery) -> None:
        self.started.append(delivery.redelivered)
        await trio.sleep(1)
        self.finished += 1

    async def application(self, client: tl.Client) -> None:
        await client.serve(QUEUE, self.handle, grace=10)


def test_a_crash_loses_the_work_in_progress_and_the_restarted_application_gets_it_again() -> None:
    """The handler is half way through when the application crashes: its
    connection is severed (dropped, as a killed process's is, not closed), its ack
    never reaches the broker, and the broker delivers the message again to the
    restarted application.  The crashed handler, shielded by the worker's grace
    period, runs on in the trio world, and the crashed client never reconnects."""
    machine = SlowWorker()
    try:
        machine.call(publish, machine.client, b"order")
        machine.let_time_pass(0.5)
        assert machine.started == [False]
        machine.crash_application()
        machine.let_time_pass(5)
        assert machine.started == [False, True]
        assert machine.finished == 2  # the crashed one ran on, shielded, in the trio world
        assert machine.broker.queue(QUEUE).messages == ()
        assert machine.broker.queue(QUEUE).messages_unacknowledged == 0
        assert machine.broker.connection_count == 3  # the test's, the crashed, the restarted
    finally:
        machine.teardown()


async def publish(client: tl.Client, body: bytes) -> None:
    await client.shared_producer().publish(body, routing_key=QUEUE)
