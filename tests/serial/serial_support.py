"""Helpers shared by the serial tests (plain module: conftest names collide across dirs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

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


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` every 10 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
