"""The WebSocket byte stream (ws:// and wss://) without a broker.

Peers: a second :class:`WebSocketStream` in the server role (trio's generic stream checks),
a server driven frame by frame with wsproto (splitting, pings, text and close frames), raw
HTTP servers on loopback sockets (refused upgrades, dropped connections), and
trio-websocket's server as an independent implementation (also over TLS).
"""

from __future__ import annotations

import gc
import itertools
import os
import re
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

import trio_lavin as tl
from trio_lavin._io._transport import open_stream
from trio_lavin._io._websocket import (
    FAST_FRAME_MAX,
    RECEIVE_SIZE,
    WebSocketHandshakeError,
    WebSocketStream,
    client_handshake,
)

StreamPair = tuple[trio.abc.Stream, trio.abc.Stream]


# -- peers ----------------------------------------------------------------------------------


class RawServer:
    """The server end of a WebSocket, driven event by event with wsproto."""

    def __init__(self, transport: trio.abc.Stream, ws: WSConnection, request: Request) -> None:
        self.transport = transport
        self.ws = ws
        self.request = request

    def frames(self, *events: Event) -> bytes:
        return b"".join(self.ws.send(event) for event in events)

    async def send(self, *events: Event) -> None:
        await self.transport.send_all(self.frames(*events))

    async def next_events(self) -> list[Event]:
        """The events of the next read; ``[]`` at EOF."""
        while True:
            data = await self.transport.receive_some(RECEIVE_SIZE)
            if not data:
                return []
            self.ws.receive_data(bytes(data))
            if events := list(self.ws.events()):
                return events

    async def payload(self, size: int) -> bytes:
        """Exactly ``size`` bytes of binary messages (nothing else may arrive)."""
        got = bytearray()
        while len(got) < size:
            for event in await self.next_events():
                assert isinstance(event, BytesMessage), event
                got += event.data
        return bytes(got)


async def accept(transport: trio.abc.Stream, subprotocol: str | None = "amqp") -> RawServer:
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await transport.receive_some(RECEIVE_SIZE)
        assert data, "the client closed during the handshake"
        ws.receive_data(bytes(data))
        for event in ws.events():
            if isinstance(event, Request):
                await transport.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
                return RawServer(transport, ws, event)


async def connected_pair(
    make: Callable[[], StreamPair] = trio.testing.memory_stream_pair,
) -> tuple[WebSocketStream, RawServer]:
    client_transport, server_transport = make()
    servers: list[RawServer] = []

    async def serve() -> None:
        servers.append(await accept(server_transport))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = await client_handshake(client_transport, "broker.test:15672")
    return client, servers[0]


async def websocket_stream_pair() -> tuple[WebSocketStream, WebSocketStream]:
    client, server = await connected_pair()
    return client, WebSocketStream(server.transport, server.ws)


async def clogged_websocket_stream_pair() -> tuple[WebSocketStream, WebSocketStream]:
    client, server = await connected_pair(trio.testing.lockstep_stream_pair)
    return client, WebSocketStream(server.transport, server.ws)


def open_sockets() -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


@asynccontextmanager
async def tcp_server(
    handler: Callable[[trio.SocketStream], Awaitable[None]],
) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1; yields the port."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


def answer_with(response: bytes) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(RECEIVE_SIZE)
            if response:
                await stream.send_all(response)

    return handler


# -- the generic stream contract ------------------------------------------------------------


async def test_passes_trios_generic_two_way_stream_checks() -> None:
    await trio.testing.check_two_way_stream(websocket_stream_pair, clogged_websocket_stream_pair)


async def test_is_not_half_closeable() -> None:
    client, server = await websocket_stream_pair()
    async with client, server:
        assert not isinstance(client, trio.abc.HalfCloseableStream)
        assert not hasattr(client, "send_eof")


# -- messages do not line up with the byte stream -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(min_size=1, max_size=2000),
    message_cuts=st.lists(st.integers(0, 2000), max_size=8),
    fragment_cuts=st.lists(st.integers(0, 2000), max_size=8),
    ping_after=st.lists(st.integers(0, 20), max_size=3),
    wire_chunk=st.integers(1, 300),
    read_sizes=st.lists(st.integers(1, 500), min_size=1, max_size=10),
)
def test_messages_split_and_joined_anyhow_are_reassembled_byte_exact(
    payload: bytes,
    message_cuts: list[int],
    fragment_cuts: list[int],
    ping_after: list[int],
    wire_chunk: int,
    read_sizes: list[int],
) -> None:
    """Invariant: whatever the message boundaries, the fragmentation of a message into
    frames, pings between frames, the split of the wire bytes into reads and the
    ``max_bytes`` of the reader, the reader gets exactly the payload, then ``b""`` for the
    peer's close; every ping is answered."""

    async def scenario() -> None:
        client, server = await connected_pair(trio.testing.lockstep_stream_pair)
        cuts = sorted({0, len(payload), *(c % (len(payload) + 1) for c in message_cuts)})
        frames: list[Event] = []
        for start, end in itertools.pairwise(cuts):
            message = payload[start:end]
            inner = sorted({0, len(message), *(c % (len(message) + 1) for c in fragment_cuts)})
            pieces = list(itertools.pairwise(inner)) or [(0, 0)]
            for i, (a, b) in enumerate(pieces):
                frames.append(BytesMessage(message[a:b], message_finished=i == len(pieces) - 1))
        data_frames = len(frames)
        for n, index in reversed(list(enumerate(sorted(ping_after)))):
            frames.insert(min(index, data_frames), Ping(f"ping {n}".encode()))
        frames.append(CloseConnection(code=1000))
        wire = server.frames(*frames)
        got = bytearray()
        answers: list[Event] = []

        async def peer() -> None:
            async with trio.open_nursery() as nursery:

                async def collect() -> None:
                    while events := await server.next_events():
                        answers.extend(events)

                nursery.start_soon(collect)
                for i in range(0, len(wire), wire_chunk):
                    await server.transport.send_all(wire[i : i + wire_chunk])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            reads = 0
            while chunk := await client.receive_some(read_sizes[reads % len(read_sizes)]):
                assert len(chunk) <= read_sizes[reads % len(read_sizes)]
                got += chunk
                reads += 1
            assert await client.receive_some() == b""
            await client.aclose()
        assert got == payload
        pongs = [e.payload for e in answers if isinstance(e, Pong)]
        assert pongs == [f"ping {n}".encode() for n in range(len(ping_after))]
        assert answers[-1] == CloseConnection(code=1000, reason="")

    trio.run(scenario)


async def test_a_message_larger_than_max_bytes_is_kept_for_the_next_reads() -> None:
    client, server = await connected_pair()
    async with client:
        await server.send(BytesMessage(b"0123456789"), BytesMessage(b"ab"))
        assert await client.receive_some(4) == b"0123"
        assert await client.receive_some(4) == b"4567"
        assert await client.receive_some() == b"89ab"


async def test_a_frame_larger_than_the_fast_path_takes_comes_through_wsproto_whole(
    nursery: trio.Nursery,
) -> None:
    """Binary frames up to FAST_FRAME_MAX are gathered and taken without wsproto; a larger
    one goes to wsproto as it arrives (so it is never held whole), and the frames after it
    take the fast path again."""
    client, server = await connected_pair()
    big = os.urandom(FAST_FRAME_MAX * 3 + 17)
    wire = server.frames(BytesMessage(b"before"), BytesMessage(big), BytesMessage(b"after"))
    nursery.start_soon(partial(send_in_pieces, server.transport, wire, 1000))
    got = b""
    async with client:
        while len(got) < len(big) + 11:
            got += await client.receive_some()
    assert got == b"before" + big + b"after"


async def send_in_pieces(transport: trio.abc.Stream, data: bytes, size: int) -> None:
    for i in range(0, len(data), size):
        await transport.send_all(data[i : i + size])


async def test_send_all_sends_one_binary_message_per_call() -> None:
    client, server = await connected_pair()
    async with client:
        await client.send_all(b"AMQP\x00\x00\x09\x01")
        await client.send_all(bytearray(b"frame"))
        events = await server.next_events()
        assert events == [
            BytesMessage(b"AMQP\x00\x00\x09\x01", frame_finished=True, message_finished=True),
            BytesMessage(b"frame", frame_finished=True, message_finished=True),
        ]


async def test_a_cancelled_receive_some_loses_no_data() -> None:
    client, server = await connected_pair()
    async with client:
        await server.send(BytesMessage(b"abc"))
        assert await client.receive_some(1) == b"a"
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.receive_some(1)
        assert scope.cancelled_caught
        assert await client.receive_some() == b"bc"
        with trio.move_on_after(0.01) as scope:
            await client.receive_some()  # cancelled while waiting on the socket
        assert scope.cancelled_caught
        await server.send(BytesMessage(b"d"))
        assert await client.receive_some() == b"d"


async def test_a_send_cancelled_midway_breaks_the_stream() -> None:
    client, _server = await connected_pair(trio.testing.lockstep_stream_pair)
    async with client:
        with trio.move_on_after(0.05) as scope:
            await client.send_all(b"x" * 100)  # nobody reads: blocks in the middle
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError, match="interrupted"):
            await client.send_all(b"y")


# -- control frames -------------------------------------------------------------------------


async def test_a_ping_is_answered_while_waiting_for_data() -> None:
    client, server = await connected_pair()
    async with client, trio.open_nursery() as nursery:

        async def read() -> None:
            assert await client.receive_some() == b"after the ping"

        nursery.start_soon(read)
        await server.send(Ping(b"are you there"))
        assert await server.next_events() == [Pong(b"are you there")]
        await server.send(BytesMessage(b"after the ping"))


async def test_a_ping_during_a_blocked_send_is_answered_right_after_that_send() -> None:
    client, server = await connected_pair(trio.testing.lockstep_stream_pair)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"x" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        # The send is blocked (the server does not read): the pong waits for it.
        async with trio.open_nursery() as inner:
            inner.start_soon(client.receive_some)
            await server.send(Ping(b"p"))  # lockstep: returns once the client read it
            await trio.testing.wait_all_tasks_blocked()  # pong queued, reading again
            inner.cancel_scope.cancel()
        events: list[Event] = []
        while not any(isinstance(e, Pong) for e in events):
            events += await server.next_events()
        payload = b"".join(e.data for e in events if isinstance(e, BytesMessage))
        assert payload == b"x" * 1000
        assert events[-1] == Pong(b"p")
    await trio.aclose_forcefully(client)  # aclose() would wait for the server to read its close


async def test_pings_during_a_blocked_send_are_answered_by_one_pong_for_the_last() -> None:
    """A ping flood while a send is blocked queues one pong, for the most
    recent ping (RFC 6455 5.5.3), not one per ping: the queue grew without
    bound (13 MB after 100 000 pings)."""
    client, server = await connected_pair(trio.testing.lockstep_stream_pair)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"x" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as inner:
            inner.start_soon(client.receive_some)
            for i in range(1000):
                await server.send(Ping(b"%d" % i))  # lockstep: each one read by the client
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()
        events: list[Event] = []
        while not any(isinstance(e, Pong) for e in events):
            events += await server.next_events()
        with trio.move_on_after(0.1):
            while True:
                events += await server.next_events()
        payload = b"".join(e.data for e in events if isinstance(e, BytesMessage))
        assert payload == b"x" * 1000
        assert [e for e in events if isinstance(e, Pong)] == [Pong(b"999")]
    await trio.aclose_forcefully(client)


async def test_a_normal_close_from_the_peer_is_the_end_of_the_stream() -> None:
    client, server = await connected_pair()
    async with client:
        await server.send(BytesMessage(b"last words"), CloseConnection(1000, "bye"))
        assert await client.receive_some() == b"last words"
        assert await client.receive_some() == b""
        assert await client.receive_some() == b""
        assert await server.next_events() == [CloseConnection(1000, "bye")]
        with pytest.raises(trio.BrokenResourceError, match="peer closed"):
            await client.send_all(b"too late")


async def test_an_abnormal_close_from_the_peer_breaks_the_stream() -> None:
    client, server = await connected_pair()
    async with client:
        await server.send(CloseConnection(1011, "internal error"))
        with pytest.raises(trio.BrokenResourceError, match=r"code 1011: internal error"):
            await client.receive_some()
        assert await server.next_events() == [CloseConnection(1011, "internal error")]
        assert await server.next_events() == []  # and the socket is closed
        with pytest.raises(trio.BrokenResourceError, match="1011"):
            await client.send_all(b"x")


async def test_a_text_message_is_a_protocol_error_that_closes_the_connection() -> None:
    client, server = await connected_pair()
    async with client:
        await server.send(TextMessage("AMQP\x00\x00\x09\x01"))
        with pytest.raises(trio.BrokenResourceError, match="text WebSocket message"):
            await client.receive_some()
        events = await server.next_events()
        assert len(events) == 1
        assert isinstance(events[0], CloseConnection)
        assert events[0].code == 1003  # unsupported data
        assert await server.next_events() == []  # the client closed the socket
        with pytest.raises(trio.BrokenResourceError, match="text"):
            await client.receive_some()
        with pytest.raises(trio.BrokenResourceError, match="text"):
            await client.send_all(b"x")


async def test_a_malformed_frame_is_a_protocol_error_that_closes_the_connection() -> None:
    client, server = await connected_pair()
    async with client:
        await server.transport.send_all(b"\x83\x00")  # opcode 3 is reserved
        with pytest.raises(trio.BrokenResourceError, match="protocol error"):
            await client.receive_some()
        events = await server.next_events()
        assert [type(e) for e in events] == [CloseConnection]
        assert isinstance(events[0], CloseConnection)
        assert events[0].code == 1002


async def test_aclose_sends_a_normal_close_and_closes_the_socket() -> None:
    client, server = await connected_pair()
    await client.aclose()
    assert await server.next_events() == [CloseConnection(1000, "")]
    assert await server.next_events() == []
    with pytest.raises(trio.ClosedResourceError):
        await client.receive_some()
    assert "closed" in repr(client)


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n"])
@pytest.mark.parametrize("split", [None, 3, 1])
async def test_the_server_sending_data_with_its_upgrade_response_is_not_lost(
    line_end: bytes, split: int | None
) -> None:
    """Frames right after the response (in the same read, or cut anywhere, after headers
    that end in CRLF or, as h11 also takes, bare LF) are the stream's first data."""
    client_transport, server_transport = trio.testing.memory_stream_pair()
    streams: list[WebSocketStream] = []

    async def connect() -> None:
        streams.append(await client_handshake(client_transport, "h"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect)
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(bytes(await server_transport.receive_some(RECEIVE_SIZE)))
        assert isinstance(next(ws.events()), Request)
        response = ws.send(AcceptConnection(subprotocol="amqp")).replace(b"\r\n", line_end)
        wire = response + ws.send(BytesMessage(b"early")) + ws.send(BytesMessage(b" and more"))
        step = split or len(wire)
        for i in range(0, len(wire), step):
            await server_transport.send_all(wire[i : i + step])
            await trio.testing.wait_all_tasks_blocked()
    async with streams[0] as client:
        got = b""
        while len(got) < len(b"early and more"):
            got += await client.receive_some()
        assert got == b"early and more"


# -- connecting over real sockets -----------------------------------------------------------


async def test_open_stream_requests_the_amqp_subprotocol_on_path_slash() -> None:
    requests: list[Request] = []

    async def handler(stream: trio.SocketStream) -> None:
        server = await accept(stream)
        requests.append(server.request)
        async with WebSocketStream(stream, server.ws) as ws:
            await ws.send_all(await ws.receive_some())

    async with tcp_server(handler) as port:
        url = f"ws://guest:secret@127.0.0.1:{port}/some-vhost?heartbeat=5"
        async with await open_stream(tl.parse_url(url)) as stream:
            assert isinstance(stream, WebSocketStream)
            await stream.send_all(b"echo")
            assert await stream.receive_some() == b"echo"
    [request] = requests
    assert request.subprotocols == ["amqp"]
    assert request.target == "/"  # the vhost travels in AMQP, not in the HTTP path
    assert request.host == f"127.0.0.1:{port}"
    assert request.extensions == []


REFUSALS = [
    pytest.param(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404", id="404"),
    pytest.param(
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nBad Request", "HTTP 400", id="400"
    ),
    pytest.param(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
        "invalid WebSocket upgrade response",
        id="wrong-accept-key",
    ),
    pytest.param(b"AMQP\x00\x00\x09\x01", "this is an AMQP port", id="amqp-port"),
    pytest.param(b"", "closed the connection during the WebSocket handshake", id="eof"),
]


@pytest.mark.parametrize(("response", "error"), REFUSALS)
async def test_a_refused_upgrade_raises_connection_lost_and_leaves_no_socket(
    response: bytes, error: str
) -> None:
    sockets = open_sockets()
    async with tcp_server(answer_with(response)) as port:
        url = f"ws://guest:s3cr3t-pw@127.0.0.1:{port}/vhost"
        with pytest.raises(tl.ConnectionLost) as excinfo:
            await open_stream(tl.parse_url(url))
    message = str(excinfo.value)
    assert f"WebSocket handshake with ws://127.0.0.1:{port}/vhost failed" in message
    assert error in message
    assert "s3cr3t-pw" not in message
    cause = excinfo.value.__cause__
    assert isinstance(cause, WebSocketHandshakeError | trio.BrokenResourceError)
    if isinstance(cause, WebSocketHandshakeError) and error.startswith("HTTP"):
        assert cause.status_code == int(error[-3:])
    gc.collect()  # a socket left to the garbage collector would warn (an error here)
    assert open_sockets() == sockets


async def test_a_refused_connection_names_the_endpoint() -> None:
    async with tcp_server(answer_with(b"")) as port:
        pass  # the port is now closed
    with pytest.raises(
        tl.ConnectionLost, match=re.escape(f"cannot connect to ws://127.0.0.1:{port}/")
    ):
        await open_stream(tl.parse_url(f"ws://127.0.0.1:{port}/"))


async def test_a_dropped_connection_is_broken_and_leaves_no_socket() -> None:
    sockets = open_sockets()

    async def handler(stream: trio.SocketStream) -> None:
        server = await accept(stream)
        await server.send(BytesMessage(b"partial"))
        await stream.aclose()  # no close frame: 1006 for the client

    async with tcp_server(handler) as port:
        stream = await open_stream(tl.parse_url(f"ws://127.0.0.1:{port}/"))
        assert await stream.receive_some() == b"partial"
        with pytest.raises(trio.BrokenResourceError, match=r"without a WebSocket close \(1006\)"):
            await stream.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")
        await stream.aclose()
    gc.collect()
    assert open_sockets() == sockets


async def test_the_upgrade_is_bounded_by_cancellation_and_leaves_no_socket() -> None:
    sockets = open_sockets()

    async def silent(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    async with tcp_server(silent) as port:
        with trio.move_on_after(0.1) as scope:
            await open_stream(tl.parse_url(f"ws://127.0.0.1:{port}/"))
        assert scope.cancelled_caught
    gc.collect()
    assert open_sockets() == sockets


async def test_interoperates_with_trio_websocket(nursery: trio.Nursery) -> None:
    offered: list[list[str]] = []

    async def echo(request: WebSocketRequest) -> None:
        offered.append(list(request.proposed_subprotocols))
        ws = await request.accept(subprotocol="amqp")
        message = await ws.get_message()
        await ws.send_message(message)
        await ws.aclose()

    server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
    url = f"ws://guest:guest@127.0.0.1:{server.port}/"
    async with await open_stream(tl.parse_url(url)) as stream:
        await stream.send_all(b"\x01\x00\x00" + bytes(range(256)))
        received = b""
        while len(received) < 259:
            received += await stream.receive_some(100)
        assert received == b"\x01\x00\x00" + bytes(range(256))
        assert await stream.receive_some() == b""  # trio-websocket closed normally
    assert offered == [["amqp"]]


async def test_every_read_acknowledges_at_once_so_a_nagling_peer_is_not_held_40_ms(
    nursery: trio.Nursery,
) -> None:
    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="amqp")
        while True:
            # Two messages per answer, as LavinMQ writes a delivery's frames.
            message = await ws.get_message()
            await ws.send_message(message[:1])
            await ws.send_message(message[1:])

    server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, None)
    url = f"ws://guest:guest@127.0.0.1:{server.port}/"
    async with await open_stream(tl.parse_url(url)) as stream:
        assert isinstance(stream, WebSocketStream)
        assert isinstance(stream.transport, trio.SocketStream)
        sock = stream.transport.socket
        quickack = getattr(socket, "TCP_QUICKACK", None)  # Linux's; elsewhere nothing to check
        for round_trip in range(5):
            await stream.send_all(b"ab")
            if quickack is not None:  # and after each write: the answer's first segment
                assert sock.getsockopt(socket.IPPROTO_TCP, quickack) == 1, round_trip
            received = b""
            while len(received) < 2:
                received += await stream.receive_some()
                # Linux drops the option once it has acknowledged: each read sets it again.
                if quickack is not None:
                    assert sock.getsockopt(socket.IPPROTO_TCP, quickack) == 1, round_trip
            assert received == b"ab"


async def test_wss_verifies_the_certificate_and_sends_sni(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("broker.test").configure_cert(server_context)
    server_names: list[str | None] = []

    def remember_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        server_names.append(name)

    server_context.sni_callback = remember_sni
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))

    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol="amqp")
        await ws.send_message(await ws.get_message())
        await ws.aclose()

    server = await nursery.start(serve_websocket, echo, "127.0.0.1", 0, server_context)
    base = f"wss://127.0.0.1:{server.port}/?server_name_indication=broker.test"
    async with await open_stream(tl.parse_url(f"{base}&cacertfile={cafile}")) as stream:
        assert isinstance(stream, WebSocketStream)
        assert isinstance(stream.transport, trio.SSLStream)
        await stream.send_all(b"secret")
        assert await stream.receive_some() == b"secret"
    assert server_names == ["broker.test"]

    # Without the CA the certificate is refused.
    with pytest.raises(tl.ConnectionLost, match=re.escape("TLS handshake with wss://127.0.0.1")):
        await open_stream(tl.parse_url(base))


async def test_without_wsproto_the_error_says_to_install_the_ws_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "trio_lavin._io._websocket", None)
    with pytest.raises(ImportError, match=r"install trio-lavin\[ws\]"):
        await open_stream(tl.parse_url("ws://127.0.0.1/"))
