"""client.statistics() after known traffic on the real broker, and the
Prometheus endpoint scraped over HTTP."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trio_lavin as tl
from trio_lavin.prometheus import ClientCollector, serve_metrics
from trio_lavin.testing import FaultProxy

from ._names import unique

pytestmark = pytest.mark.broker

CONFIG = tl.Config(heartbeat=5)
N = 40


async def known_traffic(client: tl.Client, queue: str) -> tl.Delivery:
    """N confirmed messages published and consumed: N - 1 acked, one nacked
    (requeued, so it comes back redelivered and is acked then).  Returns a
    delivery whose channel is closed by the time this returns."""
    await client.declare_queue(queue)
    producer = client.producer(queue)
    for i in range(N):
        await producer.enqueue(b"message %d" % i)
    with trio.fail_after(10):
        await producer.drain()
    async with client.consume(queue, prefetch=N) as consumer:
        with trio.fail_after(10):
            first = await consumer.__anext__()
            assert await first.nack(requeue=True)
            seen = 1
            async for delivery in consumer:
                assert await delivery.ack()
                seen += 1
                if seen == N + 1:
                    break
    return first


async def test_statistics_count_published_confirmed_consumed_acked_and_redelivered(
    amqp_url: str,
) -> None:
    queue = unique()
    async with tl.open_client(amqp_url, CONFIG) as client:
        try:
            stale = await known_traffic(client, queue)
            # Its channel closed with the consumer: the ack is not sent, and counted.
            assert await stale.ack() is False
            stats = client.statistics()
        finally:
            await client.delete_queue(queue)
    assert stats.published == N
    assert stats.republished == 0
    assert stats.confirmed == N
    assert (stats.nacked, stats.returned, stats.buffered, stats.in_flight) == (0, 0, 0, 0)
    assert stats.dropped == dict.fromkeys(tl.DropReason, 0)
    assert stats.consumed == N + 1
    assert stats.redelivered == 1
    assert stats.acked == N
    assert [p.target for p in stats.producers] == [queue]
    assert stats.producers[0].confirmed == N
    assert stats.consumers == (
        tl.ConsumerStatistics(
            queue=queue,
            consumers=0,
            subscriptions=1,
            consumed=N + 1,
            redelivered=1,
            acked=N,
            nacked=1,
            rejected=0,
            stale_acks=1,
            buffered=0,
        ),
    )
    assert stats.state is tl.ClientState.CONNECTED
    assert stats.connected
    assert (stats.connects, stats.reconnects) == (1, 0)
    # 40 publishes of 9-byte bodies take well over 40 * 9 bytes on the wire.
    assert stats.bytes_sent > N * 9
    assert stats.bytes_received > N * 9


async def test_statistics_count_a_reconnect_and_reset_the_time_since_connect(
    amqp_url: str, proxy: FaultProxy
) -> None:
    async with tl.open_client(proxy.url_for(amqp_url), CONFIG) as client:
        with trio.fail_after(10):
            connection = await client.wait_connected()
        before = client.statistics()
        await trio.sleep(0.2)
        assert proxy.sever() >= 1
        with trio.fail_after(10):
            await connection.wait_closed()
            await client.wait_connected()
        after = client.statistics()
    assert before.last_connected_at is not None
    assert after.last_connected_at is not None
    assert before.seconds_since_connect is not None
    assert after.seconds_since_connect is not None
    assert after.last_connected_at > before.last_connected_at + 0.2
    assert 0 <= after.seconds_since_connect < 5
    assert (before.connects, before.reconnects) == (1, 0)
    assert (after.connects, after.reconnects) == (2, 1)
    assert after.detections_by_event + after.detections_by_poll == 1
    assert after.state is tl.ClientState.CONNECTED
    # Traffic counts carry over from the first connection.
    assert after.bytes_sent > before.bytes_sent
    assert after.bytes_received > before.bytes_received


async def test_fire_and_forget_returns_are_counted_without_a_log_line_per_message(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = unique("unrouted")
    async with tl.open_client(amqp_url, CONFIG) as client:
        producer = client.producer(nowhere, mode=tl.PublishMode.FIRE_AND_FORGET, mandatory=True)
        for _ in range(5):
            producer.publish_nowait(b"lost")
        with trio.fail_after(10):
            while producer.statistics().returned < 5:
                await trio.sleep(0.01)
        stats = client.statistics()
    assert (stats.published, stats.returned, stats.confirmed) == (5, 5, 0)
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not [r for r in shown if "returned" in r.getMessage()]


async def fetch(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of an HTTP request to the loopback port."""

    def get() -> tuple[int, str, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return (
                    response.status,
                    response.headers["Content-Type"],
                    response.read().decode("utf-8"),
                )
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers["Content-Type"], error.read().decode("utf-8")

    return await trio.to_thread.run_sync(get)


#: The families the collector must always make, with their types.
EXPECTED_TYPES = {
    "trio_lavin_connected": "gauge",
    "trio_lavin_client_state": "gauge",
    "trio_lavin_seconds_since_connect": "gauge",
    "trio_lavin_connects": "counter",
    "trio_lavin_reconnects": "counter",
    "trio_lavin_connect_attempts": "counter",
    "trio_lavin_connect_failures": "counter",
    "trio_lavin_connection_losses": "counter",
    "trio_lavin_recovery_failures": "counter",
    "trio_lavin_events_dropped": "counter",
    "trio_lavin_sent_bytes": "counter",
    "trio_lavin_received_bytes": "counter",
    "trio_lavin_producer_published": "counter",
    "trio_lavin_producer_republished": "counter",
    "trio_lavin_producer_confirmed": "counter",
    "trio_lavin_producer_nacked": "counter",
    "trio_lavin_producer_retries": "counter",
    "trio_lavin_producer_returned": "counter",
    "trio_lavin_producer_dropped": "counter",
    "trio_lavin_producer_buffered_messages": "gauge",
    "trio_lavin_producer_in_flight_messages": "gauge",
    "trio_lavin_producer_pauses": "counter",
    "trio_lavin_producer_paused": "gauge",
    "trio_lavin_consumer_consumed": "counter",
    "trio_lavin_consumer_redelivered": "counter",
    "trio_lavin_consumer_acked": "counter",
    "trio_lavin_consumer_nacked": "counter",
    "trio_lavin_consumer_rejected": "counter",
    "trio_lavin_consumer_stale_acks": "counter",
    "trio_lavin_consumer_subscriptions": "counter",
    "trio_lavin_consumer_buffered_messages": "gauge",
    "trio_lavin_consumers": "gauge",
    "trio_lavin_consumer_stream_offset": "gauge",
    "trio_lavin_worker_handled": "counter",
    "trio_lavin_worker_failed": "counter",
    "trio_lavin_worker_retried": "counter",
    "trio_lavin_worker_dead_lettered": "counter",
    "trio_lavin_worker_duplicates": "counter",
    "trio_lavin_worker_in_flight_handlers": "gauge",
    "trio_lavin_workers": "gauge",
}


def samples(
    text: str,
) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """The family types, and every sample by (name, labels)."""
    types: dict[str, str] = {}
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[sample.name, frozenset(sample.labels.items())] = sample.value
    return types, values


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def test_metrics_scraped_over_http_have_the_names_types_and_values_of_the_traffic(
    amqp_url: str,
) -> None:
    queue = unique()
    async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, 0, {"main": client})
        try:
            await known_traffic(client, queue)
            status, content_type, text = await fetch(port)
        finally:
            await client.delete_queue(queue)
        nursery.cancel_scope.cancel()
    assert status == 200
    assert content_type.startswith("text/plain")
    types, values = samples(text)
    assert types == EXPECTED_TYPES
    assert all(name.startswith("trio_lavin_") for name, _ in values)
    counters = [name for name, _ in values if types[name.removesuffix("_total")] == "counter"]
    assert counters
    assert all(name.endswith("_total") for name in counters)
    main = {"client": "main"}
    producer = {**main, "target": queue}
    consumer = {**main, "queue": queue}
    assert values[key("trio_lavin_connected", **main)] == 1
    assert values[key("trio_lavin_client_state", **main, state="CONNECTED")] == 1
    assert values[key("trio_lavin_client_state", **main, state="DISCONNECTED")] == 0
    assert values[key("trio_lavin_connects_total", **main)] == 1
    assert values[key("trio_lavin_reconnects_total", **main)] == 0
    assert values[key("trio_lavin_connection_losses_total", **main, detected_by="poll")] == 0
    assert 0 <= values[key("trio_lavin_seconds_since_connect", **main)] < 60
    assert values[key("trio_lavin_sent_bytes_total", **main)] > N * 9
    assert values[key("trio_lavin_producer_published_total", **producer)] == N
    assert values[key("trio_lavin_producer_confirmed_total", **producer)] == N
    assert values[key("trio_lavin_producer_nacked_total", **producer)] == 0
    assert values[key("trio_lavin_producer_retries_total", **producer)] == 0
    assert values[key("trio_lavin_producer_in_flight_messages", **producer)] == 0
    assert values[key("trio_lavin_producer_pauses_total", **producer)] == 0
    assert values[key("trio_lavin_producer_paused", **producer)] == 0
    for reason in tl.DropReason:
        assert (
            values[key("trio_lavin_producer_dropped_total", **producer, reason=reason.value)] == 0
        )
    assert values[key("trio_lavin_consumer_consumed_total", **consumer)] == N + 1
    assert values[key("trio_lavin_consumer_redelivered_total", **consumer)] == 1
    assert values[key("trio_lavin_consumer_acked_total", **consumer)] == N
    assert values[key("trio_lavin_consumer_nacked_total", **consumer)] == 1
    assert values[key("trio_lavin_consumer_subscriptions_total", **consumer)] == 1
    assert values[key("trio_lavin_consumers", **consumer)] == 0


async def test_worker_metrics_count_handled_failed_retried_dead_lettered_and_duplicates(
    amqp_url: str,
) -> None:
    queue, parking = unique("work"), unique("parked")
    handled: list[bytes] = []

    async def handler(delivery: tl.Delivery) -> None:
        retried = "x-trio-lavin-attempt" in (delivery.properties.headers or {})
        if delivery.body == b"poison" or (delivery.body == b"flaky" and not retried):
            raise RuntimeError(delivery.body.decode())
        handled.append(delivery.body)

    retry = tl.Retry(attempts=2, delays=(0,), dead_letter_queue=parking)
    async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
        await client.declare_queue(queue)
        port = await nursery.start(serve_metrics, 0, {"main": client})
        await nursery.start(lambda task_status: client.serve(
            queue, handler, retry=retry, duplicate_window=10, task_status=task_status
        ))  # fmt: skip
        producer = client.producer(queue)
        for body, message_id in [(b"ok", "1"), (b"ok", "1"), (b"flaky", "2"), (b"poison", "3")]:
            await producer.publish(body, properties=tl.BasicProperties(message_id=message_id))
        with trio.fail_after(10):
            while client.statistics().workers[0].dead_lettered < 1 or len(handled) < 2:
                await trio.sleep(0.01)
        _, _, text = await fetch(port)
        await client.delete_queue(queue)
        await client.delete_queue(parking)
        nursery.cancel_scope.cancel()
    _, values = samples(text)
    worker = {"client": "main", "queue": queue}
    assert sorted(handled) == [b"flaky", b"ok"]
    assert values[key("trio_lavin_worker_handled_total", **worker)] == 2
    assert values[key("trio_lavin_worker_failed_total", **worker)] == 3  # flaky once, poison twice
    assert values[key("trio_lavin_worker_retried_total", **worker)] == 2
    assert values[key("trio_lavin_worker_dead_lettered_total", **worker)] == 1
    assert values[key("trio_lavin_worker_duplicates_total", **worker)] == 1  # the second "1"
    assert values[key("trio_lavin_worker_in_flight_handlers", **worker)] == 0
    assert values[key("trio_lavin_workers", **worker)] == 1


async def test_metrics_server_answers_404_elsewhere_405_to_post_and_an_empty_head(
    amqp_url: str,
) -> None:
    async with tl.open_client(amqp_url, CONFIG) as client, trio.open_nursery() as nursery:
        port = await nursery.start(serve_metrics, 0, client)
        missing = await fetch(port, "/nothing")
        post = await fetch(port, "/metrics", "POST")
        head = await fetch(port, "/metrics", "HEAD")
        nursery.cancel_scope.cancel()
    assert missing[0] == 404
    assert post[0] == 405
    assert head[0] == 200
    assert head[2] == ""


async def test_collector_scraped_from_another_thread_reads_the_live_client(
    amqp_url: str,
) -> None:
    registry = CollectorRegistry()
    async with tl.open_client(amqp_url, tl.Config(connection_name="worker")) as client:
        with trio.fail_after(10):
            await client.wait_connected()
        registry.register(ClientCollector([client]))
        text = (await trio.to_thread.run_sync(generate_latest, registry)).decode()
    _, values = samples(text)
    assert values[key("trio_lavin_connected", client="worker")] == 1
    assert 0 <= values[key("trio_lavin_seconds_since_connect", client="worker")] < 60


async def test_collector_refuses_two_clients_with_the_same_label_naming_it(
    amqp_url: str,
) -> None:
    async with tl.open_client(amqp_url, tl.Config(connection_name="twin")) as client:
        with pytest.raises(ValueError, match="'twin'"):
            ClientCollector([client, client])
        labelled = ClientCollector({"a": client, "b": client})
        labels = {s.labels["client"] for family in labelled.collect() for s in family.samples}
    assert labels == {"a", "b"}


async def test_serve_metrics_refuses_a_bad_port_naming_it(amqp_url: str) -> None:
    async with tl.open_client(amqp_url, CONFIG) as client:
        with pytest.raises(ValueError, match="70000"):
            await serve_metrics(70_000, client)
