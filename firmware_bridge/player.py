"""The cluster's playout: one item at a time, by priority, at its time, pre-emptible.

Rules (docs/protocol.md, "Playout"):
- Items wait until their ``start_at`` (by the box's own clock); items without one are
  ready at once.
- Of the ready items, emergency goes first, then priority, then normal; within a level,
  the earlier ``start_at``, then arrival order.
- An emergency pre-empts a playing normal or priority item at once. The interrupted item
  is re-queued and played again from the start when the emergencies are over (reported
  ``interrupted``, then ``playing`` again). An emergency never interrupts another: a
  second one plays right after the first.
- An item is never *started* at or after its ``expires_at``.
- ``after`` runs when an item stops playing, however it ended (the agent returns the
  amplifier to the box's own volume there, so an emergency's volume does not stick).
- An item cut off by shutdown is not reported: the agent keeps it in its persistent store
  and plays it again from the start when it runs again (docs/protocol.md §4, "Restart").
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from firmware_bridge.abc import AudioSink, PlayResult
from firmware_bridge.exceptions import SinkError
from firmware_bridge.protocol import (
    EXPIRED_BEFORE_PLAYBACK,
    STOPPED_BY_OPERATOR,
    PlayCommand,
    Priority,
    utcnow,
)

logger = logging.getLogger(__name__)

_RANK = {Priority.EMERGENCY: 0, Priority.PRIORITY: 1, Priority.NORMAL: 2}


class Outcome(StrEnum):
    """What the player reports about an item."""

    PLAYING = "playing"
    INTERRUPTED = "interrupted"
    PLAYED = "played"
    FAILED = "failed"


Report = Callable[[PlayCommand, Outcome, str | None], None]
Prepare = Callable[[PlayCommand], None]
After = Callable[[PlayCommand], None]


@dataclass(order=True)
class _Entry:
    rank: int
    start: float
    seq: int
    command: PlayCommand = field(compare=False)
    path: Path = field(compare=False)
    interrupted: int = field(default=0, compare=False)
    started: bool = field(default=False, compare=False)


class Player:
    """Owns the audio sink. ``submit()`` staged items; ``start()`` runs the playout thread.

    ``prepare`` runs just before an item starts (the agent powers the amplifier and sets
    the volume there); ``report`` is told every change of an item's state.
    """

    def __init__(
        self,
        sink: AudioSink,
        report: Report,
        *,
        prepare: Prepare | None = None,
        after: After | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sink = sink
        self._report = report
        self._prepare = prepare
        self._after = after
        self._clock = clock
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._current: _Entry | None = None
        self._interrupt = threading.Event()
        self._why: str = ""
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the playout thread, empty: after ``stop()`` this is a fresh boot's playout.

        Whatever was waiting or cut off before is forgotten here; the agent takes it back
        from its persistent store (docs/protocol.md §4, "Restart").
        """
        with self._cond:
            self._heap = []
            self._current = None
            self._closing = False
            self._why = ""
            self._interrupt.clear()
        self._thread = threading.Thread(target=self._run, name="player", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Interrupt what plays (reported failed: shutdown) and end the thread."""
        with self._cond:
            self._closing = True
            self._why = "shutdown"
            self._interrupt.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    def submit(self, command: PlayCommand, path: Path) -> None:
        """Queue a staged item; pre-empt the current one if this is an emergency."""
        start_at = command.start_at or command.issued_at
        entry = _Entry(
            _RANK[command.priority], start_at.timestamp(), next(self._seq), command, path
        )
        with self._cond:
            heapq.heappush(self._heap, entry)
            cur = self._current
            if (
                cur is not None
                and entry.rank == 0
                and cur.rank > 0
                and start_at <= self._clock()
                and not self._interrupt.is_set()
            ):
                self._why = f"interrupted by emergency: {command.title or command.broadcast}"
                self._interrupt.set()
            self._cond.notify_all()

    def stop_broadcast(self, broadcast: str | None) -> int:
        """Stop ``broadcast`` (playing or waiting), or, with None, what plays now."""
        removed: list[_Entry] = []
        with self._cond:
            if broadcast is not None:
                keep = [e for e in self._heap if e.command.broadcast != broadcast]
                removed = [e for e in self._heap if e.command.broadcast == broadcast]
                self._heap = keep
                heapq.heapify(self._heap)
            cur = self._current
            if cur is not None and broadcast in (None, cur.command.broadcast):
                self._why = STOPPED_BY_OPERATOR
                self._interrupt.set()
            self._cond.notify_all()
        for e in removed:
            self._report(e.command, Outcome.FAILED, "stopped by operator before playback")
        return len(removed) + (1 if cur is not None else 0)

    def preempt(self, why: str) -> bool:
        """Interrupt the playing item as an emergency would: it is re-queued and replayed.

        For an output shared with other clusters (the serial gateway's hall output), where
        another cluster's emergency needs the audio line. An emergency is never pre-empted.
        ``why`` must start with "interrupted". True if an item was interrupted.
        """
        with self._cond:
            cur = self._current
            if cur is None or cur.rank == 0 or self._interrupt.is_set():
                return False
            self._why = why if why.startswith("interrupted") else f"interrupted: {why}"
            self._interrupt.set()
            self._cond.notify_all()
            return True

    def withdraw(self, command_id: str) -> bool:
        """Remove a waiting item (a schedule changed); True if it was waiting."""
        with self._cond:
            before = len(self._heap)
            self._heap = [e for e in self._heap if e.command.id != command_id]
            heapq.heapify(self._heap)
            return len(self._heap) != before

    def pending(self) -> list[PlayCommand]:
        """Waiting items, in the order they would play if all were ready."""
        with self._cond:
            return [e.command for e in sorted(self._heap)]

    @property
    def current(self) -> PlayCommand | None:
        """The item playing now."""
        cur = self._current
        return cur.command if cur is not None else None

    # -- playout thread ----------------------------------------------------------------------

    def _next(self) -> _Entry | None:
        with self._cond:
            while not self._closing:
                now = self._clock().timestamp()
                ready = [e for e in self._heap if e.start <= now]
                if ready:
                    best = min(ready)
                    self._heap.remove(best)
                    heapq.heapify(self._heap)
                    self._current = best
                    self._interrupt.clear()
                    self._why = ""
                    return best
                wait = min((e.start - now for e in self._heap), default=None)
                self._cond.wait(timeout=None if wait is None else min(wait, 1.0))
            return None

    def _run(self) -> None:
        while True:
            entry = self._next()
            if entry is None:
                return
            try:
                self._play(entry)
            except Exception as exc:
                logger.exception("playout of %s crashed", entry.command.id)
                self._report(entry.command, Outcome.FAILED, f"agent error: {exc}")
            finally:
                with self._cond:
                    self._current = None
                if self._after is not None and entry.started:
                    try:
                        self._after(entry.command)
                    except Exception:
                        logger.exception("after-playback hook of %s failed", entry.command.id)

    def _play(self, entry: _Entry) -> None:
        cmd = entry.command
        if cmd.expires_at <= self._clock():
            why = EXPIRED_BEFORE_PLAYBACK
            if entry.interrupted:
                why += " (it had been interrupted by an emergency)"
            self._report(cmd, Outcome.FAILED, why)
            return
        entry.started = True
        if self._prepare is not None:
            self._prepare(cmd)
        self._report(cmd, Outcome.PLAYING, None if not entry.interrupted else "replaying")
        try:
            for n in range(cmd.repeat):
                if n and self._interrupt.wait(cmd.gap_s):
                    break
                result = self.sink.play(
                    entry.path, duration_s=cmd.media.duration_s, stop=self._interrupt
                )
                if result is PlayResult.STOPPED:
                    break
        except SinkError as exc:
            self._report(cmd, Outcome.FAILED, f"playback failed: {exc}")
            return
        if not self._interrupt.is_set():
            self._report(cmd, Outcome.PLAYED, None)
            return
        why = self._why
        if why.startswith("interrupted"):
            # Re-queue ahead of later items of its level: it keeps its place.
            entry.interrupted += 1
            with self._cond:
                heapq.heappush(self._heap, entry)
            self._report(cmd, Outcome.INTERRUPTED, why)
        elif why == "shutdown":
            # Not finished: it stays in the box's store and plays again after the restart.
            logger.info("%s cut off by shutdown; it resumes after the restart", cmd.id)
        else:
            self._report(cmd, Outcome.FAILED, why or "stopped")
