"""The client's statistics: one frozen snapshot (:class:`ClientStatistics`)
summed from the supervisor, the producers and the consumers.  Read by
:meth:`Client.statistics` and, from another thread, by
:mod:`trio_lavin.prometheus`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .._client._counters import DeliveryCounters
from ._consumer import ConsumerStatistics, RecoveringConsumer
from ._message import DropReason, ProducerStatistics
from ._supervisor import ClientState, Detection, Supervisor
from ._worker import WorkerStatistics


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    """A snapshot of :meth:`Client.statistics`.

    Times (``connected_since``, ``last_connected_at``) are on the trio clock
    (:func:`trio.current_time`).  Counts only grow over the client's life;
    ``buffered``, ``in_flight`` and the state fields are gauges.  The producer
    and consumer counts are sums over the client's producers and consumers;
    ``producers`` and ``consumers`` have them one by one.
    """

    #: The connection state.
    state: ClientState
    #: True while a recovered connection is up.
    connected: bool
    #: The endpoint (no credentials) of the current or last attempt.
    endpoint: str | None
    #: When the current connection was made (None while disconnected).
    connected_since: float | None
    #: When the last successful (re)connection was made (kept after a loss).
    last_connected_at: float | None
    #: Seconds since ``last_connected_at`` when the snapshot was taken.
    seconds_since_connect: float | None
    #: Successful connections, and how many of those were reconnections.
    connects: int
    reconnects: int
    connect_attempts: int
    failed_attempts: int
    last_error: str | None
    #: Connection losses found by the event path (EOF, reset, Close) and by
    #: the health poll (what the event path missed).
    detections_by_event: int
    detections_by_poll: int
    recovery_failures: int
    events_dropped: int
    #: Bytes written to and read from the broker, over all connections.
    bytes_sent: int
    bytes_received: int
    #: Producer counts (see :class:`ProducerStatistics`), summed.
    published: int
    republished: int
    confirmed: int
    nacked: int
    retries: int
    returned: int
    dropped: Mapping[DropReason, int]
    buffered: int
    in_flight: int
    #: Consumer counts (see :class:`ConsumerStatistics`), summed.
    consumed: int
    redelivered: int
    acked: int
    #: One snapshot per producer, in creation order.
    producers: tuple[ProducerStatistics, ...]
    #: One snapshot per consumed queue, in order of first use.
    consumers: tuple[ConsumerStatistics, ...]
    #: One snapshot per queue served by workers (:meth:`Client.serve`).
    workers: tuple[WorkerStatistics, ...] = ()


def summarize(
    supervisor: Supervisor,
    *,
    connected: bool,
    seconds_since_connect: float | None,
    bytes_sent: int,
    bytes_received: int,
    recovery_failures: int,
    events_dropped: int,
    producers: tuple[ProducerStatistics, ...],
    consumers: tuple[ConsumerStatistics, ...],
    workers: tuple[WorkerStatistics, ...] = (),
) -> ClientStatistics:
    """One snapshot of a client: the supervisor's state and counts, plus the
    sums of its producers' and consumers' counts."""
    sup = supervisor
    dropped = dict.fromkeys(DropReason, 0)
    for stats in producers:
        for reason, count in stats.dropped.items():
            dropped[reason] += count
    return ClientStatistics(
        state=sup.state,
        connected=connected,
        endpoint=sup.endpoints[sup.endpoint] if sup.attempts else None,
        connected_since=sup.connected_since,
        last_connected_at=sup.last_connected_at,
        seconds_since_connect=seconds_since_connect,
        connects=sup.connects,
        reconnects=sup.reconnects,
        connect_attempts=sup.attempts,
        failed_attempts=sup.attempts - sup.connects,
        last_error=None if sup.last_error is None else str(sup.last_error),
        detections_by_event=sup.detections[Detection.EVENT],
        detections_by_poll=sup.detections[Detection.POLL],
        recovery_failures=recovery_failures,
        events_dropped=events_dropped,
        bytes_sent=bytes_sent,
        bytes_received=bytes_received,
        published=sum(p.published for p in producers),
        republished=sum(p.republished for p in producers),
        confirmed=sum(p.confirmed for p in producers),
        nacked=sum(p.nacked for p in producers),
        retries=sum(p.retries for p in producers),
        returned=sum(p.returned for p in producers),
        dropped=dropped,
        buffered=sum(p.buffered for p in producers),
        in_flight=sum(p.in_flight for p in producers),
        consumed=sum(c.consumed for c in consumers),
        redelivered=sum(c.redelivered for c in consumers),
        acked=sum(c.acked for c in consumers),
        producers=producers,
        consumers=consumers,
        workers=workers,
    )


def consumer_statistics(
    counters: Mapping[str, DeliveryCounters], live: tuple[RecoveringConsumer, ...]
) -> tuple[ConsumerStatistics, ...]:
    """One :class:`ConsumerStatistics` per queue: its counters (kept for the
    client's life) and its consumers running now (``live``)."""
    result = []
    for queue, queue_counters in tuple(counters.items()):
        mine = [consumer for consumer in live if consumer.counters is queue_counters]
        offsets = [offset for c in mine if type(offset := c.stream_offset) is int]
        result.append(
            ConsumerStatistics(
                queue=queue,
                consumers=len(mine),
                subscriptions=queue_counters.subscriptions,
                consumed=queue_counters.consumed,
                redelivered=queue_counters.redelivered,
                acked=queue_counters.acked,
                nacked=queue_counters.nacked,
                rejected=queue_counters.rejected,
                stale_acks=queue_counters.stale_acks,
                buffered=sum(consumer.buffered for consumer in mine),
                stream_offset=max(offsets) if offsets else None,
            )
        )
    return tuple(result)
