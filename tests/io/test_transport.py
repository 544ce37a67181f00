"""Transport set-up that needs no broker."""

from __future__ import annotations

import logging
import ssl

import pytest

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
