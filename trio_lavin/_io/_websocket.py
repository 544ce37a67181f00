"""AMQP over WebSocket: a :class:`trio.abc.Stream` made of binary WebSocket messages.

LavinMQ serves AMQP 0-9-1 over WebSocket on its HTTP port (15672, or 15671 with TLS) on any
path except ``/mqtt`` and ``/ws/mqtt``, with the subprotocol ``Sec-WebSocket-Protocol: amqp``.
The binary messages carry the raw AMQP byte stream; message boundaries mean nothing (LavinMQ,
websockify and proxies split and join them freely), so this module turns the messages back
into a plain byte stream and the AMQP layer above never knows.

How a URL maps (see :mod:`trio_lavin._params`)::

    ws://user:password@host:15672/vhost?heartbeat=10
      -> TCP to host:15672 (TLS with SNI for wss://)
      -> GET / HTTP/1.1, Host: host:15672, Upgrade: websocket, Sec-WebSocket-Protocol: amqp
      -> AMQP 0-9-1 over binary messages; the URL's path is the AMQP virtual host, exactly as
         for amqp:// (it goes into Connection.Open, not into the HTTP request, whose path is
         always "/").

Design: the WebSocket protocol is driven with the sans-IO ``wsproto`` (installed with
``trio-lavin[ws]``) directly inside :meth:`send_all` and :meth:`receive_some`, over one
underlying trio stream, rather than through trio-websocket, because:

- trio-websocket's connection needs a reader task of its own in a nursery, a second reader
  beside the AMQP connection's: one more scheduler hop for every message received, and a
  task with no owner that outlives :func:`open_stream`, which (as every ``StreamFactory``)
  returns a ready stream;
- it caps a message at 1 MiB by default (``max_message_size``), while an AMQP frame may be
  larger, and a broker may put several frames in one message;
- its pongs wait behind the messages queued for the application: here a ping is answered
  by :meth:`receive_some`, which the AMQP connection's reader calls whether or not the
  application keeps up, so a slow consumer does not look dead to the broker;
- it leaves the underlying stream open when the server rejects the handshake
  (python-trio/trio-websocket#165).

Driving wsproto in place needs no task at all: backpressure is the socket's own,
cancellation keeps trio's stream semantics, and closing the stream closes the socket.  The
tests use trio-websocket's server as an independent peer.

Only what an AMQP client needs: the client handshake, binary messages, ping/pong, and the
close handshake.  No extensions (per-message deflate) are offered.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import socket
import ssl
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from .._exceptions import ConnectionLost
from .._params import Parameters

logger = logging.getLogger("trio_lavin.transport")

__all__ = [
    "AMQP_SUBPROTOCOL",
    "WebSocketHandshakeError",
    "WebSocketStream",
    "client_handshake",
    "connect_websocket",
]

#: The subprotocol LavinMQ expects (``Sec-WebSocket-Protocol: amqp``).
AMQP_SUBPROTOCOL: Final = "amqp"
#: The HTTP request path of the upgrade.  LavinMQ takes AMQP on any path but its MQTT ones;
#: the virtual host travels inside AMQP, never in this path.
REQUEST_TARGET: Final = "/"
#: Bytes asked from the socket per read (or the reader's ``max_bytes`` if larger).  The
#: buffer of received payload never holds more than one read (we read only when it is
#: empty), so this bounds the memory per stream.
RECEIVE_SIZE: Final = 64 * 1024
#: Longest a pong, or the close frame that answers the peer's close, may take to be written
#: from inside :meth:`WebSocketStream.receive_some` (and :meth:`~WebSocketStream.aclose`'s
#: close frame): a few bytes that a live peer takes at once.  After it the stream is broken.
CONTROL_SEND_TIMEOUT: Final = 5.0

_DEFAULT_HTTP_PORTS: Final = {"ws": 80, "wss": 443}
#: Linux's TCP_QUICKACK (None elsewhere): see WebSocketStream._acknowledge_at_once.
_TCP_QUICKACK: Final[int | None] = getattr(socket, "TCP_QUICKACK", None)


#: A binary frame larger than this goes to wsproto as it arrives, rather than being
#: gathered whole for the fast path (which would hold it all in memory at once).
FAST_FRAME_MAX: Final = 64 * 1024
_U16: Final = struct.Struct(">H")
#: The end of an HTTP response's headers, bare LFs included (as h11 takes them).
_HEADERS_END: Final = re.compile(rb"\r?\n\r?\n")
_U64: Final = struct.Struct(">Q")


class _FrameSplitter:
    """Splits the bytes from the server into the payloads of whole, unfragmented binary
    frames, taken here without wsproto, and everything else (control frames, fragmented
    or large messages, anything malformed), handed to wsproto frame by frame, in the
    order they came.  wsproto is only ever given whole frames (or the rest of a large
    one), so it never holds a frame that this splitter does not know the end of.

    The usual case (LavinMQ's output: one binary frame per AMQP frame) then costs a
    header check per frame instead of wsproto's frame and message machinery.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Bytes of the current frame still to go to wsproto.
        self._to_wsproto = 0
        #: A fragmented data message is under way: wsproto assembles it.
        self._fragmented = False
        #: A header wsproto will refuse (a 64-bit length with the top bit set): wsproto
        #: gets everything from here on.
        self._lost = False

    def feed(self, data: bytes | bytearray) -> list[tuple[bool, bytes]]:
        """``(is_payload, bytes)`` pieces of ``data`` (with what was held back before):
        a payload for the byte stream, or bytes for wsproto."""
        buffer = self._buffer
        buffer += data
        pieces: list[tuple[bool, bytes]] = []
        pos, end = 0, len(buffer)
        while pos < end:
            if self._lost:
                pieces.append((False, bytes(buffer[pos:])))
                pos = end
                break
            if self._to_wsproto:
                n = min(self._to_wsproto, end - pos)
                pieces.append((False, bytes(buffer[pos : pos + n])))
                pos += n
                self._to_wsproto -= n
                continue
            if end - pos < 2:
                break
            first, second = buffer[pos], buffer[pos + 1]
            size = second & 0x7F
            header = 2
            if size == 126:
                if end - pos < 4:
                    break
                (size,) = _U16.unpack_from(buffer, pos + 2)
                header = 4
            elif size == 127:
                if end - pos < 10:
                    break
                (size,) = _U64.unpack_from(buffer, pos + 2)
                header = 10
                if size >> 63:
                    self._lost = True
                    continue
            if second & 0x80:
                header += 4  # masked: not from a server, wsproto refuses it
            total = header + size
            if first == 0x82 and not second & 0x80 and not self._fragmented:
                # FIN, no RSV bits, binary, unmasked: the usual frame.
                if end - pos >= total:
                    pieces.append((True, bytes(buffer[pos + header : pos + total])))
                    pos += total
                    continue
                if size <= FAST_FRAME_MAX:
                    break  # wait for the rest of it
            elif first & 0x0F in (0, 1, 2):  # data (fragmented, text) or continuation
                self._fragmented = not first & 0x80
            self._to_wsproto = total
        del buffer[:pos]
        return pieces


def _client_frame(payload: bytes) -> bytes:
    """One binary frame (FIN) from a client: masked, as clients must."""
    size = len(payload)
    if size < 126:
        header = bytes((0x82, 0x80 | size))
    elif size < 65_536:
        header = b"\x82\xfe" + _U16.pack(size)
    else:
        header = b"\x82\xff" + _U64.pack(size)
    key = os.urandom(4)
    keystream = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return header + key + masked.to_bytes(size, "big")


def _tcp_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket under ``stream`` (through TLS), if it is one."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


class WebSocketHandshakeError(Exception):
    """The server did not accept the WebSocket upgrade (an HTTP error status, a malformed
    or non-WebSocket response, or a wrong ``Sec-WebSocket-Accept``/subprotocol).

    Attributes:
        status_code: the HTTP status of a rejection (e.g. 400, 404), else ``None``.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class _ConflictDetector:
    """Raise :class:`trio.BusyResourceError` when two tasks use one side of the stream at
    once, as trio's streams do."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    @contextmanager
    def hold(self) -> Iterator[None]:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True
        try:
            yield
        finally:
            self._held = False


class WebSocketStream(trio.abc.Stream):
    """A byte stream carried in the binary messages of an open WebSocket connection.

    :meth:`send_all` sends its data as one binary message; :meth:`receive_some` returns the
    payload of received binary messages in order, regardless of how the peer split or
    joined them, and keeps what exceeds ``max_bytes`` for the next call.

    The end of the stream, in trio's vocabulary:

    * the peer's close with code 1000 (normal closure) is the end of the stream:
      :meth:`receive_some` returns ``b""`` (after the data received before it), and sending
      raises :class:`trio.BrokenResourceError`;
    * a close with any other code, a connection lost without a close frame (1006), a text
      message (AMQP uses binary messages only; answered with close 1003) or a framing error
      (answered with close 1002) break the stream: :class:`trio.BrokenResourceError` with
      the reason, and the socket is closed;
    * :meth:`aclose` sends close 1000 (when no send is in progress) and closes the socket;
      afterwards every method raises :class:`trio.ClosedResourceError`.

    Cancellation: a cancelled :meth:`receive_some` loses no data.  A :meth:`send_all`
    cancelled while writing may have sent part of a frame, so the stream is then broken
    (like :class:`trio.SSLStream`).  Pings are answered from :meth:`receive_some` when no
    send is in progress, otherwise by the send in progress before it returns.

    Half-closing is not possible (a WebSocket close ends both directions), so this is a
    :class:`trio.abc.Stream`, not a :class:`~trio.abc.HalfCloseableStream`.
    """

    def __init__(self, transport: trio.abc.Stream, ws: WSConnection, pending: bytes = b"") -> None:
        """Wrap ``ws``, whose opening handshake has completed on ``transport``; ``pending``:
        what the peer sent after its handshake and wsproto was not given.  The stream owns
        ``transport`` from now on."""
        if ws.state is not ConnectionState.OPEN:
            raise ValueError(f"the WebSocket connection must be open, not {ws.state.name}")
        self.transport = transport
        self._ws = ws
        self._received = bytearray()
        # A client takes the server's usual frames itself (see _FrameSplitter).
        self._splitter = _FrameSplitter() if ws.client else None
        self._pending = pending
        # Frames generated but not written yet, in the order wsproto made them.  Whoever
        # holds _write_lock writes all of it (see _flush), so pongs and close replies
        # queued from receive_some during a send go out right after it.
        self._outgoing = bytearray()
        #: Where in ``_outgoing`` a pong waits to go, and its length (see _queue_pong).
        self._pong_at: int | None = None
        self._pong_size = 0
        self._write_lock = trio.StrictFIFOLock()
        self._send_conflict = _ConflictDetector("another task is sending on this WebSocket stream")
        self._receive_conflict = _ConflictDetector(
            "another task is receiving from this WebSocket stream"
        )
        # Acknowledge what arrives at once rather than up to 40 ms later (Linux's delayed
        # ACK): LavinMQ writes each AMQP frame as its own WebSocket message with Nagle's
        # algorithm on, so its second small write of a delivery waits for our ACK of the
        # first.  Linux forgets the option as it goes: it is set again after every read.
        self._quickack = _tcp_socket(transport) if _TCP_QUICKACK is not None else None
        self._closed = False  # aclose() was called
        self._eof = False  # the peer closed normally (1000)
        self._broken: str | None = None  # why the stream is broken

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._broken is not None:
            state = "broken"
        elif self._eof:
            state = "closed by the peer"
        else:
            state = "open"
        return f"<WebSocketStream {state} over {self.transport!r}>"

    # -- sending --------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one binary message.

        Raises:
            trio.BusyResourceError: another task is in :meth:`send_all` or
                :meth:`wait_send_all_might_not_block`.
            trio.BrokenResourceError: the connection broke or the peer closed it.
            trio.ClosedResourceError: this stream was closed with :meth:`aclose`.
        """
        with self._send_conflict.hold():
            self._check_sendable()
            payload = bytes(data)
            if not payload:
                await trio.lowlevel.checkpoint()
                return
            async with self._write_lock:
                self._check_sendable()
                if self._splitter is not None:
                    self._outgoing += _client_frame(payload)  # as wsproto would, faster
                else:
                    self._outgoing += self._ws.send(BytesMessage(data=payload))
                await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket takes more data (see
        :meth:`trio.abc.SendStream.wait_send_all_might_not_block`)."""
        with self._send_conflict.hold():
            self._check_sendable()
            async with self._write_lock:
                await self._flush()
                try:
                    await self.transport.wait_send_all_might_not_block()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise self._transport_failed(exc) from exc

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this WebSocket stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)
        if self._eof or self._ws.state is not ConnectionState.OPEN:
            raise trio.BrokenResourceError("the WebSocket peer closed the connection")

    async def _flush(self) -> None:
        """Write every queued frame; the caller holds ``_write_lock``.

        A write interrupted midway (cancelled or failed) may have sent part of a frame, so
        the stream is broken afterwards.
        """
        while self._outgoing:
            await trio.lowlevel.checkpoint_if_cancelled()  # cancelled before any byte: intact
            data = bytes(self._outgoing)
            self._outgoing.clear()
            self._pong_at = None
            try:
                await self.transport.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._transport_failed(exc) from exc
            except BaseException:
                self._break("a WebSocket write was interrupted midway (cancelled)")
                raise
            if self._quickack is not None:
                # The answer's first segment is then acknowledged as it arrives, so
                # the peer's next one follows it before we even wake up to read.
                self._acknowledge_at_once(self._quickack)

    async def _flush_control(self) -> None:
        """Write queued control frames (pong, close) from ``receive_some`` or ``aclose``, if
        no send is in progress (otherwise that send writes them), within
        :data:`CONTROL_SEND_TIMEOUT`.  A failure only breaks the stream (recorded in
        ``_broken``); only :class:`trio.Cancelled` propagates."""
        if not self._outgoing:
            return
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            return
        try:
            with trio.move_on_after(CONTROL_SEND_TIMEOUT) as scope:
                await self._flush()
            if scope.cancelled_caught:
                self._break(f"the peer took no data for {CONTROL_SEND_TIMEOUT} s")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # recorded by _transport_failed
        finally:
            self._write_lock.release()

    # -- receiving ------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return up to ``max_bytes`` (or all that is buffered) of the byte stream, waiting
        for a message if none is buffered; ``b""`` once the peer closed normally.

        Raises:
            trio.BusyResourceError: another task is in :meth:`receive_some`.
            trio.BrokenResourceError: the connection broke, the peer closed it with a
                code other than 1000, or broke the protocol (e.g. sent a text message).
            trio.ClosedResourceError: this stream was closed with :meth:`aclose`.
        """
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError(f"max_bytes must be >= 1, not {max_bytes!r}")
        with self._receive_conflict.hold():
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            if self._received or self._eof or self._broken is not None:
                await trio.lowlevel.checkpoint()
            else:
                await self._receive_more(max(max_bytes or 0, RECEIVE_SIZE))
            if self._closed:
                raise trio.ClosedResourceError("this WebSocket stream was closed")
            if self._received:
                size = len(self._received) if max_bytes is None else max_bytes
                chunk = bytes(self._received[:size])
                del self._received[:size]
                return chunk
            if self._eof:
                return b""
            raise trio.BrokenResourceError(self._broken)

    async def _receive_more(self, read_size: int) -> None:
        """Read from the socket until payload is buffered, the peer closed, or the stream
        broke."""
        while True:
            self._process_events()
            if self._outgoing:
                await self._flush_control()
            if self._broken is not None:
                await trio.aclose_forcefully(self.transport)
            if self._received or self._eof or self._broken is not None:
                return
            data: bytes | bytearray
            if self._pending:
                data, self._pending = self._pending, b""
            else:
                try:
                    data = await self.transport.receive_some(read_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise self._transport_failed(exc) from exc
                if self._quickack is not None and data:
                    self._acknowledge_at_once(self._quickack)
            if not data:
                self._ws.receive_data(None)  # EOF: wsproto's CloseConnection(1006) event
            elif self._splitter is None:
                self._ws.receive_data(bytes(data))
            else:
                self._take(self._splitter.feed(data))

    def _take(self, pieces: list[tuple[bool, bytes]]) -> None:
        """Payloads to the byte stream, the rest through wsproto, in order; nothing after
        the peer's close or a protocol error."""
        for is_payload, piece in pieces:
            if is_payload:
                self._received += piece
            else:
                self._ws.receive_data(piece)
                self._process_events()
            if self._eof or self._broken is not None:
                return

    def _queue_pong(self, frame: bytes) -> None:
        """Queue the pong ``frame``.  While a send holds the write lock (blocked,
        perhaps: the peer is not reading) it takes the place of a pong still
        waiting to go: a pong for the most recent ping is enough (RFC 6455
        5.5.3), so a peer's pings then hold one pong here, not one each.
        Otherwise every ping is answered, right after this read."""
        at = self._pong_at
        if at is not None and self._write_lock.locked():
            self._outgoing[at : at + self._pong_size] = frame
        else:
            self._pong_at = len(self._outgoing)
            self._outgoing += frame
        self._pong_size = len(frame)

    def _acknowledge_at_once(self, sock: trio.socket.SocketType) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]
        except OSError:  # not TCP after all, or closed: the ACKs are only later
            self._quickack = None

    def _process_events(self) -> None:
        ws = self._ws
        for event in ws.events():
            if isinstance(event, BytesMessage):
                self._received += event.data
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    self._queue_pong(ws.send(event.response()))
            elif isinstance(event, TextMessage):
                self._fail_connection(
                    CloseReason.UNSUPPORTED_DATA,
                    "received a text WebSocket message; AMQP over WebSocket uses binary "
                    "messages only",
                )
            elif isinstance(event, CloseConnection):
                self._closed_by_peer(event)
            # Pong: nothing to do (we send no pings).
            if self._eof or self._broken is not None:
                return

    def _closed_by_peer(self, event: CloseConnection) -> None:
        ws = self._ws
        if ws.state is ConnectionState.OPEN:
            # wsproto reports a frame it cannot parse as a close event without a state change.
            self._fail_connection(
                event.code, f"WebSocket protocol error from the peer: {event.reason}"
            )
            return
        if ws.state is ConnectionState.REMOTE_CLOSING:
            self._outgoing += ws.send(event.response())
        if event.code == CloseReason.NORMAL_CLOSURE:
            self._eof = True
        elif event.code == CloseReason.ABNORMAL_CLOSURE:
            self._break("the connection was lost without a WebSocket close (1006)")
        else:
            reason = f": {event.reason}" if event.reason else ""
            self._break(f"the WebSocket peer closed the connection with code {event.code}{reason}")

    def _fail_connection(self, code: int, reason: str) -> None:
        """Break the stream because of the peer's protocol error; queue a close frame with
        ``code``.  The socket is closed once the frame is written (or could not be)."""
        if self._ws.state is ConnectionState.OPEN:
            self._outgoing += self._ws.send(CloseConnection(code=code, reason=reason[:100]))
        self._break(reason)

    # -- errors and closing ---------------------------------------------------------------

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason

    def _transport_failed(self, exc: BaseException) -> Exception:
        """The exception for a failure of the underlying stream."""
        if self._closed:
            return trio.ClosedResourceError("this WebSocket stream was closed")
        self._break(f"the connection broke: {exc}" if str(exc) else "the connection broke")
        return trio.BrokenResourceError(self._broken)

    async def aclose(self) -> None:
        """Close the WebSocket (close frame 1000, unless a send is in progress or the
        stream is broken) and the socket.  Idempotent; a cancelled ``aclose`` still closes
        the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._broken is None and self._ws.state is ConnectionState.OPEN:
                self._outgoing += self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
                await self._flush_control()
        finally:
            await self.transport.aclose()


def _host_header(params: Parameters) -> str:
    host = f"[{params.host}]" if ":" in params.host else params.host
    if params.port == _DEFAULT_HTTP_PORTS.get(params.scheme):
        return host
    return f"{host}:{params.port}"


async def client_handshake(
    transport: trio.abc.Stream,
    host: str,
    *,
    target: str = REQUEST_TARGET,
    subprotocols: tuple[str, ...] = (AMQP_SUBPROTOCOL,),
) -> WebSocketStream:
    """Upgrade ``transport`` to WebSocket as a client, offering ``subprotocols``.

    ``host`` is the ``Host`` header (``name:port``).  A server that accepts without choosing
    a subprotocol is accepted too; one that chooses a subprotocol that was not offered is an
    error.  The stream takes ownership of ``transport``, which is closed if the handshake
    fails (also when cancelled).

    Raises:
        WebSocketHandshakeError: the server refused or answered something else than a valid
            WebSocket upgrade.
        trio.BrokenResourceError: the connection broke or closed during the handshake.
    """
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        await transport.send_all(
            ws.send(Request(host=host, target=target, subprotocols=list(subprotocols)))
        )
        pending = await _receive_upgrade_response(transport, ws)
    except BaseException:
        await trio.aclose_forcefully(transport)
        raise
    # What the server sent after its response is the stream's first data.
    return WebSocketStream(transport, ws, pending)


async def _receive_upgrade_response(transport: trio.abc.Stream, ws: WSConnection) -> bytes:
    """Read the server's response into ``ws``; what came after it (frames already)."""
    start = b""  # the beginning of the response, for the error message
    tail = b""  # the last bytes given to wsproto, to find the blank line across reads
    after = b""  # what came after a blank line
    while True:
        data, after = (
            (after, b"") if after else (bytes(await transport.receive_some(RECEIVE_SIZE)), b"")
        )
        if not data:
            hint = ""
            if start.startswith(b"AMQP"):
                hint = " (an AMQP protocol header: this is an AMQP port, use amqp:// for it)"
            elif start:
                hint = f" after {start!r}"
            raise trio.BrokenResourceError(
                f"the server closed the connection during the WebSocket handshake{hint}"
            )
        start = (start + data)[:40]
        # wsproto gets the response only: frames after it go to the stream's splitter.
        blank = _HEADERS_END.search(tail + data)
        end = -1 if blank is None else blank.end()
        if end >= 0:
            cut = end - len(tail)
            data, after = data[:cut], bytes(data[cut:])
        tail = b"" if end >= 0 else (tail + data)[-3:]
        try:
            ws.receive_data(bytes(data))
        except RemoteProtocolError as exc:
            raise WebSocketHandshakeError(f"invalid WebSocket upgrade response: {exc}") from exc
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                if event.subprotocol is None:
                    logger.debug("the WebSocket server chose no subprotocol")
                return after
            if isinstance(event, RejectConnection):
                raise WebSocketHandshakeError(
                    f"the server refused the WebSocket upgrade with HTTP {event.status_code}",
                    event.status_code,
                )


async def connect_websocket(
    params: Parameters, ssl_context: ssl.SSLContext | None
) -> WebSocketStream:
    """Connect to a ``ws://`` or ``wss://`` endpoint: TCP, TLS with SNI when
    ``ssl_context`` is given, then the WebSocket upgrade to ``GET /`` with the ``amqp``
    subprotocol (the URL's path is the AMQP virtual host, not the HTTP path).

    Raises:
        ConnectionLost: connecting, TLS or the upgrade failed; the message names the
            endpoint (never the password) and ``__cause__`` is the original error.
    """
    endpoint = params.endpoint
    try:
        tcp = await trio.open_tcp_stream(params.host, params.port)
    except OSError as exc:
        raise ConnectionLost(f"cannot connect to {endpoint}: {exc}") from exc
    transport: trio.abc.Stream = tcp
    if ssl_context is not None:
        tls = trio.SSLStream(
            tcp,
            ssl_context,
            server_hostname=params.server_name_indication or params.host,
            https_compatible=True,
        )
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            await trio.aclose_forcefully(tls)
            raise ConnectionLost(f"TLS handshake with {endpoint} failed: {exc}") from exc
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        transport = tls
    try:
        return await client_handshake(transport, _host_header(params))
    except (WebSocketHandshakeError, trio.BrokenResourceError, OSError) as exc:
        raise ConnectionLost(f"WebSocket handshake with {endpoint} failed: {exc}") from exc
