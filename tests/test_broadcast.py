"""A broadcast from the CLI reaches every cluster and every acknowledgement is recorded.

Runs on SQLite and on PostgreSQL, against a real mosquitto and real agents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from cli import app
from firmware_bridge.simulator import Fleet
from loudspeaker.broadcasts import broadcast_status, create_broadcast, register_media
from loudspeaker.controller import Controller
from loudspeaker.media import MediaStore
from loudspeaker.models import ClusterStatus, Delivery, DeliveryEvent
from loudspeaker.targets import resolve_targets
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

ORDER = ["queued", "sent", "received", "staged", "playing", "played"]


def _queue(ctl: Controller, tmp_path: Path, target: str, seconds: float = 1.0) -> str:
    assert ctl.dispatcher is not None
    af = make_tone_mp3(tmp_path / "tone.mp3", seconds)
    with Session(ctl.dispatcher.engine) as s:
        media = register_media(s, MediaStore(ctl.settings.media_dir), af)
        b = create_broadcast(
            s, media=media, title="thử", target=target, clusters=resolve_targets(s, target)
        )
        return b.id


def test_broadcast_to_all_records_every_step(
    controller: Controller, fleet: Fleet, tmp_path: Path
) -> None:
    assert controller.dispatcher is not None
    engine = controller.dispatcher.engine
    assert wait_until(lambda: _online(controller) == 10, 10)
    bid = _queue(controller, tmp_path, "all")
    controller.dispatcher.poke()

    def done() -> bool:
        with Session(engine) as s:
            return broadcast_status(s, bid).finished

    assert wait_until(done, 30)
    with Session(engine) as s:
        view = broadcast_status(s, bid)
        assert view.counts == {"played": 10}
        for d in view.deliveries:
            times = [d.times[step] for step in ORDER]
            assert all(times), d
            assert times == sorted(times), f"{d.cluster}: steps out of order {times}"
        events = s.exec(select(DeliveryEvent)).all()
        assert {e.state for e in events} >= {"sent", "received", "staged", "playing", "played"}
    for agent in fleet.agents.values():
        assert len(agent.sink.plays) == 1  # type: ignore[attr-defined]


def test_hamlet_target_reaches_only_that_hamlet(
    controller: Controller, fleet: Fleet, tmp_path: Path
) -> None:
    assert controller.dispatcher is not None
    bid = _queue(controller, tmp_path, "hamlet:Thôn Cốc Xả", 0.5)
    controller.dispatcher.poke()
    engine = controller.dispatcher.engine

    def done() -> bool:
        with Session(engine) as s:
            return broadcast_status(s, bid).finished

    assert wait_until(done, 30)
    with Session(engine) as s:
        clusters = {d.cluster for d in broadcast_status(s, bid).deliveries}
    assert clusters == {"lb-09", "lb-10"}
    played = {c for c, a in fleet.agents.items() if a.sink.plays}  # type: ignore[attr-defined]
    assert played == {"lb-09", "lb-10"}


def _online(ctl: Controller) -> int:
    assert ctl.dispatcher is not None
    with Session(ctl.dispatcher.engine) as s:
        return len(s.exec(select(ClusterStatus).where(col(ClusterStatus.online))).all())


def test_cli_broadcast_wait_and_status_json(
    controller: Controller, fleet: Fleet, tmp_path: Path
) -> None:
    """The CLI renders text offline, queues, pokes the running controller and waits."""
    runner = CliRunner()
    base = [
        "--data-dir",
        str(controller.settings.data_dir),
        "--db-url",
        controller.settings.database_url,
    ]
    res = runner.invoke(
        app,
        [
            *base,
            "broadcast",
            "Kiểm tra hệ thống loa.",
            "--to",
            "cluster:lb-03,cluster:lb-04",
            "--engine",
            "offline",
            "--wait",
            "--json",
            "--timeout",
            "60",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["finished"] is True
    assert data["counts"] == {"played": 2}
    assert data["media"]["engine"] == "espeak-ng"
    res = runner.invoke(app, [*base, "broadcast", "status", data["id"], "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert [c["cluster"] for c in again["clusters"]] == ["lb-03", "lb-04"]
    assert all(c["times"]["played"] for c in again["clusters"])


def test_cli_refuses_bad_input_clearly(controller: Controller, tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "--data-dir",
        str(controller.settings.data_dir),
        "--db-url",
        controller.settings.database_url,
    ]
    cases = [
        (["broadcast", "xin chào", "--to", "hamlet:Atlantis"], "no hamlet 'Atlantis'"),
        (["broadcast", "xin chào", "--to", "cluster:lb-99"], "no cluster 'lb-99'"),
        (["broadcast", "xin chào", "--to", "everywhere"], "is not one of"),
        (["broadcast", "xin chào"], "--to"),
        (["broadcast", "missing.mp3", "--to", "all"], "does not exist"),
        (["broadcast", "status", "nope"], "no broadcast 'nope'"),
    ]
    for args, says in cases:
        res = runner.invoke(app, [*base, *args])
        assert res.exit_code != 0, args
        assert says in res.output, (args, res.output)
    assert controller.dispatcher is not None
    with Session(controller.dispatcher.engine) as s:
        assert s.exec(select(Delivery)).all() == []


def test_poke_makes_a_slow_polling_controller_act_at_once(
    tmp_path: Path, sqlite_url: str, mosquitto: object, fleet: Fleet
) -> None:
    """With polling set to a minute, only the CLI's poke can get the broadcast out in time."""
    from loudspeaker.broker import EmbeddedBroker
    from tests.conftest import load_site, make_settings

    assert isinstance(mosquitto, EmbeddedBroker)
    load_site(sqlite_url)
    ctl = Controller(make_settings(tmp_path, sqlite_url, mosquitto, poll_interval_s=60.0))
    ctl.start()
    try:
        assert ctl.link is not None and ctl.link.connected.wait(10)
        assert ctl.dispatcher is not None
        ctl.dispatcher.poke()  # let the first (startup) wait end
        runner = CliRunner()
        base = ["--data-dir", str(ctl.settings.data_dir), "--db-url", sqlite_url]
        res = runner.invoke(
            app,
            [
                *base,
                "broadcast",
                "Thử",
                "--to",
                "cluster:lb-01",
                "--engine",
                "offline",
                "--wait",
                "--json",
                "--timeout",
                "20",
            ],
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["counts"] == {"played": 1}
    finally:
        ctl.stop()
