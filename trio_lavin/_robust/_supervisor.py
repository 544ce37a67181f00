"""When to (re)connect: the supervisor's decisions, without I/O or clock.

The trio layer (:mod:`._client`) asks :meth:`Supervisor.next_action` what to
do, does it (sleep, or try to connect), and reports the outcome with
``connect_started`` / ``connected`` / ``connect_failed`` / ``lost``.  Time
comes in as ``now``.  State changes are recorded in
:attr:`Supervisor.changes` for the trio layer to publish.

States and what moves between them (any other move is a bug and raises)::

    DISCONNECTED --start attempt--> CONNECTING --success--> CONNECTED
    CONNECTING --transient failure--> DISCONNECTED (next endpoint, or wait backoff)
    CONNECTING --fatal failure x max_fatal_attempts, or max_reconnect_attempts--> STOPPED
    CONNECTED --lost--> DISCONNECTED (wait backoff)
    any --close--> CLOSED

``STOPPED`` and ``CLOSED`` are terminal.

Endpoints (failover): attempts go round the endpoints in one fixed order, a
random permutation drawn once from ``rng`` (``Config.shuffle_urls``, the
default: many clients given the same list spread over its nodes, on their
first connection and on every failover) or the given order.  A *round* is one
attempt on each endpoint: a failed attempt moves on to the next endpoint at
once, and only when a whole round failed does the client wait.  With one
endpoint a round is one attempt: every failure waits.

Backoff: every wait (after a failed round, or after losing a connection)
takes the next backoff delay, so the waits grow with every failed round.
When a connection that was open and recovered (:meth:`connected`) is lost,
what ended it decides whether the waits start over:

=====================================================  ===========================
how the connection ended                                the backoff
=====================================================  ===========================
the network: EOF, a reset, a heartbeat timeout, a       starts over (a good
failed write; or 320 CONNECTION_FORCED (an operator,    connection was lost: come
a broker shutting down)                                 back at once)
the broker broke the protocol                           goes on growing (a broken
(:func:`broke_the_protocol`)                            broker does it every time)
the broker closed it with a hard error                  grows with the connections in
(:func:`hard_close_code`: 503, 504, 530, 541, ...)      a row the broker closed so
                                                        (``broker_closes``), not with
                                                        an outage before them
=====================================================  ===========================

So a broker that sends garbage, or closes every connection with an error, at
once, after a while or on the first command, is retried with growing waits,
never faster than one attempt per backoff delay; and a client that lost a
good connection to the network or an operator comes back (on the next
endpoint) after ``reconnect_initial_delay``, so that sever storms of a few
hundred milliseconds are ridden out at once.

Giving up: ``failures`` (for ``max_reconnect_attempts``) counts failed
attempts since the last successful one; ``fatal_failures`` (for
``max_fatal_attempts``) the fatal ones; and ``broker_closes`` (for
``Config.max_broker_closes``) the connections in a row that the broker
closed with the same hard error (``broker_close_code``), in the handshake,
the topology recovery or afterwards.  A connection that ends any other way,
or had been up for ``reconnect_max_delay``, starts that count over; an
attempt that never reached the broker leaves it as it is.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import ssl
from dataclasses import dataclass, field
from typing import Final

from .._exceptions import (
    AMQPConnectionError,
    CommandRefused,
    ConnectionClosedByBroker,
    ConnectionLost,
)
from .._sansio._errors import (
    ACCESS_REFUSED,
    CONNECTION_FORCED,
    NOT_ALLOWED,
    REPLY_SUCCESS,
    RemoteProtocolError,
    reply_name,
)
from ._config import Config


class ClientState(enum.Enum):
    #: Not connected; the next attempt starts at ``retry_at``.
    DISCONNECTED = "DISCONNECTED"
    #: An attempt is in progress (connect, handshake, topology recovery).
    CONNECTING = "CONNECTING"
    #: Connected and recovered.
    CONNECTED = "CONNECTED"
    #: Gave up: a fatal error, or max_reconnect_attempts.  Terminal.
    STOPPED = "STOPPED"
    #: Closed by the user.  Terminal.
    CLOSED = "CLOSED"


class ErrorKind(enum.Enum):
    #: Worth retrying: the network, a restarting broker, a forced close.
    TRANSIENT = "TRANSIENT"
    #: Retrying cannot help: credentials, vhost, certificates.
    FATAL = "FATAL"


#: How many of the latest backoff delays :attr:`Supervisor.delays` keeps (up
#: to twice as many between trims): a client that retries for weeks must not
#: grow without bound.
RECORDED_DELAYS: Final = 1_000

#: Reply codes that retrying cannot fix.
FATAL_REPLY_CODES: Final = frozenset({ACCESS_REFUSED, NOT_ALLOWED})


def broke_the_protocol(error: BaseException) -> bool:
    """Did the connection end because the broker violated the protocol (its
    ``__cause__`` is a :class:`~trio_lavin.RemoteProtocolError`, e.g. 501
    FRAME_ERROR or 505 UNEXPECTED_FRAME)?"""
    return isinstance(error.__cause__, RemoteProtocolError)


def hard_close_code(error: BaseException) -> int | None:
    """The reply code when the broker closed the connection on purpose with
    an error (``Connection.Close`` with 503 COMMAND_INVALID, 530 NOT_ALLOWED,
    541 INTERNAL_ERROR, ...; or a :class:`CommandRefused`); None for any other
    end, including 320 CONNECTION_FORCED, which an operator or a broker
    shutting down sends and which says nothing about the client."""
    if not isinstance(error, (ConnectionClosedByBroker, CommandRefused)):
        return None
    code = error.reply_code
    if not code or code in (REPLY_SUCCESS, CONNECTION_FORCED):
        return None
    return code


def classify(error: BaseException) -> ErrorKind:
    """Transient (retry with backoff) or fatal (raise after a few tries)."""
    if isinstance(error, AMQPConnectionError) and error.reply_code in FATAL_REPLY_CODES:
        return ErrorKind.FATAL
    if isinstance(error, (ValueError, TypeError)):
        return ErrorKind.FATAL
    # A certificate the client refuses stays refused; it may sit a few
    # causes deep (ConnectionLost <- BrokenResourceError <- SSL error).
    seen = 0
    cause = error.__cause__ or error.__context__
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return ErrorKind.FATAL
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return ErrorKind.TRANSIENT


class Detection(enum.Enum):
    #: The reader saw EOF, a reset or Connection.Close; or a write failed.
    EVENT = "event"
    #: The health poll found a dead connection the event path missed.
    POLL = "poll"


@dataclass(frozen=True)
class StateChange:
    """One move of the client's state, as :meth:`Client.events` publishes it."""

    old: ClientState
    new: ClientState
    at: float
    #: The endpoint (without credentials) the change is about, if any.
    endpoint: str | None = None
    #: The error that caused the change, if any.
    error: BaseException | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Connect:
    """Try to connect to ``endpoints[endpoint]`` now."""

    endpoint: int


@dataclass(frozen=True)
class Wait:
    """Sleep until ``until`` (then ask again)."""

    until: float


@dataclass(frozen=True)
class Stop:
    """Give up and raise ``error`` out of the client."""

    error: BaseException


Action = Connect | Wait | Stop | None

_ALLOWED: Final = {
    (ClientState.DISCONNECTED, ClientState.CONNECTING),
    (ClientState.CONNECTING, ClientState.CONNECTED),
    (ClientState.CONNECTING, ClientState.DISCONNECTED),
    (ClientState.CONNECTING, ClientState.STOPPED),
    (ClientState.CONNECTED, ClientState.DISCONNECTED),
    (ClientState.CONNECTED, ClientState.STOPPED),
    (ClientState.DISCONNECTED, ClientState.CLOSED),
    (ClientState.CONNECTING, ClientState.CLOSED),
    (ClientState.CONNECTED, ClientState.CLOSED),
}


class Supervisor:
    """The reconnect decisions for one client (see the module doc)."""

    def __init__(
        self,
        config: Config,
        endpoints: list[str],
        now: float,
        rng: random.Random | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is needed")
        self.config = config
        self.endpoints = endpoints
        self.rng = rng if rng is not None else random.Random()
        self.backoff = config.backoff()
        #: The order attempts go round the endpoints in (indexes into ``endpoints``).
        self.order = list(range(len(endpoints)))
        if config.shuffle_urls:
            self.rng.shuffle(self.order)
        #: Position in ``order`` of the current or last attempt.
        self.position = len(endpoints) - 1
        #: Failed attempts since the last wait or healthy connection.
        self.round_failures = 0
        self.state = ClientState.DISCONNECTED
        #: When the next attempt may start (DISCONNECTED only).
        self.retry_at = now
        #: Index (in ``endpoints``) of the endpoint of the current or last attempt.
        self.endpoint = self.order[self.position]
        #: Consecutive failed attempts since the last healthy connection.
        self.failures = 0
        #: Fatal failures since the last healthy connection.
        self.fatal_failures = 0
        #: Connections in a row that the broker closed with the hard error
        #: ``broker_close_code`` (see the module doc).
        self.broker_closes = 0
        self.broker_close_code: int | None = None
        #: Successful connections, and how many of them were reconnections.
        self.connects = 0
        self.reconnects = 0
        self.attempts = 0
        self.detections = {Detection.EVENT: 0, Detection.POLL: 0}
        self.last_error: BaseException | None = None
        self.connected_since: float | None = None
        #: When the last successful (re)connection was made; kept after a loss.
        self.last_connected_at: float | None = None
        self.stop_error: BaseException | None = None
        #: When it gave up over ``max_broker_closes``: how many (else 0).
        self.stopped_by_broker_closes = 0
        #: Every change, in order; the trio layer drains it.
        self.changes: list[StateChange] = []
        #: The latest delays chosen, in order (for tests and statistics; see
        #: RECORDED_DELAYS).
        self.delays: list[float] = []

    def _move(self, new: ClientState, now: float, error: BaseException | None = None) -> None:
        old = self.state
        if (old, new) not in _ALLOWED:
            raise RuntimeError(f"Invalid client state change {old.value} -> {new.value}")
        self.state = new
        self.changes.append(StateChange(old, new, now, self.endpoints[self.endpoint], error))

    def next_action(self, now: float) -> Action:
        """What the trio layer should do next."""
        if self.state is ClientState.STOPPED:
            assert self.stop_error is not None
            return Stop(self.stop_error)
        if self.state is not ClientState.DISCONNECTED:
            return None
        if now < self.retry_at:
            return Wait(self.retry_at)
        return Connect(self.order[(self.position + 1) % len(self.order)])

    def connect_started(self, now: float, endpoint: int) -> None:
        self.endpoint = endpoint
        self.position = self.order.index(endpoint)
        self.attempts += 1
        self._move(ClientState.CONNECTING, now)

    def connected(self, now: float) -> None:
        """The attempt succeeded: the connection is open and recovered."""
        self._move(ClientState.CONNECTED, now)
        if self.connects:
            self.reconnects += 1
        self.connects += 1
        self.failures = 0
        self.fatal_failures = 0
        self.round_failures = 0
        self.connected_since = now
        self.last_connected_at = now

    def connect_failed(self, now: float, error: BaseException) -> None:
        self.last_error = error
        self.failures += 1
        fatal = classify(error) is ErrorKind.FATAL
        if fatal:
            self.fatal_failures += 1
        code = hard_close_code(error)
        too_many_closes = code is not None and self._count_broker_close(code, fresh=False)
        limit = self.config.max_reconnect_attempts
        if (
            too_many_closes
            or (fatal and self.fatal_failures >= self.config.max_fatal_attempts)
            or (limit is not None and self.failures >= limit)
        ):
            self._stop(now, error, broker_closes=too_many_closes)
            return
        self.round_failures += 1
        if self.round_failures >= len(self.endpoints):
            self._schedule(now)
        else:
            self.retry_at = now  # the next endpoint, at once
        self._move(ClientState.DISCONNECTED, now, error)

    def lost(self, now: float, error: BaseException, detected_by: Detection) -> None:
        """The connection died after it was established."""
        self.last_error = error
        self.detections[detected_by] += 1
        code = hard_close_code(error)
        if code is None:
            self.broker_closes = 0
            if not broke_the_protocol(error):
                self.backoff = self.backoff.reset()  # a good connection was lost
        else:
            since = self.connected_since
            # Up for the longest wait: not part of a storm, whatever ended it.
            lasted = since is not None and now - since >= self.config.reconnect_max_delay
            if self._count_broker_close(code, fresh=lasted):
                self.connected_since = None
                self._stop(now, error, broker_closes=True)
                return
            # The wait grows with the storm (the connections in a row the
            # broker closed so), not with an outage that came before it.
            self.backoff = dataclasses.replace(
                self.backoff.reset(), attempt=self.broker_closes - 1
            )
        self.connected_since = None
        self._schedule(now)
        self._move(ClientState.DISCONNECTED, now, error)

    def _count_broker_close(self, code: int, *, fresh: bool) -> bool:
        """Count a connection the broker closed with ``code`` (``fresh``: it
        had been up long enough to start the count over); True when that
        makes ``Config.max_broker_closes`` in a row."""
        if fresh or code != self.broker_close_code:
            self.broker_closes = 0
        self.broker_close_code = code
        self.broker_closes += 1
        limit = self.config.max_broker_closes
        return limit is not None and self.broker_closes >= limit

    def close(self, now: float) -> None:
        if self.state in (ClientState.CLOSED, ClientState.STOPPED):
            return
        self.connected_since = None
        self._move(ClientState.CLOSED, now)

    def _schedule(self, now: float) -> None:
        delay = self.backoff.delay(self.rng)
        self.delays.append(delay)
        self.round_failures = 0
        if len(self.delays) > 2 * RECORDED_DELAYS:
            del self.delays[:-RECORDED_DELAYS]
        self.backoff = self.backoff.next()
        self.retry_at = now + delay

    def final_error(self) -> ConnectionLost:
        """The error to raise out of the client once it gave up (STOPPED)."""
        assert self.stop_error is not None
        return describe_stop(self.stop_error, self.attempts, self.stopped_by_broker_closes)

    def _stop(self, now: float, error: BaseException, *, broker_closes: bool = False) -> None:
        self.stop_error = error
        self.stopped_by_broker_closes = self.broker_closes if broker_closes else 0
        self.retry_at = math.inf
        self._move(ClientState.STOPPED, now, error)


def describe_stop(error: BaseException, attempts: int, broker_closes: int = 0) -> ConnectionLost:
    """The error raised out of the client when the supervisor gives up
    (``broker_closes``: after that many connections in a row closed by the
    broker with ``error``'s reply code)."""
    code = hard_close_code(error)
    if code is not None and broker_closes:
        assert isinstance(error, (ConnectionClosedByBroker, CommandRefused))
        final: ConnectionLost = ConnectionClosedByBroker(
            f"gave up: the broker closed {broker_closes} connections in a row with "
            f"{code} {reply_name(code)} (max_broker_closes), the last one: {error.reply_text}",
            code,
            error.class_id,
            error.method_id,
        )
    elif isinstance(error, (ConnectionClosedByBroker, CommandRefused)):
        final = ConnectionClosedByBroker(
            f"gave up after {attempts} attempts: {error.reply_text}", error.reply_code or 0
        )
    elif isinstance(error, AMQPConnectionError):
        final = ConnectionLost(
            f"gave up after {attempts} attempts: {error.reply_text}", error.reply_code
        )
    else:
        final = ConnectionLost(f"gave up after {attempts} attempts: {error}")
    final.__cause__ = error
    return final
