"""FaultProxy between a test client and a small TCP server on loopback (no AMQP, real sockets)."""

from __future__ import annotations

import gc
import math
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

from trio_lavin.testing import Fault, FaultProxy, open_fault_proxy

#: Seconds a test waits for something that should happen at once (generous for slow CI).
TIMEOUT = 10
#: Seconds a test watches for something that must not happen.
QUIET = 0.3
MIB = 1024 * 1024


class Target:
    """A TCP server on 127.0.0.1 that hands each connection it accepts to the test."""

    def __init__(self, port: int, accepted: trio.MemoryReceiveChannel[trio.SocketStream]) -> None:
        self.port = port
        self._accepted = accepted

    async def accept(self) -> trio.SocketStream:
        with trio.fail_after(TIMEOUT):
            return await self._accepted.receive()

    async def assert_no_connection(self) -> None:
        with trio.move_on_after(QUIET):
            stream = await self._accepted.receive()
            pytest.fail(f"the target got a connection: {stream!r}")


async def echo(stream: trio.SocketStream) -> None:
    try:
        async for chunk in stream:
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@asynccontextmanager
async def open_target(
    handler: Callable[[trio.SocketStream], Awaitable[None]] | None = None,
) -> AsyncIterator[Target]:
    """Serve on a free loopback port.  Without ``handler``, connections go to
    :meth:`Target.accept` and stay open until the block ends."""
    send, receive = trio.open_memory_channel[trio.SocketStream](math.inf)

    async def hand_over(stream: trio.SocketStream) -> None:
        send.send_nowait(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, handler or hand_over, 0, host="127.0.0.1")
        )
        yield Target(listeners[0].socket.getsockname()[1], receive)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def connected(proxy: FaultProxy) -> AsyncIterator[trio.SocketStream]:
    """A client connection to ``proxy``, closed when the block ends."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream(proxy.host, proxy.port)
    async with stream:
        yield stream


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = bytearray()
    with trio.fail_after(TIMEOUT):
        while len(data) < n:
            chunk = await stream.receive_some(n - len(data))
            assert chunk, f"EOF after {len(data)} of {n} bytes"
            data += chunk
    return bytes(data)


async def assert_silent(stream: trio.SocketStream) -> None:
    """Nothing arrives on ``stream`` for QUIET seconds (and it is not closed)."""
    with trio.move_on_after(QUIET):
        data = await stream.receive_some()
        pytest.fail(f"expected silence, got {data!r}")


async def assert_reset_promptly(proxy: FaultProxy) -> None:
    """A new connection to ``proxy`` is reset within a second: the connect fails
    with an OSError (ECONNRESET), or it succeeds and the first read is broken."""
    with trio.fail_after(1):
        try:
            stream = await trio.open_tcp_stream(proxy.host, proxy.port)
        except OSError as exc:
            cause = exc.__cause__
        else:
            async with stream:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some()
            return
    assert isinstance(cause, ExceptionGroup)
    assert [type(e) for e in cause.exceptions] == [ConnectionResetError]


async def wait_until_idle(proxy: FaultProxy) -> None:
    with trio.fail_after(TIMEOUT):
        while proxy.active_connections:
            await trio.sleep(0.01)


async def test_forwards_bytes_both_ways_unchanged() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        server = await target.accept()
        await client.send_all(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        await server.send_all(b"pong!")
        assert await receive_exactly(client, 5) == b"pong!"

        assert proxy.connections_total == 1
        assert proxy.accepted_total == 1
        assert proxy.active_connections == 1
        assert (proxy.bytes_up, proxy.bytes_down) == (4, 5)
        assert (proxy.refused_total, proxy.target_failures_total) == (0, 0)


async def test_forwards_one_mebibyte_each_way_byte_exact() -> None:
    payload = random.Random(1).randbytes(MIB)
    async with (
        open_target(echo) as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, payload)
            echoed = await receive_exactly(client, MIB)

        assert echoed == payload
        assert (proxy.bytes_up, proxy.bytes_down) == (MIB, MIB)


async def test_passes_eof_on_and_closes_once_both_sides_are_done() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        server = await target.accept()
        await client.send_eof()
        with trio.fail_after(TIMEOUT):
            assert await server.receive_some() == b""
        await server.send_all(b"still open")  # the other direction is unaffected
        assert await receive_exactly(client, 10) == b"still open"
        assert proxy.active_connections == 1

        await server.aclose()

        with trio.fail_after(TIMEOUT):
            assert await client.receive_some() == b""
        await wait_until_idle(proxy)


async def test_client_reset_resets_the_target_side() -> None:
    async with open_target() as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        async with connected(proxy) as client:
            server = await target.accept()
            client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

        with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        await wait_until_idle(proxy)


async def test_sever_rst_resets_both_sides_and_new_connections_work() -> None:
    async with open_target() as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        async with connected(proxy) as client:
            server = await target.accept()
            with trio.fail_after(TIMEOUT):
                await proxy.wait_connections(1)  # the proxy has its end of the target connection

            assert proxy.sever("rst") == 1

            assert proxy.active_connections == 0
            with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
                await client.receive_some()
            with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
                await server.receive_some()

        async with connected(proxy) as again:
            server_again = await target.accept()
            await again.send_all(b"hello")
            assert await receive_exactly(server_again, 5) == b"hello"
            assert proxy.connections_total == 2


async def test_sever_fin_gives_both_sides_eof_after_forwarded_bytes() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        server = await target.accept()
        await server.send_all(b"last words")
        assert await receive_exactly(client, 10) == b"last words"

        assert proxy.sever("fin") == 1

        with trio.fail_after(TIMEOUT):
            assert await client.receive_some() == b""
            assert await server.receive_some() == b""
        assert proxy.active_connections == 0


async def test_sever_rejects_an_unknown_mode() -> None:
    async with open_fault_proxy("127.0.0.1", 1) as proxy:
        with pytest.raises(ValueError, match="not 'reset'"):
            proxy.sever("reset")  # type: ignore[arg-type]


async def test_blackhole_forwards_nothing_and_keeps_the_connection_open() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        server = await target.accept()

        proxy.blackhole()

        assert proxy.blackholed
        await client.send_all(b"up")
        await server.send_all(b"down")
        await assert_silent(server)
        await assert_silent(client)
        assert proxy.active_connections == 1
        assert (proxy.bytes_up, proxy.bytes_down) == (0, 0)


async def test_blackhole_eventually_blocks_client_writes() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        await target.accept()
        proxy.blackhole()

        sent_everything = False
        with trio.move_on_after(1):
            await client.send_all(bytes(64 * MIB))  # far more than the socket buffers hold
            sent_everything = True

        assert not sent_everything
        assert proxy.bytes_up == 0


async def test_restore_resumes_blackholed_connections_with_held_bytes_first() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        server = await target.accept()
        proxy.blackhole()
        await client.send_all(b"held")
        await server.send_all(b"HELD")
        await assert_silent(server)

        proxy.restore()

        assert not proxy.blackholed
        assert await receive_exactly(server, 4) == b"held"
        assert await receive_exactly(client, 4) == b"HELD"
        await client.send_all(b"after")
        assert await receive_exactly(server, 5) == b"after"
        assert proxy.connections_total == 1


async def test_blackhole_holds_new_connections_until_restore() -> None:
    async with open_target() as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        proxy.blackhole()
        async with connected(proxy) as client:  # the connect itself succeeds
            await client.send_all(b"hello")
            await target.assert_no_connection()
            assert (proxy.accepted_total, proxy.connections_total) == (1, 0)
            assert proxy.active_connections == 1

            proxy.restore()

            server = await target.accept()
            assert await receive_exactly(server, 5) == b"hello"
            assert proxy.connections_total == 1


async def test_sever_then_restore_drops_stale_connections_and_forwards_new_ones() -> None:
    async with open_target() as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        async with connected(proxy) as stale:
            await target.accept()
            proxy.blackhole()

            assert proxy.sever() == 1
            proxy.restore()

            with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
                await stale.receive_some()

        async with connected(proxy) as fresh:
            server = await target.accept()
            await fresh.send_all(b"fresh")
            assert await receive_exactly(server, 5) == b"fresh"


async def test_latency_delays_each_direction_by_at_least_the_setting() -> None:
    latency = 0.2
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        server = await target.accept()
        proxy.latency = latency
        assert proxy.latency == latency

        start = trio.current_time()
        await client.send_all(b"ping")
        assert await receive_exactly(server, 4) == b"ping"
        up = trio.current_time() - start
        start = trio.current_time()
        await server.send_all(b"pong")
        assert await receive_exactly(client, 4) == b"pong"
        down = trio.current_time() - start

        assert latency <= up < latency + 2
        assert latency <= down < latency + 2


async def test_latency_keeps_order_within_a_direction() -> None:
    chunks = [bytes([i]) * 1000 for i in range(20)]
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        proxy.latency = 0.01
        server = await target.accept()
        for chunk in chunks:
            await client.send_all(chunk)
            await trio.sleep(0.003)  # separate reads, mostly

        assert await receive_exactly(server, 20_000) == b"".join(chunks)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
async def test_latency_must_be_finite_and_not_negative(bad: float) -> None:
    async with open_fault_proxy("127.0.0.1", 1) as proxy:
        with pytest.raises(ValueError, match="latency must be"):
            proxy.latency = bad
        assert proxy.latency == 0


async def test_refuse_resets_new_connections_promptly_and_spares_open_ones() -> None:
    async with (
        open_target() as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as existing,
    ):
        server = await target.accept()

        proxy.refuse = True

        await assert_reset_promptly(proxy)
        await target.assert_no_connection()
        assert (proxy.refused_total, proxy.connections_total, proxy.accepted_total) == (1, 1, 2)
        await existing.send_all(b"still")
        assert await receive_exactly(server, 5) == b"still"

        proxy.refuse = False

        async with connected(proxy):
            await target.accept()
            with trio.fail_after(TIMEOUT):
                await proxy.wait_connections(2)
            assert proxy.refused_total == 1


async def test_target_down_resets_the_client_promptly() -> None:
    with socket.socket() as closed_port:  # bound but not listening: connects are refused
        closed_port.bind(("127.0.0.1", 0))
        async with open_fault_proxy("127.0.0.1", closed_port.getsockname()[1]) as proxy:
            await assert_reset_promptly(proxy)
            await wait_until_idle(proxy)

            assert proxy.target_failures_total == 1
            assert (proxy.accepted_total, proxy.connections_total) == (1, 0)


async def test_wait_connections_returns_once_the_count_is_reached() -> None:
    async with open_target() as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        reached_at: list[int] = []

        async def waiter() -> None:
            await proxy.wait_connections(2)
            reached_at.append(proxy.connections_total)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            async with connected(proxy):
                await target.accept()
                await trio.sleep(0.05)
                assert reached_at == []
                async with connected(proxy):
                    await target.accept()
                    with trio.fail_after(TIMEOUT):
                        while not reached_at:
                            await trio.sleep(0.01)
        assert reached_at == [2]

        with trio.fail_after(TIMEOUT):
            await proxy.wait_connections(1)  # already reached


async def test_wait_connections_raises_once_the_proxy_is_closed() -> None:
    async with open_fault_proxy("127.0.0.1", 1) as proxy, trio.open_nursery() as nursery:
        nursery.start_soon(proxy.aclose)
        with trio.fail_after(TIMEOUT), pytest.raises(trio.ClosedResourceError):
            await proxy.wait_connections(1)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "amqp://user:p%40ss@broker.example:5672/%2f?heartbeat=5&connection_name=app",
            "amqp://user:p%40ss@{proxy}/%2f?heartbeat=5&connection_name=app",
        ),
        ("amqps://broker/vhost", "amqps://{proxy}/vhost"),
        ("amqp://guest:guest@[::1]:5672/", "amqp://guest:guest@{proxy}/"),
        ("amqp://", "amqp://{proxy}"),
    ],
)
async def test_url_for_points_the_url_at_the_proxy_and_keeps_the_rest(
    url: str, expected: str
) -> None:
    async with open_fault_proxy("127.0.0.1", 1) as proxy:
        assert proxy.url_for(url) == expected.format(proxy=f"127.0.0.1:{proxy.port}")


async def test_url_for_rejects_a_string_without_scheme() -> None:
    async with open_fault_proxy("127.0.0.1", 1) as proxy:
        with pytest.raises(ValueError, match="not 'localhost:5672'"):
            proxy.url_for("localhost:5672")


async def test_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        async with open_fault_proxy("127.0.0.1", 1, listen_host="0.0.0.0"):
            pass  # pragma: no cover
    async with open_fault_proxy("127.0.0.1", 1, listen_host="localhost") as proxy:
        assert proxy.host in {"127.0.0.1", "::1"}


def open_fds() -> set[str]:
    gc.collect()
    return set(os.listdir("/proc/self/fd"))


def all_tasks() -> set[trio.lowlevel.Task]:
    tasks: set[trio.lowlevel.Task] = set()

    def walk(task: trio.lowlevel.Task) -> None:
        tasks.add(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return tasks


async def test_closing_leaves_no_tasks_or_sockets_behind() -> None:
    tasks_before, fds_before = all_tasks(), open_fds()
    async with open_target(echo) as target:
        async with (
            open_fault_proxy("127.0.0.1", target.port) as proxy,
            connected(proxy) as forwarding,
            connected(proxy) as held,
        ):
            proxy.latency = 0.01
            await forwarding.send_all(b"x")
            assert await receive_exactly(forwarding, 1) == b"x"
            proxy.blackhole()
            await held.send_eof()  # held back: the proxy's end stays unread
            assert len(all_tasks() - tasks_before) > 4  # server, proxy and connection tasks

            await proxy.aclose()

            assert proxy.active_connections == 0
            with trio.fail_after(TIMEOUT):  # the proxy closed its ends normally
                assert await forwarding.receive_some() == b""
                assert await held.receive_some() == b""

        with pytest.raises(OSError, match="all attempts to connect"):  # no longer listening
            await trio.open_tcp_stream("127.0.0.1", proxy.port)

    with trio.fail_after(TIMEOUT):  # the echo server may still be closing its end
        while all_tasks() != tasks_before or open_fds() != fds_before:
            await trio.sleep(0.01)


async def test_aclose_is_idempotent_and_the_block_can_continue() -> None:
    async with open_fault_proxy("127.0.0.1", 1) as proxy:
        await proxy.aclose()
        await proxy.aclose()
        await trio.lowlevel.checkpoint()  # not cancelled: aclose() stops the proxy's tasks only
        assert "closed" in repr(proxy)


# -- fault plans -------------------------------------------------------------------------


async def test_replay_does_each_fault_in_turn_and_leaves_the_network_as_it_was() -> None:
    plan = [
        Fault(0.0, "blackhole", duration=0.2),
        Fault(0.0, "refuse", duration=0.2),
        Fault(0.0, "latency", duration=0.3, latency=0.1),
        Fault(0.0, "sever_rst"),
    ]
    seen: list[tuple[bool, bool, float]] = []
    async with (
        open_target(echo) as target,
        open_fault_proxy("127.0.0.1", target.port) as proxy,
        connected(proxy) as client,
    ):
        await client.send_all(b"x")
        assert await receive_exactly(client, 1) == b"x"

        async def watch() -> None:
            while True:
                state = (proxy.blackholed, proxy.refuse, proxy.latency)
                if not seen or seen[-1] != state:
                    seen.append(state)
                await trio.sleep(0.01)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            with trio.fail_after(TIMEOUT):
                await proxy.replay(plan)
            nursery.cancel_scope.cancel()
        with trio.fail_after(TIMEOUT), pytest.raises(trio.BrokenResourceError):
            await client.receive_some()  # the last step severed it
        assert (proxy.blackholed, proxy.refuse, proxy.latency) == (False, False, 0.0)
    faults = [state for state in seen if state != (False, False, 0.0)]  # between steps
    assert faults == [(True, False, 0.0), (False, True, 0.0), (False, False, 0.1)]


async def test_a_replay_on_a_network_already_faulty_leaves_it_as_it_was() -> None:
    """A blackhole or refusal in the plan, on a proxy already blackholed and
    refusing: once the plan is over, both still hold (they were healed)."""
    async with open_target(echo) as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        proxy.blackhole()
        proxy.refuse = True
        plan = [Fault(0.0, "blackhole", duration=0.05), Fault(0.0, "refuse", duration=0.05)]
        with trio.fail_after(TIMEOUT):
            await proxy.replay(plan)
        assert (proxy.blackholed, proxy.refuse) == (True, True)
        proxy.restore()


async def test_a_cancelled_replay_ends_the_fault_it_was_in() -> None:
    async with open_target(echo) as target, open_fault_proxy("127.0.0.1", target.port) as proxy:
        with trio.move_on_after(0.1):
            await proxy.replay([Fault(0.0, "blackhole", duration=60)])
        assert not proxy.blackholed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"wait": 0.0, "kind": "explode"},
            "fault kind must be one of sever_rst, .* not 'explode'",
        ),
        (
            {"wait": -1.0, "kind": "refuse"},
            "wait must be a finite number of seconds >= 0, not -1.0",
        ),
        ({"wait": 0.0, "kind": "refuse", "duration": math.inf}, "duration must be .* not inf"),
    ],
)
def test_a_fault_that_cannot_be_done_is_refused_naming_it(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Fault(**kwargs)
