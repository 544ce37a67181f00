"""Client configuration: one frozen, validated value."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._sansio._content import DEFAULT_MAX_BODY_SIZE
from .._sansio._framing import FRAME_MIN_SIZE
from ._backoff import Backoff


@dataclass(frozen=True, kw_only=True)
class Config:
    """How an :func:`~trio_lavin.open_client` client behaves.

    Every field is checked when the object is made; a bad value raises
    :class:`ValueError` naming the field and the value.  Use
    :func:`dataclasses.replace` to derive a variant.
    """

    #: Messages a producer buffers (while disconnected, or faster than the
    #: broker takes them) before its buffer policy applies.
    buffer_size: int = 10_000
    #: Wait before the first reconnect attempt, in seconds.
    reconnect_initial_delay: float = 0.1
    #: Longest wait between attempts, in seconds.
    reconnect_max_delay: float = 30.0
    #: Each failed attempt multiplies the wait by this (>= 1).
    reconnect_multiplier: float = 2.0
    #: Random spread of each wait, as a fraction: 0.2 means +-20 %.  Spreads
    #: the reconnects of many clients after a broker restart.
    reconnect_jitter: float = 0.2
    #: Stop after this many consecutive failed attempts (None: never) and
    #: raise the last error out of ``open_client``.
    max_reconnect_attempts: int | None = None
    #: Fatal errors (403 ACCESS_REFUSED, 530 NOT_ALLOWED, a refused TLS
    #: certificate) are tried this many times before they are raised.
    max_fatal_attempts: int = 3
    #: Give up (and raise the broker's reason out of ``open_client``) when
    #: this many connections in a row were closed by the broker with the
    #: same hard error - any reply code but 320 CONNECTION_FORCED (an
    #: operator's or a shutdown's close), whether in the handshake, the
    #: topology recovery or later.  A connection that stayed up for
    #: ``reconnect_max_delay`` starts the count over, and so does one that
    #: ends any other way.  None: never give up on this.
    max_broker_closes: int | None = 10
    #: How often the health poll looks at the live connection, in seconds.
    health_check_interval: float = 0.1
    #: A write that has moved no chunk of 1 MiB for this many seconds means
    #: the connection is dead (the peer stopped reading).
    write_timeout: float = 30.0
    #: Heartbeat interval to ask for, in seconds (the broker's lower value
    #: wins; LavinMQ proposes 300).  A silent broker is declared dead after
    #: two intervals.  0 disables heartbeats.
    heartbeat: int = 30
    #: Seconds allowed for TCP connect, TLS handshake and AMQP handshake.
    connect_timeout: float = 10.0
    #: Attempts to open a channel after a reconnect, and the pause between them.
    channel_retry_attempts: int = 3
    channel_retry_delay: float = 0.005
    #: Largest frame to ask for (the broker's lower value wins).
    frame_max: int = 131_072
    #: Most channels to ask for (the broker's lower value wins).
    channel_max: int = 2_047
    #: Largest message body accepted from the broker; a larger message
    #: closes its channel with 311 CONTENT_TOO_LARGE and stays in its queue
    #: (the connection stays up; consumers back off before subscribing again).
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    #: Shown in the broker's management UI.
    connection_name: str | None = None
    #: With several URLs (a cluster): go round them in a random order, drawn
    #: once per client, so that many clients spread over the nodes on their
    #: first connection and on every failover.  False: in the order given
    #: (the first URL first).
    shuffle_urls: bool = True
    #: How long to wait on one node before trying the next: the most seconds
    #: one connection attempt may take as a whole (TCP connect, TLS and AMQP
    #: handshakes, and re-declaring the topology).  None: ``connect_timeout``
    #: for the handshakes and again for the topology.
    endpoint_timeout: float | None = None
    #: A message the broker nacks (a quorum queue does while it elects a new
    #: leader, or when it cannot take it) is published again up to this many
    #: times before it is dropped as NACKED.  0: drop at the first nack.  The
    #: default waits 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s in all: long enough for an
    #: election on a busy machine.
    nack_retries: int = 5
    #: Wait before the first re-publication of a nacked message, in seconds;
    #: each further nack of it multiplies the wait by
    #: ``reconnect_multiplier`` (with ``reconnect_jitter``, at most
    #: ``reconnect_max_delay``).  The producer pauses for that long.
    nack_retry_delay: float = 0.1

    #: A message whose publishing channel the broker closed (e.g. 404: its
    #: exchange does not exist) is published again up to this many times,
    #: after the producer's pause, before it is dropped as REJECTED.  0: drop
    #: at the first.  With the default reconnect policy the pauses add up to
    #: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s.  (A 406, LavinMQ's "low on disk", pauses
    #: without counting.)
    publish_retries: int = 5

    def nack_backoff(self) -> Backoff:
        """The wait before re-publishing a nacked message (its ``attempt``
        is the number of nacks the message got before this one)."""
        return Backoff(
            initial=self.nack_retry_delay,
            multiplier=self.reconnect_multiplier,
            maximum=max(self.reconnect_max_delay, self.nack_retry_delay),
            jitter=self.reconnect_jitter,
        )

    def backoff(self, *, jitter: bool = True) -> Backoff:
        """The reconnect backoff policy these settings describe (the
        supervisor's, and the one producers and consumers use when the broker
        refuses a channel)."""
        return Backoff(
            initial=self.reconnect_initial_delay,
            multiplier=self.reconnect_multiplier,
            maximum=self.reconnect_max_delay,
            jitter=self.reconnect_jitter if jitter else 0.0,
        )

    def __post_init__(self) -> None:
        _positive(self, "buffer_size", integer=True)
        _positive(self, "reconnect_initial_delay")
        _positive(self, "reconnect_max_delay")
        if self.reconnect_max_delay < self.reconnect_initial_delay:
            raise ValueError(
                f"reconnect_max_delay must be >= reconnect_initial_delay "
                f"({self.reconnect_initial_delay!r}), not {self.reconnect_max_delay!r}"
            )
        _check(self, "reconnect_multiplier", lambda v: v >= 1, "a number >= 1")
        _check(self, "reconnect_jitter", lambda v: 0 <= v <= 1, "a fraction in 0..1")
        if self.max_reconnect_attempts is not None:
            _positive(self, "max_reconnect_attempts", integer=True)
        _positive(self, "max_fatal_attempts", integer=True)
        if self.max_broker_closes is not None:
            _positive(self, "max_broker_closes", integer=True)
        _positive(self, "health_check_interval")
        _positive(self, "write_timeout")
        _check(
            self, "heartbeat", lambda v: 0 <= v <= 65_535, "an integer in 0..65535", integer=True
        )
        _positive(self, "connect_timeout")
        _positive(self, "channel_retry_attempts", integer=True)
        _check(self, "channel_retry_delay", lambda v: v >= 0, "a number >= 0")
        _check(
            self,
            "frame_max",
            lambda v: v == 0 or FRAME_MIN_SIZE <= v <= 2**32 - 1,
            f"0 or an integer >= {FRAME_MIN_SIZE}",
            integer=True,
        )
        _check(
            self, "channel_max", lambda v: 0 <= v <= 65_535, "an integer in 0..65535", integer=True
        )
        _positive(self, "max_body_size", integer=True)
        if type(self.shuffle_urls) is not bool:
            raise ValueError(f"shuffle_urls must be True or False, not {self.shuffle_urls!r}")
        if self.endpoint_timeout is not None:
            _positive(self, "endpoint_timeout")
        _check(self, "nack_retries", lambda v: v >= 0, "an integer >= 0", integer=True)
        _positive(self, "nack_retry_delay")
        _check(self, "publish_retries", lambda v: v >= 0, "an integer >= 0", integer=True)


def _check(
    config: Config, name: str, ok: Callable[[Any], bool], expected: str, *, integer: bool = False
) -> None:
    value = getattr(config, name)
    number_types: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, number_types)
        or (isinstance(value, float) and math.isnan(value))
        or not ok(value)
    ):
        raise ValueError(f"{name} must be {expected}, not {value!r}")


def _positive(config: Config, name: str, *, integer: bool = False) -> None:
    expected = "an integer >= 1" if integer else "a number > 0"
    _check(config, name, lambda v: v > 0 and not math.isinf(v), expected, integer=integer)
