"""amqps:// against a real RabbitMQ node with a TLS listener, using
certificates made in the test with trustme.

RabbitMQ only: the mutual-TLS cases need a broker that verifies client
certificates, which LavinMQ 1.0.1 cannot (its TLS context has no CA or
verify option), and the session's LavinMQ node runs with its TLS listener
off (a second, TLS-enabled LavinMQ would contend for /tmp/lavinmqctl.sock).
The server-certificate cases on LavinMQ are still to do.
"""

from __future__ import annotations

import logging

import pytest
import trio

import trio_lavin as tl
from tests.integration.conftest import TLSBroker

pytestmark = pytest.mark.broker


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


async def test_mutual_tls_presents_the_client_certificate(mtls_broker: TLSBroker) -> None:
    """The broker requires a client certificate: with ours the connection
    works, and (the next test) without one it is refused."""
    url = mtls_broker.url(
        f"cacertfile={mtls_broker.ca_file}&certfile={mtls_broker.client_cert}"
        f"&keyfile={mtls_broker.client_key}"
    )
    async with tl.open_connection(url) as conn:
        stream = conn._stream
        assert isinstance(stream, trio.SSLStream)
        channel = await conn.channel()
        await channel.queue_declare("", exclusive=True)


async def test_a_client_without_a_certificate_is_refused_where_one_is_required(
    mtls_broker: TLSBroker,
) -> None:
    url = mtls_broker.url(f"cacertfile={mtls_broker.ca_file}")
    # With TLS 1.3 the broker's refusal arrives on the first read, i.e.
    # during the AMQP handshake rather than the TLS one.
    with trio.fail_after(10), pytest.raises(tl.ConnectionLost):
        async with tl.open_connection(url):
            pass


async def test_client_certificate_from_a_foreign_ca_is_rejected(mtls_broker: TLSBroker) -> None:
    url = mtls_broker.url(
        f"cacertfile={mtls_broker.ca_file}&certfile={mtls_broker.foreign_client_cert}"
        f"&keyfile={mtls_broker.foreign_client_key}"
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
