"""Prometheus metrics for trio-lavin clients.

Needs the optional extra: ``pip install 'trio-lavin[prometheus]'`` (it brings
``prometheus-client``).  Two ways to use it:

* serve ``/metrics`` from the trio program itself, in one line::

      async with trio.open_nursery() as nursery:
          port = await nursery.start(serve_metrics, 9100, client)

* or register a :class:`ClientCollector` in a registry you already export::

      prometheus_client.REGISTRY.register(ClientCollector(client))

Nothing runs between scrapes: the collector reads ``client.statistics()``
when it is scraped.  Every metric is named ``trio_lavin_*`` and labelled with
the ``client`` it is about; counters end in ``_total``.  The metrics::

    ==========================================  =======  ============================
    metric                                      type     labels (besides client)
    ==========================================  =======  ============================
    trio_lavin_connected                        gauge
    trio_lavin_client_state                     gauge    state (1 for the current one)
    trio_lavin_seconds_since_connect            gauge
    trio_lavin_connects_total                   counter
    trio_lavin_reconnects_total                 counter
    trio_lavin_connect_attempts_total           counter
    trio_lavin_connect_failures_total           counter
    trio_lavin_connection_losses_total          counter  detected_by (event, poll)
    trio_lavin_recovery_failures_total          counter
    trio_lavin_events_dropped_total             counter
    trio_lavin_sent_bytes_total                 counter
    trio_lavin_received_bytes_total             counter
    trio_lavin_producer_published_total         counter  target
    trio_lavin_producer_republished_total       counter  target
    trio_lavin_producer_confirmed_total         counter  target
    trio_lavin_producer_nacked_total            counter  target
    trio_lavin_producer_retries_total           counter  target
    trio_lavin_producer_returned_total          counter  target
    trio_lavin_producer_dropped_total           counter  target, reason
    trio_lavin_producer_buffered_messages       gauge    target
    trio_lavin_producer_in_flight_messages      gauge    target
    trio_lavin_producer_pauses_total            counter  target
    trio_lavin_producer_paused                  gauge    target
    trio_lavin_consumer_consumed_total          counter  queue
    trio_lavin_consumer_redelivered_total       counter  queue
    trio_lavin_consumer_acked_total             counter  queue
    trio_lavin_consumer_nacked_total            counter  queue
    trio_lavin_consumer_rejected_total          counter  queue
    trio_lavin_consumer_stale_acks_total        counter  queue
    trio_lavin_consumer_subscriptions_total     counter  queue
    trio_lavin_consumer_buffered_messages       gauge    queue
    trio_lavin_consumers                        gauge    queue
    trio_lavin_consumer_stream_offset           gauge    queue
    trio_lavin_worker_handled_total             counter  queue
    trio_lavin_worker_failed_total              counter  queue
    trio_lavin_worker_retried_total             counter  queue
    trio_lavin_worker_dead_lettered_total       counter  queue
    trio_lavin_worker_duplicates_total          counter  queue
    trio_lavin_worker_in_flight_handlers        gauge    queue
    trio_lavin_workers                          gauge    queue
    ==========================================  =======  ============================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Final, NoReturn

import trio

try:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "trio_lavin.prometheus needs the prometheus-client package: "
        "install the extra with `pip install 'trio-lavin[prometheus]'`"
    ) from exc

from ._robust._message import DropReason
from ._robust._supervisor import ClientState

if TYPE_CHECKING:
    from ._robust._client import Client
    from ._robust._statistics import ClientStatistics

__all__ = ["ClientCollector", "serve_metrics"]

#: Largest request head (request line + headers) the server reads.
MAX_REQUEST_HEAD: Final = 16 * 1024
#: A scraper gets this long to send its request and read the answer.
REQUEST_TIMEOUT: Final = 10.0

#: A metric's samples: (label values besides ``client``, value) pairs.
Values = Iterable[tuple[tuple[str, ...], float]]


def _named(clients: Client | Sequence[Client] | Mapping[str, Client]) -> dict[str, Client]:
    if isinstance(clients, Mapping):
        named = dict(clients)
    else:
        listed = [clients] if not isinstance(clients, Sequence) else list(clients)
        named = {}
        for index, client in enumerate(listed):
            name = client.config.connection_name or str(index)
            if name in named:
                raise ValueError(
                    f"two clients are both named {name!r} (their Config.connection_name): "
                    "pass a mapping {label: client} to tell them apart"
                )
            named[name] = client
    for name, client in named.items():
        if not isinstance(name, str):
            raise TypeError(f"client labels must be str, not {type(name).__name__}")
        if not hasattr(client, "statistics"):
            raise TypeError(f"expected a trio_lavin Client for {name!r}, not {client!r}")
    return named


_Row = tuple[str, str, str, Sequence[str], Callable[["ClientStatistics"], Values]]


def _one(field: str) -> Callable[[ClientStatistics], Values]:
    return lambda stats: [((), float(getattr(stats, field)))]


def _seconds_since(stats: ClientStatistics) -> Values:
    since = stats.seconds_since_connect
    return [] if since is None else [((), since)]


def _states(stats: ClientStatistics) -> Values:
    return [((state.value,), float(stats.state is state)) for state in ClientState]


def _losses(stats: ClientStatistics) -> Values:
    return [(("event",), stats.detections_by_event), (("poll",), stats.detections_by_poll)]


def _per_target(
    field: str,
) -> Callable[[ClientStatistics], Values]:
    def values(stats: ClientStatistics) -> Values:
        totals: dict[str, float] = {}
        for producer in stats.producers:  # producers of one target are summed
            totals[producer.target] = totals.get(producer.target, 0) + getattr(producer, field)
        return [((target,), value) for target, value in totals.items()]

    return values


def _paused(stats: ClientStatistics) -> Values:
    totals: dict[str, float] = {}
    for producer in stats.producers:
        totals[producer.target] = totals.get(producer.target, 0) + (producer.paused is not None)
    return [((target,), value) for target, value in totals.items()]


def _dropped(stats: ClientStatistics) -> Values:
    totals: dict[tuple[str, str], float] = {}
    for producer in stats.producers:
        for reason in DropReason:
            key = (producer.target, reason.value)
            totals[key] = totals.get(key, 0) + producer.dropped.get(reason, 0)
    return list(totals.items())


def _per_queue(field: str) -> Callable[[ClientStatistics], Values]:
    return lambda stats: [((c.queue,), float(getattr(c, field))) for c in stats.consumers]


def _stream_offsets(stats: ClientStatistics) -> Values:
    return [
        ((c.queue,), float(c.stream_offset))
        for c in stats.consumers
        if c.stream_offset is not None
    ]


def _per_worker_queue(field: str) -> Callable[[ClientStatistics], Values]:
    return lambda stats: [((w.queue,), float(getattr(w, field))) for w in stats.workers]


#: (name, type, help, extra labels, values): every metric the collector makes.
METRICS: Final[tuple[_Row, ...]] = (
    (
        "trio_lavin_connected",
        "gauge",
        "1 while a recovered connection is up",
        (),
        _one("connected"),
    ),
    (
        "trio_lavin_client_state",
        "gauge",
        "The client's connection state (1 for the current state)",
        ("state",),
        _states,
    ),
    (
        "trio_lavin_seconds_since_connect",
        "gauge",
        "Seconds since the last successful (re)connection",
        (),
        _seconds_since,
    ),
    ("trio_lavin_connects", "counter", "Successful connections", (), _one("connects")),
    (
        "trio_lavin_reconnects",
        "counter",
        "Successful connections after the first",
        (),
        _one("reconnects"),
    ),
    (
        "trio_lavin_connect_attempts",
        "counter",
        "Connection attempts",
        (),
        _one("connect_attempts"),
    ),
    (
        "trio_lavin_connect_failures",
        "counter",
        "Connection attempts that failed",
        (),
        _one("failed_attempts"),
    ),
    (
        "trio_lavin_connection_losses",
        "counter",
        "Established connections lost, by what noticed: the event path or the health poll",
        ("detected_by",),
        _losses,
    ),
    (
        "trio_lavin_recovery_failures",
        "counter",
        "Entities that could not be declared again after a reconnect",
        (),
        _one("recovery_failures"),
    ),
    (
        "trio_lavin_events_dropped",
        "counter",
        "Client events a slow events() subscriber missed",
        (),
        _one("events_dropped"),
    ),
    ("trio_lavin_sent_bytes", "counter", "Bytes written to the broker", (), _one("bytes_sent")),
    (
        "trio_lavin_received_bytes",
        "counter",
        "Bytes read from the broker",
        (),
        _one("bytes_received"),
    ),
    (
        "trio_lavin_producer_published",
        "counter",
        "Messages handed to the connection (re-publications included)",
        ("target",),
        _per_target("published"),
    ),
    (
        "trio_lavin_producer_republished",
        "counter",
        "Messages published again after a connection or channel died",
        ("target",),
        _per_target("republished"),
    ),
    (
        "trio_lavin_producer_confirmed",
        "counter",
        "Messages the broker confirmed",
        ("target",),
        _per_target("confirmed"),
    ),
    (
        "trio_lavin_producer_nacked",
        "counter",
        "Messages dropped because the broker nacked them after every retry",
        ("target",),
        _per_target("nacked"),
    ),
    (
        "trio_lavin_producer_retries",
        "counter",
        "Nacked messages published again",
        ("target",),
        _per_target("retries"),
    ),
    (
        "trio_lavin_producer_returned",
        "counter",
        "Mandatory messages the broker returned unroutable",
        ("target",),
        _per_target("returned"),
    ),
    (
        "trio_lavin_producer_dropped",
        "counter",
        "Messages given up and reported to on_drop, by reason",
        ("target", "reason"),
        _dropped,
    ),
    (
        "trio_lavin_producer_buffered_messages",
        "gauge",
        "Messages waiting in the producer's buffer",
        ("target",),
        _per_target("buffered"),
    ),
    (
        "trio_lavin_producer_in_flight_messages",
        "gauge",
        "Messages published and not yet confirmed",
        ("target",),
        _per_target("in_flight"),
    ),
    (
        "trio_lavin_producer_pauses",
        "counter",
        "Times publishing paused because the broker would not take messages",
        ("target",),
        _per_target("pauses"),
    ),
    (
        "trio_lavin_producer_paused",
        "gauge",
        "Producers whose publishing is paused now (connection.blocked, low disk)",
        ("target",),
        _paused,
    ),
    (
        "trio_lavin_consumer_consumed",
        "counter",
        "Deliveries handed to the application",
        ("queue",),
        _per_queue("consumed"),
    ),
    (
        "trio_lavin_consumer_redelivered",
        "counter",
        "Deliveries flagged redelivered by the broker",
        ("queue",),
        _per_queue("redelivered"),
    ),
    (
        "trio_lavin_consumer_acked",
        "counter",
        "Acks sent (an ack of multiple deliveries counts once)",
        ("queue",),
        _per_queue("acked"),
    ),
    ("trio_lavin_consumer_nacked", "counter", "Nacks sent", ("queue",), _per_queue("nacked")),
    (
        "trio_lavin_consumer_rejected",
        "counter",
        "Rejects sent",
        ("queue",),
        _per_queue("rejected"),
    ),
    (
        "trio_lavin_consumer_stale_acks",
        "counter",
        "Acks, nacks and rejects not sent because the delivery's channel was gone",
        ("queue",),
        _per_queue("stale_acks"),
    ),
    (
        "trio_lavin_consumer_subscriptions",
        "counter",
        "Subscriptions made (re-subscriptions included)",
        ("queue",),
        _per_queue("subscriptions"),
    ),
    (
        "trio_lavin_consumer_buffered_messages",
        "gauge",
        "Deliveries received and not yet taken by the application",
        ("queue",),
        _per_queue("buffered"),
    ),
    (
        "trio_lavin_consumers",
        "gauge",
        "Consumers running",
        ("queue",),
        _per_queue("consumers"),
    ),
    (
        "trio_lavin_consumer_stream_offset",
        "gauge",
        "Of a stream queue: the next offset to read (the first one not settled)",
        ("queue",),
        _stream_offsets,
    ),
    *(
        (f"trio_lavin_worker_{field}", "counter", help_text, ("queue",), _per_worker_queue(field))
        for field, help_text in (
            ("handled", "Worker handlers that returned"),
            ("failed", "Worker handlers that raised"),
            ("retried", "Messages a worker published again for a later attempt"),
            ("dead_lettered", "Messages that failed their last attempt, dead-lettered"),
            ("duplicates", "Deliveries a worker's duplicate window acked without handling"),
        )
    ),
    (
        "trio_lavin_worker_in_flight_handlers",
        "gauge",
        "Worker handlers running now",
        ("queue",),
        _per_worker_queue("in_flight"),
    ),
    ("trio_lavin_workers", "gauge", "Workers running", ("queue",), _per_worker_queue("workers")),
)


def _family(
    name: str, kind: str, help_text: str, labels: Sequence[str]
) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


class ClientCollector(Collector):
    """A Prometheus collector for one or more trio-lavin clients.

    ``clients`` is a client, a sequence of clients (labelled by their
    ``Config.connection_name``, or else by their position: ``"0"``,
    ``"1"``...), or a mapping ``{label: client}``.  Each scrape reads
    ``client.statistics()`` and makes the metrics listed in the module
    documentation, labelled ``client=<label>``.

    Scrapes may come from another thread (``prometheus_client``'s own HTTP
    server runs in one): :meth:`Client.statistics` only reads.

    Raises:
        ValueError: two clients would get the same label.
        TypeError: something that is not a client was given.
    """

    def __init__(self, clients: Client | Sequence[Client] | Mapping[str, Client]) -> None:
        self._clients = _named(clients)

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (lets a registry check
        names without taking a snapshot)."""
        for name, kind, help_text, labels, _ in METRICS:
            yield _family(name, kind, help_text, ["client", *labels])

    def collect(self) -> Iterator[Metric]:
        snapshots = [(name, client.statistics()) for name, client in self._clients.items()]
        for name, kind, help_text, labels, values in METRICS:
            family = _family(name, kind, help_text, ["client", *labels])
            for client_name, stats in snapshots:
                for label_values, value in values(stats):
                    family.add_metric([client_name, *label_values], value)
            yield family


def _check_port(port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65_535:
        raise ValueError(f"port must be an int in 0..65535 (0: any free port), not {port!r}")


async def serve_metrics(
    port: int,
    clients: Client | Sequence[Client] | Mapping[str, Client],
    addr: str = "127.0.0.1",
    *,
    registry: CollectorRegistry | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the clients' metrics over HTTP at ``/metrics`` until cancelled.

    Start it in a nursery; ``nursery.start`` returns the port it listens on
    (useful with ``port=0``, any free port)::

        port = await nursery.start(serve_metrics, 9100, client)

    It is a small trio server in the same thread as the clients (no extra
    thread; a scrape takes one snapshot per client).  ``addr`` defaults to
    loopback: pass ``"0.0.0.0"`` deliberately to let other hosts scrape.
    ``registry``, if given, is served too (for example
    ``prometheus_client.REGISTRY`` with the process metrics and your own).
    ``GET`` and ``HEAD`` of ``/metrics`` (or ``/``) answer 200, other paths
    404, other methods 405; each connection serves one request and gets
    :data:`REQUEST_TIMEOUT` seconds.

    Raises:
        ValueError: a bad port or two clients with the same label.
        OSError: the address could not be bound (for example the port is
            taken).
    """
    _check_port(port)
    ours = CollectorRegistry(auto_describe=True)
    ours.register(ClientCollector(clients))
    registries = [ours] if registry is None else [ours, registry]
    handler = partial(_handle_request, registries)
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, handler, port, host=addr)
        )
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


def _response(status: str, body: bytes, content_type: str, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_REQUEST_HEAD:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    return bytes(data)


async def _handle_request(registries: list[CollectorRegistry], stream: trio.abc.Stream) -> None:
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            head = await _read_head(stream)
            if head is None:
                answer = _response("400 Bad Request", b"bad request\n", "text/plain")
            else:
                answer = _answer(registries, head)
            await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


def _answer(registries: list[CollectorRegistry], head: bytes) -> bytes:
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response("400 Bad Request", b"bad request\n", "text/plain")
    method, target = parts[0], parts[1]
    path = target.split("?", 1)[0]
    if path not in ("/metrics", "/"):
        return _response("404 Not Found", b"not found: try /metrics\n", "text/plain")
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"only GET and HEAD\n", "text/plain")
    body = b"".join(generate_latest(registry) for registry in registries)
    return _response("200 OK", body, CONTENT_TYPE_LATEST, head_only=method == "HEAD")
