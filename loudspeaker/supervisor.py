"""The controller's supervisor: restarts a worker thread that died, and says so.

Each worker (dispatcher, health monitor, schedule runner) already survives errors inside
an iteration. Something that still escapes its loop kills the thread, and with it the
commune's emergencies or its alarms: the supervisor notices within a poll, starts a new
thread at once (events kept by the old one carry over), logs it, and raises a
``worker_restarted`` alarm on the controller (``loudspeaker alarms``, ``/metrics``). The
alarm clears after the worker has run ``clear_after_s`` without dying again.
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
from loudspeaker.db_faults import DB_ERRORS
from loudspeaker.models import AlarmRecord, now

logger = logging.getLogger(__name__)


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


class Supervisor:
    """Watches workers by name; ``start()``/``stop()``."""

    def __init__(
        self,
        engine: Engine,
        workers: Callable[[], Mapping[str, Supervised | None]],
        *,
        poll_interval_s: float = 0.5,
        clear_after_s: float = 300.0,
    ) -> None:
        self.engine = engine
        self.workers = workers
        self.poll_interval_s = poll_interval_s
        self.clear_after = timedelta(seconds=clear_after_s)
        self.restarts: dict[str, int] = {}
        self._last: dict[str, datetime] = {}
        self._unrecorded: list[_Restart] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching."""
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (before the workers stop, so their end is not taken for a death)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

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
            t = now()
            self._last[name] = t
            self._unrecorded.append(_Restart(name, t, n))
            restarted.append(name)
            logger.error("%s thread died; restarted (%d time(s) since start)", name, n)
        self._record()
        return restarted

    def _record(self) -> None:
        try:
            with Session(self.engine) as s:
                for r in self._unrecorded:
                    _raise(s, r)
                self._clear_settled(s, now())
                s.commit()
        except DB_ERRORS as exc:
            logger.warning("supervisor: alarm not recorded yet (%s); retried", exc)
            return
        self._unrecorded = []

    def _clear_settled(self, s: Session, t: datetime) -> None:
        for a in _open(s):
            worker = a.message.split(" ", 1)[0]
            last = self._last.get(worker)
            if last is None or t - last >= self.clear_after:
                a.cleared_at = t
                a.clear_message = f"{worker} running without a fault since {last or 'start'}"
                a.updated_at = t
                s.add(a)


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


def _raise(s: Session, r: _Restart) -> None:
    message = f"{r.worker} thread died and was restarted ({r.count} time(s))"
    for a in _open(s):
        if a.message.split(" ", 1)[0] == r.worker:
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
