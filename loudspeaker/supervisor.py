"""The controller's supervisor: restarts a worker thread that died, and says so.

Each worker (dispatcher, health monitor, schedule runner) already survives errors inside
an iteration. Something that still escapes its loop kills the thread, and with it the
commune's emergencies or its alarms: the supervisor notices within a poll, starts a new
thread at once (events kept by the old one carry over), logs it, and raises a
``worker_restarted`` alarm on the controller (``loudspeaker alarms``, ``/metrics``). The
alarm clears after the worker has run ``clear_after_s`` without dying again.

The alarm survives a controller restart: ``start()`` reads the open ones back, so a worker
that died just before the restart stays alarmed for its full calm time. The supervisor
touches the database only when it has something to write (a restart, or an alarm whose
calm time is over), on an engine with a short lock wait for SQLite: a locked database
delays the alarm, never the next check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from loudspeaker.alarms import CONTROLLER, SEVERITY, AlarmKind
from loudspeaker.db import as_utc, make_engine
from loudspeaker.db_faults import DB_ERRORS
from loudspeaker.models import AlarmRecord, now

logger = logging.getLogger(__name__)

# How long one write of the supervisor waits for SQLite's lock before trying next poll.
RECORD_LOCK_WAIT_MS = 250


class Supervised(Protocol):
    """What the supervisor needs of a worker."""

    @property
    def alive(self) -> bool: ...  # pragma: no cover

    @property
    def stopping(self) -> bool: ...  # pragma: no cover

    def restart(self) -> None: ...  # pragma: no cover


@dataclass
class _Restart:
    worker: str
    at: datetime
    count: int


@dataclass
class _Alarmed:
    """An open ``worker_restarted`` alarm: the worker's last death and how many in all."""

    last: datetime
    count: int


class Supervisor:
    """Watches workers by name; ``start()``/``stop()``."""

    def __init__(
        self,
        engine: Engine,
        workers: Callable[[], Mapping[str, Supervised | None]],
        *,
        poll_interval_s: float = 0.5,
        clear_after_s: float = 300.0,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.workers = workers
        self.poll_interval_s = poll_interval_s
        self.clear_after = timedelta(seconds=clear_after_s)
        # Deaths since this controller started (the metric).
        self.restarts: dict[str, int] = {}
        # Workers with an open alarm, read back at start and kept up to date.
        self._alarmed: dict[str, _Alarmed] = {}
        self._seeded = False
        self._unrecorded: list[_Restart] = []
        self._db: Engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Read back the open alarms, then start watching."""
        self._db = _short_wait(self.engine)
        self._seed()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the workers stop, so their end is not taken for a death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._db is not self.engine:
            self._db.dispose()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check()
            except Exception:
                # The supervisor must outlive what it supervises.
                logger.exception("supervisor check failed")

    def check(self) -> list[str]:
        """Restart every dead worker, then record alarms; the names restarted."""
        restarted: list[str] = []
        for name, worker in self.workers().items():
            if worker is None or worker.alive or worker.stopping:
                continue
            # Restart first: an alarm written to a failing database must not delay it.
            worker.restart()
            n = self.restarts[name] = self.restarts.get(name, 0) + 1
            t = self.clock()
            open_ = self._alarmed.get(name)
            total = (open_.count if open_ is not None else 0) + 1
            self._alarmed[name] = _Alarmed(t, total)
            self._unrecorded.append(_Restart(name, t, total))
            restarted.append(name)
            logger.error("%s thread died; restarted (%d time(s) since start)", name, n)
        if not self._seeded:
            self._seed()
        if self._seeded and (self._unrecorded or self._settled(self.clock())):
            self._record()
        return restarted

    def _seed(self) -> None:
        """Take over the alarms open before this start: their calm time counts from the
        worker's last death, not from now."""
        names = set(self.workers())
        try:
            with Session(self._db) as s:
                for a in _open(s):
                    worker = _worker_of(a, names)
                    if worker is None or worker in self._alarmed:
                        continue
                    count = int(a.last_value or a.value or 1)
                    self._alarmed[worker] = _Alarmed(as_utc(a.updated_at) or now(), count)
        except DB_ERRORS as exc:
            logger.warning("supervisor: open alarms not read yet (%s); retried", exc)
            return
        self._seeded = True

    def _settled(self, t: datetime) -> list[str]:
        """Workers whose alarm is open and who have run their calm time without dying."""
        done = {r.worker for r in self._unrecorded}
        return [
            w for w, a in self._alarmed.items() if w not in done and t - a.last >= self.clear_after
        ]

    def _record(self) -> None:
        t = self.clock()
        settled = self._settled(t)
        names = set(self.workers()) | {r.worker for r in self._unrecorded}
        try:
            with Session(self._db) as s:
                for r in self._unrecorded:
                    _raise(s, r, names)
                for a in _open(s):
                    worker = _worker_of(a, names)
                    if worker in settled:
                        last = self._alarmed[worker].last
                        a.cleared_at = t
                        a.clear_message = f"{worker} running without a fault since {last}"
                        a.updated_at = t
                        s.add(a)
                s.commit()
        except DB_ERRORS as exc:
            logger.warning("supervisor: alarm not recorded yet (%s); retried", exc)
            return
        self._unrecorded = []
        for worker in settled:
            del self._alarmed[worker]


def _short_wait(engine: Engine) -> Engine:
    """An engine on the same SQLite file whose writes wait only briefly for the lock."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return engine  # a server database, or one only this engine can see
    return make_engine(
        url.render_as_string(hide_password=False), busy_timeout_ms=RECORD_LOCK_WAIT_MS
    )


def _message(worker: str, count: int) -> str:
    return f"{_prefix(worker)} and was restarted ({count} time(s))"


def _prefix(worker: str) -> str:
    # The one part of the message the alarm is found by (the alarm table has no field
    # for a controller alarm's subject): fixed for each worker name.
    return f"{worker} thread died"


def _worker_of(a: AlarmRecord, names: set[str]) -> str | None:
    """Which of the known workers ``a`` is about (None: none of them)."""
    for name in names:
        if a.message.startswith(_prefix(name) + " "):
            return name
    return None


def _open(s: Session) -> list[AlarmRecord]:
    return list(
        s.exec(
            select(AlarmRecord).where(
                AlarmRecord.cluster_id == CONTROLLER,
                AlarmRecord.kind == AlarmKind.WORKER_RESTARTED.value,
                col(AlarmRecord.cleared_at).is_(None),
            )
        ).all()
    )


def _raise(s: Session, r: _Restart, names: set[str]) -> None:
    message = _message(r.worker, r.count)
    for a in _open(s):
        if _worker_of(a, names) == r.worker:
            a.message, a.last_value, a.updated_at = message, float(r.count), r.at
            s.add(a)
            return
    s.add(
        AlarmRecord(
            cluster_id=CONTROLLER,
            kind=AlarmKind.WORKER_RESTARTED.value,
            severity=SEVERITY[AlarmKind.WORKER_RESTARTED],
            raised_at=r.at,
            message=message,
            value=float(r.count),
            last_value=float(r.count),
            updated_at=r.at,
        )
    )
    logger.warning("ALARM %s on %s: %s", AlarmKind.WORKER_RESTARTED.value, CONTROLLER, message)
