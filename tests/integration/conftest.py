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
from tests._broker import Broker, BrokerError, RabbitNode, free_port
from tests._websockify import Websockify
from trio_lavin.testing import FaultProxy, open_fault_proxy


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


@pytest.fixture(scope="session")
def tls_broker(
    tmp_path_factory: pytest.TempPathFactory, rabbit_broker: Broker
) -> Iterator[TLSBroker]:
    """A second node whose TLS listener verifies client certificates when
    presented (``verify_peer``, ``fail_if_no_peer_cert = false``): plain TLS
    and mutual TLS against one node."""
    del rabbit_broker  # depend on the harness fixture: RabbitMQ must be installed
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


@pytest.fixture(scope="session")
def websocket_bridge(broker: Broker) -> Iterator[Websockify]:
    """websockify bridging ws:// to the session's broker (AMQP over WebSocket)."""
    bridge = Websockify(broker.url)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.cleanup()
