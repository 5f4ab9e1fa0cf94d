"""The pattern of the controller's table owners (dispatcher, health monitor).

Each owns some tables and is their only writer. Other threads (the MQTT loop, the HTTP
server, the CLI's pokes) hand it events through a queue and wake it; its thread drains
the queue and runs one iteration at a time, so no session ever crosses a thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

E = TypeVar("E")


class EventWorker(Generic[E]):
    """A thread that applies queued events in iterations; subclasses write ``step()``."""

    def __init__(self, name: str, poll_interval_s: float) -> None:
        self.name = name
        self.poll_interval_s = poll_interval_s
        self._inbound: queue.SimpleQueue[E] = queue.SimpleQueue()
        self._retry: list[E] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Run an iteration now instead of at the next poll."""
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Events not yet applied (for the metrics endpoint)."""
        return self._inbound.qsize() + len(self._retry)

    def _put(self, event: E) -> None:
        self._inbound.put(event)
        self._wake.set()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once the thread has died (or was never started): the supervisor's cue."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once ``stop()`` was asked: a dead thread is then no fault."""
        return self._stop.is_set()

    def restart(self) -> None:
        """Start a new thread after the old one died; queued and kept events carry over."""
        if self.alive or self.stopping:
            return
        self._start_thread()
        self._wake.set()

    def stop(self) -> None:
        """Finish the current iteration and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _take(self) -> list[E]:
        """Events kept from a failed iteration, then everything queued since."""
        events, self._retry = self._retry, []
        while True:
            try:
                events.append(self._inbound.get_nowait())
            except queue.Empty:
                return events

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
            try:
                self.step()
            except Exception:
                # Keep going: a bug in one iteration must not silence the commune or blind
                # the technicians.
                logger.exception("%s iteration failed", self.name)
                self._stop.wait(0.5)

    def step(self) -> None:
        """One iteration."""
        raise NotImplementedError
