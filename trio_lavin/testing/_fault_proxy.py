"""A TCP proxy that injects network faults on command, for testing clients against real brokers.

:class:`FakeBroker <trio_lavin.testing.FakeBroker>` fakes the broker; this
module fakes the *network* between a client and a real broker (or any TCP
server).  :func:`open_fault_proxy` listens on a loopback port and forwards
every connection it accepts to a target address.  While it runs, a test can:

* :meth:`~FaultProxy.sever` every current connection, with a TCP reset
  (``"rst"``) or a normal close (``"fin"``), as when a broker crashes or a
  load balancer drops connections;
* :meth:`~FaultProxy.blackhole` the network: nothing is forwarded, yet every
  socket stays open, as in a network partition, until
  :meth:`~FaultProxy.restore`;
* add :attr:`~FaultProxy.latency` to every chunk forwarded in either direction;
* :attr:`~FaultProxy.refuse` new connections, as a broker that is down;
* count connections and bytes, and :meth:`~FaultProxy.wait_connections` for
  a client to (re)connect.

Usage, with a broker on ``localhost:5672``::

    import trio
    import trio_lavin
    from trio_lavin.testing import open_fault_proxy

    async with open_fault_proxy("localhost", 5672) as proxy:
        url = proxy.url_for("amqp://guest:guest@localhost:5672/")
        async with trio_lavin.open_client(url) as client:
            await client.wait_connected()
            proxy.sever()  # the client's connection is reset ...
            with trio.fail_after(30):
                await proxy.wait_connections(2)  # ... and it reconnects

The proxy listens on loopback only, and every task it starts runs in the
nursery that :func:`open_fault_proxy` owns: when the ``async with`` block
ends, every connection is closed and every task has finished.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import struct
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import trio

#: How :meth:`FaultProxy.sever` ends a connection: ``"rst"`` (TCP reset) or ``"fin"`` (close).
SeverMode: TypeAlias = Literal["rst", "fin"]
#: What a :class:`Fault` does: sever the connections (``sever_rst``, ``sever_fin``), or,
#: for its ``duration``, blackhole the network, refuse new connections, or add latency.
FaultKind: TypeAlias = Literal["sever_rst", "sever_fin", "blackhole", "refuse", "latency"]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = (
    "sever_rst",
    "sever_fin",
    "blackhole",
    "refuse",
    "latency",
)


@dataclass(frozen=True)
class Fault:
    """One step of a fault plan for :meth:`FaultProxy.replay`: ``wait`` seconds after
    the step before, do ``kind``; a blackhole, a refusal or added latency (of
    ``latency`` seconds per chunk) lasts ``duration`` seconds, then the network is as
    before.  :func:`trio_lavin.testing.strategies.fault_plans` draws lists of them.

    Raises:
        ValueError: a kind that is not one of :data:`FAULT_KINDS`, or a time that is
            not a finite number of seconds >= 0.
    """

    wait: float
    kind: FaultKind
    duration: float = 0.0
    latency: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"fault kind must be one of {', '.join(FAULT_KINDS)}, not {self.kind!r}"
            )
        for name in ("wait", "duration", "latency"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


_Direction: TypeAlias = Literal["up", "down"]

#: How much a pump reads at once: large enough that a 1 MiB burst takes a
#: handful of reads, small enough to bound the memory one connection holds
#: (at most one chunk per direction is held while blackholed or delayed).
_RECEIVE_SIZE: Final = 65_536

#: The listening socket's accept backlog: far more than a test opens at once.
_BACKLOG: Final = 128

#: Seconds the proxy waits for the target to accept a connection before it
#: resets the client.  A target that refuses answers at once; this bounds the
#: wait for one that drops SYN packets, which the OS would retry for minutes.
_CONNECT_TIMEOUT: Final = 10.0

#: SO_LINGER on with a zero timeout: ``close()`` sends a TCP RST, not a FIN.
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


def _close_stream(stream: trio.SocketStream, *, reset: bool) -> None:
    """Close ``stream`` at once: with a TCP reset if ``reset``, else normally.

    Closing wakes any task blocked on the socket with
    :class:`trio.ClosedResourceError`.  The kernel sends a reset anyway if
    received data is still unread, as it does for any socket.
    """
    if reset:
        try:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # the socket is already dead: closing it is all that is left
    stream.socket.close()


class _Link:
    """One client connection and, once the target has accepted, its upstream connection."""

    def __init__(self, client: trio.SocketStream) -> None:
        self.client = client
        self.upstream: trio.SocketStream | None = None
        self.scopes: list[trio.CancelScope] = []  # one per task working on this link
        self.eofs = 0  # directions that have passed on an EOF
        self.closed = False
        self.reset = False  # closed with a TCP reset

    def open_scope(self) -> trio.CancelScope:
        """A cancel scope for one task working on this link, cancelled when the link closes."""
        scope = trio.CancelScope()
        if self.closed:
            scope.cancel()
        self.scopes.append(scope)
        return scope

    def close(self, *, reset: bool) -> None:
        """Close both sides and cancel the link's tasks.  Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.reset = reset
        for scope in self.scopes:
            scope.cancel()
        _close_stream(self.client, reset=reset)
        if self.upstream is not None:
            _close_stream(self.upstream, reset=reset)


class FaultProxy:
    """A loopback TCP proxy to a target address that injects network faults on command.

    Make one with :func:`open_fault_proxy`.  Each connection a client opens
    to :attr:`host`:\\ :attr:`port` is forwarded to the target over a new
    connection, byte for byte in both directions, with end-of-file passed on
    (a half-closed side stays half-closed).  When either side resets, the
    other side is reset too; when both sides have sent EOF, both are closed.

    The fault methods take effect at once and are synchronous, so a test can
    call them from anywhere.  What the client sees:

    =====================  ==========================================================
    fault                  what the client sees
    =====================  ==========================================================
    ``sever("rst")``       its reads and writes fail: :class:`trio.BrokenResourceError`
                           (``ECONNRESET``)
    ``sever("fin")``       EOF (``receive_some()`` returns ``b""``) after the bytes
                           already forwarded
    ``blackhole()``        silence; the connection stays open, and its writes block
                           once the socket buffers are full
    ``latency = s``        every chunk arrives ``s`` seconds (or more) later
    ``refuse = True``      a new connection is reset at once: the connect fails with
                           ``ConnectionResetError`` (an :class:`OSError`), or succeeds
                           and the first read fails with :class:`trio.BrokenResourceError`
    target down            as ``refuse``, once the target has refused the proxy
    =====================  ==========================================================

    Instances are not thread-safe; use them from the trio run that opened them.
    """

    def __init__(self, listener: trio.SocketListener, target_host: str, target_port: int) -> None:
        self._listener = listener
        self._target_host = target_host
        self._target_port = target_port
        self._host, self._port = listener.socket.getsockname()[:2]
        self._links: set[_Link] = set()
        self._tasks_scope = trio.CancelScope()  # around the nursery that runs every task
        self._running = False
        self._stopped = trio.Event()
        self._closed = False
        self._latency = 0.0
        self._refuse = False
        self._blackholed = False
        self._restored = trio.Event()  # set while not blackholed; replaced by blackhole()
        self._restored.set()
        self._connected = trio.Event()  # set and replaced on each counted connection
        self._accepted_total = 0
        self._connections_total = 0
        self._refused_total = 0
        self._target_failures_total = 0
        self._bytes_up = 0
        self._bytes_down = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._links)} active"
        return (
            f"<FaultProxy {_format_host(self._host)}:{self._port} -> "
            f"{_format_host(self._target_host)}:{self._target_port}, {state}>"
        )

    # -- where the proxy listens -------------------------------------------------

    @property
    def host(self) -> str:
        """The loopback address the proxy listens on, such as ``"127.0.0.1"``."""
        return str(self._host)

    @property
    def port(self) -> int:
        """The port the proxy listens on, chosen by the OS."""
        return int(self._port)

    def url_for(self, amqp_url: str) -> str:
        """``amqp_url`` with its host and port replaced by the proxy's.

        Everything else is kept as written: scheme, user, password, virtual
        host, query and fragment.  For example, with the proxy on port 40000,
        ``"amqp://u:p@broker:5672/%2f?heartbeat=5"`` becomes
        ``"amqp://u:p@127.0.0.1:40000/%2f?heartbeat=5"``.  The URL's own host
        and port are not checked against the proxy's target.

        A TLS URL (``amqps``, ``wss``) goes through the proxy unchanged, but
        the client then checks the certificate against the proxy's address:
        set ``server_name_indication`` in the query to the broker's name.

        Raises:
            ValueError: ``amqp_url`` has no ``scheme://`` part.
        """
        parts = urlsplit(amqp_url)
        if not parts.scheme or not amqp_url.startswith(f"{parts.scheme}://"):
            raise ValueError(f"expected an URL such as 'amqp://host/', not {amqp_url!r}")
        userinfo, at, _ = parts.netloc.rpartition("@")
        netloc = f"{userinfo}{at}{_format_host(self.host)}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- faults -----------------------------------------------------------------

    def sever(self, mode: SeverMode = "rst") -> int:
        """End every current connection at once, on both sides.

        With ``mode="rst"`` both the client and the target get a TCP reset:
        the client's next read or write raises
        :class:`trio.BrokenResourceError`.  With ``mode="fin"`` both sides
        are closed normally: the client reads the bytes already forwarded,
        then EOF.  Bytes the proxy holds (blackholed or delayed) are dropped.
        Closing a socket with received data still unread sends a reset even
        so (the kernel's rule), which happens here when the proxy had stopped
        reading a blackholed connection.

        This includes connections that are blackholed or still waiting for
        the target.  Connections accepted afterwards are served as usual.

        Returns:
            The number of connections ended.

        Raises:
            ValueError: ``mode`` is not ``"rst"`` or ``"fin"``.
        """
        if mode not in ("rst", "fin"):
            raise ValueError(f"sever mode must be 'rst' or 'fin', not {mode!r}")
        links = list(self._links)
        for link in links:
            self._drop(link, reset=mode == "rst")
        return len(links)

    def blackhole(self) -> None:
        """Stop forwarding, in both directions, without closing anything: a network partition.

        Current connections stop passing bytes on, and so do connections
        accepted while the blackhole lasts (the client's connect succeeds,
        but the proxy does not connect to the target until :meth:`restore`).
        The proxy stops reading too, so once the socket buffers are full the
        client's writes block.  Only the client's own timeouts (heartbeats,
        connect timeout), :meth:`sever` or :meth:`restore` end this.  A chunk
        the proxy is already writing when this is called still arrives.

        Idempotent.
        """
        if not self._blackholed:
            self._blackholed = True
            self._restored = trio.Event()

    def restore(self) -> None:
        """End a :meth:`blackhole`: the partition heals, and forwarding resumes everywhere.

        Connections that were blackholed resume, the bytes held back arriving
        first, as TCP delivers them after a short partition; connections
        accepted during the blackhole are now connected to the target.  A
        client that gave up on its connection meanwhile has closed it, and
        the proxy passes that on once it resumes.

        To model a partition after which the old connections are dead (the
        broker has dropped them), call :meth:`sever` first::

            proxy.sever()    # the stale connections are reset ...
            proxy.restore()  # ... and new ones are forwarded

        Idempotent.
        """
        self._blackholed = False
        self._restored.set()

    @property
    def blackholed(self) -> bool:
        """Whether a :meth:`blackhole` is in effect."""
        return self._blackholed

    @property
    def latency(self) -> float:
        """Seconds every forwarded chunk is held back, in each direction (default 0).

        A chunk is passed on ``latency`` seconds after the proxy read it, so a
        request and its reply take at least ``2 * latency`` longer.  Order is
        kept in each direction.  One chunk is held at a time, so bytes that
        arrive while another chunk is held wait for it: under a continuous
        stream a byte can take up to twice the latency, and throughput is
        capped at 64 KiB per ``latency``.  A new value applies to chunks read
        after it is set.

        Raises (on assignment):
            ValueError: not a finite number of seconds ``>= 0``.
        """
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"latency must be a finite number of seconds >= 0, not {seconds!r}")
        self._latency = float(seconds)

    @property
    def refuse(self) -> bool:
        """While true, new connections are refused (default false).

        The proxy keeps listening and resets each new connection as soon as
        it accepts it, so the client fails promptly rather than hanging.  The
        kernel completes the TCP handshake before the proxy sees the
        connection, so the client's connect may succeed, its first read or
        write then failing with :class:`trio.BrokenResourceError`; or the
        reset may reach the client while it is still connecting, and the
        connect fails with ``ConnectionResetError`` (an :class:`OSError`).
        A client must treat both as "connection refused".  (Closing the port
        instead would refuse the connect itself, but another program could
        take the port before the proxy listens again.)

        The decision is made when the proxy accepts a connection.
        Connections already open are not affected; set it back to false to
        accept again.
        """
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._refuse = bool(value)

    async def replay(self, plan: Iterable[Fault]) -> None:
        """Do the faults of ``plan`` in order (see :class:`Fault`), and return when the
        last one is over, the network as it was before it.

        Cancellation: cancelled during a blackhole, a refusal or added latency, that
        fault is ended first (the network restored), then the cancellation goes on.
        """
        for fault in plan:
            await trio.sleep(fault.wait)
            if fault.kind == "sever_rst":
                self.sever("rst")
            elif fault.kind == "sever_fin":
                self.sever("fin")
            else:
                await self._for_a_while(fault)

    async def _for_a_while(self, fault: Fault) -> None:
        """Do ``fault`` for its duration, then put back what was there before
        (a proxy blackholed or refusing already stays so)."""
        if fault.kind == "blackhole":
            before: bool | float = self.blackholed
            self.blackhole()
        elif fault.kind == "refuse":
            before, self.refuse = self.refuse, True
        else:
            before, self.latency = self.latency, fault.latency
        try:
            await trio.sleep(fault.duration)
        finally:
            if fault.kind == "blackhole":
                if not before:
                    self.restore()
            elif fault.kind == "refuse":
                self.refuse = bool(before)
            else:
                self.latency = before

    # -- counters ---------------------------------------------------------------

    @property
    def accepted_total(self) -> int:
        """Client connections the proxy has accepted, whatever became of them."""
        return self._accepted_total

    @property
    def connections_total(self) -> int:
        """Client connections the proxy has connected to the target and forwarded.

        A connection accepted during a :meth:`blackhole` counts once the
        blackhole ends and the target has accepted it.
        """
        return self._connections_total

    @property
    def active_connections(self) -> int:
        """Client connections open now: forwarding, blackholed, or waiting for the target."""
        return len(self._links)

    @property
    def refused_total(self) -> int:
        """Client connections reset at once because :attr:`refuse` was set."""
        return self._refused_total

    @property
    def target_failures_total(self) -> int:
        """Client connections reset because the target refused, or did not accept
        within 10 seconds."""
        return self._target_failures_total

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded from clients to the target.

        Bytes count as forwarded when the proxy starts writing them, so once
        the target has received ``n`` bytes, this is at least ``n``.  Bytes
        held back (blackholed or delayed) are not counted yet.
        """
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded from the target to clients, counted as :attr:`bytes_up` is."""
        return self._bytes_down

    async def wait_connections(self, n: int) -> None:
        """Wait until :attr:`connections_total` is at least ``n``.

        Returns at once (after a checkpoint) if it already is.  It waits for
        as long as it takes, so put it under :func:`trio.fail_after`.

        Raises:
            trio.ClosedResourceError: the proxy is closed, or gets closed while waiting.
        """
        await trio.lowlevel.checkpoint()
        while self._connections_total < n:  # bounded: each pass waits for one connection
            if self._closed:
                raise trio.ClosedResourceError("the fault proxy is closed")
            await self._connected.wait()

    # -- closing ----------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop listening, close every connection normally (FIN) and stop every task.

        Connections are closed as by ``sever("fin")`` (a blackholed one with
        unread data gets a reset).  When it returns, the proxy holds no socket and runs no task.
        Idempotent; leaving the :func:`open_fault_proxy` block calls it.  If
        cancelled, the sockets are closed all the same and the tasks end
        shortly after.
        """
        self._shutdown()
        if self._running:
            await self._stopped.wait()
        else:
            await trio.lowlevel.checkpoint()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._listener.socket.close()
        for link in list(self._links):
            self._drop(link, reset=False)
        self._tasks_scope.cancel()
        self._connected.set()  # wake wait_connections(), which then raises

    # -- tasks ------------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the accept loop and every connection's tasks until :meth:`aclose`."""
        self._running = True
        try:
            with self._tasks_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._accept_loop, nursery)
                    task_status.started()
        finally:
            self._shutdown()  # also when a task crashed
            self._stopped.set()

    async def _accept_loop(self, nursery: trio.Nursery) -> None:
        while True:  # until aclose() closes the listener (or cancels this task)
            try:
                stream = await self._listener.accept()
            except trio.ClosedResourceError:
                return
            self._accepted_total += 1
            if self._closed:
                _close_stream(stream, reset=True)
                return
            if self._refuse:
                self._refused_total += 1
                _close_stream(stream, reset=True)
                continue
            link = _Link(stream)
            self._links.add(link)
            nursery.start_soon(self._serve, nursery, link)

    async def _serve(self, nursery: trio.Nursery, link: _Link) -> None:
        """Connect ``link`` to the target, then pump both ways (this task pumps upstream)."""
        with link.open_scope() as scope:
            await self._wait_forwarding()
        if scope.cancelled_caught:
            return  # severed while blackholed
        # Not cancelled by sever(), so that a connection the target has just
        # accepted is ended the way sever() was asked to (aclose() cancels it).
        try:
            with trio.fail_after(_CONNECT_TIMEOUT):
                upstream = await trio.open_tcp_stream(self._target_host, self._target_port)
        except (OSError, trio.TooSlowError):
            if not link.closed:
                self._target_failures_total += 1
                self._drop(link, reset=True)
            return
        if link.closed:  # severed while connecting
            _close_stream(upstream, reset=link.reset)
            return
        link.upstream = upstream
        self._connections_total += 1
        self._connected.set()
        self._connected = trio.Event()
        nursery.start_soon(self._pump, link, upstream, link.client, "down")
        await self._pump(link, link.client, upstream, "up")

    async def _pump(
        self,
        link: _Link,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        direction: _Direction,
    ) -> None:
        """Copy ``source`` to ``sink`` until EOF, which is passed on.

        A reset or error on either stream resets the whole link.  Closing the
        link cancels this task.
        """
        with link.open_scope():
            try:
                while True:  # bounded by the connection: ends at EOF or an error
                    await self._wait_forwarding()
                    data = await source.receive_some(_RECEIVE_SIZE)
                    await trio.sleep_until(trio.current_time() + self._latency)
                    await self._wait_forwarding()
                    if not data:
                        break
                    if direction == "up":
                        self._bytes_up += len(data)
                    else:
                        self._bytes_down += len(data)
                    await sink.send_all(data)
                await sink.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._drop(link, reset=True)  # a reset on one side resets the other
                return
            link.eofs += 1
            if link.eofs == 2:
                self._drop(link, reset=False)

    async def _wait_forwarding(self) -> None:
        """Return once no blackhole is in effect."""
        while self._blackholed:  # bounded: each pass waits for a restore()
            await self._restored.wait()

    def _drop(self, link: _Link, *, reset: bool) -> None:
        self._links.discard(link)
        link.close(reset=reset)


def _format_host(host: str) -> str:
    """``host`` as it appears before ``:port``: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


async def _listen_on_loopback(host: str) -> trio.SocketListener:
    infos = await trio.socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    if not infos:
        raise ValueError(f"listen_host must be a loopback address, not {host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    address = str(sockaddr[0])
    if not ipaddress.ip_address(address.partition("%")[0]).is_loopback:
        raise ValueError(f"listen_host must be a loopback address, not {host!r} ({address})")
    sock = trio.socket.socket(family, type_, proto)
    try:
        await sock.bind(sockaddr)
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


@asynccontextmanager
async def open_fault_proxy(
    target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"
) -> AsyncIterator[FaultProxy]:
    """Run a :class:`FaultProxy` to ``target_host:target_port`` for the ``async with`` block.

    The proxy listens on a free port of ``listen_host``, which must be a
    loopback address (or a name for one, such as ``"localhost"``), and
    serves connections until the block ends.  Its tasks run in a nursery
    this function owns; leaving the block calls :meth:`FaultProxy.aclose`.
    The target is only contacted when a client connects, so it may be down
    when the proxy starts.

    Raises:
        ValueError: ``listen_host`` is not a loopback address.
        OSError: the proxy could not listen.
    """
    listener = await _listen_on_loopback(listen_host)
    proxy = FaultProxy(listener, target_host, target_port)
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(proxy._run)
            yield proxy
        finally:
            await proxy.aclose()
