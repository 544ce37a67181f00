"""The pure reconnect :class:`Supervisor` as a hypothesis state machine.

The machine plays the trio layer against a simulated clock: it only starts an
attempt when ``next_action`` says ``Connect``, only sleeps until a ``Wait``,
and reports outcomes (success, transient or fatal failure, loss of a live
connection, the user closing).  Next to the supervisor it keeps its own model,
written from the documented policy, not from the code:

* at most one attempt is in flight: ``next_action`` says nothing while one is;
* every delay is within the backoff bounds for the number of waits since the
  last healthy connection: ``base(k) = min(max, initial * multiplier ** k)``,
  spread by ``+- jitter``; a healthy connection resets ``k`` to 0;
* a failed attempt waits only when it ends a round (one failed attempt per
  endpoint since the last wait or healthy connection); otherwise the next
  endpoint is tried at once; a lost connection always waits;
* after a connection the broker closed with a hard error (any reply code but
  320), ``k`` is the number of such connections in a row, less one (the
  storm's own count, not an earlier outage's); a loss to a protocol violation
  does not reset ``k``; every other loss does;
* ``max_fatal_attempts`` fatal failures (403/530) since the last healthy
  connection, ``max_reconnect_attempts`` consecutive failures, or
  ``max_broker_closes`` connections in a row closed by the broker with the
  same hard error (a connection up for ``reconnect_max_delay``, or ended any
  other way, starts that count over; a failure that is not a broker close
  leaves it) stop the supervisor: ``next_action`` returns ``Stop(that
  error)`` forever after;
* every state change is recorded once, in order, each ``old`` being the
  previous ``new``, at the time it happened, with the error that caused it;
* ``STOPPED`` and ``CLOSED`` are terminal;
* attempts go round the endpoints in one fixed order: the first ``n`` attempts
  visit every endpoint once (in the given order unless ``shuffle_urls``), and
  attempt ``k`` goes where attempt ``k - n`` went.
"""

from __future__ import annotations

import math
import random
import ssl

import pytest
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trio_lavin._exceptions import CommandRefused, ConnectionClosedByBroker, ConnectionLost
from trio_lavin._robust._config import Config
from trio_lavin._robust._supervisor import (
    ClientState,
    Connect,
    Detection,
    ErrorKind,
    Stop,
    Supervisor,
    Wait,
    classify,
)
from trio_lavin._sansio._errors import FrameError

#: Slack when comparing a chosen delay with the model's bounds.
REL = 1e-9

#: The state changes the supervisor may make (its module doc), with whether
#: the change carries an error.
ALLOWED_CHANGES = {
    (ClientState.DISCONNECTED, ClientState.CONNECTING): False,
    (ClientState.CONNECTING, ClientState.CONNECTED): False,
    (ClientState.CONNECTING, ClientState.DISCONNECTED): True,
    (ClientState.CONNECTING, ClientState.STOPPED): True,
    (ClientState.CONNECTED, ClientState.DISCONNECTED): True,
    (ClientState.CONNECTED, ClientState.STOPPED): True,
    (ClientState.DISCONNECTED, ClientState.CLOSED): False,
    (ClientState.CONNECTING, ClientState.CLOSED): False,
    (ClientState.CONNECTED, ClientState.CLOSED): False,
}
TERMINAL = (ClientState.STOPPED, ClientState.CLOSED)


def _ssl_failure() -> OSError:
    error = OSError("TLS handshake failed")
    error.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    return error


#: Errors a connection attempt can end with, by the kind they must be
#: classified as (``builds``: a fresh object per draw, so identity checks mean
#: something).
TRANSIENT_ERRORS: st.SearchStrategy[BaseException] = st.one_of(
    st.builds(ConnectionRefusedError, st.just(111), st.just("Connection refused")),
    st.builds(OSError, st.just(113), st.just("No route to host")),
    st.builds(TimeoutError, st.just("connecting took longer than 10 s")),
    st.builds(ConnectionLost, st.just("EOF during the handshake")),
    st.builds(ConnectionLost, st.just("protocol error"), st.just(501)),
    st.builds(ConnectionClosedByBroker, st.just("CONNECTION_FORCED"), st.just(320)),
    st.builds(ConnectionClosedByBroker, st.just("INTERNAL_ERROR"), st.just(541)),
    st.builds(ConnectionClosedByBroker, st.just("COMMAND_INVALID"), st.just(503), st.just(40)),
    st.builds(CommandRefused, st.just("COMMAND_INVALID"), st.just(503), st.just(40), st.just(10)),
)
FATAL_ERRORS: st.SearchStrategy[BaseException] = st.one_of(
    st.builds(ConnectionClosedByBroker, st.just("ACCESS_REFUSED - Login refused"), st.just(403)),
    st.builds(ConnectionClosedByBroker, st.just("NOT_ALLOWED - no vhost"), st.just(530)),
    st.builds(ConnectionLost, st.just("ACCESS_REFUSED"), st.just(403)),
    st.builds(_ssl_failure),
)


def _protocol_violation() -> ConnectionLost:
    error = ConnectionLost("protocol error: unknown frame type 255", 501)
    error.__cause__ = FrameError("unknown frame type 255")
    return error


LOSS_ERRORS: st.SearchStrategy[BaseException] = st.one_of(
    st.builds(ConnectionLost, st.just("EOF")),
    st.builds(ConnectionLost, st.just("no data for 20.0 s (heartbeat timeout)")),
    st.builds(ConnectionClosedByBroker, st.just("CONNECTION_FORCED"), st.just(320)),
    st.builds(_protocol_violation),
    st.builds(ConnectionClosedByBroker, st.just("INTERNAL_ERROR"), st.just(541)),
    st.builds(
        ConnectionClosedByBroker,
        st.just("COMMAND_INVALID"),
        st.just(503),
        st.just(40),
        st.just(10),
    ),
)


def broker_hard_close(error: BaseException) -> int | None:
    """The model's reading of "the broker closed it with a hard error": a
    Connection.Close (or the refusal of a command it names) with a code other
    than 320 CONNECTION_FORCED."""
    if isinstance(error, (ConnectionClosedByBroker, CommandRefused)) and error.reply_code != 320:
        return error.reply_code
    return None


def delay_bounds(config: Config, k: int) -> tuple[float, float]:
    """The smallest and largest wait after ``k`` earlier waits since the last
    healthy connection, computed from the policy."""
    initial, maximum = config.reconnect_initial_delay, config.reconnect_max_delay
    multiplier, jitter = config.reconnect_multiplier, config.reconnect_jitter
    if multiplier > 1 and k * math.log(multiplier) >= math.log(maximum / initial):
        base = maximum
    else:
        base = min(maximum, initial * multiplier**k)
    return base * (1 - jitter), min(maximum, base * (1 + jitter))


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sup: Supervisor | None = None

    @initialize(
        initial=st.sampled_from([0.05, 0.1, 1.0]),
        multiplier=st.one_of(st.sampled_from([1.0, 2.0]), st.floats(1.0, 4.0)),
        max_factor=st.sampled_from([1.0, 4.0, 300.0]),
        jitter=st.one_of(st.sampled_from([0.0, 0.2, 1.0]), st.floats(0.0, 1.0)),
        max_reconnect_attempts=st.one_of(st.none(), st.integers(1, 4)),
        max_fatal_attempts=st.integers(1, 3),
        max_broker_closes=st.one_of(st.none(), st.integers(1, 4)),
        endpoints=st.integers(1, 3),
        start=st.sampled_from([0.0, 1_000_000.0]),
        seed=st.integers(0, 2**32 - 1),
        close_after=st.integers(0, 12),
        shuffle=st.booleans(),
    )
    def setup(
        self,
        initial: float,
        multiplier: float,
        max_factor: float,
        jitter: float,
        max_reconnect_attempts: int | None,
        max_fatal_attempts: int,
        max_broker_closes: int | None,
        endpoints: int,
        start: float,
        seed: int,
        close_after: int,
        shuffle: bool,
    ) -> None:
        self.config = Config(
            reconnect_initial_delay=initial,
            reconnect_max_delay=initial * max_factor,
            reconnect_multiplier=multiplier,
            reconnect_jitter=jitter,
            max_reconnect_attempts=max_reconnect_attempts,
            max_fatal_attempts=max_fatal_attempts,
            max_broker_closes=max_broker_closes,
            shuffle_urls=shuffle,
        )
        self.now = start
        self.endpoints = [f"amqp://host-{i}:5672/%2F" for i in range(endpoints)]
        self.sup = Supervisor(self.config, self.endpoints, start, random.Random(seed))
        # The model.
        self.state = ClientState.DISCONNECTED
        self.retry_at = start  # the first attempt starts at once
        self.waits = 0  # delays chosen since the last healthy connection was lost
        self.round_failures = 0  # failed attempts since the last wait or healthy connection
        self.visited: list[int] = []  # the endpoint of each attempt, in order
        self.failures = 0  # failed attempts since the last healthy connection
        self.fatal_failures = 0
        self.broker_closes = 0  # connections in a row closed with broker_close_code
        self.broker_close_code: int | None = None
        self.connected_at = start
        self.attempts = 0
        self.connects = 0
        self.losses = {Detection.EVENT: 0, Detection.POLL: 0}
        self.stop_error: BaseException | None = None
        self.delays_seen = 0
        self.history: list[tuple[ClientState, ClientState]] = []
        #: The user closes only after this many attempts (so most runs get far).
        self.close_after = close_after

    # -- helpers ------------------------------------------------------------------------------

    @property
    def supervisor(self) -> Supervisor:
        assert self.sup is not None
        return self.sup

    def expect_change(
        self, old: ClientState, new: ClientState, error: BaseException | None = None
    ) -> None:
        """The supervisor recorded exactly this one change, now; drain it like
        the trio layer does."""
        changes = self.supervisor.changes
        assert len(changes) == 1, changes
        change = changes[0]
        assert (change.old, change.new) == (old, new)
        assert change.at == self.now
        assert change.error is error
        assert (error is not None) == ALLOWED_CHANGES[(old, new)]
        if self.attempts:
            # About the endpoint of the current (or last) attempt.
            assert change.endpoint == self.endpoints[self.visited[-1]]
        changes.clear()
        self.state = new
        self.history.append((old, new))

    def expect_new_delay(self) -> None:
        """A failure or loss chose one delay, within the bounds for ``waits``;
        the next attempt may start exactly that much later."""
        delays = self.supervisor.delays
        assert len(delays) == self.delays_seen + 1
        delay = delays[-1]
        low, high = delay_bounds(self.config, self.waits)
        note(f"delay {delay!r} for wait #{self.waits}, bounds [{low!r}, {high!r}]")
        assert low * (1 - REL) <= delay <= high * (1 + REL)
        self.delays_seen += 1
        self.waits += 1
        self.round_failures = 0
        self.retry_at = self.now + delay

    def check_endpoint_order(self, endpoint: int) -> None:
        """``endpoint`` is where the next attempt may go: the first round
        visits each endpoint once (in the given order unless shuffled), later
        rounds repeat it."""
        n = len(self.endpoints)
        assert 0 <= endpoint < n
        if self.attempts < n:
            assert endpoint not in self.visited
            if not self.config.shuffle_urls:
                assert endpoint == self.attempts
        else:
            assert endpoint == self.visited[self.attempts - n]

    def count_broker_close(self, error: BaseException, *, fresh: bool) -> bool:
        """Count a broker close in the model; True when it makes the limit."""
        code = broker_hard_close(error)
        if code is None:
            return False
        if fresh or code != self.broker_close_code:
            self.broker_closes = 0
        self.broker_close_code = code
        self.broker_closes += 1
        limit = self.config.max_broker_closes
        return limit is not None and self.broker_closes >= limit

    def fail_attempt(self, error: BaseException, kind: ErrorKind) -> None:
        assert classify(error) is kind
        sup = self.supervisor
        sup.connect_failed(self.now, error)
        self.failures += 1
        if kind is ErrorKind.FATAL:
            self.fatal_failures += 1
        too_many_closes = self.count_broker_close(error, fresh=False)
        limit = self.config.max_reconnect_attempts
        if (
            too_many_closes
            or self.fatal_failures >= self.config.max_fatal_attempts
            or (limit is not None and self.failures >= limit)
        ):
            assert len(sup.delays) == self.delays_seen  # no wait before giving up
            self.stop_error = error
            event(f"stopped after a {kind.value} failure")
            self.expect_change(ClientState.CONNECTING, ClientState.STOPPED, error)
            return
        self.round_failures += 1
        if self.round_failures == len(self.endpoints):
            self.expect_new_delay()
        else:
            event("moved on to the next endpoint at once")
            assert len(sup.delays) == self.delays_seen  # no wait within a round
            self.retry_at = self.now
        self.expect_change(ClientState.CONNECTING, ClientState.DISCONNECTED, error)

    # -- rules: what the trio layer does when next_action allows it ---------------------------

    @precondition(lambda self: self.state is ClientState.DISCONNECTED)
    @rule()
    def start_attempt_when_told_to_connect(self) -> None:
        sup = self.supervisor
        action = sup.next_action(self.now)
        if self.now < self.retry_at:
            assert action == Wait(self.retry_at)
            return  # not yet: the trio layer sleeps
        assert isinstance(action, Connect)
        self.check_endpoint_order(action.endpoint)
        sup.connect_started(self.now, action.endpoint)
        self.visited.append(action.endpoint)
        self.attempts += 1
        self.expect_change(ClientState.DISCONNECTED, ClientState.CONNECTING)
        assert self.supervisor.changes == []

    @precondition(lambda self: self.state is ClientState.CONNECTING)
    @rule()
    def connect_succeeds(self) -> None:
        self.supervisor.connected(self.now)
        self.connects += 1
        self.failures = self.fatal_failures = self.round_failures = 0
        self.expect_change(ClientState.CONNECTING, ClientState.CONNECTED)
        assert self.supervisor.connected_since == self.now
        self.connected_at = self.now

    @precondition(lambda self: self.state is ClientState.CONNECTING)
    @rule(error=TRANSIENT_ERRORS)
    def connect_fails_transiently(self, error: BaseException) -> None:
        self.fail_attempt(error, ErrorKind.TRANSIENT)

    @precondition(lambda self: self.state is ClientState.CONNECTING)
    @rule(error=FATAL_ERRORS)
    def connect_fails_fatally(self, error: BaseException) -> None:
        self.fail_attempt(error, ErrorKind.FATAL)

    @precondition(lambda self: self.state is ClientState.CONNECTED)
    @rule(error=LOSS_ERRORS, detected_by=st.sampled_from(Detection))
    def connection_is_lost(self, error: BaseException, detected_by: Detection) -> None:
        self.supervisor.lost(self.now, error, detected_by)
        self.losses[detected_by] += 1
        lasted = self.now - self.connected_at >= self.config.reconnect_max_delay
        if broker_hard_close(error) is not None:
            event("closed by the broker after a long life" if lasted else "closed by the broker")
            if self.count_broker_close(error, fresh=lasted):
                event("stopped after max_broker_closes")
                assert len(self.supervisor.delays) == self.delays_seen
                self.stop_error = error
                self.expect_change(ClientState.CONNECTED, ClientState.STOPPED, error)
                assert self.supervisor.connected_since is None
                return
            # The wait grows with the storm, whatever came before it.
            self.waits = self.broker_closes - 1
        else:
            self.broker_closes = 0
            if isinstance(error.__cause__, FrameError):
                event("lost to a protocol violation: the backoff keeps growing")
            else:
                self.waits = 0  # a healthy connection lost: the backoff starts over
        self.expect_new_delay()
        self.expect_change(ClientState.CONNECTED, ClientState.DISCONNECTED, error)
        assert self.supervisor.connected_since is None
        assert self.supervisor.last_error is error

    @rule(dt=st.one_of(st.sampled_from([0.0, 0.01, 0.1]), st.floats(0.0, 100.0)))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @precondition(lambda self: self.state is ClientState.DISCONNECTED and self.now < self.retry_at)
    @rule(early=st.sampled_from([True, False]))
    def time_reaches_the_retry_time(self, early: bool) -> None:
        """Land exactly on (or just before) the end of the wait."""
        if early:
            self.now = max(self.now, math.nextafter(self.retry_at, -math.inf))
            assert self.supervisor.next_action(self.now) == Wait(self.retry_at)
        else:
            self.now = self.retry_at

    @precondition(lambda self: self.attempts >= self.close_after)
    @rule()
    def user_closes(self) -> None:
        sup = self.supervisor
        old = self.state
        sup.close(self.now)
        event(f"user closed when {old.value}")
        if old in TERMINAL:
            assert sup.changes == []  # closing a finished client is a no-op
            assert sup.state is old
        else:
            self.expect_change(old, ClientState.CLOSED)
            assert sup.connected_since is None

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def next_action_agrees_with_the_model(self) -> None:
        if self.sup is None:
            return
        sup = self.supervisor
        assert sup.state is self.state
        action = sup.next_action(self.now)
        if self.state is ClientState.STOPPED:
            assert isinstance(action, Stop)
            assert action.error is self.stop_error
            # ... forever after, whatever the time.
            assert sup.next_action(self.now + 1e9) == action
        elif self.state is ClientState.DISCONNECTED:
            if self.now < self.retry_at:
                assert action == Wait(self.retry_at)
            else:
                assert isinstance(action, Connect)
                self.check_endpoint_order(action.endpoint)
        else:
            # CONNECTING: the attempt in flight is the only one, now and later;
            # CONNECTED and CLOSED: nothing to do.
            assert action is None
            assert sup.next_action(self.now + 1e9) is None

    @invariant()
    def counters_agree_with_the_model(self) -> None:
        if self.sup is None:
            return
        sup = self.supervisor
        assert sup.attempts == self.attempts
        assert sup.connects == self.connects
        assert sup.reconnects == max(0, self.connects - 1)
        assert sup.failures == self.failures
        assert sup.fatal_failures == self.fatal_failures
        assert sup.broker_closes == self.broker_closes
        assert sup.detections == self.losses
        assert len(sup.delays) == self.delays_seen
        assert sup.backoff.attempt == self.waits

    @invariant()
    def state_changes_form_one_chain_through_allowed_moves(self) -> None:
        if self.sup is None:
            return
        assert self.supervisor.changes == []  # every change was seen and drained
        previous = ClientState.DISCONNECTED
        for old, new in self.history:
            assert old is previous
            assert (old, new) in ALLOWED_CHANGES
            previous = new
        assert previous is self.state
        # Nothing ever leaves a terminal state.
        for index, (old, _new) in enumerate(self.history):
            if old in TERMINAL:
                raise AssertionError(f"change #{index} leaves terminal state {old}")


TestSupervisorFollowsTheReconnectPolicy = SupervisorMachine.TestCase
TestSupervisorFollowsTheReconnectPolicy.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)


def test_shuffled_urls_spread_first_connections_over_every_endpoint() -> None:
    """300 clients with different seeds and the same 3 URLs: each URL gets
    about a third of the first connections; with ``shuffle_urls=False`` every
    client starts with the first URL."""
    endpoints = ["amqp://a:5672/%2F", "amqp://b:5672/%2F", "amqp://c:5672/%2F"]
    firsts = [0, 0, 0]
    for seed in range(300):
        sup = Supervisor(Config(), endpoints, 0.0, random.Random(seed))
        action = sup.next_action(0.0)
        assert isinstance(action, Connect)
        firsts[action.endpoint] += 1
        assert sorted(sup.order) == [0, 1, 2]
    assert sum(firsts) == 300
    assert all(70 <= count <= 130 for count in firsts), firsts
    in_order = Config(shuffle_urls=False)
    for seed in range(20):
        sup = Supervisor(in_order, endpoints, 0.0, random.Random(seed))
        assert sup.next_action(0.0) == Connect(0)


def test_a_failed_round_waits_once_and_a_loss_moves_to_the_next_endpoint() -> None:
    """Three endpoints, all refusing: three attempts at once, then one wait;
    after losing a connection the next endpoint is tried after the initial
    delay."""
    config = Config(reconnect_jitter=0.0, shuffle_urls=False)
    sup = Supervisor(config, ["amqp://a/", "amqp://b/", "amqp://c/"], 0.0, random.Random(1))
    refused = ConnectionRefusedError(111, "Connection refused")
    for expected in (0, 1, 2):
        assert sup.next_action(0.0) == Connect(expected)
        sup.connect_started(0.0, expected)
        sup.connect_failed(0.0, refused)
    assert sup.delays == [0.1]
    assert sup.next_action(0.0) == Wait(0.1)
    assert sup.next_action(0.1) == Connect(0)
    sup.connect_started(0.1, 0)
    sup.connected(0.2)
    sup.lost(5.0, ConnectionLost("EOF"), Detection.EVENT)
    assert sup.next_action(5.0) == Wait(5.1)
    assert sup.next_action(5.1) == Connect(1)


@settings(max_examples=200, deadline=None)
@given(
    behaviour=st.sampled_from(["closes at once", "closes after a while", "refuses a command"]),
    uptime=st.floats(0.0, 29.0),
    limit=st.integers(1, 12),
    jitter=st.sampled_from([0.0, 0.2, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_broker_that_closes_every_connection_is_retried_ever_more_slowly_then_given_up(
    behaviour: str, uptime: float, limit: int, jitter: float, seed: int
) -> None:
    """A broker that closes every connection with a hard error - right after
    Connection.OpenOk (so during the topology recovery), after a while, or
    over the first command - is retried no faster than the growing backoff
    allows (the waits never start over), and after ``max_broker_closes``
    connections the supervisor gives up with an error that names the code."""
    config = Config(reconnect_jitter=jitter, max_broker_closes=limit)
    sup = Supervisor(config, ["amqp://a/"], 0.0, random.Random(seed))
    code = 503 if behaviour == "refuses a command" else 541
    now = 0.0
    ends: list[float] = []  # when each connection ended
    starts: list[float] = []
    for _step in range(4 * limit + 4):  # bounded: one attempt takes at most 2 steps
        action = sup.next_action(now)
        if isinstance(action, Stop):
            break
        if isinstance(action, Wait):
            assert action.until > now
            now = action.until
            continue
        assert isinstance(action, Connect)
        sup.connect_started(now, action.endpoint)
        starts.append(now)
        if behaviour == "closes at once":
            sup.connect_failed(now, ConnectionClosedByBroker("INTERNAL_ERROR", 541))
        else:
            sup.connected(now)
            now += uptime
            if behaviour == "closes after a while":
                error: BaseException = ConnectionClosedByBroker("INTERNAL_ERROR", 541)
            else:
                error = ConnectionClosedByBroker("COMMAND_INVALID - unknown type", 503, 40, 10)
            sup.lost(now, error, Detection.EVENT)
        ends.append(now)
    else:
        raise AssertionError("the supervisor never gave up")
    assert len(starts) == limit
    for k in range(1, limit):
        low, _high = delay_bounds(config, k - 1)
        assert starts[k] - ends[k - 1] >= low * (1 - REL), (k, starts, ends)
    final = sup.final_error()
    assert isinstance(final, ConnectionClosedByBroker)
    assert final.reply_code == code
    assert f"closed {limit} connections in a row with {code}" in str(final)


def test_connections_that_lasted_start_the_broker_close_count_over() -> None:
    """A broker that closes each connection with a hard error only after it
    was up for ``reconnect_max_delay`` never makes the client give up, and each
    reconnect comes after the initial delay."""
    config = Config(reconnect_jitter=0.0, max_broker_closes=2)
    sup = Supervisor(config, ["amqp://a/"], 0.0, random.Random(1))
    now = 0.0
    for _ in range(10):
        assert sup.next_action(now) == Connect(0)
        sup.connect_started(now, 0)
        sup.connected(now)
        now += config.reconnect_max_delay + 1.0
        sup.lost(now, ConnectionClosedByBroker("INTERNAL_ERROR", 541), Detection.EVENT)
        assert sup.broker_closes == 1
        assert sup.next_action(now) == Wait(now + 0.1)
        now += 0.1
    assert sup.state is ClientState.DISCONNECTED


def test_a_hard_close_after_an_outage_waits_for_the_storm_not_the_outage() -> None:
    """An outage grew the backoff to its maximum; soon after the client is
    back, the broker closes the connection over one refused command: the
    next attempt comes after the initial delay (regression: it inherited the
    outage's 30 s, cutting every producer and consumer off for that long)."""
    config = Config(reconnect_jitter=0.0)
    sup = Supervisor(config, ["amqp://a/"], 0.0, random.Random(1))
    now = 0.0
    refused = ConnectionRefusedError(111, "Connection refused")
    for _ in range(12):  # the outage: 0.1, 0.2, ... up to 30 s apart
        action = sup.next_action(now)
        if isinstance(action, Wait):
            now = action.until
        sup.connect_started(now, 0)
        sup.connect_failed(now, refused)
    now = sup.retry_at
    sup.connect_started(now, 0)
    sup.connected(now)
    now += 5.0
    sup.lost(now, ConnectionClosedByBroker("COMMAND_INVALID", 503, 40, 10), Detection.EVENT)
    assert sup.retry_at - now == pytest.approx(0.1)
    # And a storm of them still grows.
    for expected in (0.2, 0.4, 0.8):
        now = sup.retry_at
        sup.connect_started(now, 0)
        sup.connected(now)
        now += 1.0
        sup.lost(now, ConnectionClosedByBroker("COMMAND_INVALID", 503, 40, 10), Detection.EVENT)
        assert sup.retry_at - now == pytest.approx(expected)
