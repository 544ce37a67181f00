"""The stream consumer's offset bookkeeping (pure): a state machine against a model of
a stream and of an application that settles what it gets in any order, across
re-subscriptions."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trio_lavin._robust._offsets import StreamOffsets, check_stream_offset

STREAM_LENGTH = 40


class StreamConsumerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.start = 0
        self.offsets = StreamOffsets("first")
        self.subscription = self.offsets.new_subscription()
        self.no_ack = False
        self.cursor = 0  # the broker's next offset for this subscription
        self.tag = 0
        self.held: dict[int, int] = {}  # the app's unsettled deliveries: tag -> offset
        self.settled: list[int] = []  # offsets the app settled, in order
        self.handed: list[int] = []  # offsets handed to the app, in order

    @rule(no_ack=st.booleans())
    def choose_mode(self, no_ack: bool) -> None:
        # Only before anything happened: a consumer's mode is fixed.
        if not self.handed:
            self.no_ack = no_ack

    @precondition(lambda self: self.cursor < STREAM_LENGTH)
    @rule()
    def broker_delivers_the_next_offset(self) -> None:
        offset = self.cursor
        self.cursor += 1
        self.tag += 1
        if not self.offsets.delivered(self.subscription, self.tag, offset, settled=self.no_ack):
            assert offset in self.settled  # acked and skipped by the consumer: only those
            return
        assert offset not in self.settled  # nothing settled is handed over again
        self.handed.append(offset)
        if self.no_ack:
            self.settled.append(offset)
        else:
            self.held[self.tag] = offset

    @precondition(lambda self: self.held)
    @rule(data=st.data(), multiple=st.booleans())
    def app_settles_one(self, data: st.DataObject, multiple: bool) -> None:
        tag = data.draw(st.sampled_from(sorted(self.held)))
        tags = [t for t in self.held if t <= tag] if multiple else [tag]
        for t in tags:
            self.settled.append(self.held.pop(t))
        self.offsets.settled(self.subscription, tag, multiple=multiple)

    @rule()
    def reconnect(self) -> None:
        # The app's unsettled deliveries are now on a dead channel: ack() returns False.
        self.held.clear()
        self.offsets.end_subscription(self.subscription)
        self.subscription = self.offsets.new_subscription()
        self.tag = 0  # tags start over on the new channel
        resume = self.offsets.resume_from()
        self.cursor = resume if isinstance(resume, int) else 0  # "first"

    @precondition(lambda self: self.subscription > 1)
    @rule(tag=st.integers(1, 50), multiple=st.booleans())
    def a_settle_of_an_old_subscription_counts_for_nothing(self, tag: int, multiple: bool) -> None:
        before = (self.offsets.resume_from(), self.offsets.unsettled)
        self.offsets.settled(self.subscription - 1, tag, multiple=multiple)
        assert (self.offsets.resume_from(), self.offsets.unsettled) == before

    @invariant()
    def each_offset_is_settled_at_most_once(self) -> None:
        assert len(self.settled) == len(set(self.settled))

    @invariant()
    def the_resume_point_skips_nothing_unsettled(self) -> None:
        resume = self.offsets.resume_from()
        if isinstance(resume, int):
            unsettled = set(self.handed) - set(self.settled)
            assert all(offset >= resume for offset in unsettled)
            assert all(offset in self.settled for offset in range(resume))

    def teardown(self) -> None:
        # Drain: reconnect, take and settle everything to the end of the stream.
        self.reconnect()
        while self.cursor < STREAM_LENGTH:
            self.broker_delivers_the_next_offset()
            for tag in sorted(self.held):
                self.settled.append(self.held.pop(tag))
                self.offsets.settled(self.subscription, tag)
        assert sorted(self.settled) == list(range(STREAM_LENGTH))
        assert self.offsets.unsettled == 0


TestStreamConsumer = StreamConsumerMachine.TestCase


@pytest.mark.parametrize(
    ("offset", "prefetch", "arguments", "message"),
    [
        ("start", 10, None, r"stream_offset must be 'first', 'last', 'next'.* not 'start'"),
        (-1, 10, None, r"not -1"),
        ("1 hour", 10, None, r"not '1 hour'"),
        ("first", 0, None, r"needs a prefetch \(1..65535\), not 0"),
        ("first", 10, {"x-stream-offset": 5}, r"arguments\['x-stream-offset'\]=5: give one"),
    ],
)
def test_a_bad_stream_offset_is_refused_naming_it(
    offset: object, prefetch: int, arguments: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_stream_offset(offset, prefetch, arguments)


@pytest.mark.parametrize(
    "offset", ["first", "last", "next", 0, 12345, "1h", "7D", datetime.datetime(2026, 1, 1)]
)
def test_every_kind_of_stream_offset_is_taken(offset: object) -> None:
    check_stream_offset(offset, 1, None)
    assert StreamOffsets(offset).resume_from() == offset  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("start", "pinned"),
    [
        ("next", datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)),
        ("last", "last"),  # the last chunk was written before: see the test below
        ("90m", datetime.datetime(2026, 12, 2, 10, 30, tzinfo=datetime.UTC)),
        ("2D", datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)),
        ("first", "first"),
        (17, 17),
    ],
)
def test_a_start_relative_to_subscribing_is_pinned_to_the_first_subscription(
    start: str | int, pinned: object
) -> None:
    """Regression: a subscription made again before anything came re-read "next" (or
    "1h") from the new time, skipping what was published meanwhile."""
    offsets = StreamOffsets(start)
    offsets.pin(datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC))
    assert offsets.resume_from() == pinned
    subscription = offsets.new_subscription()
    assert offsets.delivered(subscription, 1, 40, settled=False)
    assert offsets.resume_from() == 40  # from the first delivery on, offsets count


def test_last_starts_again_at_the_first_offset_that_arrived_before_the_application_took_it() -> (
    None
):
    """ "last" pinned to the time of subscribing skipped the last chunk (written
    before) when the connection dropped before the application took its first
    delivery; the first offset that arrived is where the next subscription starts."""
    offsets = StreamOffsets("last")
    offsets.pin(datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC))
    offsets.new_subscription()
    offsets.arrived(9)  # buffered, not handed over: the connection dropped
    assert offsets.resume_from() == 9
    offsets.arrived(12)  # only the first arrival counts
    assert offsets.resume_from() == 9
    subscription = offsets.new_subscription()
    assert offsets.delivered(subscription, 1, 9, settled=True)
    assert offsets.resume_from() == 10


def test_an_arrival_after_the_application_took_deliveries_changes_nothing() -> None:
    offsets = StreamOffsets("last")
    subscription = offsets.new_subscription()
    assert offsets.delivered(subscription, 1, 30, settled=True)
    offsets.arrived(31)
    assert offsets.resume_from() == 31  # after the last delivered, as before
    assert offsets.start == "last"
