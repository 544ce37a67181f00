"""Queue types by name: ``queue_arguments`` and ``declare_queue(queue_type=...)``."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import trio_lavin as tl
from trio_lavin._queues import unhonoured_queue_type
from trio_lavin._robust._topology import QueueDeclaration
from trio_lavin.testing import FakeBrokerServer, open_fake_broker


@pytest.fixture
async def broker() -> AsyncIterator[FakeBrokerServer]:
    async with open_fake_broker(heartbeat=10) as broker:
        yield broker


def test_queue_arguments_name_each_type_and_its_settings() -> None:
    assert tl.queue_arguments() == {"x-queue-type": "classic"}
    assert tl.queue_arguments(
        tl.QueueType.QUORUM,
        delivery_limit=5,
        initial_group_size=3,
        max_length=1000,
        overflow="reject-publish",
    ) == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-quorum-initial-group-size": 3,
        "x-max-length": 1000,
        "x-overflow": "reject-publish",
    }
    assert tl.queue_arguments(
        tl.QueueType.STREAM,
        max_age="7D",
        max_length_bytes=10**9,
        max_segment_size_bytes=10**8,
        extra={"x-queue-leader-locator": "client-local"},
    ) == {
        "x-queue-type": "stream",
        "x-max-age": "7D",
        "x-max-length-bytes": 10**9,
        "x-stream-max-segment-size-bytes": 10**8,
        "x-queue-leader-locator": "client-local",
    }


def test_single_active_consumer_is_for_classic_and_quorum_queues() -> None:
    for queue_type in (tl.QueueType.CLASSIC, tl.QueueType.QUORUM):
        assert tl.queue_arguments(queue_type, single_active_consumer=True) == {
            "x-queue-type": queue_type.value,
            "x-single-active-consumer": True,
        }
    with pytest.raises(ValueError, match="single_active_consumer is for classic and quorum"):
        tl.queue_arguments(tl.QueueType.STREAM, single_active_consumer=True)
    with pytest.raises(ValueError, match="must be True or False, not 'yes'"):
        tl.queue_arguments(single_active_consumer="yes")  # type: ignore[arg-type]


def test_queue_arguments_refuse_a_type_given_as_a_string() -> None:
    with pytest.raises(TypeError, match="queue_type must be a QueueType, not 'quorum'"):
        tl.queue_arguments("quorum")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 0}, "max_length must be an integer >= 1, not 0"),
        ({"max_length_bytes": True}, "max_length_bytes must be an integer >= 1, not True"),
        ({"overflow": "drop-tail"}, "overflow must be one of drop-head, reject-publish"),
        (
            {"queue_type": tl.QueueType.CLASSIC, "delivery_limit": 3},
            "delivery_limit is for quorum queues, not classic ones (got delivery_limit=3)",
        ),
        (
            {"queue_type": tl.QueueType.QUORUM, "max_age": "1D"},
            "max_age is for stream queues, not quorum ones (got max_age='1D')",
        ),
        (
            {"queue_type": tl.QueueType.STREAM, "max_age": "7 days"},
            "max_age must be a number and a unit (Y, M, D, h, m or s), e.g. '7D', not '7 days'",
        ),
        (
            {"queue_type": tl.QueueType.STREAM, "overflow": "drop-head"},
            "overflow is not supported by stream queues (got 'drop-head')",
        ),
        (
            {"queue_type": tl.QueueType.QUORUM, "extra": {"x-queue-type": "classic"}},
            "extra sets 'x-queue-type', which is already set to 'quorum'",
        ),
    ],
)
def test_queue_arguments_refuse_bad_values_naming_them(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        tl.queue_arguments(**kwargs)


async def test_declare_queue_with_a_type_sends_x_queue_type_and_records_it(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        await client.declare_queue("orders", durable=True, queue_type=tl.QueueType.QUORUM)
        await client.declare_queue(
            "log",
            durable=True,
            arguments=tl.queue_arguments(tl.QueueType.STREAM, max_age="1h"),
        )
        await client.declare_queue("plain")
        assert broker.queue("orders").arguments == {"x-queue-type": "quorum"}
        assert broker.queue("log").arguments == {"x-queue-type": "stream", "x-max-age": "1h"}
        assert broker.queue("plain").arguments == {}
        # Recorded with its type, for re-declaring after a reconnect.
        recorded = {
            entry.name: entry.arguments
            for entry in client._topology.entries
            if isinstance(entry, QueueDeclaration)
        }
        assert recorded == {
            "orders": {"x-queue-type": "quorum"},
            "log": {"x-queue-type": "stream", "x-max-age": "1h"},
            "plain": None,
        }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"durable": False}, "a quorum queue must be durable: declare 'q' with durable=True"),
        (
            {"durable": True, "exclusive": True},
            "a quorum queue cannot be exclusive: declare 'q' with exclusive=False",
        ),
        (
            {"durable": True, "auto_delete": True},
            "a quorum queue cannot be auto-delete: declare 'q' with auto_delete=False",
        ),
        (
            {"durable": True, "arguments": {"x-queue-type": "classic"}},
            "queue_type='quorum' but arguments say x-queue-type='classic'",
        ),
    ],
)
async def test_declare_queue_refuses_a_quorum_queue_the_broker_would_refuse(
    broker: FakeBrokerServer, kwargs: dict[str, Any], message: str
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        with pytest.raises(ValueError, match=re.escape(message)):
            await client.declare_queue("q", queue_type=tl.QueueType.QUORUM, **kwargs)
        assert broker.queue_names() == []


async def test_declare_queue_checks_the_type_given_in_the_arguments(
    broker: FakeBrokerServer,
) -> None:
    async with tl.open_client(stream_factory=broker.connect) as client:
        with pytest.raises(ValueError, match="a stream queue must be durable"):
            await client.declare_queue("s", arguments={"x-queue-type": "stream"})
        with pytest.raises(ValueError, match="x-queue-type must be one of 'classic', 'quorum'"):
            await client.declare_queue("s", arguments={"x-queue-type": "qourum"})


@pytest.mark.parametrize(
    ("product", "version", "queue_type", "warning"),
    [
        ("LavinMQ", "1.0.1", "quorum", "LavinMQ 1.0.1 has no quorum queues"),
        ("LavinMQ", "2.6.1", "quorum", "LavinMQ 2.6.1 has no quorum queues"),
        ("LavinMQ", "1.0.1", "stream", "LavinMQ 1.0.1 has no stream queues (they came in 1.2.0)"),
        ("LavinMQ", "1.2.0", "stream", None),
        ("LavinMQ", "1.0.1", "classic", None),
        ("RabbitMQ", "3.10.8", "quorum", None),
        ("RabbitMQ", "3.10.8", "stream", None),
    ],
)
def test_a_queue_type_the_broker_lacks_is_named_with_the_broker_and_its_version(
    product: str, version: str, queue_type: str, warning: str | None
) -> None:
    found = unhonoured_queue_type(
        {"product": product, "version": version}, "orders", {"x-queue-type": queue_type}
    )
    if warning is None:
        assert found is None
    else:
        assert found == (
            f"queue 'orders': {warning}; it is a classic queue (x-queue-type ignored)"
        )


def test_no_queue_type_or_no_arguments_warns_of_nothing() -> None:
    lavinmq = {"product": "LavinMQ", "version": "1.0.1"}
    assert unhonoured_queue_type(lavinmq, "q", None) is None
    assert unhonoured_queue_type(lavinmq, "q", {"x-max-length": 5}) is None


def test_dead_lettering_ttls_and_priorities_by_keyword() -> None:
    assert tl.queue_arguments(
        dead_letter_exchange="dlx",
        dead_letter_routing_key="failed",
        message_ttl=60_000,
        expires=3_600_000,
        max_priority=10,
    ) == {
        "x-queue-type": "classic",
        "x-dead-letter-exchange": "dlx",
        "x-dead-letter-routing-key": "failed",
        "x-message-ttl": 60_000,
        "x-expires": 3_600_000,
        "x-max-priority": 10,
    }
    assert tl.queue_arguments(tl.QueueType.QUORUM, dead_letter_exchange="", message_ttl=0) == {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": "",  # the default exchange: by the routing key
        "x-message-ttl": 0,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dead_letter_routing_key": "k"},
            "dead_letter_routing_key='k' needs a dead_letter_exchange",
        ),
        (
            {"dead_letter_exchange": "x" * 256},
            "dead_letter_exchange must be a name of at most 255",
        ),
        ({"message_ttl": -1}, r"message_ttl must be an integer >= 0, not -1"),
        ({"expires": 0}, r"expires must be an integer >= 1, not 0"),
        ({"max_priority": 0}, "max_priority must be from 1 to 255, not 0"),
        ({"max_priority": "9"}, "max_priority must be an integer from 1 to 255, not '9'"),
        ({"queue_type": tl.QueueType.QUORUM, "max_priority": 5}, "max_priority is for classic"),
        ({"queue_type": tl.QueueType.STREAM, "message_ttl": 5}, "stream queues keep messages by"),
        ({"queue_type": tl.QueueType.STREAM, "dead_letter_exchange": "d"}, "do not dead-letter"),
    ],
)
def test_a_dead_letter_ttl_or_priority_argument_that_cannot_work_is_refused(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        tl.queue_arguments(**kwargs)
