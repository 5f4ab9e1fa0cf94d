"""Alarm state survives a controller restart (issue 14).

Each test builds what a controller left in the database, then starts a fresh
:class:`HealthMonitor` on it (what ``loudspeaker serve`` does after a restart) and checks
that the open alarms are the ones the box still deserves: a silent box stays alarmed until
it is heard, a box healthy before the restart gets its usual grace, and no alarm kind is
cleared by the restart alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from firmware_bridge.protocol import Heartbeat, Status, utcnow
from loudspeaker.alarms import AlarmKind, evaluate
from loudspeaker.availability import record_status
from loudspeaker.flooding import FloodGuard, RateLimit
from loudspeaker.health import HealthMonitor
from loudspeaker.inbound import HeartbeatIn, StatusIn
from loudspeaker.keystore import Keystore
from loudspeaker.models import AlarmRecord, ClusterHealth
from tests.core_support import SITE, RecordingLink, engine

__all__ = ["engine"]  # fixture, used by name


def _restart(engine: Engine, tmp_path: Path) -> HealthMonitor:
    """A fresh monitor on the same database, as a restarted controller builds it.

    With a fresh rate limiter too (the router's, empty after a restart).
    """
    m = HealthMonitor(engine, RecordingLink(), site=SITE, keystore=Keystore(tmp_path / "keys"))
    m.flood = FloodGuard(RateLimit(rate_per_s=1.0, burst=5.0, calm_s=600.0))
    m.load()
    return m


def _heartbeat(cluster: str, at: datetime, **kw: object) -> HeartbeatIn:
    values: dict[str, object] = {
        "cluster": cluster,
        "seq": 1,
        "boot_id": "boot-1",
        "ts": at,
        "interval_s": 30.0,
        "uptime_s": 100.0,
        "amp_temp_c": 40.0,
        "supply_v": 12.5,
        "line": "ok",
        "free_storage_mb": 500.0,
        "play_failures": 0,
    }
    values.update(kw)
    return HeartbeatIn(Heartbeat(**values), at)  # type: ignore[arg-type]


def _online(engine: Engine, cluster: str, since: datetime) -> None:
    with Session(engine) as s:
        record_status(s, Status(cluster=cluster, state="online", agent="sim"), since)
        s.commit()


def _open_alarms(engine: Engine) -> dict[tuple[str, str], int | None]:
    with Session(engine) as s:
        rows = s.exec(select(AlarmRecord).where(col(AlarmRecord.cleared_at).is_(None))).all()
    return {(a.cluster_id, a.kind): a.id for a in rows}


def _raise(engine: Engine, cluster: str, kind: AlarmKind, at: datetime) -> None:
    with Session(engine) as s:
        s.add(
            AlarmRecord(
                cluster_id=cluster,
                kind=kind.value,
                severity="critical",
                raised_at=at,
                message="raised before the restart",
                updated_at=at,
            )
        )
        s.commit()


def test_a_silent_box_stays_alarmed_across_a_restart_until_it_is_heard(
    engine: Engine, tmp_path: Path
) -> None:
    t = utcnow()
    # lb-01 was heard 10 minutes ago, then fell silent; lb-02 was never heard at all.
    _online(engine, "lb-01", t - timedelta(hours=1))
    _online(engine, "lb-02", t - timedelta(hours=1))
    with Session(engine) as s:
        s.add(ClusterHealth(cluster_id="lb-01", received_at=t - timedelta(minutes=10)))
        s.commit()
    _raise(engine, "lb-01", AlarmKind.HEARTBEAT_MISSED, t - timedelta(minutes=8))
    _raise(engine, "lb-02", AlarmKind.HEARTBEAT_MISSED, t - timedelta(minutes=8))
    before = _open_alarms(engine)

    monitor = _restart(engine, tmp_path)
    monitor.step()
    # Same rows, still open: the restart neither cleared them nor raised duplicates.
    assert _open_alarms(engine) == before

    monitor.accept(_heartbeat("lb-01", utcnow()))
    monitor.accept(_heartbeat("lb-02", utcnow()))
    monitor.step()
    assert _open_alarms(engine) == {}


def test_a_box_healthy_before_a_restart_gets_its_usual_grace(
    engine: Engine, tmp_path: Path
) -> None:
    t = utcnow()
    # The controller was down 5 minutes: far more than 3 missed 30 s heartbeats.
    _online(engine, "lb-01", t - timedelta(hours=1))
    with Session(engine) as s:
        s.add(
            ClusterHealth(cluster_id="lb-01", received_at=t - timedelta(minutes=5), interval_s=30)
        )
        s.commit()

    monitor = _restart(engine, tmp_path)
    monitor.step()
    assert _open_alarms(engine) == {}
    # Still silent once its grace from the restart has run out: then it is alarmed.
    limit = monitor.config.missed_heartbeats * 30.0
    started = monitor.observation("lb-01", t).watching_since
    for after, expected in ((limit - 1, False), (limit + 1, True)):
        obs = monitor.observation("lb-01", started + timedelta(seconds=after))
        found = {f.kind: f.active for f in evaluate(obs, monitor.config, set())}
        assert found[AlarmKind.HEARTBEAT_MISSED] is expected, after


def test_no_alarm_kind_is_cleared_by_a_restart(engine: Engine, tmp_path: Path) -> None:
    t = utcnow()
    first = _restart(engine, tmp_path)
    for cid in ("lb-01", "lb-02", "lb-03", "lb-04"):
        _online(engine, cid, t - timedelta(hours=1))
        first.accept(StatusIn(Status(cluster=cid, state="online", agent="sim"), t))
    # lb-01: every reading out of range and its control link down.
    first.accept(
        _heartbeat(
            "lb-01",
            t,
            ts=t + timedelta(seconds=60),
            amp_temp_c=90.0,
            supply_v=10.0,
            line="open",
            free_storage_mb=1.0,
            play_failures=9,
            control_link="down",
            last_error="no answer from the receiver",
        )
    )
    first.accept(_heartbeat("lb-02", t, line="short"))
    # lb-03: offline, unplanned; lb-04: lost its link again and again (link_flapping).
    flaps = [t + timedelta(seconds=i) for i in range(8)]
    for i, at in enumerate(flaps):
        state = "offline" if i % 2 == 0 else "online"
        status = Status(cluster="lb-04", state=state, agent="sim", reason="lost link")
        first.accept(StatusIn(status, at))
        first.step()  # one at a time: the queue keeps one status per box and state
        with Session(engine) as s:
            record_status(s, status, at)
            s.commit()
    first.accept(_heartbeat("lb-04", t))
    down = Status(cluster="lb-03", state="offline", agent="sim", reason="lost link")
    first.accept(StatusIn(down, t))
    with Session(engine) as s:
        record_status(s, down, t)
        s.commit()
    first.accept(_heartbeat("lb-03", t - timedelta(seconds=1)))
    # lb-02 floods (past its burst of 5) until the first controller dies.
    assert first.flood is not None
    for _ in range(50):
        first.flood.admit("lb-02")
    first.step()
    before = _open_alarms(engine)
    kinds = {kind for _, kind in before}
    # Every kind the monitor's rules judge (heartbeat_missed is the two tests above).
    ruled = {f.kind.value for f in evaluate(first.observation("lb-01", t), first.config, set())}
    assert kinds >= ruled - {AlarmKind.HEARTBEAT_MISSED.value}, sorted(kinds)

    second = _restart(engine, tmp_path)
    second.step()
    second.step()
    assert _open_alarms(engine) == before
    # The carried flooding alarm clears once the new rate limiter has watched lb-02 calm
    # for its calm time.
    started = second.observation("lb-02", t).watching_since
    later = second.observation("lb-02", started + timedelta(seconds=601))
    found = {f.kind: f.active for f in evaluate(later, second.config, {AlarmKind.FLOODING})}
    assert found[AlarmKind.FLOODING] is False
