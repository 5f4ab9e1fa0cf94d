"""The one reconnect/retry policy: exponential backoff with a cap and jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``initial * factor**n`` seconds, capped at ``cap``, with +-``jitter``.

    Jitter keeps a fleet of clusters from reconnecting to a restarted broker in lock-step.
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2
    _attempt: int = field(default=0, init=False)

    def next_delay(self) -> float:
        """Return the delay before the next attempt and advance the sequence."""
        base = min(self.cap, self.initial * self.factor**self._attempt)
        self._attempt += 1
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))

    def reset(self) -> None:
        """Start again from ``initial`` (call after a success)."""
        self._attempt = 0

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset."""
        return self._attempt
