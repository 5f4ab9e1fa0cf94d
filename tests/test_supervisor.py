"""The supervisor's ``worker_restarted`` alarm across controller restarts (no broker).

Workers are stand-ins that die when the test says; the supervisor runs on a SQLite
database in tmp_path with a clock the test moves, and its checks are called directly.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from loudspeaker.alarms import CONTROLLER, AlarmKind
from loudspeaker.models import AlarmRecord
from loudspeaker.supervisor import Supervisor
from tests.core_support import engine

__all__ = ["engine"]  # fixture, used by name

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)


class _Worker:
    """A worker whose thread is dead until the supervisor restarts it."""

    def __init__(self) -> None:
        self.alive = True
        self.stopping = False
        self.restarts = 0

    def restart(self) -> None:
        self.restarts += 1
        self.alive = True


class _Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


def _alarms(engine: Engine) -> list[AlarmRecord]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AlarmRecord).where(
                    AlarmRecord.kind == AlarmKind.WORKER_RESTARTED.value,
                    AlarmRecord.cluster_id == CONTROLLER,
                )
            ).all()
        )


def _supervisor(engine: Engine, worker: _Worker, clock: _Clock) -> Supervisor:
    # A poll of an hour: the test makes every check itself.
    return Supervisor(
        engine,
        lambda: {"dispatcher": worker, "health": None},
        poll_interval_s=3600,
        clear_after_s=300,
        clock=clock,
    )


def test_the_alarm_is_the_same_open_row_after_a_restart_and_clears_after_its_calm_time(
    engine: Engine,
) -> None:
    clock, worker = _Clock(), _Worker()
    sup = _supervisor(engine, worker, clock)
    sup.start()
    try:
        worker.alive = False
        assert sup.check() == ["dispatcher"]
    finally:
        sup.stop()
    [raised] = _alarms(engine)
    assert raised.cleared_at is None and raised.message.startswith("dispatcher thread died")

    # The controller restarts 10 s later: a new supervisor, nothing has died since.
    clock.t = T0 + timedelta(seconds=10)
    sup = _supervisor(engine, worker, clock)
    sup.start()
    try:
        assert sup.check() == []
        [still] = _alarms(engine)
        assert (still.id, still.cleared_at) == (raised.id, None)
        clock.t = T0 + timedelta(seconds=299)
        sup.check()
        assert _alarms(engine)[0].cleared_at is None
        # Calm for its full 300 s, counted from the death before the restart.
        clock.t = T0 + timedelta(seconds=300)
        sup.check()
    finally:
        sup.stop()
    [cleared] = _alarms(engine)
    assert cleared.id == raised.id and cleared.cleared_at is not None
    assert cleared.clear_message.startswith("dispatcher running without a fault since")


def test_a_death_after_a_restart_updates_the_open_alarm_and_restarts_its_calm_time(
    engine: Engine,
) -> None:
    clock, worker = _Clock(), _Worker()
    sup = _supervisor(engine, worker, clock)
    sup.start()
    worker.alive = False
    sup.check()
    sup.stop()

    clock.t = T0 + timedelta(seconds=200)
    sup = _supervisor(engine, worker, clock)
    sup.start()
    try:
        worker.alive = False
        assert sup.check() == ["dispatcher"]
        [alarm] = _alarms(engine)
        assert alarm.cleared_at is None and alarm.last_value == 2.0
        assert "(2 time(s))" in alarm.message
        assert sup.restarts == {"dispatcher": 1}  # the metric counts since this start
        clock.t = T0 + timedelta(seconds=400)  # 300 s after the first death, 200 after the second
        sup.check()
        assert _alarms(engine)[0].cleared_at is None
        clock.t = T0 + timedelta(seconds=500)
        sup.check()
    finally:
        sup.stop()
    assert _alarms(engine)[0].cleared_at is not None


def test_a_locked_database_delays_the_alarm_not_the_restart(engine: Engine) -> None:
    clock, worker = _Clock(), _Worker()
    sup = _supervisor(engine, worker, clock)
    sup.start()
    path = engine.url.database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        worker.alive = False
        assert sup.check() == ["dispatcher"] and worker.restarts == 1
        assert _alarms(engine) == []
        holder.execute("COMMIT")
        sup.check()  # nothing died since: only the alarm left to write
        assert len(_alarms(engine)) == 1
    finally:
        holder.close()
        sup.stop()
