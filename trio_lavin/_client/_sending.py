"""The sending side of one connection: the one routine that writes, the
writer task's wake-up, and the send budget that holds fast publishers back.

Everything the sans-IO machine queues is written by :meth:`Sending.send`,
whoever writes it: the writer task (:meth:`Sending.writer`), a task about to
wait for the broker's answer (:meth:`Sending.flush`: it saves a hop through
the writer), the final ``Close``/``CloseOk`` (:meth:`Sending.send_final`)
and the handshake.  It counts the bytes, logs the frames and tells the
heartbeat in one place.  Writes are serialized by one lock, so frames never
interleave.

The budget: publishers add what they queue (:meth:`Sending.spend`); the
writer takes everything queued at once and the budget is full again.  While
more than :data:`SEND_HIGH_WATER` bytes wait, publishers wait
(:meth:`Sending.wait_for_room`), which bounds the memory a fast publisher
can fill.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import trio

from .._sansio._connection import AMQPConnection
from ._framelog import FrameLog
from ._reading import Lot

#: Publishers wait while this many bytes are queued on a connection and not
#: yet taken by its writer.
SEND_HIGH_WATER: Final = 4 * 1024 * 1024

#: What a queued message costs besides its body (the frame headers and the
#: content header, roughly), so that empty bodies count too.
FRAME_OVERHEAD: Final = 64

#: How long flushing a final Close/CloseOk may take.
FLUSH_TIMEOUT: Final = 1.0
#: A write is sent in chunks of this many bytes; each one written counts as
#: progress for the health poll (see ``Config.write_timeout``).
PROGRESS_CHUNK: Final = 1024 * 1024


class Sending:
    """See the module doc.

    ``sent(now)`` is told after every write (the heartbeat's clock);
    ``failed(reason)`` when a write failed, and the connection is then lost.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        amqp: AMQPConnection,
        endpoint: str,
        frame_log: FrameLog | None,
        sent: Callable[[float], None],
        failed: Callable[[str], None],
    ) -> None:
        self._stream = stream
        #: The socket under a plain TCP stream, for writes that need no wait.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._amqp = amqp
        self._endpoint = endpoint
        self._frame_log = frame_log
        self._sent = sent
        self._failed = failed
        self._lock = trio.StrictFIFOLock()
        self._writer_lot = Lot()
        self._room_lot = trio.lowlevel.ParkingLot()
        #: Bytes queued since the writer last took everything.
        self.unsent = 0
        self.bytes_sent = 0
        #: When the write in progress started or last moved a chunk of
        #: :data:`PROGRESS_CHUNK` bytes (None: no write in progress): the
        #: health poll's measure of a hung write.
        self.write_started: float | None = None
        #: Set once the connection ended: nothing more is sent but the final frame.
        self.stopped = False
        #: What :meth:`defer` was given, in order.
        self._deferred: list[Callable[[], None]] = []

    # -- the budget --------------------------------------------------------------

    @property
    def full(self) -> bool:
        """Publishers must wait (more than :data:`SEND_HIGH_WATER` queued)."""
        return self.unsent > SEND_HIGH_WATER

    def spend(self, body_size: int, messages: int = 1) -> None:
        """``messages`` messages with bodies of ``body_size`` bytes in all
        were queued."""
        self.unsent += body_size + messages * FRAME_OVERHEAD

    async def wait_for_room(self, check_open: Callable[[], None]) -> None:
        """Wait while the budget is full; ``check_open`` raises when the
        connection ended.  A checkpoint only when cancelled, if there is room."""
        while self.full:
            check_open()
            await self._room_lot.park()
        await trio.lowlevel.checkpoint_if_cancelled()

    # -- deferred queueing -----------------------------------------------------------

    def defer(self, queue: Callable[[], None]) -> None:
        """Call ``queue()`` before the next write takes what is queued (the
        writer's, a task's :meth:`flush` before it waits for an answer, the
        final one), or when the connection ends (:meth:`stop`), whichever
        comes first; once, and at once if the connection already ended.  A
        producer's burst of messages is queued that way, by whichever task
        writes next: no task hop on the way to the wire.  ``queue`` must not
        raise."""
        if self.stopped:
            queue()
        else:
            self._deferred.append(queue)

    def _run_deferred(self) -> None:
        while self._deferred:
            deferred, self._deferred = self._deferred, []
            for queue in deferred:
                queue()

    def _take(self) -> bytes:
        """Everything the machine has queued, and room again for publishers."""
        if self._deferred:
            self._run_deferred()
        data = self._amqp.data_to_send()
        if data:
            self.unsent = 0
            if self._room_lot:
                self._room_lot.unpark_all()
        return data

    # -- writing -------------------------------------------------------------------

    @property
    def writes_directly(self) -> bool:
        """Writes usually go out without a wait (a plain TCP socket), so a
        task about to go on may send what it queued itself (:meth:`flush`)."""
        return self._socket is not None

    @property
    def writing(self) -> bool:
        """A task is writing (or waits to write) right now."""
        return self._lock.locked()

    def kick(self) -> None:
        """Wake the writer: the machine has data to send."""
        self._writer_lot.unpark_all()

    async def writer(self) -> None:
        """The writer task: send what is queued, one write per batch, until
        a write fails."""
        while True:
            data = self._take()
            if not data:
                await self._writer_lot.park()
                continue
            try:
                self._lock.acquire_nowait()
            except trio.WouldBlock:
                await self._lock.acquire()
            try:
                if not await self.send(data):
                    return
            finally:
                self._lock.release()

    async def flush(self) -> None:
        """For a task about to wait for the broker's answer: send what is
        queued from this task when no one else is writing (the answer cannot
        come before the request has left), else wake the writer.  Shielded,
        like every send of queued frames."""
        if self._deferred and not self.stopped:
            self._run_deferred()
        if self.stopped or not self._amqp.has_data_to_send:
            return
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            self.kick()  # another task is writing; the writer sends the rest next
            return
        try:
            await self.send(self._take(), shield=True)
        finally:
            self._lock.release()

    async def send_final(self) -> None:
        """Send what is queued (a final ``Close`` or ``CloseOk``), bounded in
        time, even if the caller is being cancelled; a failure is not
        reported (the connection is ending anyway)."""
        if self._deferred:
            self._run_deferred()
        data = self._amqp.data_to_send()
        if not data:
            return
        with trio.move_on_after(FLUSH_TIMEOUT) as scope:
            scope.shield = True
            async with self._lock:
                try:
                    await self.send(data, report=False)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return

    async def send(self, data: bytes, *, shield: bool = False, report: bool = True) -> bool:
        """Write ``data`` (the caller holds the lock, or no other task
        writes yet); False if that failed, and the connection was told it is
        lost (with ``report=False`` the error is raised instead:
        :class:`trio.BrokenResourceError`, :class:`trio.ClosedResourceError`
        or :class:`OSError`).

        On a plain TCP socket the bytes go straight to it when it takes
        them (``os.write``: no scheduler round trip, no checkpoint);
        ``send_all`` sends the rest, shielded from cancellation if ``shield``
        (a send cut short would leave half a frame on the wire).
        """
        self.write_started = trio.current_time()
        try:
            sent = self._send_directly(data)
            if sent < len(data):
                view = memoryview(data)
                with trio.CancelScope(shield=shield):
                    # By chunks: each one written is progress, so a long write
                    # over a slow link is not taken for a hung one.
                    while sent < len(data):
                        chunk = view[sent : sent + PROGRESS_CHUNK]
                        await self._stream.send_all(chunk)
                        sent += len(chunk)
                        self.write_started = trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if not report:
                raise
            self._failed(f"writing to {self._endpoint} failed: {exc}")
            return False
        finally:
            self.write_started = None
        self.bytes_sent += len(data)
        if self._frame_log is not None:
            self._frame_log.sent(data)
        self._sent(trio.current_time())
        return True

    def _send_directly(self, data: bytes) -> int:
        """Write as much of ``data`` as a plain TCP socket takes right now;
        the number of bytes written (0 for other streams).

        Raises:
            OSError: the socket failed (e.g. reset by the broker).
        """
        socket = self._socket
        # fileno() is -1 once the socket is closed: never write to a reused number.
        fd = -1 if socket is None else socket.fileno()
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0

    def stop(self) -> None:
        """The connection ended: release publishers waiting for room (they
        then find it closed), and send nothing more but a final frame; what
        was deferred runs now (and finds the connection ended)."""
        self.stopped = True
        self._room_lot.unpark_all()
        self._run_deferred()
