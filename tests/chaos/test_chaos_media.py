"""1,100 idle or trickling connections on the media port while an emergency goes out (issue 14).

A real ``loudspeaker serve`` under the usual 1,024-descriptor limit (``prlimit``), a real
fleet (``loudspeaker simulate``), the emergency given through the CLI. During the flood
the emergency reaches every cluster, the controller never runs out of descriptors, and
afterwards a broadcast still plays everywhere.
"""

from __future__ import annotations

import contextlib
import resource
import select
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import Session, func
from sqlmodel import select as sql_select

from loudspeaker.db import make_engine
from loudspeaker.models import Broadcast, ClusterStatus, DeliveryState
from tests.chaos.chaos_support import (
    CLUSTERS,
    ROOT,
    ServeProcess,
    assert_correct,
    finished,
    queue_broadcast,
    states,
)
from tests.conftest import load_site
from tests.helpers import stop_process, wait_until

pytestmark = pytest.mark.integration

CONNECTIONS = 1100


@dataclass
class FloodStats:
    """What the flood did (the server's answers to it)."""

    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0


@contextlib.contextmanager
def media_flood(
    host: str, port: int, *, connections: int = CONNECTIONS, trickle: bool = False
) -> Iterator[FloodStats]:
    """Hold ``connections`` half-sent requests open on the media port until the block ends.

    ``trickle``: also send one more byte of the request head on every connection once a
    second (a slow-loris client). Every second, the connections the server closed are
    opened again, so the pressure never lets up. Needs ``connections`` + a few descriptors
    of its own. (The fault injector for bench/chaos.py: it imports nothing from tests.)
    """
    stats = FloodStats()
    stop = threading.Event()
    socks: list[socket.socket] = []

    def open_one() -> socket.socket | None:
        try:
            s = socket.create_connection((host, port), 2)
            s.sendall(b"GET /media/")
        except OSError:
            stats.refused += 1
            return None
        stats.opened += 1
        return s

    poller = select.poll()  # select() stops at descriptor 1024

    def drop(s: socket.socket) -> None:
        poller.unregister(s)
        socks.remove(s)
        s.close()
        stats.closed_by_server += 1

    def fill() -> None:
        while not stop.is_set() and len(socks) < connections:
            if (s := open_one()) is not None:
                socks.append(s)
                poller.register(s, select.POLLIN)

    def run() -> None:
        fill()
        by_fd = {s.fileno(): s for s in socks}
        while not stop.wait(1.0):
            # An idle client's socket is readable only when the server closed it.
            for fd, _ev in poller.poll(0):
                if (s := by_fd.pop(fd, None)) is not None:
                    drop(s)
            fill()
            if trickle:
                for s in list(socks):
                    try:
                        s.send(b"0")
                    except OSError:
                        drop(s)
            by_fd = {s.fileno(): s for s in socks}

    t = threading.Thread(target=run, name="media-flood", daemon=True)
    t.start()
    try:
        yield stats
    finally:
        stop.set()
        t.join(30)
        for s in socks:
            s.close()


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

        def online() -> int:
            with Session(engine) as s:
                q = sql_select(func.count()).select_from(ClusterStatus).where(ClusterStatus.online)
                return int(s.exec(q).one())

        assert wait_until(lambda: online() == len(CLUSTERS), 30), (
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
