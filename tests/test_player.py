"""Playout rules: priority, timed start, pre-emption by emergencies, expiry, stop."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_bridge.player import Outcome, Player
from firmware_bridge.protocol import MediaRef, PlayCommand, Priority, new_id, utcnow
from firmware_bridge.sinks import SimulatedSink
from tests.helpers import wait_until


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Outcome, str | None]] = []
        self.lock = threading.Lock()

    def __call__(self, cmd: PlayCommand, outcome: Outcome, reason: str | None) -> None:
        with self.lock:
            self.events.append((cmd.title, outcome, reason))

    def of(self, title: str) -> list[Outcome]:
        with self.lock:
            return [o for t, o, _ in self.events if t == title]

    def order(self, outcome: Outcome) -> list[str]:
        with self.lock:
            return [t for t, o, _ in self.events if o is outcome]


def cmd(
    title: str, seconds: float, priority: Priority = Priority.NORMAL, **kw: object
) -> PlayCommand:
    t = utcnow()
    fields: dict[str, object] = {
        "id": new_id(),
        "cluster": "lb-01",
        "broadcast": new_id()[:12],
        "issued_at": t,
        "expires_at": t + timedelta(minutes=5),
        "priority": priority,
        "title": title,
        "media": MediaRef(url="http://x/a.mp3", sha256="a" * 64, size=1, duration_s=seconds),
    }
    fields.update(kw)
    return PlayCommand.model_validate(fields)


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    p = tmp_path / "a.mp3"
    p.write_bytes(b"x")
    return p


def make(rec: Recorder) -> tuple[Player, SimulatedSink]:
    sink = SimulatedSink(time_scale=1.0)
    player = Player(sink, rec)
    player.start()
    return player, sink


def test_ready_items_play_by_priority_then_arrival(audio: Path) -> None:
    rec = Recorder()
    player, _ = make(rec)
    try:
        player.submit(cmd("first", 0.3), audio)
        assert wait_until(lambda: Outcome.PLAYING in rec.of("first"), 5)
        # Submitted while "first" plays: priority beats normal, arrival order within a level.
        for c in (cmd("n1", 0.05), cmd("n2", 0.05), cmd("p1", 0.05, Priority.PRIORITY)):
            player.submit(c, audio)
        assert wait_until(lambda: len(rec.order(Outcome.PLAYED)) == 4, 10)
        assert rec.order(Outcome.PLAYED) == ["first", "p1", "n1", "n2"]
    finally:
        player.stop()


def test_emergency_preempts_and_the_interrupted_item_replays(audio: Path) -> None:
    rec = Recorder()
    player, sink = make(rec)
    try:
        player.submit(cmd("bulletin", 5.0), audio)
        assert wait_until(lambda: Outcome.PLAYING in rec.of("bulletin"), 5)
        player.submit(cmd("flood", 0.2, Priority.EMERGENCY), audio)
        player.submit(cmd("fire", 0.2, Priority.EMERGENCY), audio)
        assert wait_until(lambda: Outcome.INTERRUPTED in rec.of("bulletin"), 5)
        assert wait_until(lambda: rec.of("fire") == [Outcome.PLAYING, Outcome.PLAYED], 5)
        # Emergencies never interrupt each other; the bulletin plays again afterwards.
        assert rec.of("flood") == [Outcome.PLAYING, Outcome.PLAYED]
        assert rec.order(Outcome.PLAYED)[:2] == ["flood", "fire"]
        assert wait_until(lambda: Outcome.PLAYING in rec.of("bulletin")[2:], 5)
        reason = next(r for t, o, r in rec.events if o is Outcome.INTERRUPTED)
        assert reason == "interrupted by emergency: flood"
        assert [p.result for p in sink.plays[:3]] == ["stopped", "completed", "completed"]
    finally:
        player.stop()


def test_timed_items_wait_for_their_time(audio: Path) -> None:
    rec = Recorder()
    player, sink = make(rec)
    try:
        later = utcnow() + timedelta(seconds=0.6)
        player.submit(cmd("later", 0.05, start_at=later), audio)
        player.submit(cmd("now", 0.05), audio)
        assert wait_until(lambda: rec.order(Outcome.PLAYED) == ["now", "later"], 5)
        assert sink.plays[1].started_at >= later.isoformat()
    finally:
        player.stop()


def test_expired_items_are_never_started(audio: Path) -> None:
    rec = Recorder()
    player, sink = make(rec)
    try:
        t = utcnow()
        player.submit(cmd("blocker", 0.5), audio)
        player.submit(cmd("stale", 0.1, expires_at=t + timedelta(seconds=0.2)), audio)
        assert wait_until(lambda: Outcome.FAILED in rec.of("stale"), 5)
        assert "expired before playback" in (rec.events[-1][2] or "")
        assert [p.file for p in sink.plays] == ["a.mp3"]
    finally:
        player.stop()


def test_stop_and_withdraw(audio: Path) -> None:
    rec = Recorder()
    player, _ = make(rec)
    try:
        playing = cmd("playing", 5.0)
        waiting = cmd("waiting", 0.1, broadcast=playing.broadcast)
        other = cmd("other", 0.1, start_at=utcnow() + timedelta(seconds=30))
        for c in (playing, waiting, other):
            player.submit(c, audio)
        assert wait_until(lambda: Outcome.PLAYING in rec.of("playing"), 5)
        player.stop_broadcast(playing.broadcast)
        assert wait_until(lambda: Outcome.FAILED in rec.of("playing"), 5)
        assert rec.of("waiting") == [Outcome.FAILED]
        assert player.withdraw(other.id) is True
        assert player.pending() == []
    finally:
        player.stop()
