"""amqps:// against a real RabbitMQ node with a TLS listener, using
certificates made in the test with trustme."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

import trio_lavin as tl
from tests._broker import BrokerError, RabbitNode, free_port

pytestmark = pytest.mark.broker


@dataclass(frozen=True)
class TLSBroker:
    port: int
    ca_file: Path
    client_cert: Path
    client_key: Path
    foreign_ca_file: Path
    foreign_client_cert: Path
    foreign_client_key: Path

    def url(self, query: str = "") -> str:
        return f"amqps://guest:guest@localhost:{self.port}/{'?' + query if query else ''}"


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, broker: object) -> Iterator[TLSBroker]:
    """A second node whose TLS listener verifies client certificates when
    presented (``verify_peer``, ``fail_if_no_peer_cert = false``): plain TLS
    and mutual TLS against one node."""
    del broker  # depend on the harness fixture: RabbitMQ must be installed
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("trio-lavin-test-client")
    foreign = trustme.CA()
    foreign_client = foreign.issue_cert("intruder")
    files = {
        "ca.pem": ca.cert_pem,
        "server.pem": server.cert_chain_pems[0],
        "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
        "foreign-ca.pem": foreign.cert_pem,
        "foreign-client.pem": foreign_client.cert_chain_pems[0],
        "foreign-client.key": foreign_client.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(folder / name))
    port = free_port()
    node = RabbitNode(
        config_lines=[
            f"listeners.ssl.default = 127.0.0.1:{port}",
            f"ssl_options.cacertfile = {folder / 'ca.pem'}",
            f"ssl_options.certfile = {folder / 'server.pem'}",
            f"ssl_options.keyfile = {folder / 'server.key'}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = false",
        ]
    )
    try:
        node.start()
    except BrokerError as exc:
        node.stop()
        pytest.fail(f"could not start the TLS broker: {exc}", pytrace=False)
    try:
        yield TLSBroker(
            port,
            folder / "ca.pem",
            folder / "client.pem",
            folder / "client.key",
            folder / "foreign-ca.pem",
            folder / "foreign-client.pem",
            folder / "foreign-client.key",
        )
    finally:
        node.stop()


async def test_trusted_certificate_connects_with_verification_and_sni(
    tls_broker: TLSBroker,
) -> None:
    url = tls_broker.url(f"cacertfile={tls_broker.ca_file}")
    async with tl.open_connection(url) as conn:
        channel = await conn.channel()
        queue = (await channel.queue_declare("", exclusive=True)).queue
        await channel.confirm_select()
        await channel.publish(b"over tls", routing_key=queue)
        delivery = await channel.basic_get(queue, no_ack=True)
        assert delivery is not None
        assert delivery.body == b"over tls"
        stream = conn._stream
        assert isinstance(stream, trio.SSLStream)
        assert stream.server_hostname == "localhost"
        assert stream.getpeercert() is not None


async def test_untrusted_certificate_fails_clearly(tls_broker: TLSBroker) -> None:
    # Verified against a CA that did not sign the broker's certificate.
    url = tls_broker.url(f"cacertfile={tls_broker.foreign_ca_file}")
    with pytest.raises(tl.ConnectionLost, match="TLS handshake with amqps://localhost") as exc:
        async with tl.open_connection(url):
            pass
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc.value)


async def test_untrusted_certificate_is_fatal_for_open_client_not_retried_forever(
    tls_broker: TLSBroker,
) -> None:
    url = tls_broker.url(f"cacertfile={tls_broker.foreign_ca_file}")
    config = tl.Config(max_fatal_attempts=3)
    with trio.fail_after(15), pytest.raises(tl.ConnectionLost, match="gave up after 3") as exc:
        async with tl.open_client(url, config) as client:
            await client.wait_connected()
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc.value)


async def test_mutual_tls_presents_the_client_certificate(tls_broker: TLSBroker) -> None:
    url = tls_broker.url(
        f"cacertfile={tls_broker.ca_file}&certfile={tls_broker.client_cert}"
        f"&keyfile={tls_broker.client_key}"
    )
    async with tl.open_connection(url) as conn:
        stream = conn._stream
        assert isinstance(stream, trio.SSLStream)
        channel = await conn.channel()
        await channel.queue_declare("", exclusive=True)


async def test_client_certificate_from_a_foreign_ca_is_rejected(tls_broker: TLSBroker) -> None:
    url = tls_broker.url(
        f"cacertfile={tls_broker.ca_file}&certfile={tls_broker.foreign_client_cert}"
        f"&keyfile={tls_broker.foreign_client_key}"
    )
    # With TLS 1.3 the broker's refusal arrives on the first read, i.e.
    # during the AMQP handshake rather than the TLS one.
    with pytest.raises(tl.ConnectionLost):
        async with tl.open_connection(url):
            pass


async def test_verification_opt_out_connects_and_logs_a_warning(
    tls_broker: TLSBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_lavin")
    async with tl.open_connection(tls_broker.url("verify=verify_none")) as conn:
        assert conn.is_open
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("verification is OFF" in w for w in warnings)


async def test_default_context_verifies_and_refuses_a_private_ca(tls_broker: TLSBroker) -> None:
    # No cacertfile: the system CAs do not know the test CA.
    with pytest.raises(tl.ConnectionLost, match="CERTIFICATE_VERIFY_FAILED"):
        async with tl.open_connection(tls_broker.url()):
            pass
