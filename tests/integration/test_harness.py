"""The broker harness itself works: real brokers (RabbitMQ and LavinMQ), controllable by
the tests.

Deliberately uses only plain sockets and pamqp, not trio_lavin.
"""

from __future__ import annotations

import re
import socket
import struct
import time
import urllib.parse
from pathlib import Path
from typing import TypeVar

import pytest
from pamqp import body, commands, frame, header, heartbeat
from pamqp.base import Frame

from trio_lavin.testing import BrokerNode, LavinNode, LavinNotFound, RabbitNode, find_lavinmq

F = TypeVar("F", bound=Frame)


class RawConnection:
    """Just enough AMQP 0-9-1, by hand, to poke at the broker."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")
        self.vhost = urllib.parse.unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672))
        self.sock.settimeout(timeout)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, channel: int, *frames: frame.FrameTypes) -> None:
        self.sock.sendall(b"".join(frame.marshal(f, channel) for f in frames))

    def recv(self) -> tuple[int, frame.FrameTypes]:
        while True:
            if len(self._buf) >= 7:
                (size,) = struct.unpack(">I", self._buf[3:7])
                if len(self._buf) >= size + 8:
                    used, channel, value = frame.unmarshal(self._buf[: size + 8])
                    self._buf = self._buf[used:]
                    return channel, value
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the broker closed the TCP connection")
            self._buf += data

    def expect(self, cls: type[F]) -> F:
        while True:
            _, value = self.recv()
            if isinstance(value, heartbeat.Heartbeat):
                continue
            assert isinstance(value, cls), f"expected {cls.__name__}, got {value!r}"
            return value

    def open(self) -> None:
        self.sock.sendall(header.ProtocolHeader().marshal())
        self.expect(commands.Connection.Start)
        self.send(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "trio-lavin test harness"},
                mechanism="PLAIN",
                response=f"\0{self.user}\0{self.password}",
                locale="en_US",
            ),
        )
        tune = self.expect(commands.Connection.Tune)
        self.send(
            0,
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
            ),
            commands.Connection.Open(virtual_host=self.vhost),
        )
        self.expect(commands.Connection.OpenOk)


def _host_port(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


@pytest.mark.broker
def test_broker_answers_protocol_header_with_connection_start(amqp_url: str) -> None:
    with socket.create_connection(_host_port(amqp_url), timeout=10) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while len(data) < 7 or len(data) < struct.unpack(">I", data[3:7])[0] + 8:
            chunk = sock.recv(65536)
            assert chunk, "broker closed the connection before a whole frame arrived"
            data += chunk
    assert data[0] == 1  # a method frame
    _, channel, start = frame.unmarshal(data)
    assert channel == 0
    assert isinstance(start, commands.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert "PLAIN" in start.mechanisms.split()


@pytest.mark.broker
def test_handshake_with_guest_over_loopback(amqp_url: str) -> None:
    with RawConnection(amqp_url) as conn:
        conn.open()
        conn.send(
            0, commands.Connection.Close(reply_code=200, reply_text="bye", class_id=0, method_id=0)
        )
        conn.expect(commands.Connection.CloseOk)


# RabbitMQ only: rabbitmqctl is RabbitMQ's own tool.
@pytest.mark.broker
def test_rabbitmqctl_status(rabbit_node: RabbitNode) -> None:
    out = rabbit_node.rabbitmqctl("status")
    assert rabbit_node.nodename in out
    assert "RabbitMQ version" in out
    assert "\x1b[" not in out


# LavinMQ only: its management API on the HTTP port (RabbitMQ's needs a plugin the
# harness does not enable).
@pytest.mark.broker
def test_lavinmq_api_answers_on_the_http_port(lavinmq_node: LavinNode) -> None:
    overview = lavinmq_node.api("GET", "/api/overview")
    assert overview["lavinmq_version"]
    with RawConnection(lavinmq_node.url) as conn:
        conn.open()
        assert len(lavinmq_node.list_connection_names()) == 1


@pytest.mark.broker
def test_close_all_connections_sends_connection_forced(node: BrokerNode) -> None:
    with RawConnection(node.url) as conn:
        conn.open()
        assert node.close_all_connections("harness test") == 1
        close = conn.expect(commands.Connection.Close)
        assert close.reply_code == 320
        assert "harness test" in close.reply_text
        conn.send(0, commands.Connection.CloseOk())
    assert node.close_all_connections("none left") == 0


def _queue_depth(url: str, queue: str) -> int | str:
    """The message count of ``queue`` (passive declare), or what went wrong instead (a
    node that is still recovering its queues may refuse, or say 404)."""
    try:
        with RawConnection(url, timeout=5) as conn:
            conn.open()
            conn.send(1, commands.Channel.Open())
            conn.expect(commands.Channel.OpenOk)
            conn.send(1, commands.Queue.Declare(queue=queue, durable=True, passive=True))
            _, reply = conn.recv()
    except (OSError, EOFError) as exc:
        return repr(exc)
    if isinstance(reply, commands.Queue.DeclareOk):
        return int(reply.message_count or 0)
    return f"{reply.name} {getattr(reply, 'reply_code', '')} {getattr(reply, 'reply_text', '')}"


@pytest.mark.broker
@pytest.mark.slow
def test_kill_and_restart_keeps_port_durable_queue_and_persistent_message(
    node: BrokerNode,
) -> None:
    queue = f"harness.durable.{node.kind}"
    with RawConnection(node.url) as conn:
        conn.open()
        conn.send(1, commands.Channel.Open())
        conn.expect(commands.Channel.OpenOk)
        conn.send(1, commands.Queue.Declare(queue=queue, durable=True))
        conn.expect(commands.Queue.DeclareOk)
        conn.send(1, commands.Confirm.Select())
        conn.expect(commands.Confirm.SelectOk)
        payload = b"survives a crash"
        conn.send(
            1,
            commands.Basic.Publish(exchange="", routing_key=queue),
            header.ContentHeader(
                body_size=len(payload), properties=commands.Basic.Properties(delivery_mode=2)
            ),
            body.ContentBody(payload),
        )
        conn.expect(commands.Basic.Ack)
        if isinstance(node, RabbitNode):
            # RabbitMQ confirms the message once it is on disk, but it writes the queue's
            # own record (Mnesia's transaction log) in the background: a SIGKILL a few ms
            # after queue.declare-ok can lose the queue ("Recovering 0 queues" at the next
            # boot; seen here on a loaded machine, 1 run in 6).  Flush that log first.
            node.rabbitmqctl("eval", "mnesia:sync_log().")

        port = node.amqp_port
        node.kill()
        assert not node.is_running()
        with pytest.raises((EOFError, ConnectionError)):
            conn.recv()
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass

    node.restart()
    assert node.amqp_port == port
    assert node.url.endswith(f":{port}/")
    # RabbitMQ recovers durable queues just after it starts listening: poll, bounded.
    deadline = time.monotonic() + 15
    while (depth := _queue_depth(node.url, queue)) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert depth == 1

    with RawConnection(node.url) as conn:
        conn.open()
        conn.send(1, commands.Channel.Open())
        conn.expect(commands.Channel.OpenOk)
        conn.send(1, commands.Queue.Delete(queue=queue))
        deleted = conn.expect(commands.Queue.DeleteOk)
        assert deleted.message_count == 1


def test_find_lavinmq_takes_the_lavinmq_variable_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "my-lavinmq"
    monkeypatch.setenv("LAVINMQ", str(fake))
    assert find_lavinmq() == fake  # even when it names nothing: LavinNode then says so


def test_a_lavinmq_variable_naming_no_executable_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_a_binary = tmp_path / "lavinmq.txt"
    not_a_binary.write_text("")
    monkeypatch.setenv("LAVINMQ", str(not_a_binary))
    with pytest.raises(LavinNotFound, match=re.escape(str(not_a_binary))):
        LavinNode()
    monkeypatch.setenv("LAVINMQ", str(tmp_path / "missing"))
    with pytest.raises(LavinNotFound, match="LAVINMQ=/path/to/lavinmq"):
        LavinNode()
