"""The controller's workers built alone: dispatcher, health monitor, schedule runner.

No controller, no broker: a SQLite database in tmp_path, typed events handed in as the
inbound router would, and a recording publisher standing in for the MQTT link (our own
publish callable, not a broker). Each iteration is run by calling ``step()``/``sync()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from firmware_bridge.protocol import (
    Ack,
    AckState,
    ControlResult,
    Heartbeat,
    decode_command,
    utcnow,
)
from loudspeaker.dispatcher import Dispatcher
from loudspeaker.health import HealthMonitor
from loudspeaker.inbound import AckIn, DropReason, Drops, HeartbeatIn, ResultIn
from loudspeaker.keystore import Keystore
from loudspeaker.metrics import ControllerStats, collect
from loudspeaker.models import (
    AlarmRecord,
    Announcement,
    ClusterClock,
    ClusterHealth,
    ClusterStatus,
    ControlRequest,
    Delivery,
    DeliveryEvent,
    ScheduleRecord,
    ScheduleSlot,
    StopRequest,
)
from loudspeaker.schedule_runner import ScheduleRunner
from tests.core_support import (
    SHA,
    SITE,
    RecordingLink,
    _ack,
    _broadcast,
    _deliveries,
    _status,
    dispatcher,
    engine,
    link,
)

__all__ = ["dispatcher", "engine", "link"]  # fixtures, used by name

# -- dispatcher ---------------------------------------------------------------------------


def test_dispatcher_sends_a_queued_delivery_and_follows_its_acks(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    bid = _broadcast(engine, "lb-01", "lb-02")
    dispatcher.step()
    topics = sorted(t for t, _ in link.sent)
    assert topics == [f"loudspeaker/{SITE}/lb-01/cmd", f"loudspeaker/{SITE}/lb-02/cmd"]
    cmd = decode_command(link.sent[0][1])
    assert cmd.type == "play" and cmd.broadcast == bid
    assert cmd.media.url == f"http://controller:8080/media/{SHA}.mp3"
    assert {d.state for d in _deliveries(engine, bid).values()} == {"queued"}
    dispatcher.step()
    assert len(link.sent) == 2  # in flight: never published twice before the PUBACK

    link.puback()
    dispatcher.step()
    rows = _deliveries(engine, bid)
    assert {d.state for d in rows.values()} == {"sent"}
    for state in (AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED):
        dispatcher.accept(_ack(rows["lb-01"], state))
    dispatcher.step()
    after = _deliveries(engine, bid)
    assert (after["lb-01"].state, after["lb-02"].state) == ("played", "sent")
    assert after["lb-01"].received_at is not None and after["lb-01"].playing_at is not None
    with Session(engine) as s:
        trail = s.exec(
            select(DeliveryEvent.state).where(DeliveryEvent.delivery_id == after["lb-01"].id)
        ).all()
    assert list(trail) == ["sent", "received", "playing", "played"]
    assert dispatcher.dropped_messages == 0


def test_dispatcher_fails_what_the_broker_refuses(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    bid = _broadcast(engine, "lb-03")
    dispatcher.step()
    link.puback(ok=False, reason="Not authorized")
    dispatcher.step()
    d = _deliveries(engine, bid)["lb-03"]
    assert (d.state, d.reason) == ("failed", "broker refused: Not authorized")


def test_dispatcher_drops_acks_it_cannot_place_and_counts_why(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    drops = dispatcher.drops
    bid = _broadcast(engine, "lb-01")
    dispatcher.step()
    link.puback()
    dispatcher.step()
    d = _deliveries(engine, bid)["lb-01"]
    dispatcher.accept(_ack(d, AckState.PLAYED, broadcast="b-someone-else"))
    stranger = d.model_copy(update={"cluster_id": "lb-99"})
    dispatcher.accept(_ack(stranger, AckState.PLAYED))
    unknown = d.model_copy(update={"command_id": "nobody-sent-it"})
    dispatcher.accept(_ack(unknown, AckState.PLAYED))
    dispatcher.step()
    assert _deliveries(engine, bid)["lb-01"].state == "sent"
    assert dispatcher.dropped_messages == 3
    assert drops.by_reason() == {
        ("ack", DropReason.UNKNOWN_CLUSTER.value): 1,
        ("ack", DropReason.UNKNOWN_COMMAND.value): 1,
        ("ack", DropReason.WRONG_BROADCAST.value): 1,
    }


def test_dispatcher_gives_up_held_items_of_a_cluster_that_goes_offline(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    bid = _broadcast(engine, "lb-01", "lb-02")
    dispatcher.step()
    link.puback()
    dispatcher.step()
    rows = _deliveries(engine, bid)
    dispatcher.accept(_ack(rows["lb-01"], AckState.PLAYING))
    dispatcher.accept(_status("lb-01", "offline", "connection lost"))
    dispatcher.step()
    after = _deliveries(engine, bid)
    assert after["lb-01"].state == "unreachable"
    assert after["lb-01"].reason == "cluster went offline while playing (connection lost)"
    assert after["lb-02"].state == "sent"
    with Session(engine) as s:
        st = s.get(ClusterStatus, "lb-01")
        assert st is not None and st.online is False


def test_dispatcher_sends_an_emergency_again_when_its_cluster_returns(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    dispatcher.accept(_status("lb-04", "offline", "power cut"))
    dispatcher.step()
    bid = _broadcast(engine, "lb-04", priority="emergency")
    dispatcher.step()
    link.puback()
    dispatcher.step()
    first = len(link.sent)
    dispatcher.accept(_status("lb-04", "online"))
    dispatcher.step()
    assert len(link.sent) == first + 1
    assert decode_command(link.sent[-1][1]).id == _deliveries(engine, bid)["lb-04"].command_id
    with Session(engine) as s:
        notes = s.exec(select(DeliveryEvent).where(DeliveryEvent.state == "resent")).all()
    assert [n.reason for n in notes] == ["cluster came back online"]


def test_dispatcher_withdraws_and_stops(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    queued = _broadcast(engine, "lb-05")
    ids = [d.id for d in _deliveries(engine, queued).values() if d.id is not None]
    dispatcher.withdraw(ids, "schedule changed")
    dispatcher.step()
    d = _deliveries(engine, queued)["lb-05"]
    assert (d.state, d.reason) == ("failed", "withdrawn: schedule changed")
    assert link.sent == []  # never sent: nothing to take back on the box

    live = _broadcast(engine, "lb-06")
    dispatcher.step()
    link.puback()
    dispatcher.step()
    with Session(engine) as s:
        s.add(StopRequest(broadcast_id=live, requested_by="officer", requested_at=utcnow()))
        s.commit()
    dispatcher.step()
    stop = decode_command(link.sent[-1][1])
    assert (stop.type, stop.cluster) == ("stop", "lb-06")
    with Session(engine) as s:
        req = s.exec(select(StopRequest)).one()
        assert req.handled_at is not None
        notes = s.exec(select(DeliveryEvent).where(DeliveryEvent.state == "stop-sent")).all()
    assert [n.reason for n in notes] == ["stop requested by officer"]


def test_dispatcher_sends_nothing_while_the_broker_is_away(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    link.connected.clear()
    bid = _broadcast(engine, "lb-01")
    dispatcher.step()
    assert link.sent == []
    link.connected.set()
    dispatcher.step()
    assert len(link.sent) == 1
    assert _deliveries(engine, bid)["lb-01"].state == "queued"


# -- health monitor -----------------------------------------------------------------------


@pytest.fixture
def monitor(engine: Engine, link: RecordingLink, tmp_path: Path) -> HealthMonitor:
    m = HealthMonitor(engine, link, site=SITE, keystore=Keystore(tmp_path / "keys"))
    m.load()
    return m


def _heartbeat(cluster: str, seq: int = 1, temp: float = 40.0) -> HeartbeatIn:
    hb = Heartbeat(
        cluster=cluster,
        seq=seq,
        boot_id="boot-1",
        ts=utcnow(),
        interval_s=30.0,
        uptime_s=100.0,
        agent="sim",
        firmware="1.0",
        amp_temp_c=temp,
        supply_v=12.0,
        line="ok",
        free_storage_mb=500.0,
        play_failures=0,
    )
    return HeartbeatIn(hb, utcnow())


def test_health_monitor_records_heartbeats_and_drops_strangers(
    engine: Engine, monitor: HealthMonitor
) -> None:
    monitor.accept(_heartbeat("lb-01", 1))
    monitor.accept(_heartbeat("lb-01", 2))
    monitor.accept(_heartbeat("lb-99"))
    monitor.step()
    with Session(engine) as s:
        row = s.get(ClusterHealth, "lb-01")
        # Two heartbeats of one cluster queued in one iteration: the latest wins.
        assert row is not None and (row.heartbeats, row.seq) == (1, 2)
        assert s.get(ClusterHealth, "lb-99") is None
    assert monitor.heartbeats_received == 1
    assert monitor.dropped_messages == 1
    assert monitor.drops.by_reason() == {("health", "unknown-cluster"): 1}


def test_health_monitor_sends_a_control_request_and_applies_its_result(
    engine: Engine, link: RecordingLink, monitor: HealthMonitor
) -> None:
    t = utcnow()
    with Session(engine) as s:
        s.add(
            ControlRequest(
                id="volume-0001",
                cluster_id="lb-02",
                action="volume",
                args={"volume": 40},
                created_at=t,
                expires_at=t + timedelta(minutes=5),
            )
        )
        s.commit()
    monitor.step()
    cmd = decode_command(link.sent[-1][1])
    assert (cmd.type, cmd.cluster, cmd.id) == ("volume", "lb-02", "volume-0001")
    link.puback()
    result = ControlResult(
        cluster="lb-02", command="volume-0001", type="volume", ok=True, ts=utcnow(), detail={}
    )
    monitor.accept(ResultIn(result, utcnow()))
    monitor.step()
    with Session(engine) as s:
        req = s.get(ControlRequest, "volume-0001")
        assert req is not None and req.state == "confirmed"


def test_health_monitor_raises_an_alarm_from_a_heartbeat(
    engine: Engine, monitor: HealthMonitor
) -> None:
    monitor.accept(_heartbeat("lb-03", temp=monitor.config.temp_max_c + 10))
    monitor.step()
    with Session(engine) as s:
        alarms = s.exec(select(AlarmRecord).where(AlarmRecord.cluster_id == "lb-03")).all()
    assert [a.kind for a in alarms] == ["overheat"]
    assert monitor.alarms_raised == 1


# -- schedule runner ----------------------------------------------------------------------


@dataclass
class RecordingDispatcher:
    """What the runner asks of the dispatcher, recorded."""

    withdrawn: list[tuple[list[int], str]] = field(default_factory=list)
    pokes: int = 0

    def withdraw(self, delivery_ids: list[int], reason: str) -> None:
        self.withdrawn.append((list(delivery_ids), reason))

    def poke(self) -> None:
        self.pokes += 1


def _schedule(engine: Engine, at: datetime) -> int:
    t = utcnow()
    with Session(engine) as s:
        s.add(
            Announcement(
                id="ann-1",
                title="Bản tin sáng",
                kind="tone",
                engine="tone",
                media_sha256=SHA,
                duration_s=2.0,
                size=1000,
                created_at=t,
            )
        )
        rec = ScheduleRecord(
            title="Bản tin sáng",
            rule={"kind": "at", "at": at.isoformat()},
            items=[{"announcement": "ann-1", "priority": "normal"}],
            target="cluster:lb-01,cluster:lb-02",
            created_at=t,
            active_since=t,
            updated_at=t,
        )
        s.add(rec)
        s.commit()
        assert rec.id is not None
        return rec.id


def test_schedule_runner_stages_an_item_and_withdraws_it_when_paused(engine: Engine) -> None:
    now_ = utcnow()
    fake = RecordingDispatcher()
    runner = ScheduleRunner(engine, fake, horizon_s=600.0, grace_s=60.0, clock=lambda: now_)
    sid = _schedule(engine, now_ + timedelta(minutes=5))

    result = runner.sync()
    assert len(result.staged) == 1 and fake.pokes == 1
    with Session(engine) as s:
        slot = s.exec(select(ScheduleSlot)).one()
        assert slot.state == "staged" and slot.broadcast_id is not None
        rows = s.exec(select(Delivery).where(Delivery.broadcast_id == slot.broadcast_id)).all()
        assert sorted(d.cluster_id for d in rows) == ["lb-01", "lb-02"]
        assert {d.state for d in rows} == {"queued"}
        assert all(d.start_at is not None for d in rows)
        ids = sorted(d.id for d in rows if d.id is not None)

    assert runner.sync().staged == []  # the slot row makes a second pass stage nothing

    with Session(engine) as s:
        rec = s.get(ScheduleRecord, sid)
        assert rec is not None
        rec.paused, rec.version = True, rec.version + 1
        s.add(rec)
        s.commit()
    result = runner.sync()
    assert len(result.withdrawn) == 1
    assert fake.withdrawn == [(ids, "schedule changed")]


def test_schedule_runner_notes_cluster_clocks_from_acks(engine: Engine) -> None:
    runner = ScheduleRunner(engine, RecordingDispatcher(), horizon_s=600.0, grace_s=60.0)
    received = utcnow()
    ack = Ack(
        cluster="lb-07",
        command="c" * 12,
        broadcast="b" * 12,
        state=AckState.RECEIVED,
        ts=received + timedelta(seconds=30),
    )
    for _ in range(3):
        runner.accept(AckIn(ack, received))
    runner.sync()
    with Session(engine) as s:
        row = s.get(ClusterClock, "lb-07")
        assert row is not None and row.offset_s == pytest.approx(30.0, abs=0.01)


# -- one drop counter for the controller --------------------------------------------------


def test_workers_share_one_drop_counter(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    drops = Drops()
    keys = Keystore(tmp_path / "keys")
    disp = Dispatcher(
        engine,
        link,
        site=SITE,
        media_base_url="http://c",
        ack_timeout_s=5.0,
        command_ttl_s=60.0,
        keystore=keys,
        drops=drops,
    )
    mon = HealthMonitor(engine, link, site=SITE, keystore=keys, drops=drops)
    mon.load()
    disp.reload_clusters()
    disp.accept(_status("lb-98", "online"))
    mon.accept(_heartbeat("lb-98"))
    disp.step()
    mon.step()
    assert (disp.dropped_messages, mon.dropped_messages, drops.total()) == (1, 1, 2)


def test_the_metrics_show_drops_by_kind_and_reason(engine: Engine) -> None:
    stats = ControllerStats(
        dropped_messages=3,
        dropped_by_reason={("ack", "malformed"): 2, ("health", "unknown-cluster"): 1},
    )
    text = collect(engine, stats)
    assert "loudspeaker_dropped_messages_total 3\n" in text
    assert 'loudspeaker_dropped_messages_by_reason_total{kind="ack",reason="malformed"} 2' in text
    assert (
        'loudspeaker_dropped_messages_by_reason_total{kind="health",reason="unknown-cluster"} 1'
        in text
    )
