"""One live AMQP connection on a trio stream.

:func:`open_connection` owns a nursery with three tasks:

* the **reader** receives bytes in large chunks, feeds the sans-IO machine
  and dispatches its events to channels; on a TCP socket a task about to
  wait for the broker takes the reading over while the reader is idle, so
  that its answer reaches it without a hop through the reader (see
  :mod:`._reading`; every wait for the broker goes through
  :meth:`Connection.wait_for`);
* the **writer** sends everything the machine has queued, one ``send_all``
  per batch, so many small frames cost one system call (it is the main path
  that writes; the reader only writes the final ``Close``/``CloseOk`` under
  the same lock);
* the **heartbeat** task sends heartbeats when we have been quiet and
  declares the connection lost when the broker has been silent for two
  intervals (a half-open TCP connection).

A lost connection is not retried here; that is the job of
:func:`trio_lavin.open_client`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import trio

from .._exceptions import (
    AMQPConnectionError,
    ConnectionClosed,
    ConnectionClosedByBroker,
    ConnectionLost,
)
from .._io._transport import StreamFactory, open_stream
from .._params import Parameters, parse_url
from .._sansio import _events as ev
from .._sansio._channel_state import ChannelState
from .._sansio._connection import (
    DEFAULT_CHANNEL_MAX,
    DEFAULT_FRAME_MAX,
    AMQPConnection,
    default_client_properties,
)
from .._sansio._connection_state import ConnectionState
from .._sansio._content import DEFAULT_MAX_BODY_SIZE
from .._sansio._errors import RemoteProtocolError
from .._sansio._heartbeat import HeartbeatTimer
from .._util import unwrap_single_exception
from ._channel import Channel
from ._consumer import Consumer
from ._framelog import frame_log_for
from ._reading import Notice, Reading, Signal
from ._sending import Sending

logger = logging.getLogger("trio_lavin.connection")

#: Bytes asked of the transport per read: large reads mean few system calls
#: and few parser passes when messages stream in.  The reader parses each read
#: before the next, so the receive buffer never holds more than this plus one
#: incomplete frame (< frame_max).
RECEIVE_SIZE: Final = 256 * 1024

#: Tested by every publish: an Enum member read off its class costs about
#: 57 ns more than a global on Python 3.11 (see ``_sansio/_connection.py``).
_OPEN: Final = ConnectionState.OPEN

#: Default heartbeat we ask for (the broker's lower value wins): LavinMQ
#: proposes 300 s, far too long to notice a dead peer.
DEFAULT_HEARTBEAT: Final = 30

#: Time allowed for the TCP/TLS connect plus the AMQP handshake.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0

#: How long closing waits for the broker's CloseOk.
CLOSE_TIMEOUT: Final = 5.0


class Connection:
    """A live AMQP connection.  Made by :func:`open_connection`.

    Use :meth:`channel` to open channels.  When the connection ends, every
    pending call and every channel raises the reason: :class:`ConnectionLost`
    (the network or the broker ended it; ``reply_code`` is set when the broker
    sent ``Connection.Close``, e.g. 320 for an operator's
    ``rabbitmqctl close_connection``) or :class:`ConnectionClosed` (you closed
    it).
    """

    def __init__(self, stream: trio.abc.Stream, amqp: AMQPConnection, params: Parameters) -> None:
        self._stream = stream
        self._amqp = amqp
        self.params = params
        self._channels: dict[int, Channel] = {}
        self._error: AMQPConnectionError | None = None
        self._closed = trio.Event()
        #: Set when the connection ended or one of its tasks stopped.
        self._stopped = trio.Event()
        #: The socket under a plain TCP stream, for writes that need no wait.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._released_lot = trio.lowlevel.ParkingLot()
        self._unblocked = trio.Event()
        self._unblocked.set()
        self._blocked_reason: str | None = None
        self._blocked_listeners: list[Callable[[], None]] = []
        #: The reader waits for room in a consumer's buffer.
        self._reader_paused = False
        #: Who reads a TCP socket: the reader, or a task waiting for its
        #: answer (see :mod:`._reading`); None for other streams.
        self._reading = (
            None
            if self._socket is None
            else Reading(self._socket, self._read_and_dispatch, self._can_take)
        )
        #: Tasks in wait_for() when there is no _reading to count them.
        self._waiting = 0
        #: Consumers given deliveries beyond their buffer: no reading until
        #: they have room.
        self._overfull: set[Consumer] = set()
        now = trio.current_time()
        self._heartbeat = HeartbeatTimer(0, now, now)
        self._tasks: trio.Nursery | None = None
        self._running: set[str] = set()
        #: True when the health poll (not the event path) found it dead.
        self.failed_by_poll = False
        self.bytes_received = 0
        #: DEBUG frame logging (None unless ``trio_lavin.frames`` is at DEBUG).
        self._frame_log = frame_log_for(params.endpoint)
        #: The sending side, shared with channels and producers: the writer,
        #: the flush of a task about to wait, the send budget.
        self.sending = Sending(
            stream, amqp, params.endpoint, self._frame_log, self._data_sent, self._write_failed
        )

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Connection {self.params.endpoint} {state}>"

    # -- public state ----------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """True until the connection starts closing or is lost."""
        return self._error is None and self._amqp.state is _OPEN

    @property
    def error(self) -> AMQPConnectionError | None:
        """Why the connection ended, or None while it is open."""
        return self._error

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._amqp.server_properties

    @property
    def frame_max(self) -> int:
        return self._amqp.frame_max

    @property
    def channel_max(self) -> int:
        return self._amqp.channel_max

    @property
    def heartbeat(self) -> int:
        return self._amqp.heartbeat

    @property
    def blocked(self) -> bool:
        """True while the broker refuses publishes (``connection.blocked``)."""
        return self._amqp.blocked

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the broker so far."""
        return self.sending.bytes_sent

    @property
    def last_received(self) -> float:
        """``trio.current_time()`` when bytes last arrived from the broker."""
        return self._heartbeat.last_received

    @property
    def blocked_reason(self) -> str | None:
        """What the broker's ``connection.blocked`` said, while blocked."""
        return self._blocked_reason if self._amqp.blocked else None

    def on_blocked_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the broker blocks or unblocks publishing
        on this connection, and when the connection ends while blocked."""
        self._blocked_listeners.append(callback)

    def _blocked_changed(self) -> None:
        for callback in self._blocked_listeners:
            callback()

    async def wait_unblocked(self) -> None:
        """Return once the broker is not blocking publishes."""
        await self._unblocked.wait()

    async def wait_closed(self) -> AMQPConnectionError:
        """Wait until the connection has ended; returns why."""
        await self._closed.wait()
        assert self._error is not None
        return self._error

    def check_open(self) -> None:
        """Raise why the connection ended (:class:`ConnectionLost`,
        :class:`ConnectionClosed`), or :class:`ConnectionClosed` while it
        closes; return while it is open."""
        if self._error is not None:
            raise self._error
        if self._amqp.state is not _OPEN:
            raise ConnectionClosed(f"connection to {self.params.endpoint} is closing")

    # -- channels -----------------------------------------------------------------

    async def channel(self) -> Channel:
        """Open a new channel.

        Raises:
            ConnectionLost, ConnectionClosed: the connection ended.
            ChannelClosed: the broker refused the channel.
            LocalProtocolError: all ``channel_max`` channels are open (the
                connection stays up; close one first).
        """
        self.check_open()
        number = self._amqp.open_channel()
        channel = Channel(self, number, self._amqp)
        self._channels[number] = channel
        self.sending.kick()
        await channel.wait_opened()
        return channel

    async def wait_channel_released(self, number: int) -> None:
        """Wait until the broker confirmed a channel's close (or the
        connection ended)."""
        while self.is_open and self._amqp.channel_state(number) is ChannelState.CLOSING:
            await self._released_lot.park()

    # -- reading ------------------------------------------------------------------
    #
    # The reader task reads and dispatches; on a TCP socket a waiting task may
    # read in its place (:mod:`._reading` says who may read when).  A dispatch
    # never waits half-way (a delivery beyond a consumer's buffer is kept, and
    # the reader waits for room before it reads again), so dispatches never
    # interleave and frames are handled in the order they came, whichever
    # task read them.

    async def _reader(self) -> None:
        # Bytes that came with the handshake's last frame are dispatched first.
        while True:
            if not await self._dispatch():
                return
            if self._overfull:
                await self._wait_for_room()
                continue
            try:
                data = await self._receive()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._read_failed(exc)
                return
            if data is not None and not self._received(data):
                return

    async def _receive(self) -> bytes | bytearray | None:
        """The next bytes from the broker: b"" at EOF, None if there were
        none after all (a waiting task read them, or took the reading over).

        On a plain TCP socket: wait until it is readable, then read straight
        from it.  ``receive_some`` first tries a read that fails when the
        reader has just dispatched everything (the usual case when a caller
        waits for one reply), a wasted system call on the way to that reply.
        """
        reading = self._reading
        if reading is None:
            return await self._stream.receive_some(RECEIVE_SIZE)
        if not await reading.reader_wait():
            return None
        return self._read_now()

    def _read_now(self) -> bytes | None:
        """Read what the TCP socket holds; None if nothing.

        Raises:
            trio.ClosedResourceError: the socket was closed.
            OSError: reading failed (e.g. reset by the broker).
        """
        socket = self._socket
        # fileno() is -1 once the socket is closed: never read a reused number.
        fd = -1 if socket is None else socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the socket was closed")
        try:
            return os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            return None

    def _received(self, data: bytes | bytearray) -> bool:
        """Feed bytes just read to the machine; False at EOF (b""), and then
        the connection has failed."""
        if not data:
            self._fail(ConnectionLost(f"{self.params.endpoint} closed the connection (EOF)"))
            return False
        self.bytes_received += len(data)
        self._amqp.receive_data(data)
        if self._frame_log is not None:
            self._frame_log.received(data)
        return True

    def _read_failed(self, exc: Exception) -> None:
        self._fail(ConnectionLost(f"reading from {self.params.endpoint} failed: {exc}"))

    async def _dispatch(self) -> bool:
        """Handle every whole frame received so far; False when the
        connection ended.  It waits only when the connection ends (to send
        the final ``CloseOk``/``Close``), so one task's dispatch is never
        interleaved with another's."""
        amqp = self._amqp
        unparsed = amqp.buffered
        while True:
            try:
                event = amqp.next_event()
            except RemoteProtocolError as exc:
                logger.debug("protocol error from %s: %s", self.params.endpoint, exc)
                error = ConnectionLost(
                    f"protocol error from {self.params.endpoint}: {exc.reply_text}",
                    exc.reply_code,
                )
                error.__cause__ = exc
                # Fail first, so nothing races the final Close; then send it.
                self._fail(error)
                await self.sending.send_final()
                return False
            if event is None:
                break
            if type(event) is ev.DeliveryReceived:
                self._deliver(event)
            elif not self._handle(event):
                await self.sending.send_final()
                return False
        if amqp.buffered < unparsed:
            # A whole frame arrived: the broker is alive.  Bytes alone do
            # not count, or a broker trickling a frame forever would be.
            self._heartbeat.data_received(trio.current_time())
        if amqp.has_data_to_send:
            self.sending.kick()
        return True

    def _deliver(self, event: ev.DeliveryReceived) -> None:
        channel = self._channels.get(event.channel)
        if channel is not None:
            beyond = channel.deliver(event)
            if beyond is not None:
                # Beyond its buffer: no more reading until it has room.
                self._overfull.add(beyond)

    async def _wait_for_room(self) -> None:
        """Wait until every consumer given a delivery beyond its buffer has
        room again (or takes no more).  The broker's silence meanwhile is
        ours, so the heartbeat deadline is paused."""
        self._reader_paused = True
        try:
            while self._overfull:
                consumer = next(iter(self._overfull))
                await consumer.wait_for_room()
                self._overfull.discard(consumer)
        finally:
            self._reader_paused = False
            self._heartbeat.data_received(trio.current_time())

    async def wait_for(self, signal: Signal | Notice) -> None:
        """Wait until ``signal`` is set: the one way for a task to wait for
        the broker's answer (a reply, a confirm, a delivery).  On a TCP
        socket the task may read the answer itself (see :mod:`._reading`).

        Cancellation: a checkpoint; nothing is lost.
        """
        reading = self._reading
        if reading is not None:
            await reading.wait_for(signal)
            return
        if signal.is_set():
            await trio.lowlevel.checkpoint()
            return
        self._waiting += 1
        try:
            while not signal.is_set():
                await signal.wait()
        finally:
            self._waiting -= 1

    @property
    def waiting_tasks(self) -> int:
        """How many tasks wait in :meth:`wait_for` right now."""
        reading = self._reading
        return self._waiting if reading is None else reading.waiting

    def _can_take(self) -> bool:
        """May a waiting task read now (see :class:`._reading.Reading`)?"""
        return not self._overfull and self._error is None

    async def _read_and_dispatch(self) -> None:
        """For a task that took the reading over: read what the socket
        holds and dispatch it.  A bug in the dispatch ends the connection,
        as one in the reader does, and the application goes on."""
        try:
            data = self._read_now()
        except (trio.ClosedResourceError, OSError) as exc:
            self._read_failed(exc)
            return
        if data is None or not self._received(data):
            return
        try:
            await self._dispatch()
        except Exception as exc:
            logger.exception("internal error dispatching frames on %s", self)
            self._fail(ConnectionLost(f"internal error in the reader: {exc!r}"))

    def _handle(self, event: ev.Event) -> bool:
        """Dispatch one event; False when the connection ended (then a final
        ``CloseOk`` may be queued).  A channel's event goes to its channel,
        which applies it; the connection's own go through
        ``_CONNECTION_HANDLERS``."""
        if isinstance(event, ev.ChannelEvent):
            channel = self._channels.get(event.channel)
            if channel is not None and channel.handle_event(event):
                # Gone: its number is free (or will be once the broker's
                # CloseOk comes, for a channel closed by the broker).
                self._channels.pop(event.channel, None)
                self._released_lot.unpark_all()
            return True
        handler = self._CONNECTION_HANDLERS.get(type(event))
        return True if handler is None else handler(self, event)

    def _on_blocked(self, event: ev.ConnectionBlocked) -> bool:
        logger.warning("broker blocked publishing on %s: %s", self.params.endpoint, event.reason)
        self._blocked_reason = event.reason
        self._unblocked = trio.Event()
        self._blocked_changed()
        return True

    def _on_unblocked(self, event: ev.ConnectionUnblocked) -> bool:
        logger.info("broker unblocked publishing on %s", self.params.endpoint)
        self._unblocked.set()
        self._blocked_changed()
        return True

    def _on_closed_by_broker(self, event: ev.BrokerClosedConnection) -> bool:
        logger.debug(
            "broker closed the connection %s: %d %s",
            self.params.endpoint,
            event.reply_code,
            event.reply_text,
        )
        # Fail first (channels then refuse further use at once); the CloseOk
        # the machine queued is sent next.
        self._fail(
            ConnectionClosedByBroker(
                event.reply_text, event.reply_code, event.class_id, event.method_id
            )
        )
        return False

    def _on_close_ok(self, event: ev.ConnectionCloseOk) -> bool:
        self._fail(ConnectionClosed(f"connection to {self.params.endpoint} was closed"))
        return False

    #: What the connection does with each of its own events (a channel's go
    #: to its channel); True: it goes on, False: it ended.
    _CONNECTION_HANDLERS: Final[dict[type[ev.Event], Callable[[Connection, Any], bool]]] = {
        ev.ConnectionBlocked: _on_blocked,
        ev.ConnectionUnblocked: _on_unblocked,
        ev.BrokerClosedConnection: _on_closed_by_broker,
        ev.ConnectionCloseOk: _on_close_ok,
    }

    # -- heartbeats -----------------------------------------------------------------

    async def _heartbeats(self) -> None:
        heartbeat = self._heartbeat
        amqp = self._amqp
        while True:
            now = trio.current_time()
            if heartbeat.timed_out(now) and not self._reader_paused:
                self._fail(
                    ConnectionLost(
                        f"no data from {self.params.endpoint} for "
                        f"{now - heartbeat.last_received:.1f} s (heartbeat timeout, "
                        f"interval {heartbeat.interval} s)"
                    )
                )
                return
            if heartbeat.should_send(now) and amqp.state is ConnectionState.OPEN:
                amqp.send_heartbeat()
                heartbeat.data_sent(now)
                self.sending.kick()
            # Heartbeats are only sent while OPEN: closing, the send deadline
            # stays in the past and must not be slept until (a busy loop).
            send_deadline = (
                heartbeat.send_deadline() if amqp.state is ConnectionState.OPEN else math.inf
            )
            if self._reader_paused:
                # The broker's silence is our doing while the reader waits for
                # a slow consumer: check again soon instead of timing out.
                deadline = min(send_deadline, now + 1.0)
            else:
                deadline = min(send_deadline, heartbeat.receive_deadline())
            await trio.sleep_until(deadline)

    # -- life cycle -------------------------------------------------------------------

    async def handshake(self) -> None:
        """Internal: open the connection on its stream (``open_connection``)."""
        amqp = self._amqp
        amqp.initiate()
        while True:
            try:
                if out := amqp.data_to_send():
                    await self.sending.send(out, report=False)
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(
                    f"connection to {self.params.endpoint} failed during the handshake: {exc}"
                ) from exc
            if not data:
                raise ConnectionLost(
                    f"{self.params.endpoint} closed the connection during the handshake"
                )
            self.bytes_received += len(data)
            amqp.receive_data(data)
            if self._frame_log is not None:
                self._frame_log.received(data)
            try:
                while (event := amqp.next_event()) is not None:
                    if isinstance(event, ev.ConnectionOpened):
                        self._heartbeat = HeartbeatTimer(
                            event.heartbeat, trio.current_time(), trio.current_time()
                        )
                        return
                    if isinstance(event, ev.BrokerClosedConnection):
                        # The broker may hang up right after its Close (RabbitMQ
                        # does on bad credentials): the CloseOk is best effort.
                        await self.sending.send_final()
                        raise ConnectionClosedByBroker(
                            event.reply_text, event.reply_code, event.class_id, event.method_id
                        )
            except RemoteProtocolError as exc:
                await self.sending.send_final()
                raise ConnectionLost(
                    f"protocol error from {self.params.endpoint} during the handshake: "
                    f"{exc.reply_text}",
                    exc.reply_code,
                ) from exc

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Internal: run the connection's tasks (``open_connection``)."""
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            nursery.start_soon(self._guard, "reader", self._reader, name=f"{self!r} reader")
            nursery.start_soon(self._guard, "writer", self.sending.writer, name=f"{self!r} writer")
            if self._heartbeat.interval:
                nursery.start_soon(
                    self._guard, "heartbeat", self._heartbeats, name=f"{self!r} heartbeats"
                )
            task_status.started()

    async def _guard(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the connection's tasks: a bug in it ends the
        connection (reported as lost) instead of crashing the application."""
        self._running.add(name)
        try:
            await task()
        except Exception as exc:
            logger.exception("internal error in the %s task of %s", name, self)
            self._fail(ConnectionLost(f"internal error in the {name} task: {exc!r}"))
        finally:
            self._running.discard(name)
            self._stopped.set()

    def health_problem(self, now: float, write_timeout: float) -> str | None:
        """What is wrong with a connection that claims to be open, as seen
        from outside (the health poll), or None when nothing is."""
        if self._error is not None:
            return None
        missing = {"reader", "writer"} - self._running
        if missing:
            return f"the {', '.join(sorted(missing))} task of the connection is not running"
        heartbeat = self._heartbeat
        if heartbeat.timed_out(now) and not self._reader_paused:
            return (
                f"no data from {self.params.endpoint} for {now - heartbeat.last_received:.1f} s "
                f"(heartbeat timeout, interval {heartbeat.interval} s)"
            )
        started = self.sending.write_started
        if started is not None and now - started > write_timeout:
            return (
                f"a write to {self.params.endpoint} has not finished for "
                f"{now - started:.1f} s without progress (the broker stopped reading)"
            )
        return None

    def fail_by_poll(self, problem: str) -> None:
        """Internal: the health poll found the connection dead (``problem``
        says why): end it as lost."""
        self._fail(ConnectionLost(problem), by_poll=True)

    def _data_sent(self, now: float) -> None:
        self._heartbeat.data_sent(now)

    def _write_failed(self, reason: str) -> None:
        self._fail(ConnectionLost(reason))

    def _fail(self, error: AMQPConnectionError, *, by_poll: bool = False) -> None:
        """The connection ended: record why, fail every channel and waiter,
        and stop the tasks."""
        if self._error is not None:
            return
        self._error = error
        self.failed_by_poll = by_poll
        if not isinstance(error, ConnectionClosed):
            # str(): a record that a handler keeps must not keep the error, and
            # through its traceback this connection, alive.
            logger.debug("connection %s ended: %s", self.params.endpoint, str(error))
        if self._reading is not None:
            self._reading.interrupt()
        channels = list(self._channels.values())
        # A Connection.Close names a command, not a channel: the call that sent
        # it gets the refusal only when no other call waits for the same kind
        # of reply (else each just sees the connection end).
        refused = None
        if isinstance(error, ConnectionClosedByBroker):
            named = [channel for channel in channels if channel.waits_first_for(error)]
            refused = named[0] if len(named) == 1 else None
        for channel in channels:
            channel.end(error, refused=channel is refused)
        self._channels.clear()
        self._closed.set()
        self._stopped.set()
        if not self._unblocked.is_set():
            self._unblocked.set()
            self._blocked_changed()
        self.sending.stop()
        self._released_lot.unpark_all()
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Close the connection gracefully (``Connection.Close``, waiting up
        to 5 s for the broker's ``CloseOk``); idempotent.  Channels and
        pending calls then raise :class:`ConnectionClosed`.  Unacked
        deliveries go back to their queues; messages published without
        confirms may be lost if still in flight."""
        if self._error is None and self._amqp.state is ConnectionState.OPEN:
            # A reader waiting for room in a full consumer buffer would never
            # read the CloseOk: consumers take no more deliveries from here on.
            for channel in self._channels.values():
                channel.discard_deliveries()
            self._amqp.close()
            self.sending.kick()
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True
                # Wait for the CloseOk, unless a task of ours has stopped (when
                # the block around the connection was cancelled): then nobody
                # would read it, and the writer may not even send the Close.
                if self._running >= {"reader", "writer"}:
                    await self._stopped.wait()
                await self.sending.send_final()
        self._fail(ConnectionClosed(f"connection to {self.params.endpoint} was closed"))


def _connection_options(
    params: Parameters,
    heartbeat: int | None,
    frame_max: int | None,
    channel_max: int | None,
    connection_name: str | None,
    max_body_size: int,
) -> AMQPConnection:
    def pick(*values: int | None, default: int) -> int:
        for value in values:
            if value is not None:
                return value
        return default

    return AMQPConnection(
        username=params.username,
        password=params.password,
        virtual_host=params.virtual_host,
        heartbeat=pick(params.heartbeat, heartbeat, default=DEFAULT_HEARTBEAT),
        frame_max=pick(params.frame_max, frame_max, default=DEFAULT_FRAME_MAX),
        channel_max=pick(params.channel_max, channel_max, default=DEFAULT_CHANNEL_MAX),
        client_properties=default_client_properties(params.connection_name or connection_name),
        max_body_size=max_body_size,
    )


@asynccontextmanager
async def open_connection(
    url: str | Parameters = "amqp://guest:guest@localhost/",
    *,
    heartbeat: int | None = None,
    frame_max: int | None = None,
    channel_max: int | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    connection_name: str | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    stream_factory: StreamFactory | None = None,
) -> AsyncIterator[Connection]:
    """Open one AMQP connection for the duration of an ``async with`` block.

    This is the low-level API: if the connection is lost, calls raise
    :class:`ConnectionLost` and nothing reconnects.  For a connection that
    recovers by itself, use :func:`trio_lavin.open_client`.

    Tuning values in the URL's query win over the keyword arguments; the
    broker's lower limits win over both.  ``heartbeat`` defaults to 30 s.
    ``stream_factory`` replaces the TCP/TLS connect (tests use it to connect
    to a :class:`trio_lavin.testing.FakeBroker`).

    ``max_body_size`` (default 128 MiB) is the largest message body accepted
    from the broker: a larger message closes its channel with 311
    CONTENT_TOO_LARGE (calls on that channel and its consumers raise
    :class:`ChannelClosed` with that code), its body is skipped without being
    buffered, the broker requeues it, and the connection stays up.

    Leaving the block closes the connection gracefully (bounded by 5 s) and
    stops its tasks.

    Raises:
        ConnectionLost: the broker could not be reached or broke the
            handshake; :class:`ConnectionClosedByBroker` (a subclass) when the
            broker refused us, e.g. 403 ACCESS_REFUSED (bad credentials) or
            530 NOT_ALLOWED (unknown vhost).
        TimeoutError: connecting and the handshake took longer than
            ``connect_timeout`` seconds.
        ValueError: a bad URL (the message never contains the password).
    """
    params = parse_url(url) if isinstance(url, str) else url
    if params.connection_timeout is not None:
        connect_timeout = params.connection_timeout
    if not connect_timeout > 0 or math.isnan(connect_timeout):
        raise ValueError(f"connect_timeout must be > 0 seconds, not {connect_timeout!r}")
    amqp = _connection_options(
        params, heartbeat, frame_max, channel_max, connection_name, max_body_size
    )
    with trio.move_on_after(connect_timeout) as timeout_scope:
        stream = await (stream_factory() if stream_factory is not None else open_stream(params))
        connection = Connection(stream, amqp, params)
        try:
            await connection.handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    if timeout_scope.cancelled_caught:
        # The stream, if one was opened, was closed by the except clause above.
        raise TimeoutError(f"connecting to {params.endpoint} took longer than {connect_timeout} s")
    logger.debug(
        "connected to %s (heartbeat %d s, frame_max %d, channel_max %d)",
        params.endpoint,
        amqp.heartbeat,
        amqp.frame_max,
        amqp.channel_max,
    )
    try:
        with unwrap_single_exception():
            async with trio.open_nursery() as nursery:
                await nursery.start(connection.run)
                try:
                    yield connection
                finally:
                    await connection.aclose()
                    nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
