"""The SpinGuard that FaultMachine worlds run under: it reports a task that runs
on while the virtual clock stands still, and only such a task."""

from __future__ import annotations

import functools

import trio
import trio.testing

from trio_lavin.testing._trio_thread import SPIN_LIMIT, SpinGuard


def spins_seen(tasks: int, checkpoints: int) -> list[str]:
    """Run ``tasks`` tasks, all named "handler", each passing ``checkpoints``
    checkpoints at one virtual time, under a SpinGuard; what it reported."""
    clock = trio.testing.MockClock()
    guard = SpinGuard(clock)

    async def handler() -> None:
        for _ in range(checkpoints):
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(functools.partial(handler), name="handler")

    trio.run(main, clock=clock, instruments=[guard])
    return guard.spins


def test_many_tasks_of_one_name_that_each_wait_are_not_a_busy_loop() -> None:
    """A worker's handlers share a name: 3 000 of them stepping a few times at
    one virtual time are not one task spinning (regression: steps were counted
    per task name, and this was reported as a busy loop)."""
    assert spins_seen(tasks=SPIN_LIMIT + 1_000, checkpoints=2) == []


def test_one_task_that_never_lets_the_clock_move_is_reported() -> None:
    [spin] = spins_seen(tasks=1, checkpoints=SPIN_LIMIT + 10)
    assert "task 'handler' ran 2000 steps at virtual time 0.0" in spin
