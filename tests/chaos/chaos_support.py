"""What the chaos tests share: real processes to kill, and the one definition of "correct".

"Correct" (issue #10): every cluster played the item exactly once, or is recorded as
failed/unreachable with a reason, and never played it twice; the database is intact.
Plays are counted from each simulated cluster's ``plays.jsonl`` (written by
:class:`~firmware_bridge.sinks.SimulatedSink` when a playback completes), not from what
the controller believes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, text
from sqlmodel import Session, col, func, select

from loudspeaker.broadcasts import create_broadcast, register_media
from loudspeaker.broker import free_port
from loudspeaker.media import MediaStore
from loudspeaker.models import (
    Broadcast,
    ClusterStatus,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    now,
)
from loudspeaker.runtime import ControllerCard
from loudspeaker.targets import resolve_targets
from tests.helpers import make_tone_mp3, wait_until

ROOT = Path(__file__).resolve().parents[2]
SITE = "luc-binh"
CLUSTERS = [f"lb-{i:02d}" for i in range(1, 11)]


class ServeProcess:
    """``loudspeaker serve`` as a child process, to be killed with SIGKILL and restarted."""

    # The module run as ``python -m``: a test may put a fault-injecting wrapper here.
    MODULE = "cli"

    def __init__(self, data_dir: Path, db_url: str, broker_url: str | None, *extra: str) -> None:
        self.data_dir = data_dir
        self.db_url = db_url
        self.broker_url = broker_url
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        # Fixed, as in production: commands already sent carry the media URL, and a
        # restarted controller must still answer it.
        self.http_port = free_port()
        # Put before the command, e.g. ["prlimit", "--nofile=1024:1024", "--"]: the process
        # keeps its pid through the exec, so the address card still names it.
        self.launcher: list[str] = []

    @property
    def run_dir(self) -> Path:
        """Where the controller writes its address card."""
        return self.data_dir / "run"

    def start(self) -> ControllerCard:
        """Spawn the controller and wait for its address card."""
        args = [
            *self.launcher,
            sys.executable,
            "-m",
            self.MODULE,
            "--data-dir",
            str(self.data_dir),
            "--db-url",
            self.db_url,
            "serve",
            "--ack-timeout",
            "5",
            "--http-port",
            str(self.http_port),
            *self.extra,
        ]
        if self.broker_url is not None:
            args += ["--broker", self.broker_url]
        self.starts += 1
        log = (self.data_dir.parent / f"serve-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        proc = self.proc

        def card_up() -> bool:
            card = ControllerCard.read(self.run_dir)
            return card is not None and card.pid == proc.pid

        assert wait_until(card_up, 30), f"controller did not start: {self.log_tail()}"
        card = ControllerCard.read(self.run_dir)
        assert card is not None
        return card

    def kill(self) -> None:
        """SIGKILL: no clean-up, no goodbye, the address card left behind."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """Terminate politely (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_tail(self) -> str:
        """The end of the latest controller log."""
        path = self.data_dir.parent / f"serve-{self.starts}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class AgentProcess:
    """One cluster's agent as a child process (``loudspeaker-agent --sink simulated``)."""

    def __init__(
        self, cluster: str, broker_url: str, state_dir: Path, *, time_scale: float, keepalive: int
    ) -> None:
        self.cluster = cluster
        self.broker_url = broker_url
        self.state_dir = state_dir
        self.time_scale = time_scale
        self.keepalive = keepalive
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the agent on its (persistent) state directory."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = (self.state_dir.parent / f"{self.cluster}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "firmware_bridge.cli",
                "--site",
                SITE,
                "--cluster",
                self.cluster,
                "--broker",
                self.broker_url,
                "--state-dir",
                str(self.state_dir),
                "--sink",
                "simulated",
                "--time-scale",
                str(self.time_scale),
                "--keepalive",
                str(self.keepalive),
                "--insecure-unsigned",
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` (SIGKILL, SIGSTOP, SIGCONT)."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)
        if sig is signal.SIGKILL:
            self.proc.wait(10)

    def stop(self) -> None:
        """Teardown: wake it if stopped, then terminate."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def queue_broadcast(
    engine: Engine,
    media_dir: Path,
    work: Path,
    *,
    seconds: float,
    freq: int,
    target: str = "all",
    air_in_s: float | None = None,
) -> tuple[str, str]:
    """Queue a broadcast of a fresh tone; return (broadcast id, media sha256).

    Each test uses its own ``freq`` so the tone's sha256 names its plays unambiguously.
    ``air_in_s``: a scheduled air time that many seconds from now.
    """
    af = make_tone_mp3(work / f"tone-{freq}.mp3", seconds, freq=freq)
    with Session(engine) as s:
        media = register_media(s, MediaStore(media_dir), af)
        clusters = resolve_targets(s, target)
        if air_in_s is None:
            b = create_broadcast(
                s, media=media, title=f"chaos {freq}", target=target, clusters=clusters
            )
            return b.id, media.sha256
        # What the schedule runner writes when it stages a slot (loudspeaker/
        # schedule_runner.py), with the same builder: the air time on the broadcast,
        # start_at and expiry on each delivery, all in one transaction. (Written in two, a
        # running dispatcher could send the deliveries before they had a start_at, and the
        # clusters would play them at once.) The runner's own SIGKILL test is
        # tests/schedules/test_sched_live.py.
        t = now()
        air = t + timedelta(seconds=air_in_s)
        b = create_broadcast(
            s,
            media=media,
            title=f"chaos {freq}",
            target=target,
            clusters=clusters,
            created_at=t,
            scheduled_for=air,
            start_at=air,
            expires_at=air + timedelta(minutes=15),
        )
        return b.id, media.sha256


def states(engine: Engine, broadcast_id: str) -> dict[str, Delivery]:
    """The broadcast's deliveries by cluster."""
    with Session(engine) as s:
        rows = s.exec(select(Delivery).where(Delivery.broadcast_id == broadcast_id)).all()
        return {d.cluster_id: d for d in rows}


def online_count(engine: Engine) -> int:
    """How many clusters the controller holds online."""
    with Session(engine) as s:
        q = select(func.count()).select_from(ClusterStatus).where(ClusterStatus.online)
        return int(s.exec(q).one())


def count_in(engine: Engine, broadcast_id: str, wanted: Sequence[str]) -> int:
    """How many deliveries of the broadcast are in one of ``wanted`` states."""
    return sum(1 for d in states(engine, broadcast_id).values() if d.state in wanted)


def finished(engine: Engine, broadcast_id: str) -> bool:
    """Every delivery of the broadcast is in a final state."""
    return all(DeliveryState(d.state).final for d in states(engine, broadcast_id).values())


def plays(state_root: Path, cluster: str, sha256: str) -> int:
    """Completed playbacks of ``sha256`` on ``cluster``, from its own plays.jsonl."""
    log = state_root / cluster / "plays.jsonl"
    if not log.exists():
        return 0
    n = 0
    for line in log.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["file"] == f"{sha256}.audio" and rec["result"] == "completed":
            n += 1
    return n


def play_starts(state_root: Path, cluster: str, sha256: str) -> list[datetime]:
    """When each playback of ``sha256`` on ``cluster`` started, by the box's own log."""
    log = state_root / cluster / "plays.jsonl"
    if not log.exists():
        return []
    return [
        datetime.fromisoformat(rec["started_at"])
        for rec in map(json.loads, log.read_text(encoding="utf-8").splitlines())
        if rec["file"] == f"{sha256}.audio"
    ]


@dataclass(frozen=True)
class Verdict:
    """What happened to each cluster: state, reason, completed plays."""

    rows: dict[str, tuple[str, str, int]]

    def state_of(self, cluster: str) -> str:
        """The delivery's final state."""
        return self.rows[cluster][0]


def assert_correct(
    engine: Engine,
    broadcast_id: str,
    sha256: str,
    state_root: Path,
    *,
    must_play: Sequence[str] | None = None,
) -> Verdict:
    """Every delivery final and true to the clusters' own logs; database intact.

    A ``played`` delivery means exactly one completed playback on that cluster; any other
    final state means none, and a reason on record. ``must_play``: clusters that have to
    end ``played`` (default: all of them).
    """
    rows: dict[str, tuple[str, str, int]] = {}
    for cluster, d in states(engine, broadcast_id).items():
        n = plays(state_root, cluster, sha256)
        rows[cluster] = (d.state, d.reason, n)
    verdict = Verdict(rows)
    for cluster, (state, reason, n) in rows.items():
        assert DeliveryState(state).final, f"{cluster} not final: {rows}"
        assert n <= 1, f"{cluster} played {n} times: {rows}"
        if state == DeliveryState.PLAYED.value:
            assert n == 1, f"{cluster} recorded played but played {n} times: {rows}"
        else:
            assert n == 0, f"{cluster} played but is recorded {state}: {rows}"
            assert reason, f"{cluster} is {state} without a reason: {rows}"
    for cluster in rows if must_play is None else must_play:
        assert rows[cluster][0] == "played", f"{cluster} did not play: {rows}"
    assert_database_intact(engine, broadcast_id)
    return verdict


def assert_database_intact(engine: Engine, broadcast_id: str) -> None:
    """Integrity check (SQLite), and every delivery's trail consistent with its state."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
            assert conn.execute(text("PRAGMA foreign_key_check")).first() is None
    with Session(engine) as s:
        b = s.get(Broadcast, broadcast_id)
        assert b is not None
        for d in s.exec(select(Delivery).where(Delivery.broadcast_id == broadcast_id)).all():
            trail = s.exec(
                select(DeliveryEvent.state).where(DeliveryEvent.delivery_id == d.id)
            ).all()
            # The state a delivery ends in was reported or decided, and left a trail entry.
            assert d.state in trail, f"{d.cluster_id}: state {d.state} not in trail {trail}"
            assert getattr(d, f"{d.state}_at") is not None
        dupes = s.exec(
            select(Delivery.command_id).where(col(Delivery.broadcast_id) == broadcast_id)
        ).all()
        assert len(dupes) == len(set(dupes))
