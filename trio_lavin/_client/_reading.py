"""Who reads a connection's socket, and how a task waits for the broker.

The connection's reader task reads the socket and dispatches what comes.  On
a plain TCP socket a task about to wait for the broker (a reply, a confirm,
a delivery) may take the reading over while the reader is idle: it waits for
the socket itself, then reads and dispatches from its own task, so that its
answer reaches it without a hop through the reader (a scheduler pass; see
benchmarks/README.md for what that is worth).  With several tasks waiting the reader reads
for them all: handing the reading from task to task would cost more than the
hop.  A dispatch never waits half-way, so dispatches never interleave and
frames are handled in the order they came, whichever task read them.

Who may read, by the reader's :class:`ReaderState`:

==============  ==================================  ==============================
state           the reader task                     a task that starts waiting
==============  ==================================  ==============================
BUSY            reads, dispatches, or waits for      waits to be woken
                room in a consumer's buffer
WAITING         waits for the socket, in a cancel    when it is the only task
                scope                                waiting: cancels that scope
                                                     and takes the reading over
WAITING_FIXED   waits for the socket without a       waits to be woken
                scope (two or more tasks wait, so
                none will take over, and a cancel
                scope is not free)
HANDED_OVER     parked until the taker is done       when it is the only task
                                                     waiting (the taker is done):
                                                     takes the reading over next
==============  ==================================  ==============================

What a task waits for is a :class:`Signal` (one-shot) or a :class:`Notice`
(re-armed by its owner).  Setting one wakes the task waiting for it, also
when that task is waiting for the socket itself (no bytes may be coming for
what happened): whoever sets a signal never has to know who reads.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from typing import Final

import trio


class ReaderState(enum.Enum):
    #: Reading, dispatching or waiting for room: not waiting for the socket.
    BUSY = "BUSY"
    #: Waiting for the socket in a cancel scope: a lone waiting task may take over.
    WAITING = "WAITING"
    #: Waiting for the socket without a scope: nobody takes over.
    WAITING_FIXED = "WAITING_FIXED"
    #: A waiting task reads; the reader is parked until it is done.
    HANDED_OVER = "HANDED_OVER"


#: The reader's states in which a lone waiting task may take the reading over.
_TAKEABLE = frozenset({ReaderState.WAITING, ReaderState.HANDED_OVER})

# Set once or twice per read: an Enum member read off its class costs about
# 57 ns more than a global on Python 3.11.
_BUSY: Final = ReaderState.BUSY
_WAITING: Final = ReaderState.WAITING
_WAITING_FIXED: Final = ReaderState.WAITING_FIXED
_HANDED_OVER: Final = ReaderState.HANDED_OVER


class Lot:
    """A :class:`trio.lowlevel.ParkingLot` that keeps the number of tasks
    parked in it in a plain int, for the checks made on every publish and
    every delivery: ``if lot.parked`` costs a few ns, ``if parking_lot``
    about 45 (its ``__len__``), and unparking an empty ParkingLot several
    hundred.  A task counts from the moment it parks until it is unparked
    (or its wait is cut short), as the ParkingLot's own length does."""

    __slots__ = ("_lot", "parked")

    def __init__(self) -> None:
        self._lot = trio.lowlevel.ParkingLot()
        #: Tasks parked and not yet unparked.
        self.parked = 0

    async def park(self) -> None:
        """Wait until unparked.  Cancellation: as ParkingLot.park."""
        self.parked += 1
        try:
            await self._lot.park()
        except BaseException:
            # Not unparked (an unparked task always resumes normally): the
            # wait was cut short, so nobody else took it off the count.
            self.parked -= 1
            raise

    def unpark(self) -> None:
        """Wake the longest-waiting task, if any."""
        if self.parked:
            self.parked -= len(self._lot.unpark())

    def unpark_all(self) -> None:
        """Wake every waiting task."""
        if self.parked:
            self.parked -= len(self._lot.unpark_all())


class _Wakeable:
    """What a task can wait for through :meth:`Reading.wait_for`."""

    __slots__ = ("reading",)

    def __init__(self) -> None:
        #: The reading whose socket a task waits for on this one's behalf, if any.
        self.reading: Reading | None = None

    def is_set(self) -> bool:
        raise NotImplementedError

    async def wait(self) -> None:
        raise NotImplementedError

    def _woken(self) -> None:
        reading = self.reading
        if reading is not None:
            reading.wake(self)


class Signal(_Wakeable):
    """Set once (a reply came, a confirm came, or the waiting is over for
    another reason); like :class:`trio.Event`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        super().__init__()
        self._event = trio.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        self._woken()

    async def wait(self) -> None:
        await self._event.wait()


class Notice(_Wakeable):
    """News for a task that waits again and again (a consumer: deliveries
    in its buffer, or its end): ``is_set`` asks the owner whether there is
    news; :meth:`notify` wakes the waiting task."""

    __slots__ = ("_lot", "_news")

    def __init__(self, news: Callable[[], bool]) -> None:
        super().__init__()
        self._news = news
        self._lot = Lot()

    def is_set(self) -> bool:
        return self._news()

    def notify(self) -> None:
        """Wake every task waiting for news."""
        self._lot.unpark_all()
        self._woken()

    def notify_one(self) -> None:
        """Wake one task waiting for news (one more delivery)."""
        self._lot.unpark()
        self._woken()

    async def wait(self) -> None:
        await self._lot.park()


class _Taker:
    """A task that took the reading over while it waits for ``signal``."""

    __slots__ = ("scope", "signal")

    def __init__(self, signal: _Wakeable) -> None:
        self.signal = signal
        #: Cancelled to make it look again (its answer came another way).
        self.scope = trio.CancelScope()


class Reading:
    """The reading of one connection's TCP socket (see the module doc).

    ``read_and_dispatch`` reads what the socket holds and dispatches it (it
    must not wait, except when the connection ends); ``can_take`` says
    whether a waiting task may read now (the connection is open and no
    consumer is beyond its buffer).
    """

    def __init__(
        self,
        socket: trio.socket.SocketType,
        read_and_dispatch: Callable[[], Awaitable[None]],
        can_take: Callable[[], bool],
    ) -> None:
        self._socket = socket
        self._read_and_dispatch = read_and_dispatch
        self._can_take = can_take
        self.state = ReaderState.BUSY
        #: The reader's cancel scope while WAITING.
        self._scope: trio.CancelScope | None = None
        #: The reader parks here while HANDED_OVER.
        self._lot = trio.lowlevel.ParkingLot()
        self._taker: _Taker | None = None
        #: Tasks in :meth:`wait_for`.
        self.waiting = 0

    # -- the reader task ------------------------------------------------------------

    async def reader_wait(self) -> bool:
        """For the reader task: wait until the socket is readable (True:
        read it now), or until a waiting task that took the reading over is
        done (False: nothing to read, dispatch and ask again).  Yields to the
        scheduler once per call, so a broker that sends without pause cannot
        starve the other tasks.

        Raises:
            trio.ClosedResourceError: the socket was closed.
        """
        try:
            if self._taker is not None:
                self.state = _HANDED_OVER
                await self._lot.park()
                return False
            if self.waiting > 1:
                self.state = _WAITING_FIXED
                await trio.lowlevel.wait_readable(self._socket)
                return True
            scope = self._scope = trio.CancelScope()
            self.state = _WAITING
            with scope:
                await trio.lowlevel.wait_readable(self._socket)
            self._scope = None
            return not scope.cancelled_caught  # else a waiting task took over
        finally:
            self.state = _BUSY

    # -- waiting tasks --------------------------------------------------------------

    async def wait_for(self, signal: _Wakeable) -> None:
        """Wait until ``signal`` is set, taking the reading over when this is
        the only task waiting and the reader waits for the socket.

        Cancellation: a checkpoint; the reading goes back to the reader.
        """
        if signal.is_set():
            # It happened while the caller was on its way here (e.g. while
            # it sent what was queued): no waking up is coming.
            await trio.lowlevel.checkpoint()
            return
        while not signal.is_set():
            take = (
                not self.waiting  # others wait too: one read by the reader wakes them all
                and self.state in _TAKEABLE
                and self._can_take()
            )
            self.waiting += 1
            try:
                if take:
                    await self._take_reading(signal)
                else:
                    await signal.wait()
            finally:
                self.waiting -= 1

    async def _take_reading(self, signal: _Wakeable) -> None:
        """Wait for the socket in place of the reader, then read and
        dispatch what came."""
        taker = self._taker = _Taker(signal)
        # Only the taker needs waking by the signal itself (a task that waits
        # plainly is woken by the signal anyway), and there is one at a time.
        signal.reading = self
        try:
            reader = self._scope
            if reader is not None:
                # Stop the reader at once, so the socket has one reader left.
                reader.cancel()
            with taker.scope:
                await trio.lowlevel.wait_readable(self._socket)
            # Nothing to interrupt from here on (cancelling a scope is not
            # free): what is read is dispatched below without a pause.
            self._taker = None
            if taker.scope.cancelled_caught or signal.is_set():
                return
            await self._read_and_dispatch()
        except trio.ClosedResourceError:
            return  # the connection ended
        finally:
            signal.reading = None
            self._taker = None
            self._lot.unpark_all()

    def wake(self, signal: _Wakeable) -> None:
        """``signal`` was set: if the task that reads for itself waits for
        it, make it look again (no bytes may be coming for it, or they were
        read and dispatched by the reader already)."""
        taker = self._taker
        if taker is not None and taker.signal is signal:
            taker.scope.cancel()

    def interrupt(self) -> None:
        """The connection ended: wake a task that waits for the socket."""
        taker = self._taker
        if taker is not None:
            taker.scope.cancel()
