"""Transport set-up that needs no broker."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
import trio

import trio_lavin as tl
from trio_lavin._io._transport import make_ssl_context


def test_tls_context_verifies_certificates_and_host_names_by_default() -> None:
    context = make_ssl_context(tl.parse_url("amqps://localhost/"))
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_verification_opt_out_is_explicit_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_lavin")
    context = make_ssl_context(tl.parse_url("amqps://u:secret@localhost/?verify=verify_none"))
    assert context.verify_mode is ssl.CERT_NONE
    assert not context.check_hostname
    [record] = caplog.records
    assert "verification is OFF for amqps://localhost:5671/%2F" in record.getMessage()
    assert "secret" not in record.getMessage()


class SilentServer:
    """A loopback TCP listener that accepts, never answers, and notes when
    each client closes its side."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.accepted = 0
        self.closed = 0

    @property
    def port(self) -> int:
        return int(self.listener.socket.getsockname()[1])

    async def serve(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        try:
            while await stream.receive_some(4096):
                pass  # a TLS ClientHello: never answered
        except trio.BrokenResourceError:
            pass
        self.closed += 1


@pytest.fixture
async def silent_server(nursery: trio.Nursery) -> SilentServer:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = SilentServer(listener)
    nursery.start_soon(trio.serve_listeners, server.serve, [listener])
    return server


async def test_a_tls_handshake_cut_short_by_a_timeout_closes_its_socket(
    silent_server: SilentServer,
) -> None:
    """Cancelled in the middle of a TLS handshake (here by connect_timeout),
    the client closes the TCP connection it opened (it stayed open)."""
    url = f"amqps://127.0.0.1:{silent_server.port}/?verify=verify_none"
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with tl.open_connection(url, connect_timeout=0.2):
                pass
    with trio.fail_after(5):
        while silent_server.closed < 3:
            await trio.sleep(0.01)
    assert (silent_server.accepted, silent_server.closed) == (3, 3)


async def test_a_ca_file_that_cannot_be_read_is_refused_before_connecting(
    silent_server: SilentServer, tmp_path: Path
) -> None:
    """A ``cacertfile`` that does not exist is a ValueError naming it, as a
    bad URL is, out of open_client too, at once (it was a FileNotFoundError
    after connecting, leaving the socket open, which open_client retried for
    ever); no connection is made."""
    missing = tmp_path / "no-such-ca.pem"
    url = f"amqps://127.0.0.1:{silent_server.port}/?cacertfile={missing}"
    with pytest.raises(ValueError, match=r"cacertfile .*no-such-ca\.pem"):
        async with tl.open_connection(url, connect_timeout=2):
            pass
    with trio.fail_after(5), pytest.raises(ValueError, match=r"cacertfile .*no-such-ca\.pem"):
        async with tl.open_client(url) as client:
            await client.wait_connected()
    assert silent_server.accepted == 0
