"""1,100 idle or trickling connections on the media port while an emergency goes out (issue 14).

A real ``loudspeaker serve`` under the usual 1,024-descriptor limit (``prlimit``), a real
fleet (``loudspeaker simulate``), the emergency given through the CLI. During the flood
the emergency reaches every cluster, the controller never runs out of descriptors, and
afterwards a broadcast still plays everywhere.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session
from sqlmodel import select as sql_select

from bench.faults import MEDIA_CONNECTIONS, media_flood
from loudspeaker.db import make_engine
from loudspeaker.models import Broadcast, DeliveryState
from tests.chaos.chaos_support import (
    CLUSTERS,
    ROOT,
    ServeProcess,
    assert_correct,
    finished,
    online_count,
    queue_broadcast,
    states,
)
from tests.conftest import load_site
from tests.helpers import stop_process, wait_until

pytestmark = pytest.mark.integration

CONNECTIONS = MEDIA_CONNECTIONS


@contextlib.contextmanager
def open_files(n: int) -> Iterator[None]:
    """This process may hold ``n`` descriptors for the block (its soft limit, restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip(f"the hard open-file limit {hard} is below the {n} this test needs")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _cli(data: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--data-dir", str(data), "--db-url", db_url, *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _flood_during_an_emergency(tmp_path: Path, *, trickle: bool) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux) to start serve under a 1,024 limit")
    data = tmp_path / "data"
    db_url = f"sqlite:///{data / 'loudspeaker.db'}"
    load_site(db_url)
    engine = make_engine(db_url)
    serve = ServeProcess(data, db_url, None)
    serve.launcher = ["prlimit", "--nofile=1024:1024", "--"]
    sim: subprocess.Popen[bytes] | None = None
    try:
        card = serve.start()
        sim_log = (tmp_path / "simulate.log").open("wb")
        sim = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "--data-dir",
                str(data),
                "simulate",
                "--time-scale",
                "0.05",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sim_log,
        )
        sim_log.close()

        assert wait_until(lambda: online_count(engine) == len(CLUSTERS), 30), (
            tmp_path / "simulate.log"
        ).read_text()
        with (
            open_files(CONNECTIONS + 256),
            media_flood("127.0.0.1", serve.http_port, trickle=trickle) as flood,
        ):
            assert wait_until(lambda: flood.opened >= CONNECTIONS, 20), flood
            given = _cli(data, db_url, "emergency", "lũ quét", "--all", "--siren", "--wait", "0")
            assert given.returncode == 0, given.stdout + given.stderr
            with Session(engine) as s:
                emergency = s.exec(
                    sql_select(Broadcast).where(Broadcast.priority == "emergency")
                ).one()

            def on_air() -> bool:
                rows = states(engine, emergency.id).values()
                return len(rows) == len(CLUSTERS) and all(
                    d.state in (DeliveryState.PLAYING.value, DeliveryState.PLAYED.value)
                    for d in rows
                )

            assert wait_until(on_air, 30), {
                c: (d.state, d.reason) for c, d in states(engine, emergency.id).items()
            }
            # The flood was still on (and held the server full) while it went out.
            assert flood.opened >= CONNECTIONS
            assert flood.closed_by_server > 0, flood

        # Afterwards: still poked, still serving, a broadcast plays everywhere.
        assert wait_until(card.poke, 10)
        bid, sha = queue_broadcast(
            engine, data / "media", tmp_path, seconds=1.0, freq=590 if trickle else 580
        )
        card.poke()
        assert wait_until(lambda: finished(engine, bid), 30), states(engine, bid)
        assert_correct(engine, bid, sha, data / "simulated")
        log = (tmp_path / f"serve-{serve.starts}.log").read_text(errors="replace")
        assert "Too many open files" not in log and "EMFILE" not in log
        # Under 1,024 descriptors the cap was lowered to fit, and serve said so.
        assert "cannot hold 1024 media connections" in log
        assert "media server full" in log
    finally:
        stop_process(sim)
        serve.stop()
        engine.dispose()


def test_idle_media_connections_do_not_delay_an_emergency(tmp_path: Path) -> None:
    _flood_during_an_emergency(tmp_path, trickle=False)


def test_trickling_media_connections_do_not_delay_an_emergency(tmp_path: Path) -> None:
    _flood_during_an_emergency(tmp_path, trickle=True)
