"""Messages cross between trio-lavin and the other Python clients through the
real broker with every property and field type intact, and a message whose
text is not UTF-8 reaches the application instead of taking the connection
down (issue 16)."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any

import amqp
import pika
import pytest
import trio

import trio_lavin as tl
from trio_lavin._params import parse_url

from ._names import unique

pytestmark = pytest.mark.broker

UTC = datetime.UTC
WHEN = datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)

#: Header values both peers encode faithfully (each peer's gaps are added below).
COMMON_HEADERS: dict[str, Any] = {
    "text": "hé",
    "empty": "",
    "small": 5,
    "negative": -3,
    "big": 2**40,
    "very negative": -(2**40),
    "yes": True,
    "no": False,
    "decimal": Decimal("1.25"),
    "when": WHEN,
    "list": [1, "a", [True]],
    "table": {"k": "v", "n": {"deep": 1}},
    "nothing": None,
}
PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "delivery_mode": 2,
    "priority": 5,
    "correlation_id": "corr-1",
    "reply_to": "replies",
    "expiration": "60000",
    "message_id": "msg-1",
    "app_id": "interop",
    "user_id": "guest",  # the broker checks it against the connection's user
}


def _pika_parameters(url: str) -> pika.URLParameters:
    return pika.URLParameters(url)


def _amqp_connection(url: str) -> amqp.Connection:
    params = parse_url(url)
    connection = amqp.Connection(
        host=f"{params.host}:{params.port}",
        userid=params.username,
        password=params.password,
        virtual_host=params.virtual_host,
    )
    connection.connect()
    return connection


def _declare(client_url: str, queue: str) -> None:
    with pika.BlockingConnection(_pika_parameters(client_url)) as connection:
        connection.channel().queue_declare(queue, arguments={"x-expires": 60_000})


async def _is_lavinmq(url: str) -> bool:
    async with tl.open_client(url) as client:
        connection = await client.wait_connected()
        return bool(connection.server_properties.get("product") == "LavinMQ")


async def _get_one(client: tl.Client, queue: str) -> tl.Delivery:
    async with client.consume(queue, prefetch=1) as consumer:
        with trio.fail_after(10):
            delivery = await consumer.__anext__()
        assert await delivery.ack()
        return delivery


# -- peer -> trio-lavin ----------------------------------------------------------------------


async def test_pika_publishes_every_property_and_trio_lavin_reads_them(amqp_url: str) -> None:
    queue = unique()
    await trio.to_thread.run_sync(_declare, amqp_url, queue)
    headers = {**COMMON_HEADERS, "bytes": b"\x00\xff"}

    def publish() -> None:
        with pika.BlockingConnection(_pika_parameters(amqp_url)) as connection:
            connection.channel().basic_publish(
                "",
                queue,
                b"from pika",
                pika.BasicProperties(
                    **PROPERTIES, headers=headers, timestamp=int(WHEN.timestamp()), type="t"
                ),
            )

    await trio.to_thread.run_sync(publish)
    async with tl.open_client(amqp_url) as client:
        delivery = await _get_one(client, queue)
    assert delivery.body == b"from pika"
    got = delivery.properties
    assert got.headers == headers
    assert type(got.headers["bytes"]) is bytes
    assert type(got.headers["decimal"]) is Decimal
    assert got.timestamp == WHEN
    assert got.message_type == "t"
    for name, value in PROPERTIES.items():
        assert getattr(got, name) == value, name


async def test_py_amqp_publishes_every_property_and_trio_lavin_reads_them(amqp_url: str) -> None:
    queue = unique()
    await trio.to_thread.run_sync(_declare, amqp_url, queue)
    headers = {**COMMON_HEADERS, "float": 0.1, "tiny": 1e-300, "huge": 1e300}
    if await _is_lavinmq(amqp_url):
        # py-amqp sends ints beyond 32 bits as "L", which LavinMQ 1.0.1 does
        # not know: it closes the connection (541 "Unknown field type '76'").
        del headers["big"], headers["very negative"]

    def publish() -> None:
        connection = _amqp_connection(amqp_url)
        try:
            message = amqp.Message(
                b"from py-amqp",
                application_headers=headers,
                timestamp=int(WHEN.timestamp()),
                type="t",
                **PROPERTIES,
            )
            connection.channel().basic_publish(message, exchange="", routing_key=queue)
        finally:
            connection.close()

    await trio.to_thread.run_sync(publish)
    async with tl.open_client(amqp_url) as client:
        delivery = await _get_one(client, queue)
    assert delivery.body == b"from py-amqp"
    got = delivery.properties
    assert got.headers == headers  # the floats to the last bit: py-amqp sends doubles
    assert got.timestamp == WHEN
    for name, value in PROPERTIES.items():
        assert getattr(got, name) == value, name


# -- trio-lavin -> peer ----------------------------------------------------------------------


async def _publish_from_trio_lavin(url: str, queue: str, headers: dict[str, Any]) -> None:
    async with tl.open_client(url) as client:
        producer = client.producer(queue)
        with trio.fail_after(10):
            assert await producer.publish(
                b"from trio-lavin",
                properties=tl.BasicProperties(
                    **PROPERTIES, headers=headers, timestamp=WHEN, message_type="t"
                ),
            )


async def test_trio_lavin_publishes_every_property_and_pika_reads_them(amqp_url: str) -> None:
    queue = unique()
    await trio.to_thread.run_sync(_declare, amqp_url, queue)
    # pika has no float type (it reads doubles as ints): none here.
    headers = {**COMMON_HEADERS, "bytes": b"\x00\xff"}
    await _publish_from_trio_lavin(amqp_url, queue, headers)

    def get() -> tuple[Any, bytes]:
        with pika.BlockingConnection(_pika_parameters(amqp_url)) as connection:
            method, properties, body = connection.channel().basic_get(queue, auto_ack=True)
            assert method is not None
            return properties, body

    properties, body = await trio.to_thread.run_sync(get)
    assert body == b"from trio-lavin"
    assert properties.headers == headers
    assert properties.timestamp == int(WHEN.timestamp())
    assert properties.type == "t"
    for name, value in PROPERTIES.items():
        assert getattr(properties, name) == value, name


async def test_trio_lavin_publishes_every_property_and_py_amqp_reads_them(amqp_url: str) -> None:
    queue = unique()
    await trio.to_thread.run_sync(_declare, amqp_url, queue)
    headers = {**COMMON_HEADERS, "float": 0.1, "tiny": 1e-300, "huge": 1e300, "bytes": b"\x00\xff"}
    await _publish_from_trio_lavin(amqp_url, queue, headers)

    def get() -> amqp.Message:
        connection = _amqp_connection(amqp_url)
        try:
            message = connection.channel().basic_get(queue, no_ack=True)
            assert message is not None
            return message
        finally:
            connection.close()

    message = await trio.to_thread.run_sync(get)
    assert message.body == "from trio-lavin"  # decoded by py-amqp: content_encoding is set
    got = message.properties
    # py-amqp gives datetimes back naive (in UTC)
    expected = {**headers, "when": WHEN.replace(tzinfo=None)}
    assert got["application_headers"] == expected
    assert got["timestamp"] == int(WHEN.timestamp())  # py-amqp gives the seconds
    assert got["type"] == "t"
    for name, value in PROPERTIES.items():
        assert got[name] == value, name


# -- text that is not UTF-8 ------------------------------------------------------------------


async def test_a_message_whose_text_is_not_utf8_is_delivered_and_the_connection_stays_up(
    amqp_url: str,
) -> None:
    """Regression: the broker relays a message id, a header key and a routing
    key as the publisher sent them; decoding them as UTF-8 failed the whole
    connection (501), the message stayed at the head of the queue, and the
    consumer reconnected for ever."""
    queue, exchange = unique(), unique("topic")

    def publish() -> None:
        with pika.BlockingConnection(_pika_parameters(amqp_url)) as connection:
            channel = connection.channel()
            channel.exchange_declare(exchange, "topic", auto_delete=True)
            channel.queue_declare(queue, arguments={"x-expires": 60_000})
            channel.queue_bind(queue, exchange, "#")
            properties = pika.BasicProperties(message_id=b"id-\xff\xfe", headers={"h": b"x"})
            channel.basic_publish(exchange, b"key.\xc3(", b"poison", properties)
            channel.basic_publish(exchange, "key.fine", b"fine")

    await trio.to_thread.run_sync(publish)
    async with tl.open_client(amqp_url) as client:
        connection = await client.wait_connected()
        received = []
        async with client.consume(queue, prefetch=10) as consumer:
            with trio.fail_after(10):
                async for delivery in consumer:
                    received.append(delivery)
                    assert await delivery.ack()
                    if len(received) == 2:
                        break
        assert await client.wait_connected() is connection  # never reconnected
        assert client.statistics().reconnects == 0
    poison, fine = received
    assert poison.body == b"poison"
    assert poison.properties.message_id is not None
    assert poison.properties.message_id.encode("utf-8", "surrogateescape") == b"id-\xff\xfe"
    assert poison.routing_key.encode("utf-8", "surrogateescape") == b"key.\xc3("
    assert fine.body == b"fine"
    assert fine.routing_key == "key.fine"
