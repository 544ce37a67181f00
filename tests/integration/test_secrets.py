"""Passwords stay out of logs, reprs and exception messages."""

from __future__ import annotations

import logging

import pytest
import trio

import trio_lavin as tl
from tests.conftest import SECRETS
from trio_lavin.testing import BrokerNode, open_fault_proxy

pytestmark = pytest.mark.broker

USER = "trio-lavin-secret-test"
PASSWORD = "Vq7-distinctive-Password-Zx3"
WRONG = "Wrong-distinctive-Password-Kp5"
SECRETS.update({PASSWORD, WRONG})


async def test_password_appears_in_no_log_record_repr_or_error(
    node: BrokerNode, caplog: pytest.LogCaptureFixture
) -> None:
    await trio.to_thread.run_sync(node.add_user, USER, PASSWORD)
    caplog.set_level(logging.DEBUG, logger="trio_lavin")
    texts: list[str] = []
    params = tl.parse_url(node.url)
    async with open_fault_proxy(params.host, params.port) as proxy:
        url = proxy.url_for(f"amqp://{USER}:{PASSWORD}@127.0.0.1:{params.port}/")
        config = tl.Config(heartbeat=5)
        async with tl.open_client(url, config) as client:
            connection = await client.wait_connected()
            texts += [repr(client), repr(connection), str(connection.params)]
            texts.append(repr(connection.params))
            texts.append(repr(connection._amqp))
            proxy.sever()
            error = await connection.wait_closed()
            texts.append(str(error))
            await client.wait_connected()
            texts.append(str(client.statistics()))
        bad = url.replace(PASSWORD, WRONG)
        with pytest.raises(tl.ConnectionClosedByBroker) as excinfo:
            async with tl.open_client(bad, config) as client:
                await client.wait_connected()
        texts += [str(excinfo.value), repr(excinfo.value), str(excinfo.value.__cause__)]
        with pytest.raises(ValueError, match="port") as bad_url:
            tl.parse_url(f"amqp://{USER}:{PASSWORD}@host:notaport/")
        texts.append(str(bad_url.value))
    records = [r.getMessage() for r in caplog.records]
    assert any("lost the connection" in r for r in records)
    assert any("ACCESS_REFUSED" in r for r in records)
    for text in texts + records:
        assert PASSWORD not in text, text
        assert WRONG not in text, text
    await trio.to_thread.run_sync(node.delete_user, USER)
