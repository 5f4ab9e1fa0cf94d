"""The pattern of the controller's table owners (dispatcher, health monitor).

Each owns some tables and is their only writer. Other threads (the MQTT loop, the HTTP
server, the CLI's pokes) hand it events through an :class:`Inbox` and wake it; its thread
takes a bounded slice of the inbox and runs one iteration at a time, so no session ever
crosses a thread and no transaction holds the database's write lock for long: what is
left waits for the next iteration, and whatever the worker does between iterations (the
dispatcher sends queued emergencies) is never behind more than one slice.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from loudspeaker.inbound import DropReason, Drops, coalesce_key, event_kind, must_keep
from loudspeaker.throttled_log import Throttle

logger = logging.getLogger(__name__)

E = TypeVar("E")

# Distinct events an inbox holds before it refuses new ones that may be refused: room
# for a restart of a 10,000-cluster site (a retained status each, their acks).
INBOX_CAPACITY = 50_000
# Events applied in one iteration (one transaction).
BATCH_MAX = 500


class Inbox(Generic[E]):
    """A bounded queue that coalesces: an event with the key of one still queued replaces it.

    ``key(event)`` names what an event is about ("the status of lb-01"): only the latest
    such event is kept, moved to the back, so a flood of them is one entry. Events whose
    key is None are all kept, in order. Past ``capacity`` entries a new one is refused
    unless ``keep(event)`` says it must not be lost; refused events are counted by the
    caller through ``put``'s answer.
    """

    def __init__(
        self,
        *,
        capacity: int = INBOX_CAPACITY,
        key: Callable[[E], Hashable | None] = lambda _e: None,
        keep: Callable[[E], bool] = lambda _e: True,
    ) -> None:
        self.capacity = capacity
        self._key = key
        self._keep = keep
        self._lock = threading.Lock()
        self._events: OrderedDict[Hashable, E] = OrderedDict()
        self._seq = 0
        self.coalesced = 0

    def put(self, event: E) -> bool:
        """Queue ``event``; False when it was refused (the inbox is full)."""
        k = self._key(event)
        with self._lock:
            if k is not None and k in self._events:
                self._events[k] = event
                self._events.move_to_end(k)
                self.coalesced += 1
                return True
            if len(self._events) >= self.capacity and not self._keep(event):
                return False
            if k is None:
                self._seq += 1
                k = (_Unkeyed, self._seq)
            self._events[k] = event
            return True

    def take(self, limit: int) -> list[E]:
        """Up to ``limit`` events, oldest first."""
        with self._lock:
            n = min(limit, len(self._events))
            return [self._events.popitem(last=False)[1] for _ in range(n)]

    def __len__(self) -> int:
        return len(self._events)


class _Refusals:
    """Logs a full inbox once per burst, not once per refused message."""

    def __init__(self, every_s: float = 10.0) -> None:
        self._throttle = Throttle(every_s)

    def warn(self, worker: str, queued: int) -> None:
        n = self._throttle.tick(worker)
        if n:
            logger.warning(
                "%s inbox full (%d queued): %d inbound messages refused (docs/protocol.md, Limits)",
                worker,
                queued,
                n,
            )


_refusals = _Refusals()


class _Unkeyed:
    """Marks the inbox keys of events that are never coalesced."""


class OwnThread:
    """A worker's one thread, which the supervisor checks and restarts (supervisor.py).

    The owner sets ``name``, ``_stop`` and ``_thread`` in its constructor and writes
    ``_run`` and ``poke``.
    """

    name: str
    _stop: threading.Event
    _thread: threading.Thread | None

    def _run(self) -> None:
        raise NotImplementedError

    def poke(self) -> None:
        raise NotImplementedError

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
        """Start a new thread after the old one died; what it kept carries over."""
        if self.alive or self.stopping:
            return
        self._start_thread()
        self.poke()


class EventWorker(OwnThread, Generic[E]):
    """A thread that applies queued events in iterations; subclasses write ``step()``."""

    def __init__(self, name: str, poll_interval_s: float, inbox: Inbox[E] | None = None) -> None:
        self.name = name
        self.poll_interval_s = poll_interval_s
        self.batch_max = BATCH_MAX
        self._inbound: Inbox[E] = (
            inbox if inbox is not None else Inbox(key=coalesce_key, keep=must_keep)
        )
        self._retry: list[E] = []
        self._in_hand = 0  # taken off the inbox by the running iteration, not yet applied
        self._busy = False  # an iteration of the thread is running
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Run at the start of every iteration of the thread (the router's stash flush).
        self.each_iteration: list[Callable[[], None]] = []

    def poke(self) -> None:
        """Run an iteration now instead of at the next poll."""
        self._wake.set()

    @property
    def backlog(self) -> int:
        """Events not yet applied, counting those being applied now (for the metrics)."""
        return len(self._inbound) + len(self._retry) + (self._in_hand if self._busy else 0)

    def _put(self, event: E) -> bool:
        """Queue ``event`` and wake the thread; False when the inbox refused it."""
        taken = self._inbound.put(event)
        self._wake.set()
        if not taken:
            # Subclasses keep the controller's shared drop counts as ``drops``.
            drops = getattr(self, "drops", None)
            if isinstance(drops, Drops):
                drops.count(event_kind(event), DropReason.QUEUE_FULL)
            _refusals.warn(self.name, len(self._inbound))
        return taken

    def stop(self) -> None:
        """Finish the current iteration and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _take(self) -> list[E]:
        """Events kept from a failed iteration, then the oldest queued, ``batch_max`` at most.

        When more are left the next iteration starts at once.
        """
        events, self._retry = self._retry, []
        events += self._inbound.take(max(0, self.batch_max - len(events)))
        self._in_hand = len(events)
        if len(self._inbound):
            self._wake.set()
        return events

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
            self._busy = True
            try:
                for fn in self.each_iteration:
                    fn()
                self.step()
            except Exception:
                # Keep going: a bug in one iteration must not silence the commune or blind
                # the technicians.
                logger.exception("%s iteration failed", self.name)
                self._stop.wait(0.5)
            finally:
                self._busy = False
                self._in_hand = 0

    def step(self) -> None:
        """One iteration."""
        raise NotImplementedError
