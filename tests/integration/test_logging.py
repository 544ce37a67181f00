"""Logging through ``trio_lavin.*`` loggers: one line per connect,
disconnect and reconnect with the cause and the endpoint, nothing per
message, no password; frames only at DEBUG when asked for."""

from __future__ import annotations

import logging
import secrets

import pytest
import trio

import trio_lavin as tl
from tests.conftest import SECRETS
from trio_lavin.testing import open_fake_broker, open_fault_proxy

MESSAGES = 200
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_PASSWORD = "Fr4me-distinctive-Password-Q9"
SECRETS.add(FRAME_PASSWORD)


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """trio-lavin records at INFO and above (what an application logging at
    INFO shows)."""
    return [
        r for r in caplog.records if r.name.startswith("trio_lavin") and r.levelno >= logging.INFO
    ]


@pytest.mark.broker
async def test_one_line_per_connect_disconnect_reconnect_and_close_and_none_per_message(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_lavin")
    params = tl.parse_url(amqp_url)
    queue = f"trio-lavin-test.log.{secrets.token_hex(6)}"
    async with open_fault_proxy(params.host, params.port) as proxy:
        url = proxy.url_for(amqp_url)
        endpoint = tl.parse_url(url).endpoint
        async with tl.open_client(url, tl.Config(heartbeat=5)) as client:
            with trio.fail_after(10):
                connection = await client.wait_connected()
            connected = lines(caplog)
            await client.declare_queue(queue, auto_delete=True)
            producer = client.producer(queue)
            async with client.consume(queue, prefetch=50) as consumer:
                for _ in range(MESSAGES):
                    await producer.enqueue(b"x")
                with trio.fail_after(10):
                    await producer.drain()
                    received = 0
                    async for delivery in consumer:
                        await delivery.ack()
                        received += 1
                        if received == MESSAGES:
                            break
                after_traffic = lines(caplog)
                assert proxy.sever() >= 1
                with trio.fail_after(10):
                    await connection.wait_closed()
                    await client.wait_connected()
                reconnected = lines(caplog)
        closed = lines(caplog)
    assert [r.getMessage() for r in connected] == [
        f"connected to {endpoint} (heartbeat 5 s, frame_max {connection.frame_max}, "
        f"channel_max {connection.channel_max})"
    ]
    assert after_traffic == connected  # 200 messages, not one line
    lost, back = reconnected[1:]
    assert lost.levelno == logging.WARNING
    assert lost.getMessage().startswith(f"lost the connection to {endpoint} (")
    assert "detected by event" in lost.getMessage()
    assert back.levelno == logging.INFO
    assert back.getMessage().startswith(f"reconnected to {endpoint} after ")
    assert "(reconnect 1; the connection was lost: " in back.getMessage()
    assert [r.getMessage() for r in closed[3:]] == [f"closed the connection to {endpoint}"]
    assert all("guest:" not in r.getMessage() for r in closed)


async def test_frames_are_logged_at_debug_only_when_that_logger_is_set_and_without_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_lavin")
    users = {"framer": FRAME_PASSWORD}
    async with open_fake_broker(users=users) as broker:
        url = f"amqp://framer:{FRAME_PASSWORD}@fake-broker/"
        async with tl.open_connection(url, stream_factory=broker.connect) as connection:
            channel = await connection.channel()
            await channel.basic_publish(b"body-secret", routing_key="nowhere")
        assert not [r for r in caplog.records if r.name == "trio_lavin.frames"]
        caplog.set_level(logging.DEBUG, logger="trio_lavin.frames")
        async with tl.open_connection(url, stream_factory=broker.connect) as connection:
            channel = await connection.channel()
            await channel.basic_publish(b"body-secret", routing_key="nowhere")
    frames = [r.getMessage() for r in caplog.records if r.name == "trio_lavin.frames"]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "trio_lavin.frames")
    endpoint = tl.parse_url(url).endpoint
    assert frames[0] == f"{endpoint} -> protocol header {PROTOCOL_HEADER!r}"
    assert any(" <- ch0 Connection.Start " in f for f in frames)
    assert any(" -> ch0 Connection.StartOk " in f and "response=***" in f for f in frames)
    assert any(" -> ch1 Basic.Publish " in f and "routing_key='nowhere'" in f for f in frames)
    assert any(f.endswith(" -> ch1 ContentBody (11 bytes)") for f in frames)
    assert any(" <- ch0 Connection.CloseOk" in f for f in frames)
    for text in frames:
        assert FRAME_PASSWORD not in text
        assert "body-secret" not in text
