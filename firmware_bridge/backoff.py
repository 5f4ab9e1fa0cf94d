"""The one retry policy: exponential backoff with a cap, optional jitter and attempt limit.

Used for MQTT reconnection, serial-port reopening and serial retransmission alike.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backoff:
    """``delay(n) = min(cap, initial * factor**n)``, spread by +-``jitter`` (a fraction).

    Jitter keeps a fleet of clusters from reconnecting to a restarted broker in lock-step.
    ``max_attempts`` (None: forever) bounds how many tries a caller makes.
    """

    initial: float
    factor: float = 2.0
    cap: float = 5.0
    max_attempts: int | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial or self.factor < 1:
            raise ValueError(f"invalid backoff {self!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be a fraction in [0, 1)")

    def delay(self, attempt: int) -> float:
        """Delay after ``attempt`` failures (0-based), never above ``cap`` (before jitter)."""
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        if self.jitter:
            base += random.uniform(-base * self.jitter, base * self.jitter)
        return max(0.0, base)

    def exhausted(self, attempts: int) -> bool:
        """True once ``attempts`` tries have used up the allowance."""
        return self.max_attempts is not None and attempts >= self.max_attempts


@dataclass
class Retrier:
    """Walks a :class:`Backoff` for one connection: ``next_delay()`` then ``reset()``."""

    policy: Backoff
    _attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the sequence."""
        delay = self.policy.delay(self._attempt)
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial`` (call after a success)."""
        self._attempt = 0

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt
