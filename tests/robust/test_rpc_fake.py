"""RPC against the fake broker, which has no direct reply-to (as some brokers)."""

from __future__ import annotations

import pytest
import trio

import trio_lavin as tl
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
