"""Reconnect delays: capped, jittered exponential backoff.

Pure: the random source is passed in (a seeded ``random.Random`` makes the delays
deterministic in tests). Attempt ``n`` (0-based) waits a random time in
``(ceiling * (1 - jitter), ceiling]`` with ``ceiling = min(maximum, initial * factor**n)``,
so delays grow until they reach the cap and reconnecting clients spread out instead of
arriving together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

_MAX_EXPONENT = 64  # beyond this every sane schedule has hit its cap; avoids overflow


@dataclass(frozen=True, slots=True)
class Backoff:
    """A reconnect schedule.

    ``reset_after``: a connection that stayed up at least this many seconds resets the
    schedule to attempt 0 (so a server that accepts and drops at once is not hammered).
    """

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5
    reset_after: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("need 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("need factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("need 0 <= jitter <= 1")

    def ceiling(self, attempt: int) -> float:
        """The longest delay before attempt ``attempt`` (0-based): the capped exponential."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        return min(self.maximum, self.initial * self.factor ** min(attempt, _MAX_EXPONENT))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before attempt ``attempt``: ``ceiling(attempt)`` minus a random
        fraction of at most ``jitter`` of it. Draws one number from ``rng``."""
        return self.ceiling(attempt) * (1.0 - self.jitter * rng.random())
