"""Statistics and the Prometheus collector against the FakeBroker under
trio's MockClock: exact times, health-poll versus event detections, the
collector without a broker, the metrics server's error answers, and the
error when the extra is missing."""

from __future__ import annotations

import importlib
import sys
from functools import partial

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import trio_lavin as tl
from trio_lavin.prometheus import ClientCollector, serve_metrics
from trio_lavin.testing import FakeBrokerServer

FAST = tl.Config(heartbeat=10, reconnect_jitter=0.0)


async def test_seconds_since_connect_follows_the_trio_clock_and_restarts_on_reconnect(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        assert client.statistics().seconds_since_connect is None
        await client.wait_connected()
        connected_at = trio.current_time()
        await trio.sleep(5)
        stats = client.statistics()
        assert stats.last_connected_at == connected_at
        assert stats.seconds_since_connect == pytest.approx(5)
        async with client.events() as events:
            broker.sever_all()
            async for event in events:
                if isinstance(event, tl.StateChange) and event.new is tl.ClientState.DISCONNECTED:
                    break
            lost = client.statistics()
        await client.wait_connected()
        await trio.sleep(2)
        back = client.statistics()
    assert lost.state is tl.ClientState.DISCONNECTED
    assert lost.connected is False
    assert lost.connected_since is None
    assert lost.last_connected_at == connected_at  # kept while disconnected
    assert back.last_connected_at == pytest.approx(connected_at + 5 + 0.1)
    assert back.seconds_since_connect == pytest.approx(2)
    assert (back.connects, back.reconnects, back.detections_by_event) == (2, 1, 1)


async def test_poll_and_event_detections_are_told_apart_in_the_losses_metric(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        first = await client.wait_connected()
        first._running.discard("reader")  # a dead reader nobody was told about
        await first.wait_closed()
        second = await client.wait_connected()
        broker.sever_all()  # seen at once by the reader: an event
        await second.wait_closed()
        await client.wait_connected()
        losses = {
            sample.labels["detected_by"]: sample.value
            for family in ClientCollector(client).collect()
            if family.name == "trio_lavin_connection_losses"
            for sample in family.samples
        }
        stats = client.statistics()
    assert losses == {"poll": 1, "event": 1}
    assert (stats.detections_by_poll, stats.detections_by_event, stats.reconnects) == (1, 1, 2)


async def test_collector_labels_samples_by_client_and_target_and_counts_in_flight_messages(
    broker: FakeBrokerServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with tl.open_client(config=FAST, stream_factory=broker.connect) as client:
        await client.wait_connected()
        producer = client.producer("jobs")
        await producer.publish(b"first")  # confirmed: the channel is up
        broker.blackhole_all()  # nothing is confirmed any more
        for _ in range(3):
            producer.publish_nowait(b"job")
        await trio.sleep(0.01)
        values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in ClientCollector({"fake": client}).collect()
            for sample in family.samples
        }
    labels = (("client", "fake"), ("target", "jobs"))
    assert values["trio_lavin_producer_published_total", labels] == 4
    assert values["trio_lavin_producer_in_flight_messages", labels] == 3
    assert values["trio_lavin_producer_confirmed_total", labels] == 1
    assert values["trio_lavin_connected", (("client", "fake"),)] == 1


async def http(port: int, request: bytes) -> bytes:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            response = bytearray()
            while chunk := await stream.receive_some(65536):
                response += chunk
    return bytes(response)


async def test_metrics_server_answers_400_to_garbage_and_serves_an_extra_registry(
    broker: FakeBrokerServer,
) -> None:
    from prometheus_client import CollectorRegistry, Counter

    extra = CollectorRegistry()
    Counter("app_jobs", "jobs done", registry=extra).inc(7)
    async with (
        tl.open_client(config=FAST, stream_factory=broker.connect) as client,
        trio.open_nursery() as nursery,
    ):
        await client.wait_connected()
        port = await nursery.start(serve_metrics, 0, client, "127.0.0.1")
        garbage = await http(port, b"NOT HTTP\r\n\r\n")
        served = await http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        extra_port = await nursery.start(partial(serve_metrics, 0, client, registry=extra))
        both = await http(extra_port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        nursery.cancel_scope.cancel()
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert served.startswith(b"HTTP/1.1 200 OK\r\n")
    names = {f.name for f in text_string_to_metric_families(served.split(b"\r\n\r\n")[1].decode())}
    assert "app_jobs" not in names
    assert "trio_lavin_connected" in names
    body = both.split(b"\r\n\r\n", 1)[1].decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples["app_jobs_total"] == 7
    assert samples["trio_lavin_connected"] == 1


def test_importing_the_prometheus_module_without_the_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "trio_lavin.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'trio-lavin\[prometheus\]'"):
        importlib.import_module("trio_lavin.prometheus")
