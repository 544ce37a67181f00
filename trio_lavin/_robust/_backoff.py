"""Reconnect backoff as an immutable value.

The policy only computes; the supervisor sleeps.  ``Backoff.attempt`` counts
consecutive failures; :meth:`Backoff.delay` is the wait before the next try::

    base(n) = min(maximum, initial * multiplier ** n)
    delay   = min(maximum, base(n) * (1 + jitter * u)),   u uniform in [-1, 1]

so with the defaults (0.1 s, x2, 30 s, +-20 %) the waits are about 0.1, 0.2,
0.4, ... 25.6, then 30 s for good.  The random number generator is passed in,
so tests are deterministic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.2
    attempt: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial < math.inf:
            raise ValueError(f"initial must be a finite number > 0 seconds, not {self.initial!r}")
        if not self.multiplier >= 1:
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if not self.initial <= self.maximum < math.inf:
            raise ValueError(
                f"maximum must be finite and >= initial ({self.initial}), not {self.maximum!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be a fraction in 0..1, not {self.jitter!r}")
        if self.attempt < 0:
            raise ValueError(f"attempt must be >= 0, not {self.attempt!r}")

    def base_delay(self) -> float:
        """The wait before the next try, without jitter."""
        if self.multiplier == 1 or self.attempt == 0:
            return self.initial
        # Compare exponents first: multiplier ** attempt overflows for the
        # attempt counts of a broker that stays down for days.
        if self.attempt * math.log(self.multiplier) >= math.log(self.maximum / self.initial):
            return self.maximum
        return min(self.initial * self.multiplier**self.attempt, self.maximum)

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest value :meth:`delay` can return."""
        base = self.base_delay()
        return base * (1 - self.jitter), min(self.maximum, base * (1 + self.jitter))

    def delay(self, rng: random.Random) -> float:
        """The wait before the next try, with jitter from ``rng``."""
        base = self.base_delay()
        return min(self.maximum, base * (1 + self.jitter * rng.uniform(-1.0, 1.0)))

    def next(self) -> Backoff:
        """The policy after one more failed attempt."""
        return replace(self, attempt=self.attempt + 1)

    def reset(self) -> Backoff:
        """The policy after a healthy connection."""
        return replace(self, attempt=0)
