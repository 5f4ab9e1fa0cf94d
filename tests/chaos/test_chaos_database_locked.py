"""The database held locked by another process for 10 s while an emergency is given.

What a PA professional expects: the emergency reaches the boxes. The CLI retries within
its budget, then says in one line that it is NOT recorded or sent yet and where it is
kept; the running controller records it from the spool the moment the lock clears and
sends it through its emergency lane. Every worker works afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from bench.faults import hold_database
from firmware_bridge.protocol import Priority
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.db import make_engine
from loudspeaker.models import Broadcast, now
from tests.chaos.chaos_support import ROOT, ServeProcess, count_in
from tests.chaos.workers_alive import assert_workers_work
from tests.conftest import load_site
from tests.helpers import running_fleet, scaled, wait_until

pytestmark = pytest.mark.integration


def test_an_emergency_given_while_the_database_is_locked_reaches_every_target(
    tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker
) -> None:
    load_site(sqlite_url)
    engine = make_engine(sqlite_url)
    data = tmp_path / "data"
    serve = ServeProcess(data, sqlite_url, mosquitto.endpoint.url)
    clusters = [f"lb-{i:02d}" for i in range(1, 11)]
    with running_fleet(clusters, mosquitto.endpoint, tmp_path / "fleet", heartbeat_s=1.0):
        card = serve.start()
        try:
            with hold_database(data / "loudspeaker.db", 10.0):
                cli = subprocess.run(
                    [sys.executable, "-m", "cli", "--data-dir", str(data),
                     "--db-url", sqlite_url, "emergency", "Vỡ đê, sơ tán ngay",
                     "--hamlet", "coc-xa"],
                    check=False, cwd=ROOT, capture_output=True, text=True, timeout=scaled(30),
                )  # fmt: skip
            released = now()
            out = cli.stdout + cli.stderr
            assert cli.returncode != 0, out
            assert "Traceback" not in out and "NOT recorded and NOT sent" in out, out
            assert "spool" in out and "as soon as the database is free" in out, out

            def recorded() -> str | None:
                with Session(engine) as s:
                    b = s.exec(
                        select(Broadcast).where(Broadcast.priority == Priority.EMERGENCY.value)
                    ).first()
                    return b.id if b is not None else None

            assert wait_until(lambda: recorded() is not None, 20), serve.log_tail()
            bid = recorded()
            assert bid is not None
            on_air = ["playing", "played"]
            assert wait_until(lambda: count_in(engine, bid, on_air) == 2, 20), serve.log_tail()
            assert not list((data / "spool" / "emergencies").glob("*.json"))
            assert_workers_work(engine, card, data, tmp_path, released)
        finally:
            serve.stop()
            engine.dispose()
    log = serve.log_tail()
    assert "Traceback" not in log, log
