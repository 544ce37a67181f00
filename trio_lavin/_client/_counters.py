"""Counters for consumers, bumped on the hot path.

A :class:`DeliveryCounters` is a bag of plain ``int`` attributes: bumping one
is a single attribute increment, with no lock, no allocation and no call, so
it costs nothing measurable per message.  Readers (``Client.statistics()``,
possibly from another thread such as a Prometheus scrape) only read the ints,
which is safe in CPython.
"""

from __future__ import annotations


class DeliveryCounters:
    """What happened to the deliveries of one queue's consumers.

    Every :class:`~._channel.Channel` has its own; a recovering consumer hands
    the channels it subscribes on one shared object per queue, so the counts
    survive reconnects and re-subscriptions.
    """

    __slots__ = (
        "acked",
        "consumed",
        "nacked",
        "redelivered",
        "rejected",
        "stale_acks",
        "subscriptions",
    )

    def __init__(self) -> None:
        #: Deliveries handed to the application by a recovering consumer.
        self.consumed = 0
        #: Of those, deliveries the broker flagged ``redelivered``.
        self.redelivered = 0
        #: ``basic.ack`` frames sent (one with ``multiple=True`` counts once).
        self.acked = 0
        #: ``basic.nack`` frames sent.
        self.nacked = 0
        #: ``basic.reject`` frames sent.
        self.rejected = 0
        #: Acks, nacks and rejects not sent because the delivery's channel was
        #: gone (they returned False; the broker redelivers those messages).
        self.stale_acks = 0
        #: Subscriptions made (``basic.consume`` accepted), re-subscriptions
        #: after a reconnect, server cancel or channel close included.
        self.subscriptions = 0
