"""Workers survive database faults; emergencies go first; a dead worker is restarted.

No broker: the workers on SQLite with the recording publisher of test_core_workers.
Faults are real where they can be (another connection holding SQLite's write lock) and
injected at the driver boundary otherwise (an engine event that raises the error a
failing database raises, before the statement reaches SQLite).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError, PendingRollbackError
from sqlalchemy.orm.exc import DetachedInstanceError
from sqlmodel import Session, col, select

import audio as audio_module
from firmware_bridge.protocol import Ack, AckState, Priority, decode_command, utcnow
from loudspeaker import dispatcher as dispatcher_module
from loudspeaker import emergency as em
from loudspeaker.alarms import CONTROLLER, AlarmKind
from loudspeaker.auth import Actor, Role
from loudspeaker.config import Settings
from loudspeaker.db import make_engine
from loudspeaker.dispatcher import Dispatcher
from loudspeaker.emergency import EmergencyRequest, PreparedEmergency
from loudspeaker.emergency_spool import EmergencySpool
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.health import HealthMonitor
from loudspeaker.inbound import AckIn
from loudspeaker.keystore import Keystore
from loudspeaker.media import MediaStore
from loudspeaker.metrics import ControllerStats, collect
from loudspeaker.models import (
    AlarmRecord,
    Broadcast,
    ClusterHealth,
    Delivery,
    ScheduleSlot,
)
from loudspeaker.schedule_runner import ScheduleRunner
from loudspeaker.services import emergencies, site
from loudspeaker.services.context import ServiceContext
from loudspeaker.supervisor import Supervisor
from tests.conftest import SITE_FILE
from tests.core_support import (
    SITE,
    RecordingLink,
    _ack,
    _broadcast,
    _deliveries,
    _status,
    engine,
    link,
    make_dispatcher,
)
from tests.helpers import prepared_emergency, wait_until
from tests.test_core_workers import RecordingDispatcher, _heartbeat, _schedule

__all__ = ["engine", "link"]  # fixtures, used by name

OFFICER = Actor("oanh", Role.OFFICER.value)


def _errors() -> list[Exception]:
    return [
        OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")),
        PendingRollbackError("This Session's transaction has been rolled back"),
        DetachedInstanceError("Instance <AlarmRecord> is not bound to a Session"),
    ]


@contextmanager
def failing_statements(
    engine: Engine, match: str, times: int, error: Exception
) -> Iterator[list[str]]:
    """The next ``times`` statements containing ``match`` raise ``error`` instead of running."""
    failed: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if match in statement and len(failed) < times:
            failed.append(statement)
            raise error

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield failed
    finally:
        event.remove(engine, "before_cursor_execute", before)


@contextmanager
def write_lock_held(db_path: Path) -> Iterator[None]:
    """Another connection holds SQLite's write lock, as a long transaction elsewhere does."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# -- the dispatcher ------------------------------------------------------------------------


@pytest.mark.parametrize("error", _errors(), ids=lambda e: type(e).__name__)
def test_dispatcher_recovers_from_database_errors_with_no_ack_lost(
    engine: Engine, link: RecordingLink, tmp_path: Path, error: Exception
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    bid = _broadcast(engine, "lb-01", "lb-02")
    d.step()
    link.puback()
    d.step()
    rows = _deliveries(engine, bid)
    for cluster in ("lb-01", "lb-02"):
        for state in (AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED):
            d.accept(_ack(rows[cluster], state))
    with failing_statements(engine, "UPDATE delivery", 3, error) as failed:
        for _ in range(6):
            d.step()
    assert len(failed) == 3 and d.faults.total >= 3
    assert {r.state for r in _deliveries(engine, bid).values()} == {"played"}
    assert d.backlog == 0 and d.dropped_messages == 0


def test_dispatcher_waits_out_a_locked_database_and_keeps_its_events(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    # A second engine with a short lock wait: the fixture's waits 30 s, like production.
    db = tmp_path / "data" / "loudspeaker.db"
    eng = make_engine(f"sqlite:///{db}", busy_timeout_ms=50)
    try:
        d = make_dispatcher(eng, link, tmp_path)
        with write_lock_held(db):
            # Five boxes (one box's statuses would coalesce into its latest).
            for i in range(5):
                d.accept(_status(f"lb-0{i + 1}", "offline" if i % 2 else "online"))
            d.step()
            d.step()
            assert d.backlog == 5 and d.faults.total >= 2  # failed, nothing applied or lost
        d.step()
        assert d.backlog == 0 and d.faults.failing == 0
    finally:
        eng.dispose()


# Events per iteration (the worker's batch_max): a backlog of a few batches is quick to
# build and to apply.
_BATCH = 20


def _backlog_at_publish(d: Dispatcher, link: RecordingLink) -> list[int]:
    """The dispatcher's backlog as each command was published, in order."""
    seen: list[int] = []
    original = link.publish

    def publish(topic: str, payload: bytes, **kw: Any) -> None:
        seen.append(d.backlog)
        original(topic, payload, **kw)

    link.publish = publish  # type: ignore[method-assign]
    return seen


def test_queued_emergency_goes_out_before_a_bulk_backlog(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    d.batch_max = _BATCH
    normal = _broadcast(engine, "lb-02")
    emergency = _broadcast(engine, "lb-01", priority=Priority.EMERGENCY.value)
    for i in range(3 * _BATCH):
        d.accept(_stray_ack(i))
    seen_backlog = _backlog_at_publish(d, link)
    d.step()
    firsts = [decode_command(p).broadcast for _, p in link.sent]
    assert firsts == [emergency, normal]
    assert seen_backlog[0] == 3 * _BATCH  # the whole backlog still waited when it went


def test_an_emergency_queued_during_a_backlog_goes_out_at_the_next_iteration(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    d.batch_max = _BATCH
    for i in range(4 * _BATCH):
        d.accept(_stray_ack(i))
    seen_backlog = _backlog_at_publish(d, link)
    commits: list[int] = []
    given: list[str] = []

    def after_commit(_s: Session) -> None:
        commits.append(1)
        if len(commits) == 2 and not given:  # the first iteration's events, then dispatch
            # As the CLI does: a new row from another connection, then a poke.
            threading.Thread(target=lambda: given.append(_emergency(engine))).start()
            assert wait_until(lambda: bool(given), 10)
            d.poke()

    event.listen(Session, "after_commit", after_commit)
    try:
        d.step()
        assert d._wake.is_set()  # more events wait: the worker starts the next iteration
        for _ in range(4):  # as the thread does, iteration after iteration
            d.step()
    finally:
        event.remove(Session, "after_commit", after_commit)
    assert given and [decode_command(p).broadcast for _, p in link.sent] == given
    # Sent by the next iteration's lane, before any of the remaining batches was applied.
    assert seen_backlog == [3 * _BATCH] and d.backlog == 0


def _stray_ack(i: int) -> AckIn:
    """A distinct ack (for no command of ours): bulk work no inbox coalesces away."""
    ack = Ack(
        cluster="lb-03",
        command=f"stray-{i:08d}",
        broadcast="stray-broadcast",
        state=AckState.RECEIVED,
        ts=utcnow(),
    )
    return AckIn(ack, utcnow())


def _emergency(engine: Engine) -> str:
    return _broadcast(engine, "lb-01", priority=Priority.EMERGENCY.value)


# -- the emergency lane and the send limit --------------------------------------------------


@pytest.fixture
def small_sends(monkeypatch: pytest.MonkeyPatch) -> int:
    """Two queued deliveries sent per transaction: a few clusters exceed the limit."""
    monkeypatch.setattr(dispatcher_module, "_SEND_MAX", 2)
    return 2


def _published(link: RecordingLink) -> list[tuple[str, str]]:
    """(broadcast, cluster) of every play command published, in order."""
    return [(decode_command(p).broadcast, t.split("/")[2]) for t, p in link.sent]


def test_an_emergency_to_more_clusters_than_the_send_limit_goes_to_all_of_them(
    engine: Engine, link: RecordingLink, tmp_path: Path, small_sends: int
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    clusters = [f"lb-{i:02d}" for i in range(1, 8)]
    bid = _broadcast(engine, *clusters, priority=Priority.EMERGENCY.value)
    d.step()
    assert sorted(_published(link)) == [(bid, c) for c in clusters]
    assert d.emergencies_sent == len(clusters)
    # Everything is in flight: nothing is picked again and the thread is not woken.
    d._wake.clear()
    d.step()
    assert len(link.sent) == len(clusters) and not d._wake.is_set()
    link.puback()
    d.step()
    assert {r.state for r in _deliveries(engine, bid).values()} == {"sent"}


def test_queued_normal_rows_past_the_send_limit_go_out_without_spinning(
    engine: Engine, link: RecordingLink, tmp_path: Path, small_sends: int
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    clusters = [f"lb-{i:02d}" for i in range(1, 6)]
    bid = _broadcast(engine, *clusters)
    rounds = 0
    while len(link.sent) < len(clusters):
        rounds += 1
        assert rounds <= len(clusters), "queued rows stalled behind the in-flight ones"
        d.step()
    assert sorted(_published(link)) == [(bid, c) for c in clusters]
    assert d.emergencies_sent == 0
    d._wake.clear()
    d.step()  # every queued row is in flight: nothing to send, no reason to wake again
    assert len(link.sent) == len(clusters) and not d._wake.is_set()


def test_emergencies_sent_counts_publishes_not_rows_given_up(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    bid = _broadcast(engine, "lb-01", "lb-02", priority=Priority.EMERGENCY.value)
    with Session(engine) as s:
        row = s.exec(select(Delivery).where(Delivery.cluster_id == "lb-02")).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    d.step()
    assert _published(link) == [(bid, "lb-01")] and d.emergencies_sent == 1
    assert _deliveries(engine, bid)["lb-02"].state == "unreachable"


def test_dispatch_sends_an_emergency_queued_after_the_lane_before_normal_rows(
    engine: Engine, link: RecordingLink, tmp_path: Path, small_sends: int
) -> None:
    d = make_dispatcher(engine, link, tmp_path)
    normal = _broadcast(engine, "lb-02", "lb-03", "lb-04")
    d.accept(_stray_ack(0))
    given: list[str] = []
    started: list[bool] = []

    def after_commit(_s: Session) -> None:
        if not started:  # the events' commit: the lane has run, dispatch has not
            started.append(True)
            threading.Thread(target=lambda: given.append(_emergency(engine))).start()
            assert wait_until(lambda: bool(given), 10)

    event.listen(Session, "after_commit", after_commit)
    try:
        d.step()
    finally:
        event.remove(Session, "after_commit", after_commit)
    assert given and _published(link) == [(given[0], "lb-01"), (normal, "lb-02")]
    assert d.emergencies_sent == 1


class _SpoolSeen(EmergencySpool):
    """A spool whose recording queues one emergency and notes what was published before."""

    def __init__(self, data_dir: Path, link: RecordingLink) -> None:
        super().__init__(data_dir)
        self.link = link
        self.published_before: list[int] = []
        self.ids: list[str] = []

    def record_all(self, engine: Engine) -> list[str]:
        self.published_before.append(len(self.link.sent))
        if self.ids:
            return []
        self.ids.append(_emergency(engine))
        return self.ids


def test_queued_emergencies_go_out_before_the_spool_is_recorded(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    spool = _SpoolSeen(tmp_path / "data", link)
    d = make_dispatcher(engine, link, tmp_path, spool=spool)
    queued = _broadcast(engine, "lb-02", priority=Priority.EMERGENCY.value)
    d.step()
    # The queued one was published before the spool was read; the recorded one after it,
    # in the same lane.
    assert spool.published_before[0] == 1
    assert _published(link) == [(queued, "lb-02"), (spool.ids[0], "lb-01")]


# -- the health monitor ---------------------------------------------------------------------


@pytest.mark.parametrize("error", _errors(), ids=lambda e: type(e).__name__)
def test_health_monitor_recovers_from_database_errors(
    engine: Engine, link: RecordingLink, tmp_path: Path, error: Exception
) -> None:
    m = HealthMonitor(engine, link, site=SITE, keystore=Keystore(tmp_path / "keys"))
    m.load()
    m.accept(_heartbeat("lb-01", 1, temp=95.0))  # raises an overheat alarm
    with failing_statements(engine, "INSERT INTO alarm", 2, error) as failed:
        m.step()
        m.step()
    assert len(failed) == 2 and m.backlog == 1  # kept, not lost
    m.step()
    m.accept(_heartbeat("lb-01", 2, temp=96.0))
    # The alarm row the rolled-back attempts held is gone; the monitor must not touch it.
    with failing_statements(engine, "UPDATE cluster_health", 1, error):
        m.step()
    m.step()
    m.step()
    with Session(engine) as s:
        row = s.get(ClusterHealth, "lb-01")
        assert row is not None and (row.heartbeats, row.seq) == (2, 2)
        alarms = s.exec(select(AlarmRecord).where(AlarmRecord.kind == "overheat")).all()
        assert len(alarms) == 1 and alarms[0].cleared_at is None
    assert m.backlog == 0 and m.faults.failing == 0


# -- the schedule runner ----------------------------------------------------------------------


def test_schedule_runner_recovers_from_database_errors(engine: Engine) -> None:
    from datetime import timedelta

    from firmware_bridge.protocol import utcnow

    fake = RecordingDispatcher()
    runner = ScheduleRunner(engine, fake, horizon_s=600.0, grace_s=60.0)
    _schedule(engine, utcnow() + timedelta(minutes=5))
    with failing_statements(engine, "INSERT INTO schedule_slot", 2, _errors()[0]) as failed:
        runner.start()
        try:
            assert wait_until(lambda: runner.syncs >= 1, 10)
        finally:
            runner.stop()
    assert len(failed) == 2 and runner.faults.total == 2
    with Session(engine) as s:
        assert len(s.exec(select(ScheduleSlot)).all()) == 1


# -- the supervisor --------------------------------------------------------------------------


class _Die(BaseException):
    """Escapes every ``except Exception``: the worker thread dies of it."""


def test_supervisor_restarts_a_dead_dispatcher_and_raises_an_alarm(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    d = make_dispatcher(engine, link, tmp_path, poll_interval_s=0.05)
    real_step = d.step
    deaths: list[int] = []

    def dying_step() -> None:
        if not deaths:
            deaths.append(1)
            raise _Die("test fault")
        real_step()

    d.step = dying_step  # type: ignore[method-assign]
    sup = Supervisor(engine, lambda: {"dispatcher": d}, poll_interval_s=0.05)
    threading.excepthook, hook = (lambda _a: None), threading.excepthook
    try:
        d.start()
        assert wait_until(lambda: bool(deaths), 10)
        sup.start()
        assert wait_until(lambda: sup.restarts.get("dispatcher") == 1, 10)
        bid = _emergency(engine)
        d.poke()
        assert wait_until(lambda: any(decode_command(p).broadcast == bid for _, p in link.sent), 10)
    finally:
        sup.stop()
        d.stop()
        threading.excepthook = hook
    assert d.alive is False and sup.restarts == {"dispatcher": 1}
    with Session(engine) as s:
        alarm = s.exec(
            select(AlarmRecord).where(AlarmRecord.kind == AlarmKind.WORKER_RESTARTED.value)
        ).one()
    assert alarm.cluster_id == CONTROLLER and alarm.cleared_at is None
    assert alarm.message.startswith("dispatcher thread died")
    text = collect(engine, ControllerStats(worker_restarts=sup.restarts))
    assert 'loudspeaker_controller_alarm_active{kind="worker_restarted"} 1' in text
    assert 'loudspeaker_worker_restarts_total{worker="dispatcher"} 1' in text


def test_the_supervisor_leaves_stopped_workers_alone(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    d = make_dispatcher(engine, link, tmp_path, poll_interval_s=0.05)
    d.start()
    d.stop()
    sup = Supervisor(engine, lambda: {"dispatcher": d})
    assert sup.check() == [] and not d.alive


# -- the emergency service ---------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path, sqlite_url: str) -> ServiceContext:
    c = ServiceContext(Settings(data_dir=tmp_path / "data", db_url=sqlite_url))
    site.load(c, Actor("an", Role.ADMIN.value), SITE_FILE)
    return c


@pytest.mark.integration  # the siren is rendered with ffmpeg
def test_an_emergency_on_a_locked_database_is_spooled_said_and_recorded_later(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    recording = tmp_path / "home" / "canh-bao.wav"
    recording.parent.mkdir()
    audio_module.render_tone("siren", cache_dir=tmp_path / "cache", seconds=1.0).path.replace(
        recording
    )
    request = EmergencyRequest(text="Lũ về, sơ tán ngay", everywhere=True, recording=recording)
    db = tmp_path / "data" / "loudspeaker.db"
    with write_lock_held(db), pytest.raises(LoudspeakerError) as refused:
        emergencies.trigger(ctx, OFFICER, request)
    message = str(refused.value)
    assert "NOT recorded and NOT sent" in message and "\n" not in message
    spool = EmergencySpool(ctx.settings.data_dir)
    [spooled] = spool.pending()
    assert str(spooled) in message
    with Session(ctx.engine) as s:
        assert s.exec(select(Broadcast)).all() == []
    # The controller may not read the caller's files (ProtectHome): what is spooled is the
    # stored audio's sha256, never the path; the file may go before the controller records.
    kept = json.loads(spooled.read_text())["emergency"]
    assert str(recording.parent) not in spooled.read_text()
    assert (ctx.settings.media_dir / f"{kept['sha256']}.{kept['format']}").is_file()
    recording.unlink()

    # A request that can no longer be carried out is set aside, not blocking the lane.
    with ctx.session() as s:
        gone = em.prepare(
            s,
            ctx.settings.data_dir,
            EmergencyRequest(text="Bão", hamlets=("no-such-hamlet",), siren=True),
        )
    bad = spool.put(gone, actor="oanh", role=Role.OFFICER.value)
    ids = spool.record_all(ctx.engine)  # what the controller's emergency lane does
    assert ids == [kept["broadcast_id"]] and spool.pending() == []
    assert bad.with_suffix(".refused").exists()
    with Session(ctx.engine) as s:
        b = s.get(Broadcast, ids[0])
        assert b is not None and b.priority == "emergency" and b.created_by == "oanh"
        assert b.media_sha256 == kept["sha256"] and b.source == "canh-bao.wav"
        n = len(s.exec(select(Delivery).where(col(Delivery.broadcast_id) == b.id)).all())
        assert n > 0


@pytest.mark.integration  # the siren is rendered with ffmpeg
def test_an_emergency_neither_recorded_nor_spooled_says_so(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    spool_dir = EmergencySpool(ctx.settings.data_dir).dir
    spool_dir.rmdir()
    spool_dir.write_text("")  # in the way: the spool cannot be written
    request = EmergencyRequest(text="Lũ về", everywhere=True, siren=True)
    with (
        write_lock_held(tmp_path / "data" / "loudspeaker.db"),
        pytest.raises(LoudspeakerError) as refused,
    ):
        emergencies.trigger(ctx, OFFICER, request)
    message = str(refused.value)
    assert "NOT recorded, NOT sent and NOT kept" in message and "give it again" in message


@pytest.mark.integration  # the siren is rendered with ffmpeg
def test_an_emergency_waits_out_a_short_lock_within_its_budget(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    request = EmergencyRequest(text="Cháy rừng", everywhere=True, siren=True)
    db = tmp_path / "data" / "loudspeaker.db"
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")
    retried: list[str] = []

    class ReleaseOnRetry(logging.Handler):
        # The lock goes once the service has met it and said it retries: the test then
        # proves the retry, whatever the render took.
        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage() and not retried:
                retried.append(record.getMessage())
                lock.execute("ROLLBACK")

    handler = ReleaseOnRetry()
    db_faults_logger = logging.getLogger("loudspeaker.db_faults")
    db_faults_logger.addHandler(handler)
    try:
        result = emergencies.trigger(ctx, OFFICER, request, direct_wait_s=0.1)
    except LoudspeakerError as exc:
        # No controller or broker here: the direct path says so after recording it.
        assert "recorded" in str(exc) and "NOT recorded" not in str(exc)
        result = None
    finally:
        db_faults_logger.removeHandler(handler)
        if not retried:
            lock.execute("ROLLBACK")
        lock.close()
    assert retried and "database is locked" in retried[0]
    assert EmergencySpool(ctx.settings.data_dir).pending() == []
    with Session(ctx.engine) as s:
        rows = s.exec(select(Broadcast)).all()
        assert len(rows) == 1
        assert result is None or result.broadcast_id == rows[0].id


# -- the spool alone: nothing rendered -------------------------------------------------------


def _prepared(
    ctx: ServiceContext, tmp_path: Path, *, given_s_ago: float = 0.0
) -> PreparedEmergency:
    """An emergency as the service spools it, its audio (any bytes) in the media store."""
    prepared: PreparedEmergency = prepared_emergency(
        ctx.settings.media_dir, tmp_path, given_s_ago=given_s_ago
    )
    return prepared


def test_a_spooled_emergency_is_recorded_once_under_its_own_id(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    spool = EmergencySpool(ctx.settings.data_dir)
    p = _prepared(ctx, tmp_path)
    spool.put(p, actor="oanh", role=Role.OFFICER.value)
    assert spool.record_all(ctx.engine) == [p.broadcast_id] and spool.pending() == []
    # A crash between the commit and the unlink leaves the file: it is not played twice.
    spool.put(p, actor="oanh", role=Role.OFFICER.value)
    assert spool.record_all(ctx.engine) == [] and spool.pending() == []
    with Session(ctx.engine) as s:
        assert [b.id for b in s.exec(select(Broadcast)).all()] == [p.broadcast_id]


def test_the_media_cache_keeps_the_audio_of_a_spooled_emergency(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    from loudspeaker.announcements import prune_media

    spool = EmergencySpool(ctx.settings.data_dir)
    p = _prepared(ctx, tmp_path)
    spool.put(p, actor="oanh", role=Role.OFFICER.value)
    store = MediaStore(ctx.settings.media_dir)
    with Session(ctx.engine) as s:
        prune_media(s, ctx.settings.data_dir, budget=0)  # evict all that nobody needs
    assert store.path_for(p.sha256) is not None
    assert spool.record_all(ctx.engine) == [p.broadcast_id]


def test_a_spooled_emergency_is_valid_from_when_it_was_given(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    spool = EmergencySpool(ctx.settings.data_dir)
    p = _prepared(ctx, tmp_path, given_s_ago=300.0)
    spool.put(p, actor="oanh", role=Role.OFFICER.value)
    [bid] = spool.record_all(ctx.engine)
    with Session(ctx.engine) as s:
        b = s.get(Broadcast, bid)
        assert b is not None and b.created_at is not None
        assert _utc(b.created_at) == p.created_at
        rows = s.exec(select(Delivery).where(col(Delivery.broadcast_id) == bid)).all()
        assert rows and {_utc(d.expires_at) for d in rows} == {p.expires_at}


def test_a_spooled_emergency_past_its_validity_is_set_aside_unplayed(
    ctx: ServiceContext, tmp_path: Path
) -> None:
    spool = EmergencySpool(ctx.settings.data_dir)
    stale = spool.put(_prepared(ctx, tmp_path, given_s_ago=601.0), actor="oanh", role="officer")
    assert spool.record_all(ctx.engine) == [] and spool.pending() == []
    assert stale.with_suffix(".expired").exists()
    with Session(ctx.engine) as s:
        assert s.exec(select(Broadcast)).all() == []


class _UnreadableSpool(EmergencySpool):
    """A spool directory the controller may not read (a mode left wrong by hand)."""

    def pending(self) -> list[Path]:
        raise PermissionError(13, "Permission denied", str(self.dir))


def test_an_unreadable_spool_does_not_stop_the_deliveries(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    d = make_dispatcher(engine, link, tmp_path, spool=_UnreadableSpool(tmp_path / "data"))
    urgent, bulletin = _emergency(engine), _broadcast(engine, "lb-02")
    d.step()
    sent = {decode_command(p).broadcast for _, p in link.sent}
    assert sent == {urgent, bulletin}


def _utc(t: datetime | None) -> datetime | None:
    # SQLite gives times back naive; they are stored in UTC.
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t
