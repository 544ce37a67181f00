"""RPC against the fake broker, which has no direct reply-to (as some brokers)."""

from __future__ import annotations

import math

import pytest
import trio

import trio_lavin as tl
from trio_lavin._robust._rpc import _expiration
from trio_lavin.testing import open_fake_broker


async def test_rpc_call_on_a_broker_without_direct_reply_to_raises_a_clear_rpc_error() -> None:
    with trio.fail_after(10):
        async with (
            open_fake_broker() as broker,
            tl.open_client(stream_factory=broker.connect) as client,
        ):
            with pytest.raises(tl.RpcError) as excinfo:
                await client.rpc_call("anything", b"hello", timeout=5)
            assert client.connected  # only the reply channel was refused
    assert type(excinfo.value) is tl.RpcError
    assert "refused to consume 'amq.rabbitmq.reply-to'" in str(excinfo.value)
    assert "must support direct reply-to" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, tl.ChannelClosed)
    assert excinfo.value.__cause__.reply_code == 404


async def test_a_call_waiting_longer_than_an_expiration_can_say_sends_none() -> None:
    """A request's ``expiration`` is the time its caller still waits, in ms,
    up to the largest RabbitMQ takes (2**32 - 1); a longer wait sends none
    (timeout=1e13 sent 10**16 ms, and RabbitMQ closed the reply channel with
    406 over it, failing every call on that channel)."""
    now = trio.current_time()
    assert _expiration(now + 1.5) == "1500"
    assert _expiration(now + (2**32 - 1) / 1000) == str(2**32 - 1)
    assert _expiration(now + 1e10) is None
    assert _expiration(math.inf) is None
    assert _expiration(now - 1) == "1"  # past its deadline: expire at once
