"""A silent box stays alarmed across real controller restarts (SIGKILL, then a clean stop).

Real mosquitto, ``loudspeaker serve`` as a child process, nine simulated clusters beating
every 0.5 s, and lb-07 played by the test: online (retained status, connection kept open),
one heartbeat, then silence, as an agent frozen in place. (The simulator's ``hang`` fault
lets a heartbeat out every 30 s: too often for a test that restarts the controller twice.)
After each restart lb-07's ``heartbeat_missed`` alarm is the same row, still open, and no
other box is alarmed for the controller's own downtime; the alarm clears only once lb-07
is heard again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from firmware_bridge.protocol import Heartbeat, Kind, Status, encode, topic, utcnow
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.db import as_utc, make_engine
from loudspeaker.models import AlarmRecord, ClusterHealth, now
from tests.chaos.chaos_support import ServeProcess
from tests.conftest import load_site
from tests.health.conftest import CLUSTERS, HEARTBEAT_S
from tests.helpers import running_fleet, scaled, wait_until

pytestmark = pytest.mark.integration

SILENT = "lb-07"
HEALTHY = [c for c in CLUSTERS if c != SILENT]
SITE = "luc-binh"


class SilentBox:
    """A connected box that beats only when told to (its MQTT connection stays up)."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"box-{SILENT}")
        offline = Status(cluster=SILENT, state="offline", agent="test", reason="lost")
        self.client.will_set(topic(SITE, SILENT, Kind.STATUS), encode(offline), 1, True)
        self.client.connect(broker.endpoint.host, broker.endpoint.port, keepalive=60)
        self.client.loop_start()
        self.seq = 0
        online = Status(cluster=SILENT, state="online", agent="test")
        info = self.client.publish(topic(SITE, SILENT, Kind.STATUS), encode(online), 1, True)
        info.wait_for_publish(10)

    def beat(self) -> None:
        self.seq += 1
        hb = Heartbeat(
            cluster=SILENT,
            seq=self.seq,
            boot_id="boot-1",
            ts=utcnow(),
            interval_s=HEARTBEAT_S,
            uptime_s=10.0,
            line="ok",
        )
        self.client.publish(topic(SITE, SILENT, Kind.HEALTH), encode(hb), 0).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextmanager
def _silent_box(broker: EmbeddedBroker) -> Iterator[SilentBox]:
    box = SilentBox(broker)
    try:
        yield box
    finally:
        box.close()


def _missed(engine: Engine) -> list[AlarmRecord]:
    with Session(engine) as s:
        return list(s.exec(select(AlarmRecord).where(AlarmRecord.kind == "heartbeat_missed")).all())


def _heard(engine: Engine, cluster: str) -> bool:
    with Session(engine) as s:
        return s.get(ClusterHealth, cluster) is not None


def _beats_since(engine: Engine, t: datetime, n: int) -> Callable[[], bool]:
    """Every healthy box heard at least ``n`` times by a controller started at ``t``."""
    first: dict[str, int] = {}

    def check() -> bool:
        with Session(engine) as s:
            rows = s.exec(select(ClusterHealth).where(col(ClusterHealth.cluster_id).in_(HEALTHY)))
            fresh = {h.cluster_id: h.heartbeats for h in rows if (as_utc(h.received_at) or t) > t}
        for cid, count in fresh.items():
            first.setdefault(cid, count)
        return len(fresh) == len(HEALTHY) and all(fresh[c] - first[c] >= n for c in HEALTHY)

    return check


def test_a_silent_box_stays_alarmed_across_controller_restarts(
    tmp_path: Path,
    sqlite_url: str,
    mosquitto: EmbeddedBroker,
    health_site: Path,
) -> None:
    load_site(sqlite_url, health_site)
    engine = make_engine(sqlite_url)
    serve = ServeProcess(tmp_path / "data", sqlite_url, mosquitto.endpoint.url)
    with (
        running_fleet(HEALTHY, mosquitto.endpoint, tmp_path / "fleet", heartbeat_s=HEARTBEAT_S),
        _silent_box(mosquitto) as box,
    ):
        try:
            _restarts(engine, serve, box)
        finally:
            serve.stop()
            engine.dispose()


def _restarts(engine: Engine, serve: ServeProcess, box: SilentBox) -> None:
    """Start, alarm lb-07, restart twice (SIGKILL, clean stop), then let it beat."""
    serve.start()
    assert wait_until(_beats_since(engine, now(), 1), scaled(20)), serve.log_tail()
    box.beat()
    assert wait_until(lambda: _heard(engine, SILENT), scaled(20)), serve.log_tail()
    assert wait_until(lambda: len(_missed(engine)) == 1, scaled(20)), serve.log_tail()
    (alarm,) = _missed(engine)
    assert alarm.cluster_id == SILENT and alarm.cleared_at is None

    for restart in (serve.kill, serve.stop):
        restart()
        restarted = now()
        serve.start()
        # Each healthy box heard 4 times (2 s at 0.5 s) by the new controller: longer
        # than the 3 missed beats (1.5 s) a box gets after the restart.
        assert wait_until(_beats_since(engine, restarted, 4), scaled(30)), serve.log_tail()
        rows = _missed(engine)
        # The same alarm, still open; none raised for the controller's own downtime.
        assert [(a.id, a.cluster_id, a.cleared_at) for a in rows] == [(alarm.id, SILENT, None)], (
            serve.log_tail()
        )

    box.beat()

    def cleared() -> bool:
        # (Silent again after that one beat, the box is alarmed anew later: a new row.)
        return any(a.id == alarm.id and a.cleared_at is not None for a in _missed(engine))

    assert wait_until(cleared, scaled(20)), [(a.cluster_id, a.cleared_at) for a in _missed(engine)]
