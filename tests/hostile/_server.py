"""A misbehaving AMQP broker for tests: a loopback TCP server run from a script.

Each accepted connection takes the next :data:`Behaviour` of the script and is
served by it; once the script is used up, connections are forwarded to a
well-behaved :class:`~trio_lavin.testing.FakeBroker` (or to a real broker,
``upstream``), so a client that keeps retrying eventually connects and works
("recovers").

Behaviours get a :class:`Session`: the raw TCP stream plus helpers built on the
sans-IO broker side (:class:`~trio_lavin.testing.BrokerConnection`) to do a
correct handshake before misbehaving, and :meth:`Session.finish` to record what
the client sent afterwards (its ``Connection.Close`` and whether it hung up).

Everything listens on 127.0.0.1 and every wait is bounded in time.
"""

from __future__ import annotations

import functools
import struct
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Final, TypeAlias

import trio
from pamqp import base, body, commands, header
from pamqp import frame as pamqp_frame

from trio_lavin._sansio._framing import PROTOCOL_HEADER, FrameReader
from trio_lavin.testing import (
    BrokerConnection,
    ConnectionState,
    FakeBroker,
    FakeBrokerServer,
    open_fake_broker,
)

#: How long a session waits for the client at any step before it gives up.
STEP_TIMEOUT: Final = 10.0
_RECEIVE_SIZE: Final = 65_536


def method_frame(channel: int, method: base.Frame) -> bytes:
    return bytes(pamqp_frame.marshal(method, channel))


def content_frames(channel: int, method: base.Frame, payload: bytes) -> bytes:
    return b"".join(
        [
            method_frame(channel, method),
            bytes(pamqp_frame.marshal(header.ContentHeader(0, len(payload)), channel)),
            bytes(pamqp_frame.marshal(body.ContentBody(payload), channel)) if payload else b"",
        ]
    )


def raw_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


class Session:
    """One connection accepted by the :class:`HostileBroker`."""

    def __init__(self, stream: trio.SocketStream, number: int) -> None:
        self.stream = stream
        self.number = number
        #: The sans-IO broker side used by :meth:`handshake` (None before).
        self.conn: BrokerConnection | None = None
        #: The ``Connection.Close`` the client sent after the misbehaviour, if any.
        self.client_close: commands.Connection.Close | None = None
        #: Every frame the client sent after the handshake, by name.
        self.client_frames: list[str] = []
        #: (channel, reply code) of every ``Channel.Close`` the client sent.
        self.client_channel_closes: list[tuple[int, int]] = []
        #: True once the client closed its end (EOF or reset).
        self.hung_up = False
        self._pending = b""

    async def _receive(self) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        with trio.fail_after(STEP_TIMEOUT):
            try:
                return bytes(await self.stream.receive_some(_RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""

    async def receive_protocol_header(self) -> bytes:
        """The client's first 8 bytes."""
        data = b""
        while len(data) < len(PROTOCOL_HEADER):
            chunk = await self._receive()
            if not chunk:
                raise AssertionError(f"client hung up after {data!r}")
            data += chunk
        self._pending = data[len(PROTOCOL_HEADER) :]
        return data[: len(PROTOCOL_HEADER)]

    async def send(self, data: bytes) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.hung_up = True

    async def trickle(self, data: bytes, interval: float) -> None:
        """Send ``data`` one byte per ``interval`` seconds (slowloris), until
        it is all sent or the client hangs up."""
        for index in range(len(data)):
            await self.send(data[index : index + 1])
            if self.hung_up:
                return
            await trio.sleep(interval)

    async def handshake(
        self,
        broker: FakeBroker,
        *,
        until: Callable[[BrokerConnection], bool] | None = None,
        then: bytes = b"",
    ) -> BrokerConnection:
        """Play a correct broker, using ``broker``'s sans-IO side, until the
        connection is open and ``until(conn)`` holds (e.g. a channel is open);
        ``then`` is sent in the same write as the broker's last reply."""
        conn = self.conn = broker.new_connection()
        while True:
            data = await self._receive()
            conn.receive_data(data)
            out = conn.data_to_send()
            done = conn.state is ConnectionState.OPEN and (until is None or until(conn))
            if done:
                out += then
            if out:
                await self.send(out)
            if done:
                return conn
            if not data or conn.closed:
                raise AssertionError(f"handshake ended in state {conn.state}")

    def _record(self, reader: FrameReader, data: bytes) -> None:
        reader.receive_data(data)
        while (frame := reader.next_frame()) is not None:
            value = frame[1]
            self.client_frames.append(value.name)
            if isinstance(value, commands.Connection.Close):
                self.client_close = value
            elif isinstance(value, commands.Channel.Close):
                self.client_channel_closes.append((frame[0], value.reply_code or 0))

    async def finish(self) -> None:
        """Read what the client sends until it hangs up (bounded in time),
        recording its frames and its ``Connection.Close``."""
        reader = FrameReader(0)
        with trio.move_on_after(STEP_TIMEOUT):
            while data := await self._receive():
                self._record(reader, data)
            self.hung_up = True

    async def play_on(self) -> None:
        """After the handshake: go on playing a correct broker until the
        client hangs up, recording its frames and its ``Connection.Close``."""
        assert self.conn is not None
        reader = FrameReader(0)
        with trio.move_on_after(STEP_TIMEOUT):
            while data := await self._receive():
                self._record(reader, data)
                self.conn.receive_data(data)
                if out := self.conn.data_to_send():
                    await self.send(out)
            self.hung_up = True

    async def sleep_until_hung_up(self) -> None:
        """Say nothing; read and discard until the client gives up."""
        with trio.move_on_after(STEP_TIMEOUT):
            while await self._receive():
                pass
            self.hung_up = True


Behaviour: TypeAlias = Callable[[Session, FakeBroker], Awaitable[None]]


class HostileBroker:
    """See the module doc.  Made by :func:`open_hostile_broker`."""

    def __init__(
        self, fake: FakeBrokerServer, script: Sequence[Behaviour], upstream: str | None = None
    ) -> None:
        self.fake = fake
        #: ``host:port`` of a real broker to forward to instead of the fake one.
        self.upstream = upstream
        self.script: deque[Behaviour] = deque(script)
        #: The sessions that ran a behaviour, in order.
        self.sessions: list[Session] = []
        #: Connections forwarded to the well-behaved broker.
        self.forwarded = 0
        #: The broker whose sans-IO side the behaviours use for handshakes.
        self.scripted = FakeBroker(heartbeat=0)
        self.port = 0
        #: Connections being served right now.
        self.active = 0
        self._accepted = 0

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._accepted += 1
        self.active += 1
        try:
            if self.script:
                behaviour = self.script.popleft()
                session = Session(stream, self._accepted)
                self.sessions.append(session)
                await behaviour(session, self.scripted)
                if session.conn is not None:
                    session.conn.receive_data(b"")  # forget it on the broker side
            else:
                self.forwarded += 1
                if self.upstream is None:
                    server: trio.abc.Stream = await self.fake.connect()
                else:
                    host, _, port = self.upstream.rpartition(":")
                    server = await trio.open_tcp_stream(host, int(port))
                await _forward(stream, server)
        finally:
            self.active -= 1
            await trio.aclose_forcefully(stream)


async def _forward(client: trio.abc.Stream, server: trio.abc.Stream) -> None:
    async def pump(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
        try:
            while data := await source.receive_some(_RECEIVE_SIZE):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, server)
            nursery.start_soon(pump, server, client)
    finally:
        await trio.aclose_forcefully(server)


@asynccontextmanager
async def open_hostile_broker(
    script: Sequence[Behaviour], *, heartbeat: int = 0, upstream: str | None = None
) -> AsyncIterator[HostileBroker]:
    """Serve ``script`` on a free loopback port for the ``async with`` block;
    ``heartbeat`` is what the well-behaved fake broker proposes; with
    ``upstream`` (``host:port`` of a real broker on loopback) connections
    after the script go there instead."""
    async with open_fake_broker(heartbeat=heartbeat) as fake, trio.open_nursery() as nursery:
        broker = HostileBroker(fake, script, upstream)
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, broker._handle, 0, host="127.0.0.1")
        )
        broker.port = listeners[0].socket.getsockname()[1]
        try:
            yield broker
        finally:
            nursery.cancel_scope.cancel()
