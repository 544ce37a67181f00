"""pytest fixtures for applications built on trio-lavin (loaded by pytest by
itself once trio-lavin is installed: the ``pytest11`` entry point).

Every name starts with ``lavin_``, so none collides with a project's own:

``lavin_amqp_url``     (session) the URL of a broker: ``AMQP_URL`` when set,
                       else a throwaway node started for the session on free
                       loopback ports (RabbitMQ; LavinMQ with
                       ``--lavin-broker=lavinmq``), stopped at the end.
``lavin_broker``       (session) the same as a :class:`Broker`: ``.url``,
                       ``.kind`` ("rabbitmq" or "lavinmq"; for the broker at
                       ``AMQP_URL``, the product it names) and ``.node`` (the
                       throwaway node, to kill and restart; None for the
                       broker at ``AMQP_URL``).
``lavin_client``       (function, async) an :func:`~trio_lavin.open_client`
                       connected to it, closed after the test.
``lavin_fault_proxy``  (function, async) a :class:`FaultProxy` in front of
                       the broker: connect to ``proxy.url_for(lavin_amqp_url)``.
``lavin_fake_broker``  (function, async) a :class:`FakeBrokerServer`; give
                       ``stream_factory=lavin_fake_broker.connect`` to a client.

The async fixtures need pytest-trio (``pip install pytest-trio``; mark the
tests ``@pytest.mark.trio`` or set ``trio_mode = true``).  A broker that
cannot be started fails the test that asked for it, with what to install.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

import trio_lavin as lavin

from ._fake_server import FakeBrokerServer, open_fake_broker
from ._fault_proxy import FaultProxy, open_fault_proxy
from ._lavinmq import LavinNode
from ._rabbitmq import Broker, BrokerError, RabbitNode

#: The ``--lavin-broker`` choices.
BROKERS = ("rabbitmq", "lavinmq")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("trio-lavin")
    group.addoption(
        "--lavin-broker",
        choices=BROKERS,
        default="rabbitmq",
        help="the throwaway broker of lavin_amqp_url when AMQP_URL is not set (default: rabbitmq)",
    )


@pytest.fixture(scope="session")
def lavin_broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The broker at ``AMQP_URL``, or a throwaway node for the session."""
    url = os.environ.get("AMQP_URL")
    if url:
        yield Broker(url=url, kind=trio.run(broker_kind, url))
        return
    kind = request.config.getoption("--lavin-broker")
    try:
        node: RabbitNode | LavinNode = RabbitNode() if kind == "rabbitmq" else LavinNode()
        node.start()
    except BrokerError as exc:
        pytest.fail(f"lavin_broker: {exc}", pytrace=False)
    try:
        yield Broker(url=node.url, node=node, kind=kind)
    finally:
        node.stop()


async def broker_kind(url: str) -> str:
    """ "rabbitmq" or "lavinmq", as the broker at ``url`` names its product
    (any other name in lower case; "unknown" when it gives none).

    Raises:
        AMQPConnectionError: no broker answers at ``url``.
    """
    with trio.fail_after(30):
        async with lavin.open_connection(url) as connection:
            product = connection.server_properties.get("product")
    if isinstance(product, bytes | bytearray):
        product = product.decode("utf-8", "replace")
    return product.lower() if isinstance(product, str) and product else "unknown"


@pytest.fixture(scope="session")
def lavin_amqp_url(lavin_broker: Broker) -> str:
    """The broker's AMQP URL."""
    return lavin_broker.url


@pytest.fixture
async def lavin_client(lavin_amqp_url: str) -> AsyncIterator[lavin.Client]:
    """A client of the broker, for the duration of the test."""
    async with lavin.open_client(lavin_amqp_url) as client:
        yield client


@pytest.fixture
async def lavin_fault_proxy(lavin_amqp_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the broker."""
    params = lavin.parse_url(lavin_amqp_url)
    async with open_fault_proxy(params.host, params.port) as proxy:
        yield proxy


@pytest.fixture
async def lavin_fake_broker() -> AsyncIterator[FakeBrokerServer]:
    """An in-process fake broker, served over in-memory streams."""
    async with open_fake_broker() as broker:
        yield broker
