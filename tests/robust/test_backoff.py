"""Properties of :class:`Backoff`, the pure reconnect-delay policy.

Written-down policy (the module doc of ``_backoff``), checked here against an
independent computation::

    base(n) = min(maximum, initial * multiplier ** n)
    delay   = min(maximum, base(n) * (1 + jitter * u)),   u uniform in [-1, 1]

Every random draw comes from a ``random.Random`` seeded by hypothesis, so a
failing example replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_lavin._robust._backoff import Backoff

#: Relative slack for comparing against the closed form: ``base_delay``
#: multiplies step by step, so it may differ from ``initial * m ** n`` in the
#: last bits.
REL = 1e-9

initials = st.floats(min_value=1e-3, max_value=100.0)
multipliers = st.one_of(st.just(1.0), st.just(2.0), st.floats(min_value=1.0, max_value=10.0))
#: maximum = initial * factor, so maximum >= initial always holds.
max_factors = st.one_of(st.just(1.0), st.floats(min_value=1.0, max_value=1e4))
jitters = st.one_of(st.sampled_from([0.0, 0.2, 1.0]), st.floats(min_value=0.0, max_value=1.0))
attempts = st.integers(min_value=0, max_value=200)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def backoffs(draw: st.DrawFn) -> Backoff:
    initial = draw(initials)
    return Backoff(
        initial=initial,
        multiplier=draw(multipliers),
        maximum=initial * draw(max_factors),
        jitter=draw(jitters),
        attempt=draw(attempts),
    )


def expected_base(backoff: Backoff) -> float:
    """``min(maximum, initial * multiplier ** attempt)``, without overflow."""
    b = backoff
    if b.multiplier == 1.0:
        return b.initial
    # initial * m ** n >= maximum  <=>  n >= log(maximum / initial) / log(m)
    if b.attempt * math.log(b.multiplier) >= math.log(b.maximum / b.initial):
        return b.maximum
    return min(b.maximum, b.initial * b.multiplier**b.attempt)


@given(backoffs(), seeds)
def test_delay_is_within_bounds_and_never_above_maximum(backoff: Backoff, seed: int) -> None:
    rng = random.Random(seed)
    low, high = backoff.bounds()
    assert 0 <= low <= high <= backoff.maximum
    for _ in range(20):
        delay = backoff.delay(rng)
        assert low <= delay <= high
        assert delay <= backoff.maximum


@given(backoffs())
def test_bounds_follow_the_documented_formula(backoff: Backoff) -> None:
    base = expected_base(backoff)
    assert backoff.base_delay() == pytest.approx(base, rel=REL)
    low, high = backoff.bounds()
    assert low == pytest.approx(base * (1 - backoff.jitter), rel=REL, abs=1e-12)
    assert high == pytest.approx(min(backoff.maximum, base * (1 + backoff.jitter)), rel=REL)


@given(backoffs(), st.integers(min_value=1, max_value=60))
def test_base_delay_never_decreases_with_attempts_and_stops_at_maximum(
    backoff: Backoff, steps: int
) -> None:
    previous = backoff.base_delay()
    for _ in range(steps):
        backoff = backoff.next()
        current = backoff.base_delay()
        assert previous <= current <= backoff.maximum
        previous = current
    # Once initial * multiplier ** n reaches the maximum, the delay is capped.
    if backoff.multiplier > 1:
        needed = math.ceil(
            math.log(backoff.maximum / backoff.initial) / math.log(backoff.multiplier)
        )
        far = dataclasses.replace(backoff, attempt=needed + 1)
        assert far.base_delay() == backoff.maximum
        assert far.bounds()[1] == backoff.maximum


@given(backoffs())
def test_next_counts_one_more_failure_and_leaves_the_original_unchanged(
    backoff: Backoff,
) -> None:
    before = dataclasses.replace(backoff)
    after = backoff.next()
    assert after.attempt == backoff.attempt + 1
    assert backoff == before
    assert (after.initial, after.multiplier, after.maximum, after.jitter) == (
        backoff.initial,
        backoff.multiplier,
        backoff.maximum,
        backoff.jitter,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        backoff.attempt = 0  # type: ignore[misc]


@given(backoffs(), seeds)
def test_reset_returns_to_the_initial_delay(backoff: Backoff, seed: int) -> None:
    fresh = dataclasses.replace(backoff, attempt=0)
    reset = backoff.next().next().reset()
    assert reset == fresh
    assert reset.base_delay() == backoff.initial
    assert reset.bounds() == (
        backoff.initial * (1 - backoff.jitter),
        min(backoff.maximum, backoff.initial * (1 + backoff.jitter)),
    )
    assert reset.delay(random.Random(seed)) == fresh.delay(random.Random(seed))


@given(backoffs(), seeds)
def test_same_seed_gives_the_same_delays(backoff: Backoff, seed: int) -> None:
    def run(rng: random.Random) -> list[float]:
        b, out = backoff, []
        for _ in range(10):
            out.append(b.delay(rng))
            b = b.next()
        return out

    assert run(random.Random(seed)) == run(random.Random(seed))


@given(backoffs(), seeds)
def test_without_jitter_the_delay_is_the_base_delay(backoff: Backoff, seed: int) -> None:
    still = dataclasses.replace(backoff, jitter=0.0)
    assert still.delay(random.Random(seed)) == still.base_delay()
    assert still.bounds() == (still.base_delay(), still.base_delay())


@settings(max_examples=50)
@given(seeds)
def test_full_jitter_spreads_delays_over_the_whole_range(seed: int) -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, jitter=1.0)
    rng = random.Random(seed)
    delays = [backoff.delay(rng) for _ in range(400)]
    assert min(delays) < 0.2
    assert max(delays) > 1.8


def test_default_policy_matches_the_design() -> None:
    """0.1 s, x2, capped at 30 s, +-20 %: 0.1, 0.2, 0.4 ... 25.6, then 30 s."""
    backoff = Backoff()
    bases = []
    for _ in range(12):
        bases.append(backoff.base_delay())
        backoff = backoff.next()
    assert bases == pytest.approx([0.1 * 2**n for n in range(9)] + [30.0] * 3)
    assert Backoff(attempt=100).bounds() == pytest.approx((24.0, 30.0))


# -- validation ----------------------------------------------------------------------------------

bad_values = {
    "initial": st.one_of(st.floats(max_value=0.0), st.sampled_from([0.0, math.nan, math.inf])),
    "multiplier": st.one_of(
        st.floats(max_value=1.0, exclude_max=True), st.just(math.nan), st.just(-math.inf)
    ),
    # below the default initial delay (0.1), or not finite
    "maximum": st.one_of(
        st.floats(max_value=0.1, exclude_max=True), st.sampled_from([math.nan, math.inf])
    ),
    "jitter": st.one_of(
        st.floats(max_value=0.0, exclude_max=True),
        st.floats(min_value=1.0, exclude_min=True),
        st.just(math.nan),
    ),
    "attempt": st.integers(max_value=-1),
}


@given(st.sampled_from(sorted(bad_values)).flatmap(lambda f: st.tuples(st.just(f), bad_values[f])))
def test_invalid_values_raise_value_error_naming_the_field_and_the_value(
    case: tuple[str, float | int],
) -> None:
    field, value = case
    with pytest.raises(ValueError, match=re.escape(repr(value))) as excinfo:
        Backoff(**{field: value})  # type: ignore[arg-type]
    assert str(excinfo.value).startswith(f"{field} must be")


def test_maximum_below_initial_names_both_values() -> None:
    with pytest.raises(ValueError, match=r"^maximum must be ") as excinfo:
        Backoff(initial=2.0, maximum=1.5)
    assert "(2.0)" in str(excinfo.value)
    assert str(excinfo.value).endswith("not 1.5")


@pytest.mark.parametrize(
    ("initial", "maximum"), [(math.inf, math.inf), (1.0, math.inf)], ids=["initial", "maximum"]
)
def test_infinite_delays_are_rejected_as_config_does(initial: float, maximum: float) -> None:
    """``Config`` rejects infinite reconnect delays; ``Backoff`` (public as
    ``trio_lavin.Backoff``) must too.  Accepted, an infinite maximum lets the
    wait grow to ``inf`` (the supervisor would never retry again) and an
    infinite initial delay with full jitter makes ``bounds()`` ``(nan, inf)``."""
    with pytest.raises(ValueError, match="inf"):
        Backoff(initial=initial, maximum=maximum, jitter=1.0)
