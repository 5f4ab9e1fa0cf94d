"""Schedules end to end: the CLI writes, the controller stages, real agents play.

Real mosquitto, real agents (simulated amplifiers), SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from cli import app
from firmware_bridge.protocol import Ack, AckState, Kind, encode, new_id, topic, utcnow
from firmware_bridge.simulator import Fleet
from loudspeaker.broadcasts import register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.db import make_engine
from loudspeaker.media import MediaStore
from loudspeaker.models import Announcement, ClusterClock, Delivery, ScheduleSlot
from loudspeaker.runtime import ControllerCard
from tests.conftest import load_site
from tests.helpers import make_tone_mp3, scaled, stop_process, wait_until

pytestmark = pytest.mark.integration

VN = ZoneInfo("Asia/Ho_Chi_Minh")
# The database is not the subject of these: the first test covers PostgreSQL.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def make_announcement(data_dir: Path, db: Session, ann_id: str, seconds: float, freq: int) -> str:
    """A real MP3 tone stored as an announcement in ``data_dir`` (no TTS involved)."""
    af = make_tone_mp3(data_dir / f"{ann_id}.mp3", seconds, freq)
    media = register_media(db, MediaStore(data_dir / "media"), af)
    db.add(
        Announcement(
            id=ann_id,
            title=f"Bản tin {ann_id}",
            kind="tone",
            engine="tone",
            media_sha256=media.sha256,
            duration_s=seconds,
            size=af.size,
            created_at=utcnow(),
        )
    )
    db.commit()
    return media.sha256


def cli(ctl: Controller, *args: str) -> dict[str, object]:
    base = ["--data-dir", str(ctl.settings.data_dir), "--db-url", ctl.settings.database_url]
    res = CliRunner().invoke(app, [*base, *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def local(t: datetime) -> str:
    return t.astimezone(VN).strftime("%Y-%m-%d %H:%M:%S")


def deliveries(ctl: Controller, schedule_id: int) -> list[Delivery]:
    assert ctl.dispatcher is not None
    with Session(ctl.dispatcher.engine) as s:
        ids = s.exec(
            select(ScheduleSlot.broadcast_id).where(ScheduleSlot.schedule_id == schedule_id)
        ).all()
        return list(s.exec(select(Delivery).where(col(Delivery.broadcast_id).in_(ids))).all())


def states(rows: Sequence[Delivery]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in rows:
        out[d.state] = out.get(d.state, 0) + 1
    return out


def test_programme_is_staged_ahead_and_plays_at_its_time_in_order(
    controller: Controller, fleet: Fleet, tmp_path: Path
) -> None:
    assert controller.dispatcher is not None
    with Session(controller.dispatcher.engine) as s:
        sha_a = make_announcement(controller.settings.data_dir, s, "tin-xa", 1.0, 440)
        sha_b = make_announcement(controller.settings.data_dir, s, "tin-lu", 0.6, 660)
    at = utcnow() + timedelta(seconds=6)
    added = cli(controller, "schedule", "add", "tin-xa", "tin-lu:priority", "--to", "all",
                "--at", local(at))  # fmt: skip
    sid = int(added["id"])  # type: ignore[call-overload]
    # Staged on all ten boxes (with its audio) before the air time.
    assert wait_until(lambda: states(deliveries(controller, sid)) == {"staged": 20}, 20)
    assert utcnow() < at, "staging took longer than the lead time; nothing was tested"
    assert all(agent.player.pending() for agent in fleet.agents.values())
    assert wait_until(lambda: states(deliveries(controller, sid)) == {"played": 20}, 30)
    for d in deliveries(controller, sid):
        assert d.start_at is not None and d.playing_at is not None
        assert d.playing_at >= d.start_at  # never before its time
    for cluster, agent in fleet.agents.items():
        files = [p.file for p in agent.sink.plays]  # type: ignore[attr-defined]
        # The priority item first, then the normal one; each once.
        assert files == [f"{sha_b}.audio", f"{sha_a}.audio"], cluster
    listing = cli(controller, "schedule", "list", "--day", at.astimezone(VN).date().isoformat())
    rows = [r for r in listing["timeline"] if r["schedule"] == sid]  # type: ignore[union-attr, index]
    assert [(r["announcement"], r["state"]) for r in rows] == [
        ("tin-lu", "played"),
        ("tin-xa", "played"),
    ]


@SQLITE_ONLY
def test_pause_resume_remove_withdraw_staged_items(
    controller: Controller, fleet: Fleet, tmp_path: Path
) -> None:
    assert controller.dispatcher is not None
    with Session(controller.dispatcher.engine) as s:
        make_announcement(controller.settings.data_dir, s, "hop-thon", 0.5, 500)
    at = utcnow() + timedelta(seconds=40)
    sid = int(cli(controller, "schedule", "add", "hop-thon", "--to", "hamlet:coc-xa",  # type: ignore[call-overload]
                  "--at", local(at))["id"])  # fmt: skip
    boxes = [fleet.agents["lb-09"], fleet.agents["lb-10"]]
    assert wait_until(lambda: all(len(a.player.pending()) == 1 for a in boxes), 15)
    cli(controller, "schedule", "pause", str(sid))
    # The CLI pokes the running controller: the boxes drop the item, and say so.
    assert wait_until(lambda: all(not a.player.pending() for a in boxes), 10)
    assert wait_until(lambda: states(deliveries(controller, sid)) == {"failed": 2}, 10)
    assert {d.reason for d in deliveries(controller, sid)} == {"withdrawn: schedule changed"}
    cli(controller, "schedule", "resume", str(sid))
    assert wait_until(lambda: all(len(a.player.pending()) == 1 for a in boxes), 15)
    cli(controller, "schedule", "remove", str(sid))
    assert wait_until(lambda: all(not a.player.pending() for a in boxes), 10)
    with Session(controller.dispatcher.engine) as s:
        slot = s.exec(select(ScheduleSlot).where(ScheduleSlot.schedule_id == sid)).one()
        assert (slot.state, slot.reason) == ("withdrawn", "schedule removed")
    assert all(not a.sink.plays for a in boxes)  # type: ignore[attr-defined]


@SQLITE_ONLY
def test_staged_item_plays_while_the_broker_is_down_and_is_reported_after(
    controller: Controller, fleet: Fleet, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    assert controller.dispatcher is not None
    with Session(controller.dispatcher.engine) as s:
        make_announcement(controller.settings.data_dir, s, "lich-tiem", 0.5, 550)
    at = utcnow() + timedelta(seconds=6)
    sid = int(cli(controller, "schedule", "add", "lich-tiem", "--to", "cluster:lb-01,cluster:lb-02",  # type: ignore[call-overload]
                  "--at", local(at))["id"])  # fmt: skip
    assert wait_until(lambda: states(deliveries(controller, sid)) == {"staged": 2}, 15)
    mosquitto.stop()  # 4G down, controller unreachable at air time
    boxes = [fleet.agents["lb-01"], fleet.agents["lb-02"]]
    assert wait_until(lambda: all(a.sink.plays for a in boxes), 20)  # type: ignore[attr-defined]
    assert states(deliveries(controller, sid)) == {"staged": 2}  # nobody could tell yet
    mosquitto.start()
    assert wait_until(lambda: states(deliveries(controller, sid)) == {"played": 2}, 30)


@SQLITE_ONLY
def test_cluster_clock_offset_is_estimated_and_shown(
    controller: Controller, mosquitto: EmbeddedBroker
) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="skewed-box")
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    try:
        for _ in range(3):
            ack = Ack(
                cluster="lb-07",
                command=new_id(),
                state=AckState.RECEIVED,
                ts=utcnow() + timedelta(seconds=30),  # a box whose clock is 30 s fast
            )
            info = client.publish(topic("luc-binh", "lb-07", Kind.ACK), encode(ack), qos=1)
            info.wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert controller.schedules is not None
    assert wait_until(
        lambda: bool(controller.schedules and controller.schedules.clocks.warnings()), 5
    )
    controller.schedules.poke()
    assert controller.dispatcher is not None
    engine = controller.dispatcher.engine

    def stored() -> float | None:
        with Session(engine) as s:
            row = s.get(ClusterClock, "lb-07")
            return row.offset_s if row else None

    assert wait_until(lambda: stored() is not None, 5)
    assert stored() == pytest.approx(30, abs=1.5)
    listing = cli(controller, "schedule", "list")
    assert [w["cluster"] for w in listing["clock_warnings"]] == ["lb-07"]  # type: ignore[index, union-attr]


def _serve(
    data_dir: Path, db: str, broker: EmbeddedBroker, log: Path, grace_s: float
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TZ": "UTC",  # the host clock in UTC; the site plays at Viet Nam times regardless
        "LOUDSPEAKER_SCHEDULE_HORIZON": "0",  # stage each item only just before its time
        "LOUDSPEAKER_SCHEDULE_GRACE": f"{grace_s:.0f}",
    }
    cmd = [sys.executable, "-m", "cli", "--data-dir", str(data_dir), "--db-url", db,
           "serve", "--broker", broker.endpoint.url]  # fmt: skip
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def up() -> bool:
        card = ControllerCard.read(data_dir / "run")
        return card is not None and card.pid == proc.pid

    assert wait_until(up, 30), log.read_text()
    return proc


@SQLITE_ONLY
def test_sigkill_loses_nothing_plays_nothing_twice_and_records_missed(
    tmp_path: Path, db_url: str, mosquitto: EmbeddedBroker, fleet: Fleet
) -> None:
    load_site(db_url)
    data_dir = tmp_path / "data"
    engine = make_engine(db_url)
    with Session(engine) as s:
        sha_a = make_announcement(data_dir, s, "a-staged", 0.5, 440)
        make_announcement(data_dir, s, "b-missed", 0.5, 500)
        sha_c = make_announcement(data_dir, s, "c-late", 0.5, 600)
    runner = CliRunner()
    base = ["--data-dir", str(data_dir), "--db-url", db_url]
    ids = {}
    # Longer than the restarted controller takes to start, however loaded the machine:
    # c's time passes just before the restart and must still be inside the grace.
    grace = scaled(10.0)

    def add(ann: str, cluster: str, when: datetime) -> None:
        args = ["schedule", "add", ann, "--to", f"cluster:{cluster}", "--at", local(when)]
        res = runner.invoke(app, [*base, *args, "--json"])
        assert res.exit_code == 0, res.output
        ids[ann] = json.loads(res.stdout)["id"]

    def slot(ann: str) -> ScheduleSlot | None:
        with Session(engine) as s:
            return s.exec(select(ScheduleSlot).where(ScheduleSlot.schedule_id == ids[ann])).first()

    def delivery_states(ann: str) -> list[str]:
        row = slot(ann)
        if row is None:
            return []
        with Session(engine) as s:
            q = select(Delivery.state).where(Delivery.broadcast_id == row.broadcast_id)
            return list(s.exec(q).all())

    log = tmp_path / "serve.log"
    first = _serve(data_dir, db_url, mosquitto, log, grace)
    try:
        # Inside the staging lead: the running controller stages it when told of it.
        add("a-staged", "lb-01", utcnow() + timedelta(seconds=4))
        assert wait_until(
            lambda: delivery_states("a-staged") in (["staged"], ["playing"], ["played"]), 15
        ), log.read_text()
        first.send_signal(signal.SIGKILL)  # the controller dies; item a is on its box
        first.wait(10)
        # While it is down: b's time and its whole grace pass, c's time just passes.
        b_at = utcnow() + timedelta(seconds=2)
        c_at = b_at + timedelta(seconds=grace + 1)
        add("b-missed", "lb-02", b_at)
        add("c-late", "lb-03", c_at)
        assert wait_until(lambda: utcnow() > c_at, grace + 10)
        second = _serve(data_dir, db_url, mosquitto, log, grace)
        try:
            assert wait_until(lambda: delivery_states("c-late") == ["played"], 20), log.read_text()
            assert wait_until(lambda: delivery_states("a-staged") == ["played"], 20)
            assert delivery_states("b-missed") == ["missed"]
        finally:
            stop_process(second)
    finally:
        stop_process(first)
    # Played once each, by the boxes' own clocks; b never reached its box.
    assert [p.file for p in fleet.agents["lb-01"].sink.plays] == [f"{sha_a}.audio"]  # type: ignore[attr-defined]
    assert fleet.agents["lb-02"].sink.plays == []  # type: ignore[attr-defined]
    assert [p.file for p in fleet.agents["lb-03"].sink.plays] == [f"{sha_c}.audio"]  # type: ignore[attr-defined]
    with Session(engine) as s:
        slots = s.exec(select(ScheduleSlot)).all()
        assert len(slots) == 3  # one row per item: nothing staged twice
    c_slot, b_slot = slot("c-late"), slot("b-missed")
    assert c_slot is not None and "late" in c_slot.reason
    assert b_slot is not None and b_slot.state == "missed"
    res = runner.invoke(app, [*base, "broadcast", "status", str(b_slot.broadcast_id), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["counts"] == {"missed": 1}
    day = b_at.astimezone(VN).date().isoformat()
    res = runner.invoke(app, [*base, "schedule", "list", "--day", day, "--json"])
    timeline = {r["announcement"]: r["state"] for r in json.loads(res.stdout)["timeline"]}
    assert timeline == {"a-staged": "played", "b-missed": "missed", "c-late": "played"}
    engine.dispose()
