"""The retry policy and the duplicate window of the worker (pure): what a failed message
goes through, attempt by attempt, and which deliveries are done with already."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from trio_lavin._robust._retry import (
    ATTEMPT_HEADER,
    MAX_ATTEMPTS,
    MAX_DELAY,
    DeadLetter,
    DuplicateWindow,
    Retry,
    RetryLater,
    attempt_of,
    delay_queue_name,
)

delays = st.one_of(
    st.just(0),
    st.integers(0, 5_000),
    st.floats(0, 0.002),  # around the rounding to whole milliseconds, and below 1 ms
    st.floats(0, MAX_DELAY),
)
retries = st.builds(
    Retry,
    attempts=st.one_of(st.integers(1, 12), st.just(MAX_ATTEMPTS)),
    delays=st.lists(delays, min_size=1, max_size=5),
    dead_letter_queue=st.one_of(st.none(), st.text(min_size=1, max_size=20)),
)
queues = st.text(min_size=1, max_size=30)


@given(retry=retries, queue=queues)
def test_a_message_failing_every_time_runs_attempts_times_then_is_dead_lettered(
    retry: Retry, queue: str
) -> None:
    declared = retry.delay_queues(queue)
    used: set[str] = set()
    attempt, runs = 1, 1
    decision = retry.decide(queue, attempt)
    while isinstance(decision, RetryLater):
        assert decision.attempt == attempt + 1
        k = attempt  # retry k is for attempt k + 1
        expected = retry.delays[min(k - 1, len(retry.delays) - 1)]
        assert decision.delay == expected
        assert retry.delay_before(decision.attempt) == expected
        if expected == 0:
            assert decision.delay_queue is None
        else:
            ms = max(1, round(expected * 1000))
            assert decision.delay_queue == f"{queue}.retry.{ms}ms"
            assert declared[decision.delay_queue] == ms
            used.add(decision.delay_queue)
        attempt = decision.attempt
        runs += 1
        decision = retry.decide(queue, attempt)
    assert runs == retry.attempts
    assert decision == DeadLetter(retry.attempts, retry.dead_letter_queue)
    assert used == set(declared)  # no delay queue declared for nothing


@given(delay_list=st.lists(delays, max_size=3), dlq=st.one_of(st.none(), st.just("parked")))
def test_a_single_attempt_needs_no_delay_queue_and_dead_letters_at_once(
    delay_list: list[float], dlq: str | None
) -> None:
    retry = Retry(attempts=1, delays=delay_list, dead_letter_queue=dlq)
    assert retry.delay_queues("orders") == {}
    assert retry.decide("orders", 1) == DeadLetter(1, dlq)


def test_delays_are_kept_as_a_tuple_and_the_last_one_repeats() -> None:
    retry = Retry(attempts=5, delays=[0, 1.5])
    assert retry.delays == (0, 1.5)
    assert [retry.decide("q", n) for n in range(1, 6)] == [
        RetryLater(2, 0, None),
        RetryLater(3, 1.5, "q.retry.1500ms"),
        RetryLater(4, 1.5, "q.retry.1500ms"),
        RetryLater(5, 1.5, "q.retry.1500ms"),
        DeadLetter(5, None),
    ]
    assert retry.delay_queues("q") == {"q.retry.1500ms": 1500}
    assert Retry().delay_queues("q") == {"q.retry.1000ms": 1000, "q.retry.10000ms": 10000}


@pytest.mark.parametrize("attempts", [0, -1, MAX_ATTEMPTS + 1, True, "3", 2.0])
def test_attempts_out_of_range_or_not_an_int_are_refused_naming_them(attempts: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not {attempts!r}")):
        Retry(attempts=attempts)


@pytest.mark.parametrize(
    "delay", [-1, -0.001, math.nan, math.inf, -math.inf, True, MAX_DELAY + 0.001, "1"]
)
def test_a_bad_delay_is_refused_naming_it(delay: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not {delay!r}")):
        Retry(attempts=3, delays=(1.0, delay))


def test_the_longest_delay_is_taken_and_fits_a_ttl() -> None:
    retry = Retry(attempts=2, delays=(MAX_DELAY,))
    assert retry.delay_queues("q") == {"q.retry.4294967295ms": 2**32 - 1}


def test_retries_without_delays_are_refused() -> None:
    with pytest.raises(ValueError, match=r"give at least one delay \(0 for at once\)"):
        Retry(attempts=2, delays=())
    assert Retry(attempts=1, delays=()).decide("q", 1) == DeadLetter(1, None)


@pytest.mark.parametrize("name", ["", "é" * 128, "q" * 256, 5])
def test_a_dead_letter_queue_that_is_not_a_queue_name_is_refused_naming_it(name: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not {name!r}")):
        Retry(dead_letter_queue=name)


def test_a_dead_letter_queue_name_of_255_bytes_is_taken() -> None:
    assert Retry(dead_letter_queue="é" * 127 + "q").dead_letter_queue == "é" * 127 + "q"


def test_a_delay_queue_name_over_255_bytes_is_refused_naming_it() -> None:
    fits = "q" * (255 - len(".retry.1000ms"))
    assert len(delay_queue_name(fits, 1.0).encode()) == 255
    too_long = fits + "q"
    name = f"{too_long}.retry.1000ms"
    for call in (
        lambda: delay_queue_name(too_long, 1.0),
        lambda: Retry(attempts=2, delays=(1.0,)).delay_queues(too_long),
        lambda: Retry(attempts=2, delays=(1.0,)).decide(too_long, 1),
    ):
        with pytest.raises(ValueError, match=re.escape(repr(name))):
            call()
    # A delay of 0 needs no delay queue, whatever the queue's name.
    assert Retry(attempts=2, delays=(0,)).decide(too_long, 1) == RetryLater(2, 0, None)


@given(attempt=st.integers(1, MAX_ATTEMPTS))
def test_the_attempt_header_gives_the_attempt(attempt: int) -> None:
    assert attempt_of({ATTEMPT_HEADER: attempt, "other": "x"}) == attempt


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"other": 3},
        *(
            {ATTEMPT_HEADER: value}
            for value in (0, -1, MAX_ATTEMPTS + 1, "2", 2.0, True, b"2", None, [2])
        ),
    ],
)
def test_a_missing_or_bad_attempt_header_means_the_first_attempt(
    headers: dict[str, Any] | None,
) -> None:
    assert attempt_of(headers) == 1


@pytest.mark.parametrize("size", [0, -1, True, False, 1.0, "2", None])
def test_a_duplicate_window_holds_an_int_of_at_least_one_id(size: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"not {size!r}")):
        DuplicateWindow(size)


KEYS = range(6)
ATTEMPTS = range(1, 5)


class DuplicateWindowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.window = DuplicateWindow(1)
        # The model: key -> highest settled attempt (inf: finished), oldest update first.
        self.model: OrderedDict[int, float] = OrderedDict()

    @initialize(size=st.integers(1, 5))
    def make_window(self, size: int) -> None:
        self.window = DuplicateWindow(size)
        assert self.window.size == size
        assert len(self.window) == 0

    def record(self, key: int, settled: float) -> None:
        evicted = None
        if key not in self.model and len(self.model) == self.window.size:
            evicted = next(iter(self.model))
        self.model[key] = max(self.model.get(key, 0), settled)
        self.model.move_to_end(key)
        if evicted is not None:
            del self.model[evicted]
            # The key updated longest ago is forgotten: all its attempts run again.
            assert not any(self.window.is_duplicate(evicted, a) for a in ATTEMPTS)

    @rule(key=st.sampled_from(KEYS))
    def finished(self, key: int) -> None:
        self.window.finished(key)
        assert all(self.window.is_duplicate(key, a) for a in (*ATTEMPTS, MAX_ATTEMPTS))
        self.record(key, math.inf)

    @rule(key=st.sampled_from(KEYS), attempt=st.sampled_from(ATTEMPTS))
    def retried(self, key: int, attempt: int) -> None:
        self.window.retried(key, attempt)
        assert self.window.is_duplicate(key, attempt)
        assert not self.window.is_duplicate(key, MAX_ATTEMPTS) or self.model.get(key) == math.inf
        self.record(key, attempt)

    @rule(key=st.sampled_from(KEYS), attempt=st.sampled_from(ATTEMPTS))
    def check_is_duplicate(self, key: int, attempt: int) -> None:
        assert self.window.is_duplicate(key, attempt) == (self.model.get(key, 0) >= attempt)

    @invariant()
    def the_window_holds_what_the_model_holds(self) -> None:
        assert len(self.window) == len(self.model) <= self.window.size
        for key in KEYS:
            for attempt in ATTEMPTS:
                expected = self.model.get(key, 0) >= attempt
                assert self.window.is_duplicate(key, attempt) == expected


TestDuplicateWindow = DuplicateWindowMachine.TestCase
