"""The trio layer of the fake broker: serves :class:`FakeBroker` over in-memory streams."""

from __future__ import annotations

import errno
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Final, Literal, TypeAlias

import trio
import trio.testing

from ._fake_broker import FakeBroker
from ._fake_connection import BrokerConnection
from ._fake_model import DEFAULT_CHANNEL_MAX, DEFAULT_FRAME_MAX, DEFAULT_HEARTBEAT

#: How much the server reads from a client stream at once.
_RECEIVE_SIZE: Final = 65_536

_ServerStream: TypeAlias = (
    trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]
    | trio.SocketStream
)

#: How clients reach a fake broker: in-memory streams, or the two ends of a
#: connected socket pair (the client then gets a :class:`trio.SocketStream`
#: and takes the code paths it takes on a TCP connection).
Transport: TypeAlias = Literal["memory", "socketpair"]


class _Served:
    """One served connection: the server end of its stream and its cancel scopes."""

    def __init__(
        self, stream: _ServerStream, conn: BrokerConnection, client: trio.abc.Stream
    ) -> None:
        self.stream = stream
        self.conn = conn
        #: The client's end of the stream (what :meth:`FakeBrokerServer.connect` returned).
        self.client = client
        self.scope = trio.CancelScope()  # the whole serve task: cancelled by sever
        self.io_scope = trio.CancelScope()  # reading and writing: cancelled by blackhole
        self.blackholed = False
        #: When it was blackholed (it has been silent since).
        self.blackholed_at = math.inf
        #: Seconds a blackholed connection lives on (None: until severed).
        self.broker_timeout: float | None = None
        #: Its deadline is the broker's timeout of a blackholed connection.
        self.timeout_scope = trio.CancelScope()

    def time_out_blackholed(self, broker_timeout: float | None) -> None:
        """Drop it ``broker_timeout`` seconds after it was first blackholed."""
        self.broker_timeout = broker_timeout
        self.timeout_scope.deadline = (
            math.inf if broker_timeout is None else self.blackholed_at + broker_timeout
        )


class FakeBrokerServer(FakeBroker):
    """A :class:`FakeBroker` served to clients over in-memory trio streams.

    Make one with :func:`open_fake_broker`, which owns the nursery that runs
    one task per connection.  Everything :class:`FakeBroker` offers works here
    too, and frames it queues (deliveries, Connection.Blocked, a forced
    Connection.Close, ...) are sent without further ado.

    While a connection is open and a heartbeat was negotiated, the server
    sends a heartbeat frame whenever it has sent nothing for half the
    heartbeat interval, as RabbitMQ does.  It never closes a connection for
    missed client heartbeats.

    Attributes:
        refuse_connections: while true, :meth:`connect` raises
            ``ConnectionRefusedError`` (an :class:`OSError`), as a broker that is down.
        connection_count: the number of connections accepted by
            :meth:`connect` since the broker started (refused ones excluded).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        users: dict[str, str] | None = None,
        vhosts: Iterable[str] = ("/",),
        frame_max: int = DEFAULT_FRAME_MAX,
        channel_max: int = DEFAULT_CHANNEL_MAX,
        heartbeat: int = DEFAULT_HEARTBEAT,
        transport: Transport = "memory",
    ) -> None:
        if transport not in ("memory", "socketpair"):
            raise ValueError(f"transport must be 'memory' or 'socketpair', not {transport!r}")
        self.transport: Transport = transport
        super().__init__(
            users=users,
            vhosts=vhosts,
            frame_max=frame_max,
            channel_max=channel_max,
            heartbeat=heartbeat,
        )
        self._nursery = nursery
        self._served: list[_Served] = []
        self._output = trio.Event()
        self._stopped = False
        self.refuse_connections = False
        self.connection_count = 0

    async def connect(self) -> trio.abc.Stream:
        """Open a connection to the broker: the client end of an in-memory
        stream pair (or of a socket pair, see :attr:`transport`), the server
        end being served in the broker's nursery.

        This is a zero-argument async callable returning a stream, so it can
        be passed as a ``stream_factory``.

        Raises:
            ConnectionRefusedError: :attr:`refuse_connections` is set, or the
                broker has been shut down.
        """
        await trio.lowlevel.checkpoint()
        if self.refuse_connections or self._stopped:
            why = "it is shut down" if self._stopped else "refuse_connections is set"
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"Connection refused (fake broker: {why})"
            )
        client: trio.abc.Stream
        server: _ServerStream
        if self.transport == "socketpair":
            client_socket, server_socket = trio.socket.socketpair()
            client, server = trio.SocketStream(client_socket), trio.SocketStream(server_socket)
        else:
            client, server = trio.testing.memory_stream_pair()
        served = _Served(server, self.new_connection(), client)
        self._served.append(served)
        self.connection_count += 1
        self._nursery.start_soon(self._serve, served)
        return client

    def sever_all(self) -> None:
        """Abruptly close the server end of every current connection, as a
        crashed broker or a reset TCP connection would: the client reads EOF
        (after any bytes already in flight) and its writes raise
        :class:`trio.BrokenResourceError`.  Unacked messages are requeued at once."""
        for served in list(self._served):
            self._drop(served)
            served.scope.cancel()

    def sever(self, stream: trio.abc.Stream) -> bool:
        """Abruptly close the one connection whose client end is ``stream`` (as
        :meth:`connect` returned it), as :meth:`sever_all` does for every
        connection: a crashed client process, say.  False if it is not a
        current connection."""
        for served in self._served:
            if served.client is stream:
                self._drop(served)
                served.scope.cancel()
                return True
        return False

    def blackhole_all(self, broker_timeout: float | None = None) -> None:
        """Stop reading from and writing to every current connection, but keep
        them open: a half-open connection, as after a network partition.  Only
        the client's heartbeat timeout (or :meth:`sever_all`) can end it; the
        broker keeps the connections, and their unacked messages, until then,
        or, with ``broker_timeout``, for that many seconds (a real broker's own
        heartbeat check, two intervals) before it drops them and requeues.

        A connection blackholed already stays so; its ``broker_timeout``
        becomes the new one, counted from when it was first blackholed (it
        has been silent since, and a broker's heartbeat check counts from
        the last byte it got)."""
        for served in self._served:
            if not served.blackholed:
                served.blackholed = True
                served.blackholed_at = trio.current_time()
            served.time_out_blackholed(broker_timeout)
            served.io_scope.cancel()

    def wakeup(self) -> None:
        """Internal: bytes were queued on some connection: flush them."""
        self._output.set()
        self._output = trio.Event()

    def _drop(self, served: _Served) -> None:
        """Forget a connection: the broker treats it as lost and the stream is closed."""
        if served in self._served:
            self._served.remove(served)
        served.conn.receive_data(b"")
        stream = served.stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()  # the client reads what was sent, then EOF
            return
        stream.receive_stream.close()
        try:
            stream.send_stream.close()  # flushes to the client: EOF
        except trio.BrokenResourceError:
            pass  # the client closed its end first

    def _stop(self) -> None:
        self._stopped = True
        self.sever_all()

    async def _serve(self, served: _Served) -> None:
        with served.scope:
            try:
                with served.io_scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._read_loop, served)
                        nursery.start_soon(self._write_loop, served, nursery.cancel_scope)
                if served.blackholed:
                    # Until sever_all(), the broker stops, or it times the connection out.
                    with served.timeout_scope:
                        await trio.sleep_forever()
            finally:
                self._drop(served)

    async def _read_loop(self, served: _Served) -> None:
        while not served.conn.closed:
            try:
                data = await served.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = bytearray()
            served.conn.receive_data(bytes(data))  # b"": EOF, the connection is lost
        self.wakeup()  # let the writer see that the connection is closed

    async def _write_loop(self, served: _Served, done: trio.CancelScope) -> None:
        """Send whatever the connection queues; end the connection once it is
        closed and flushed.  Heartbeats go out after half an interval of silence."""
        conn = served.conn
        last_sent = trio.current_time()
        while True:
            output = self._output
            data = conn.data_to_send()
            if data:
                try:
                    await served.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.receive_data(b"")
                    break
                last_sent = trio.current_time()
                continue
            if conn.closed:
                break
            deadline = last_sent + conn.heartbeat / 2 if conn.heartbeat else math.inf
            if trio.current_time() >= deadline:
                conn.send_heartbeat()  # a no-op unless the connection is open
                last_sent = trio.current_time()
                continue
            with trio.move_on_at(deadline):
                await output.wait()
        done.cancel()


@asynccontextmanager
async def open_fake_broker(
    *,
    users: dict[str, str] | None = None,
    vhosts: Iterable[str] = ("/",),
    frame_max: int = DEFAULT_FRAME_MAX,
    channel_max: int = DEFAULT_CHANNEL_MAX,
    heartbeat: int = DEFAULT_HEARTBEAT,
    transport: Transport = "memory",
) -> AsyncIterator[FakeBrokerServer]:
    """Run a fake broker for the duration of the ``async with`` block::

        async with open_fake_broker() as broker:
            stream = await broker.connect()

    The arguments are those of :class:`FakeBroker`, and ``transport``:
    ``"memory"`` (in-memory streams) or ``"socketpair"`` (a connected pair of
    sockets, so that the client sees a :class:`trio.SocketStream` as on TCP;
    not for tests that use :class:`trio.testing.MockClock`'s autojump, which
    cannot see bytes in flight in a socket).  On exit every connection
    still open is severed (the clients see EOF) and
    :meth:`~FakeBrokerServer.connect` refuses new ones.
    """
    async with trio.open_nursery() as nursery:
        broker = FakeBrokerServer(
            nursery,
            users=users,
            vhosts=vhosts,
            frame_max=frame_max,
            channel_max=channel_max,
            heartbeat=heartbeat,
            transport=transport,
        )
        try:
            yield broker
        finally:
            broker._stop()
