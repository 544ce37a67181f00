"""What a worker does with a message whose handler failed, and which
messages it has finished with: :class:`Retry` and :class:`DuplicateWindow`.

A failed message is not requeued as it is: it would come straight back (a
hot loop at the head of the queue) and nothing would count its attempts.
The worker publishes a copy carrying its attempt number in the
:data:`ATTEMPT_HEADER` header, and acks the original once the broker has
confirmed the copy.  A copy that is to wait goes to a *delay queue*: a
durable queue with a message TTL whose expired messages the broker
dead-letters back to the work queue (one delay queue per distinct delay).
After the last attempt the message is dead-lettered: rejected without
requeue (the work queue's own dead-letter exchange takes it, if it has one),
or published to a parking queue.

Redeliveries and republications make a message arrive again: a delivery
whose channel died before its ack, a producer's republication after a
reconnect, a retry copy published twice for that reason.  The duplicate
window remembers, for the last ``size`` message ids, how far each got: its
handler succeeded, it was dead-lettered, or attempt *n* failed and its copy
was published.  A delivery whose attempt is at or below that is done with.

Pure: no trio, no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

#: The header of a retried message: the number of the attempt it is for (2 for
#: the first retry); a message without it is on its first attempt.
ATTEMPT_HEADER: Final = "x-trio-lavin-attempt"
#: Headers a dead-lettered message is published with to a parking queue.
ERROR_HEADER: Final = "x-trio-lavin-error"
QUEUE_HEADER: Final = "x-trio-lavin-queue"

#: A ``message_ttl`` is an int of milliseconds below 2**32 (RabbitMQ's limit).
MAX_DELAY: Final = (2**32 - 1) / 1000
#: Attempts of one message at most: a handler that fails more often is broken.
MAX_ATTEMPTS: Final = 1000
#: The length of a queue name (a short string).
_MAX_NAME: Final = 255


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Publish a copy for ``attempt`` after ``delay`` seconds (through
    ``delay_queue``; None: straight back to the work queue)."""

    attempt: int
    delay: float
    delay_queue: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up after ``attempts`` attempts: to ``queue`` (None: reject
    without requeue, to the work queue's dead-letter exchange)."""

    attempts: int
    queue: str | None


Decision = RetryLater | DeadLetter


@dataclass(frozen=True, slots=True)
class Retry:
    """How a worker retries a message whose handler raised.

    ``attempts`` is how many times the handler runs for one message at most
    (1: never retried).  Retry *k* (attempt *k* + 1) waits ``delays[k - 1]``
    seconds, the last delay repeating; a delay of 0 sends the message back
    to the end of the work queue at once.  After the last attempt the
    message goes to ``dead_letter_queue`` (declared durable by the worker,
    the message published there with the error and the work queue in its
    headers), or, if None, is rejected without requeue: to the work queue's
    dead-letter exchange if it has one (``queue_arguments(
    dead_letter_exchange=...)``), else the broker drops it.

    Raises:
        ValueError: ``attempts`` is not in 1..1000, a delay is negative, not
            finite or over 49 days (a TTL is a 32-bit count of milliseconds),
            or ``dead_letter_queue`` is not a queue name.
    """

    attempts: int = 3
    delays: Sequence[float] = (1.0, 10.0)
    dead_letter_queue: str | None = None

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(
                f"attempts must be an int in 1..{MAX_ATTEMPTS}, not {self.attempts!r}"
            )
        delays = tuple(self.delays)
        for delay in delays:
            if (
                isinstance(delay, bool)
                or not isinstance(delay, (int, float))
                or not math.isfinite(delay)
                or not 0 <= delay <= MAX_DELAY
            ):
                raise ValueError(
                    f"a retry delay must be seconds in 0..{MAX_DELAY:.0f}, not {delay!r}"
                )
        if self.attempts > 1 and not delays:
            raise ValueError("give at least one delay (0 for at once), or attempts=1")
        object.__setattr__(self, "delays", delays)
        name = self.dead_letter_queue
        if name is not None and (
            not isinstance(name, str) or not name or len(name.encode()) > _MAX_NAME
        ):
            raise ValueError(f"dead_letter_queue must be a queue name, not {name!r}")

    def delay_before(self, attempt: int) -> float:
        """The seconds attempt ``attempt`` (2 or more) waits."""
        return self.delays[min(attempt - 2, len(self.delays) - 1)]

    def decide(self, queue: str, attempt: int) -> Decision:
        """What to do with a message of ``queue`` whose handler failed on
        ``attempt`` (1 for the first run)."""
        if attempt >= self.attempts:
            return DeadLetter(attempt, self.dead_letter_queue)
        delay = self.delay_before(attempt + 1)
        return RetryLater(attempt + 1, delay, delay_queue_name(queue, delay) if delay else None)

    def delay_queues(self, queue: str) -> dict[str, int]:
        """The delay queues the retries of ``queue`` go through, with the TTL
        of each in milliseconds.

        Raises:
            ValueError: a delay queue's name would be too long for ``queue``.
        """
        if self.attempts == 1:
            return {}
        used = {self.delay_before(attempt) for attempt in range(2, self.attempts + 1)}
        return {delay_queue_name(queue, delay): _milliseconds(delay) for delay in used if delay}


def _milliseconds(delay: float) -> int:
    return max(1, round(delay * 1000))


def delay_queue_name(queue: str, delay: float) -> str:
    """The delay queue of ``queue`` for ``delay`` seconds, e.g. ``orders.retry.1500ms``.

    Raises:
        ValueError: the name would be longer than 255 bytes.
    """
    name = f"{queue}.retry.{_milliseconds(delay)}ms"
    if len(name.encode()) > _MAX_NAME:
        raise ValueError(f"the delay queue name {name!r} is longer than 255 bytes")
    return name


def attempt_of(headers: Mapping[str, Any] | None) -> int:
    """The attempt a delivery is for, from its :data:`ATTEMPT_HEADER` (1 if
    it has none, or one that is not a positive int)."""
    if not headers:
        return 1
    value = headers.get(ATTEMPT_HEADER)
    if type(value) is int and 1 <= value <= MAX_ATTEMPTS:
        return value
    return 1


#: How far a message id got, in :class:`DuplicateWindow`: finished for good.
_FINISHED: Final = math.inf


class DuplicateWindow:
    """The last ``size`` message ids a worker finished with, and how far.

    Each id maps to the highest attempt that is settled: the handler
    succeeded or the message was dead-lettered (every attempt), or attempt
    *n* failed and its retry copy is published (attempts up to *n*).  A
    delivery for an attempt at or below that is a duplicate.  When full, the
    id updated longest ago is forgotten first.

    Raises:
        ValueError: ``size`` is less than 1.
    """

    def __init__(self, size: int) -> None:
        if type(size) is not int or size < 1:
            raise ValueError(f"a duplicate window holds at least 1 message id, not {size!r}")
        self.size = size
        self._settled: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._settled)

    def is_duplicate(self, key: Hashable, attempt: int) -> bool:
        """Was ``attempt`` of the message ``key`` settled already?"""
        return self._settled.get(key, 0) >= attempt

    def finished(self, key: Hashable) -> None:
        """The handler of ``key`` succeeded, or it was dead-lettered."""
        self._record(key, _FINISHED)

    def retried(self, key: Hashable, attempt: int) -> None:
        """Attempt ``attempt`` of ``key`` failed and its retry copy is out."""
        self._record(key, max(self._settled.get(key, 0), attempt))

    def _record(self, key: Hashable, settled: float) -> None:
        self._settled[key] = settled
        self._settled.move_to_end(key)
        if len(self._settled) > self.size:
            self._settled.popitem(last=False)
