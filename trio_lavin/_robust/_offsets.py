"""Where a stream consumer subscribes again: :class:`StreamOffsets`.

A stream queue keeps its messages; a consumer reads it from an offset
(``x-stream-offset`` in its ``basic.consume`` arguments) and every delivery
carries its own offset in the ``x-stream-offset`` header.  Subscribed again
with the same arguments after a reconnect, it would read everything again
from the same place.  So the consumer counts, for each offset delivered to
the application, whether the application settled it (ack, nack or reject; or
at once, with ``no_ack``), and subscribes again from the first offset it did
not settle (or after the last one delivered, if it settled them all).  What
comes again from there that the application already settled is acked and
skipped, so nothing settled is handed over twice and nothing is skipped.

Deliveries of one subscription come in offset order; the delivery tags of a
subscription mean nothing on the next one.  Pure: no trio, no I/O.
"""

from __future__ import annotations

import bisect
import datetime
import re
from collections.abc import Mapping
from typing import Any, Final

#: Where a stream consumer may start: "first", "last", "next", an offset, a
#: time (the first message at or after it), or an interval such as "1h" ago.
StreamOffset = str | int | datetime.datetime

#: The consumer argument, and the delivery header, that carry an offset.
STREAM_OFFSET: Final = "x-stream-offset"
_INTERVAL: Final = re.compile(r"[1-9][0-9]*(Y|M|D|h|m|s)")


def check_stream_offset(
    offset: object, prefetch: int, arguments: Mapping[str, Any] | None
) -> None:
    """Refuse a ``stream_offset`` that no stream takes, naming it.

    Raises:
        ValueError: ``offset`` is not "first", "last", "next", an int >= 0,
            a datetime or an interval ("1h", "30m", "7D", ...); ``prefetch``
            is 0; or ``arguments`` give an ``x-stream-offset`` too.
    """
    valid = (
        offset in ("first", "last", "next")
        or (type(offset) is int and offset >= 0)
        or isinstance(offset, datetime.datetime)
        or (isinstance(offset, str) and _INTERVAL.fullmatch(offset) is not None)
    )
    if not valid:
        raise ValueError(
            f"stream_offset must be 'first', 'last', 'next', an offset >= 0, a datetime or "
            f"an interval such as '1h' (Y, M, D, h, m, s), not {offset!r}"
        )
    if prefetch == 0:
        raise ValueError("a stream consumer needs a prefetch (1..65535), not 0")
    if arguments is not None and STREAM_OFFSET in arguments:
        raise ValueError(
            f"stream_offset={offset!r} and arguments[{STREAM_OFFSET!r}]="
            f"{arguments[STREAM_OFFSET]!r}: give one"
        )


#: Seconds per unit of an interval offset (a year and a month as RabbitMQ counts them
#: roughly: 365 and 30 days).
_UNIT_SECONDS: Final = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "D": 86_400,
    "M": 30 * 86_400,
    "Y": 365 * 86_400,
}


class StreamOffsets:
    """The settled and unsettled offsets of one stream consumer (see the module doc).

    Each subscription has its own delivery tags: :meth:`new_subscription` gives it a
    number, and deliveries and settles name the subscription they belong to, so a
    delivery taken from an ended subscription (or a settle on its channel) never stands
    for one of the current subscription with the same tag.
    """

    def __init__(self, start: StreamOffset) -> None:
        #: Where the first subscription starts, as asked.
        self.start = start
        #: Offsets handed to the application and not settled, sorted.
        self._unsettled: list[int] = []
        #: Per subscription: its unsettled deliveries, tag -> offset.
        self._tags: dict[int, dict[int, int]] = {}
        self._subscriptions = 0
        #: The highest offset handed to the application.
        self.last_delivered: int | None = None

    def resume_from(self) -> StreamOffset:
        """The ``x-stream-offset`` of the next subscription."""
        if self._unsettled:
            return self._unsettled[0]
        if self.last_delivered is not None:
            return self.last_delivered + 1
        return self.start

    def pin(self, now: datetime.datetime) -> None:
        """The first subscription began at ``now``: a start relative to the time of
        subscribing ("next", an interval) becomes that time (or that long before it),
        so that a subscription made again before anything came does not skip what was
        published meanwhile.  "last" (the last chunk, written before ``now``) stays
        until :meth:`arrived` names its first offset."""
        start = self.start
        if start == "next":
            self.start = now
        elif isinstance(start, str) and _INTERVAL.fullmatch(start):
            seconds = int(start[:-1]) * _UNIT_SECONDS[start[-1]]
            self.start = now - datetime.timedelta(seconds=seconds)

    def arrived(self, offset: int) -> None:
        """The first delivery the application did not get to before its subscription
        ended came with ``offset``: if it is the first of all, the next subscription
        starts there (the last chunk of "last" would have moved on)."""
        if self.start == "last" and self.last_delivered is None:
            self.start = offset

    def new_subscription(self) -> int:
        """A subscription begins; its number, for :meth:`delivered` and :meth:`settled`.
        What ended subscriptions held unsettled stays unsettled (it comes again)."""
        self._tags = {number: tags for number, tags in self._tags.items() if tags}
        self._subscriptions += 1
        self._tags[self._subscriptions] = {}
        return self._subscriptions

    def end_subscription(self, subscription: int) -> None:
        """Its channel is gone: its tags will never be settled (their offsets stay
        unsettled and come again)."""
        self._tags.pop(subscription, None)

    def delivered(self, subscription: int, tag: int, offset: int, *, settled: bool) -> bool:
        """A delivery of ``subscription``; False if the application settled that offset
        already (ack it and skip it).  ``settled``: it is settled on arrival (``no_ack``,
        or acked already by a ``multiple`` ack)."""
        last = self.last_delivered
        unsettled = self._unsettled
        tags = self._tags.setdefault(subscription, {})
        if last is not None and offset <= last:
            i = bisect.bisect_left(unsettled, offset)
            if i == len(unsettled) or unsettled[i] != offset:
                return False  # settled before the last subscription ended
            if settled:
                del unsettled[i]
            else:
                tags[tag] = offset
            return True
        self.last_delivered = offset
        if not settled:
            bisect.insort(unsettled, offset)
            tags[tag] = offset
        return True

    def settled(self, subscription: int, tag: int, multiple: bool = False) -> None:
        """The application settled the delivery ``tag`` of ``subscription``
        (``multiple``: and every earlier one)."""
        tags = self._tags.get(subscription)
        if not tags:
            return
        for t in [t for t in tags if t <= tag] if multiple else [tag]:
            offset = tags.pop(t, None)
            if offset is None:
                continue
            i = bisect.bisect_left(self._unsettled, offset)
            if i < len(self._unsettled) and self._unsettled[i] == offset:
                del self._unsettled[i]

    @property
    def unsettled(self) -> int:
        """Offsets handed to the application and not settled yet."""
        return len(self._unsettled)
