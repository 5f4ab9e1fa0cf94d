"""Throttled warnings: one log line per burst, with how many happened since the last one.

A flood (of bad messages, refused events, media connections) must not become a flood of
log lines, and the count must not be lost either: :class:`Throttle` counts occurrences by
key and says when a report is due, at most once per ``every_s`` per key.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable


class Throttle:
    """Counts occurrences by key; at most one report per ``every_s`` for each (thread safe)."""

    def __init__(
        self, every_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._since: Counter[Hashable] = Counter()

    def tick(self, key: Hashable = None, n: int = 1) -> int:
        """Count ``n`` occurrences of ``key``.

        The occurrences since the last report (this one included) when a report is due
        now, else 0: the caller logs only when the answer is not 0.
        """
        t = self._clock()
        with self._lock:
            self._since[key] += n
            last = self._last.get(key)
            if last is not None and t - last < self.every_s:
                return 0
            self._last[key] = t
            return self._since.pop(key)
