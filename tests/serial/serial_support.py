"""Helpers shared by the serial tests (plain module: conftest names collide across dirs)."""

from __future__ import annotations

import threading

from firmware_bridge.backoff import Backoff
from firmware_bridge.seriallink import LinkState

# Over a pty an answer takes ~100 µs; short timeouts keep the suite fast, a generous
# attempt count keeps 1 % corruption from ever exhausting the budget.
FAST_RETRANSMIT = Backoff(initial=0.03, factor=1.5, cap=0.15, max_attempts=10)
FAST_RECONNECT = Backoff(initial=0.02, factor=2.0, cap=0.16)


class StateLog:
    """Records every state the link reports, thread-safely."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: list[LinkState] = []

    def __call__(self, state: LinkState) -> None:
        with self._lock:
            self._states.append(state)

    @property
    def states(self) -> list[LinkState]:
        with self._lock:
            return list(self._states)
