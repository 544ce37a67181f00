"""Run a trio world in a background thread and drive it from synchronous code.

Hypothesis rules are synchronous, but the client under test must live across
rules.  :class:`TrioThread` runs ``trio.run`` in a thread with a
:class:`trio.testing.MockClock` that never moves by itself (rate 0, no
autojump): time passes only when a caller asks for it (:func:`advance`).  The
world is an async context manager entered in the trio thread; the
synchronous side calls into it with :meth:`TrioThread.run`, and
:meth:`TrioThread.stop` leaves it and joins the thread, within a deadline.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

import trio
import trio.testing

T = TypeVar("T")
W = TypeVar("W")

#: Real seconds allowed for the world to come up, and to shut down.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

#: Scheduler passes :func:`advance` allows per call before it declares that
#: some task keeps re-arming an expired deadline (a busy loop).
MAX_STEPS = 100_000

#: Steps one task may take at a single virtual time before :class:`SpinGuard`
#: calls it a busy loop.  Real work at one instant (a burst of deliveries) is
#: far below this.
SPIN_LIMIT = 2_000
#: Clock jumps :class:`SpinGuard` tries before it cancels the world.
MAX_STRIKES = 10


async def settle() -> None:
    """Let every task run until all of them are blocked."""
    await trio.testing.wait_all_tasks_blocked()


async def advance(clock: trio.testing.MockClock, seconds: float) -> None:
    """Move the clock forward by ``seconds``, stopping at every deadline on
    the way and letting the system settle there, so chained timers fire at
    exactly the virtual time they asked for (as ``autojump_threshold=0`` would)."""
    if not seconds >= 0:
        raise ValueError(f"seconds must be >= 0, not {seconds!r}")
    end = trio.current_time() + seconds
    await settle()
    for _ in range(MAX_STEPS):
        now = trio.current_time()
        step = trio.lowlevel.current_statistics().seconds_to_next_deadline
        target = now + step if step > 0 else now
        if target > end:
            if end > now:
                clock.jump(end - now)
            await settle()
            return
        if target > now:
            clock.jump(target - now)
            while trio.current_time() < target:  # rounding: land on the deadline itself
                clock.jump(math.ulp(target))
        await settle()
    raise AssertionError(f"{MAX_STEPS} deadlines within {seconds} s: a timer loop is spinning")


class SpinGuard(trio.abc.Instrument):
    """Catches a task that keeps running while the virtual clock stands still.

    Under a MockClock such a task freezes time for good (``trio.run`` never
    goes idle, so neither :func:`settle` nor autojump ever returns), which
    would hang the test.  The guard records the busy loop and moves the clock
    to the next deadline, as real time would; if the loop goes on regardless,
    it cancels the whole world (:attr:`scope`).  Either way the failure is
    reported instead of hanging.
    """

    def __init__(self, clock: trio.testing.MockClock, limit: int = SPIN_LIMIT) -> None:
        self._clock = clock
        self._limit = limit
        self._time = math.nan
        #: Per task, not per name: a worker's many handlers share one.
        self._steps: Counter[trio.lowlevel.Task] = Counter()
        self._strikes: Counter[trio.lowlevel.Task] = Counter()
        #: Cancelled when a busy loop does not stop by itself.
        self.scope: trio.CancelScope | None = None
        #: One line per busy loop seen.
        self.spins: list[str] = []

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = self._clock.current_time()
        if now != self._time:
            self._time = now
            self._steps.clear()
        self._steps[task] += 1
        if self._steps[task] < self._limit:
            return
        self._steps[task] = 0
        self._strikes[task] += 1
        if self._strikes[task] == 1:
            self.spins.append(
                f"task {task.name!r} ran {self._limit} steps at virtual time {now} "
                "without waiting for the clock to move: a busy loop"
            )
        step = trio.lowlevel.current_statistics().seconds_to_next_deadline
        if 0 < step < math.inf and self._strikes[task] < MAX_STRIKES:
            self._clock.jump(step)
        elif self.scope is not None:
            self._clock.autojump_threshold = 0  # let shielded timeouts elapse
            self.scope.cancel()


class TrioThread(Generic[W]):
    """``trio.run`` in a daemon thread, serving calls from other threads.

    ``world`` is called in the trio thread; the value its context manager
    yields is :attr:`world`.  Exceptions raised by calls come back to the
    caller; an exception escaping the world (a crashed task) is re-raised by
    the next call and by :meth:`stop`.
    """

    def __init__(
        self,
        world: Callable[[trio.testing.MockClock], AbstractAsyncContextManager[W]],
        *,
        name: str = "trio world",
    ) -> None:
        self.clock = trio.testing.MockClock()
        self._make_world = world
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._shutdown: trio.Event | None = None
        self._world: W | None = None
        self.error: BaseException | None = None
        self.spin_guard = SpinGuard(self.clock)
        self._thread = threading.Thread(target=self._target, name=name, daemon=True)

    @property
    def world(self) -> W:
        assert self._world is not None, "the world is not running"
        return self._world

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise AssertionError(f"the trio world did not start within {START_TIMEOUT} s")
        self._raise_if_crashed()

    def _target(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:  # reported by run() and stop(), in the test's thread
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._shutdown = trio.Event()
        trio.lowlevel.add_instrument(self.spin_guard)
        with trio.CancelScope() as self.spin_guard.scope:
            async with self._make_world(self.clock) as world:
                self._world = world
                self._ready.set()
                await self._shutdown.wait()

    def _raise_if_crashed(self) -> None:
        assert self.spin_guard.spins == [], self.spin_guard.spins
        if self.error is not None:
            raise AssertionError(f"the trio world crashed: {self.error!r}") from self.error
        if not self._thread.is_alive():
            raise AssertionError("the trio world has ended")

    def run(self, afn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await afn()`` in the trio thread and return its result."""
        self._raise_if_crashed()
        assert self._token is not None
        try:
            return trio.from_thread.run(afn, trio_token=self._token)
        except (trio.RunFinishedError, trio.Cancelled):
            self._thread.join(STOP_TIMEOUT)  # the world was cancelled: let it end
            self._raise_if_crashed()
            raise

    def stop(self) -> None:
        """Leave the world (with the clock jumping to each deadline by itself,
        so shutdown timeouts elapse) and join the thread.

        Raises:
            AssertionError: the thread did not end within ``STOP_TIMEOUT``
                real seconds, or the world crashed.
        """
        if self._thread.is_alive() and self._token is not None:

            def begin_shutdown() -> None:
                assert self._shutdown is not None
                self.clock.autojump_threshold = 0
                self._shutdown.set()

            try:
                trio.from_thread.run_sync(begin_shutdown, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(STOP_TIMEOUT)
        if self._thread.is_alive():
            raise AssertionError(f"the trio world did not stop within {STOP_TIMEOUT} s")
        if self.error is not None:
            raise AssertionError(f"the trio world ended with {self.error!r}") from self.error
        assert self.spin_guard.spins == [], self.spin_guard.spins
