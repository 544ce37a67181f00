"""RPC over direct reply-to (``Client.rpc_call`` / ``Client.serve_rpc``)
against the real broker."""

from __future__ import annotations

import random
import re

import pytest
import trio

import trio_lavin as tl
from trio_lavin.testing import Broker, FaultProxy

from ._names import unique

pytestmark = pytest.mark.broker

CONFIG = tl.Config(heartbeat=5, reconnect_max_delay=0.5)


async def upper(delivery: tl.Delivery) -> bytes:
    return delivery.body.upper()


async def queue_depth(amqp_url: str, queue: str) -> int:
    async with tl.open_connection(amqp_url) as connection:
        channel = await connection.channel()
        return (await channel.queue_declare(queue, passive=True)).message_count


async def test_rpc_call_returns_the_reply_of_the_server_handler(broker: Broker) -> None:
    amqp_url = broker.url
    queue = unique("rpc")
    seen: list[tl.BasicProperties] = []

    async def handler(delivery: tl.Delivery) -> bytes:
        seen.append(delivery.properties)
        return delivery.body.upper()

    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
            await client.declare_queue(queue, auto_delete=True)
            await nursery.start(client.serve_rpc, queue, handler)
            assert await client.rpc_call(queue, b"hello", timeout=5) == b"HELLO"
            assert await client.rpc_call(queue, b"again", timeout=5) == b"AGAIN"
            nursery.cancel_scope.cancel()
    reply_tos = [p.reply_to or "" for p in seen]
    # The client asks for amq.rabbitmq.reply-to; LavinMQ 1.0.1 accepts that name (and
    # amq.direct.reply-to) and hands the server amq.direct.reply-to.<consumer tag>.
    prefix = "amq.direct.reply-to." if broker.kind == "lavinmq" else "amq.rabbitmq.reply-to."
    assert [r.startswith(prefix) for r in reply_tos] == [True, True]
    ids = [p.correlation_id or "" for p in seen]
    assert [bool(re.fullmatch(r"[0-9a-f]{32}", i)) for i in ids] == [True, True]
    assert ids[0] != ids[1]
    # The request expires when its caller stops waiting: the time left of 5 s, in ms.
    assert [1_000 <= int(p.expiration or 0) <= 5_000 for p in seen] == [True, True]


async def test_a_hundred_concurrent_calls_each_get_their_own_reply(amqp_url: str) -> None:
    queue = unique("rpc")

    async def slow_echo(delivery: tl.Delivery) -> bytes:
        # Random delays make the replies come back out of order.
        await trio.sleep(random.uniform(0, 0.05))
        return b"reply to " + delivery.body

    results: dict[int, bytes] = {}

    async def call(client: tl.Client, n: int) -> None:
        results[n] = await client.rpc_call(queue, str(n).encode(), timeout=20)

    with trio.fail_after(40):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as servers:
            await client.declare_queue(queue, auto_delete=True)
            await servers.start(client.serve_rpc, queue, slow_echo)
            await servers.start(client.serve_rpc, queue, slow_echo)  # two servers share the load
            async with trio.open_nursery() as callers:
                for n in range(100):
                    callers.start_soon(call, client, n)
            servers.cancel_scope.cancel()
    assert results == {n: f"reply to {n}".encode() for n in range(100)}


async def test_a_call_nobody_answers_raises_rpc_timeout_naming_the_routing_key(
    amqp_url: str,
) -> None:
    queue = unique("rpc")
    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client:
            await client.declare_queue(queue, auto_delete=True)  # bound, but nobody serves it
            started = trio.current_time()
            with pytest.raises(tl.RpcTimeout) as excinfo:
                await client.rpc_call(queue, b"anyone?", timeout=0.5)
            elapsed = trio.current_time() - started
            # The request carried the timeout as its expiration: the broker drops it.
            await trio.sleep(0.3)
            depth = await queue_depth(amqp_url, queue)
    assert 0.5 <= elapsed < 3
    assert isinstance(excinfo.value, TimeoutError)
    assert excinfo.value.routing_key == queue
    assert excinfo.value.timeout == 0.5
    assert f"no reply to the RPC request to routing key {queue!r} within 0.5 s" in str(
        excinfo.value
    )
    assert depth == 0


async def test_a_request_nothing_is_bound_to_raises_rpc_unroutable_at_once(amqp_url: str) -> None:
    queue = unique("missing")
    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client:
            started = trio.current_time()
            with pytest.raises(tl.RpcUnroutable) as excinfo:
                await client.rpc_call(queue, b"hello?", timeout=10)
            elapsed = trio.current_time() - started
    assert elapsed < 5  # the broker's return, not the timeout
    assert excinfo.value.routing_key == queue
    assert excinfo.value.reply_code == 312
    assert f"routing key {queue!r} was returned unroutable (312 NO_ROUTE)" in str(excinfo.value)


async def test_a_request_to_a_missing_exchange_fails_with_the_broker_404_and_calls_go_on(
    amqp_url: str,
) -> None:
    queue = unique("rpc")
    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
            await client.declare_queue(queue, auto_delete=True)
            await nursery.start(client.serve_rpc, queue, upper)
            with pytest.raises(tl.RpcReplyLost) as excinfo:
                await client.rpc_call("x", b"hello", exchange=unique("no-exchange"), timeout=5)
            # The broker closed that reply channel; the next call opens another.
            assert await client.rpc_call(queue, b"next", timeout=5) == b"NEXT"
            nursery.cancel_scope.cancel()
    cause = excinfo.value.__cause__
    assert isinstance(cause, tl.ChannelClosed)
    assert cause.reply_code == 404
    # RabbitMQ says "no exchange 'x' in vhost '/'", LavinMQ 1.0.1 "No exchange ...".
    assert "no exchange" in str(cause).lower()


async def test_a_failing_handler_gives_the_caller_rpc_remote_error_and_the_server_goes_on(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = unique("rpc")

    async def picky(delivery: tl.Delivery) -> bytes:
        if delivery.body == b"bad":
            raise ValueError(f"cannot handle {delivery.body!r}")
        return b"ok: " + delivery.body

    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
            await client.declare_queue(queue, auto_delete=True)
            await nursery.start(client.serve_rpc, queue, picky)
            with pytest.raises(tl.RpcRemoteError) as excinfo:
                await client.rpc_call(queue, b"bad", timeout=5)
            after = await client.rpc_call(queue, b"good", timeout=5)
            await trio.sleep(0.2)  # the acks reach the broker
            depth = await queue_depth(amqp_url, queue)
            nursery.cancel_scope.cancel()
    assert excinfo.value.error == "ValueError: cannot handle b'bad'"
    assert excinfo.value.routing_key == queue
    assert after == b"ok: good"
    assert depth == 0  # the failed request was acked, not requeued
    failures = [r for r in caplog.records if r.name == "trio_lavin.rpc" and r.exc_info]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["cannot handle b'bad'"]


async def test_a_handler_returning_non_bytes_is_reported_as_a_type_error(amqp_url: str) -> None:
    queue = unique("rpc")

    async def wrong(delivery: tl.Delivery) -> bytes:
        return delivery.body.decode()  # type: ignore[return-value]

    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
            await client.declare_queue(queue, auto_delete=True)
            await nursery.start(client.serve_rpc, queue, wrong)
            with pytest.raises(tl.RpcRemoteError) as excinfo:
                await client.rpc_call(queue, b"x", timeout=5)
            nursery.cancel_scope.cancel()
    assert excinfo.value.error == "TypeError: an RPC handler must return bytes, not str"


async def test_a_late_reply_to_a_timed_out_call_is_discarded(amqp_url: str) -> None:
    queue = unique("rpc")

    async def slow_first(delivery: tl.Delivery) -> bytes:
        if delivery.body == b"slow":
            await trio.sleep(1.0)
        return b"reply to " + delivery.body

    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
            await client.declare_queue(queue, auto_delete=True)
            await nursery.start(client.serve_rpc, queue, slow_first)
            with pytest.raises(tl.RpcTimeout):
                await client.rpc_call(queue, b"slow", timeout=0.3)
            await trio.sleep(1.0)  # the late reply arrives meanwhile
            assert await client.rpc_call(queue, b"fast", timeout=5) == b"reply to fast"
            nursery.cancel_scope.cancel()


async def test_a_call_waiting_when_the_connection_dies_raises_reply_lost_and_the_next_works(
    amqp_url: str, proxy: FaultProxy
) -> None:
    queue = unique("rpc")
    release = trio.Event()
    handled: list[bytes] = []

    async def blocking(delivery: tl.Delivery) -> bytes:
        handled.append(delivery.body)
        if delivery.body == b"first":
            await release.wait()
        return b"reply to " + delivery.body

    with trio.fail_after(30):
        async with (
            tl.open_client(amqp_url, CONFIG) as server,
            tl.open_client(proxy.url_for(amqp_url), CONFIG) as caller,
            trio.open_nursery() as nursery,
        ):
            await server.declare_queue(queue, auto_delete=True)
            await nursery.start(server.serve_rpc, queue, blocking)

            async def sever_once_handled() -> None:
                while not handled:
                    await trio.sleep(0.01)
                proxy.sever()

            nursery.start_soon(sever_once_handled)
            with pytest.raises(tl.RpcReplyLost) as excinfo:
                await caller.rpc_call(queue, b"first", timeout=10)
            release.set()
            # The caller reconnects by itself; the next call uses a new reply channel.
            assert await caller.rpc_call(queue, b"second", timeout=10) == b"reply to second"
            reconnects = caller.statistics().reconnects
            nursery.cancel_scope.cancel()
    assert isinstance(excinfo.value, tl.ConnectionLost)
    assert isinstance(excinfo.value.__cause__, tl.ConnectionLost)
    assert "not retried" in str(excinfo.value)
    assert reconnects == 1
    assert handled == [b"first", b"second"]  # the lost call was not sent again


async def test_a_call_waiting_when_the_client_closes_raises_connection_closed(
    amqp_url: str,
) -> None:
    queue = unique("rpc")
    errors: list[BaseException] = []

    async def call_and_record(client: tl.Client) -> None:
        try:
            await client.rpc_call(queue, b"anyone?", timeout=None)
        except tl.AMQPError as exc:
            errors.append(exc)

    # The caller runs in a nursery outside the client's block: leaving the block closes
    # the client under the waiting call.
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery, tl.open_client(amqp_url, CONFIG) as client:
            await client.declare_queue(queue, auto_delete=True)  # nobody serves it
            nursery.start_soon(call_and_record, client)
            await trio.sleep(0.5)  # the request is out, its call waits
    assert [type(e) for e in errors] == [tl.ConnectionClosed]
    assert f"client was closed while the RPC request to routing key {queue!r}" in str(errors[0])


async def test_a_request_without_reply_to_is_rejected_and_not_handled(amqp_url: str) -> None:
    queue = unique("rpc")
    handled: list[bytes] = []

    async def record(delivery: tl.Delivery) -> bytes:
        handled.append(delivery.body)
        return b""

    with trio.fail_after(20):
        async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
            await client.declare_queue(queue, auto_delete=True)
            await nursery.start(client.serve_rpc, queue, record)
            channel = await client.open_channel()
            await channel.basic_publish(b"no reply address", routing_key=queue)
            assert await client.rpc_call(queue, b"proper", timeout=5) == b""
            await trio.sleep(0.2)
            depth = await queue_depth(amqp_url, queue)
            await channel.aclose()
            nursery.cancel_scope.cancel()
    assert handled == [b"proper"]
    assert depth == 0


@pytest.mark.parametrize("bad_timeout", [0, -1, float("nan"), float("inf")])
async def test_rpc_call_rejects_a_timeout_that_is_not_a_positive_number(
    amqp_url: str, bad_timeout: float
) -> None:
    async with tl.open_client(amqp_url, CONFIG) as client:
        with pytest.raises(
            ValueError, match=f"timeout must be a positive number .* not {bad_timeout}"
        ):
            await client.rpc_call("q", b"", timeout=bad_timeout)
