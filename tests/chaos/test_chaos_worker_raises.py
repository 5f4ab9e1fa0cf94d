"""Every worker thread of a running controller dies while an emergency is given.

The fault is injected by a test-only wrapper of ``loudspeaker serve``
(bench/faulty_serve.py). The supervisor restarts each worker and raises a
``worker_restarted`` alarm; the emergency ends on air on every target; every worker
works afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select

from bench.faulty_serve import ENV_FAULT_DIR, WORKERS, workers_killed
from firmware_bridge.protocol import Priority
from loudspeaker.alarms import CONTROLLER, AlarmKind
from loudspeaker.auth import Actor, Role
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.config import Settings
from loudspeaker.db import make_engine
from loudspeaker.emergency import EmergencyRequest
from loudspeaker.models import AlarmRecord, Broadcast, now
from loudspeaker.services import clusters as clusters_service
from loudspeaker.services import emergencies
from loudspeaker.services.context import ServiceContext
from tests.chaos.chaos_support import ServeProcess, count_in
from tests.chaos.workers_alive import assert_workers_work
from tests.conftest import load_site
from tests.helpers import running_fleet, scaled, wait_until

pytestmark = pytest.mark.integration

OFFICER = Actor("oanh", Role.OFFICER.value)


class FaultyServe(ServeProcess):
    """``loudspeaker serve`` whose worker threads can be killed (tests only)."""

    MODULE = "bench.faulty_serve"


def test_workers_that_die_are_restarted_and_an_emergency_still_plays_everywhere(
    tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_site(sqlite_url)
    engine = make_engine(sqlite_url)
    data = tmp_path / "data"
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    monkeypatch.setenv(ENV_FAULT_DIR, str(fault_dir))
    serve = FaultyServe(data, sqlite_url, mosquitto.endpoint.url)
    ctx = ServiceContext(Settings(data_dir=data, db_url=sqlite_url))
    clusters = [f"lb-{i:02d}" for i in range(1, 11)]
    with running_fleet(clusters, mosquitto.endpoint, tmp_path / "fleet", heartbeat_s=1.0):
        card = serve.start()
        try:
            with workers_killed(fault_dir, card.poke, WORKERS, scaled(20)):
                given = emergencies.trigger(
                    ctx, OFFICER, EmergencyRequest(text="Cháy rừng", hamlets=("coc-xa",))
                )
            restarted = now()
            assert given.controller_notified

            def emergency() -> str | None:
                with Session(engine) as s:
                    b = s.exec(
                        select(Broadcast).where(Broadcast.priority == Priority.EMERGENCY.value)
                    ).first()
                    return b.id if b is not None else None

            bid = emergency()
            assert bid is not None
            on_air = ["playing", "played"]
            assert wait_until(lambda: count_in(engine, bid, on_air) == 2, 20), serve.log_tail()

            def alarms() -> set[str]:
                with Session(engine) as s:
                    rows = s.exec(
                        select(AlarmRecord).where(
                            AlarmRecord.cluster_id == CONTROLLER,
                            AlarmRecord.kind == AlarmKind.WORKER_RESTARTED.value,
                        )
                    ).all()
                    return {a.message.split(" ", 1)[0] for a in rows}

            assert wait_until(lambda: alarms() == set(WORKERS), 20), alarms()
            # What `loudspeaker alarms` shows.
            kinds = [a["kind"] for a in clusters_service.alarms(ctx, OFFICER, cluster=CONTROLLER)]
            assert kinds == [AlarmKind.WORKER_RESTARTED.value] * len(WORKERS), kinds
            assert_workers_work(engine, card, data, tmp_path, restarted)
        finally:
            serve.stop()
            engine.dispose()
