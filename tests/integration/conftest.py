"""Fixtures shared by the integration tests: a fault proxy in front of the
broker, and a TLS-enabled broker node and a WebSocket bridge, each started
once per session when first needed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import trio_lavin as tl
from tests._websockify import Websockify
from trio_lavin.testing import (
    Broker,
    BrokerError,
    FaultProxy,
    RabbitNode,
    free_port,
    open_fault_proxy,
)


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the broker (connect to ``proxy.url_for(amqp_url)``)."""
    params = tl.parse_url(amqp_url)
    async with open_fault_proxy(params.host, params.port) as proxy:
        yield proxy


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


@dataclass(frozen=True)
class TLSFiles:
    """The certificates of the TLS tests: a CA, a server and a client
    certificate it issued, and a client certificate of a foreign CA."""

    folder: Path

    def __getitem__(self, name: str) -> Path:
        return self.folder / name


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
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
    return TLSFiles(folder)


def _tls_node(files: TLSFiles, *, require_client_cert: bool) -> Iterator[TLSBroker]:
    """A RabbitMQ node with a TLS listener that verifies client certificates
    when presented, and with ``require_client_cert`` refuses clients without
    one (``fail_if_no_peer_cert``)."""
    port = free_port()
    node = RabbitNode(
        config_lines=[
            f"listeners.ssl.default = 127.0.0.1:{port}",
            f"ssl_options.cacertfile = {files['ca.pem']}",
            f"ssl_options.certfile = {files['server.pem']}",
            f"ssl_options.keyfile = {files['server.key']}",
            "ssl_options.verify = verify_peer",
            f"ssl_options.fail_if_no_peer_cert = {str(require_client_cert).lower()}",
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
            files["ca.pem"],
            files["client.pem"],
            files["client.key"],
            files["foreign-ca.pem"],
            files["foreign-client.pem"],
            files["foreign-client.key"],
        )
    finally:
        node.stop()


@pytest.fixture(scope="session")
def tls_broker(tls_files: TLSFiles, rabbit_broker: Broker) -> Iterator[TLSBroker]:
    """A second node whose TLS listener verifies a client certificate when
    one is presented (``fail_if_no_peer_cert = false``): plain TLS."""
    del rabbit_broker  # depend on the harness fixture: RabbitMQ must be installed
    yield from _tls_node(tls_files, require_client_cert=False)


@pytest.fixture(scope="session")
def mtls_broker(tls_files: TLSFiles, rabbit_broker: Broker) -> Iterator[TLSBroker]:
    """A node whose TLS listener requires a client certificate from the
    test CA (``fail_if_no_peer_cert = true``): mutual TLS."""
    del rabbit_broker
    yield from _tls_node(tls_files, require_client_cert=True)


@pytest.fixture(scope="session")
def websocket_bridge(broker: Broker) -> Iterator[Websockify]:
    """websockify bridging ws:// to the session's broker (AMQP over WebSocket)."""
    bridge = Websockify(broker.url)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.cleanup()
