"""Emergency broadcasts: pre-emption, volume, retries, offline clusters, direct path, stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, select
from typer.testing import CliRunner

from cli import app
from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.models import DeliveryEvent
from tests.conftest import load_site, make_settings
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

runner = CliRunner()


def _base(ctl: Controller) -> list[str]:
    return ["--data-dir", str(ctl.settings.data_dir), "--db-url", ctl.settings.database_url]


def _json(args: list[str]) -> dict[str, object]:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _status(base: list[str], eid: str) -> dict[str, object]:
    return _json([*base, "emergency", "status", eid, "--json"])


def _plays(fleet: Fleet, cluster: str) -> list[object]:
    return list(fleet.agents[cluster].sink.plays)  # type: ignore[attr-defined]


def test_emergency_preempts_a_bulletin_which_then_replays(
    controller: Controller, fleet: Fleet
) -> None:
    base = _base(controller)
    # A long normal bulletin on Bản Cầu (lb-01, lb-02): 3 repeats of a spoken text.
    res = runner.invoke(
        app,
        [
            *base,
            "broadcast",
            "Thông báo lịch tiêm phòng cho trâu bò.",
            "--to",
            "hamlet:ban-cau",
            "--engine",
            "offline",
            "--repeat",
            "3",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    bulletin = json.loads(res.stdout)["id"]
    assert wait_until(
        lambda: (
            _json([*base, "broadcast", "status", bulletin, "--json"])["counts"] == {"playing": 2}
        ),
        20,
    )
    e = _json(
        [
            *base,
            "emergency",
            "Lũ đang lên, di chuyển lên chỗ cao ngay.",
            "--hamlet",
            "Thôn Bản Cầu",
            "--json",
            "--wait",
            "20",
        ]
    )
    assert e["priority"] == "emergency"
    assert {c["cluster"] for c in e["clusters"]} == {"lb-01", "lb-02"}  # type: ignore[index, union-attr]
    eid = str(e["id"])
    assert wait_until(lambda: _status(base, eid)["played"] == ["lb-01", "lb-02"], 30)
    # The bulletin was interrupted, recorded, replayed and finished.
    assert wait_until(
        lambda: (
            _json([*base, "broadcast", "status", bulletin, "--json"])["counts"] == {"played": 2}
        ),
        60,
    )
    assert controller.dispatcher is not None
    with Session(controller.dispatcher.engine) as s:
        interrupted = s.exec(
            select(DeliveryEvent).where(DeliveryEvent.state == "interrupted")
        ).all()
    assert len(interrupted) == 2
    assert all(ev.reason.startswith("interrupted by emergency") for ev in interrupted)
    plays = _plays(fleet, "lb-01")
    results = [(p.result, p.volume) for p in plays]  # type: ignore[attr-defined]
    # The bulletin until the emergency (on a loaded machine some of its repeats may finish
    # first; the one playing is cut short), the emergency in full at the site's emergency
    # volume, then the whole bulletin again from the start.
    first_alarm = results.index(("completed", 100))
    before = [r for r, _ in results[:first_alarm]]
    assert 1 <= len(before) <= 3 and set(before[:-1]) <= {"completed"}, results
    assert before[-1] in ("stopped", "completed"), results
    assert [r for r, _ in results[first_alarm + 1 :]] == ["completed"] * 3, results
    # Other hamlets heard nothing.
    assert _plays(fleet, "lb-05") == []


def test_two_emergencies_at_once_both_play_in_full_in_order(
    controller: Controller, fleet: Fleet
) -> None:
    base = _base(controller)
    first = _json(
        [*base, "emergency", "Cháy rừng", "--siren", "--hamlet", "coc-xa", "--json", "--wait", "0"]
    )
    second = _json([*base, "emergency", "Sạt lở đất", "--siren", "--all", "--json", "--wait", "0"])
    for eid in (first["id"], second["id"]):
        assert wait_until(
            lambda e=eid: _status(base, str(e))["counts"] in ({"played": 2}, {"played": 10}), 40
        )
    plays = _plays(fleet, "lb-09")
    assert [p.result for p in plays] == ["completed", "completed"]  # type: ignore[attr-defined]


def test_offline_cluster_gets_it_when_back_and_status_says_why(
    tmp_path: Path, controller: Controller, mosquitto: EmbeddedBroker
) -> None:
    base = _base(controller)
    fleet = Fleet("luc-binh", ["lb-03"], mosquitto.endpoint, tmp_path / "late", time_scale=0.25)
    e = _json(
        [
            *base,
            "emergency",
            "Bão số 3",
            "--siren",
            "--hamlet",
            "na-lang",
            "--json",
            "--wait",
            "0",
            "--valid",
            "600",
        ]
    )
    eid = str(e["id"])
    st = _status(base, eid)
    assert st["played"] == []
    assert st["not_played"][0]["cluster"] == "lb-03"  # type: ignore[index]
    fleet.start()
    try:
        assert wait_until(lambda: _status(base, eid)["played"] == ["lb-03"], 30)
        # Sent more than once while it was away, played once.
        assert len(fleet.agents["lb-03"].sink.plays) == 1  # type: ignore[attr-defined]
    finally:
        fleet.stop()


def test_stop_ends_an_emergency_everywhere(controller: Controller, fleet: Fleet) -> None:
    base = _base(controller)
    e = _json(
        [
            *base,
            "emergency",
            "Thử còi",
            "--siren",
            "--repeat",
            "10",
            "--all",
            "--json",
            "--wait",
            "10",
        ]
    )
    eid = str(e["id"])
    assert wait_until(lambda: _status(base, eid)["counts"] == {"playing": 10}, 20)
    stopped = _json([*base, "emergency", "stop", "--json"])
    assert stopped["stopped"] == [eid]
    assert wait_until(lambda: _status(base, eid)["counts"] == {"failed": 10}, 20)
    st = _status(base, eid)
    assert st["stopped_at"] is not None and st["stopped_by"]
    assert all(m["why"] == "stopped by operator" for m in st["not_played"])  # type: ignore[index, union-attr]


def test_bad_emergency_input_is_refused(controller: Controller) -> None:
    base = _base(controller)
    for args, says in [
        (["emergency", "Lũ"], "--hamlet"),
        (["emergency", "Lũ", "--all", "--hamlet", "coc-xa"], "--hamlet"),
        (["emergency", "Lũ", "--hamlet", "Atlantis"], "no hamlet 'Atlantis'"),
        (["emergency", "Lũ", "--all", "--siren", "--recording", "x.mp3"], "not both"),
        (["emergency", "status", "nope"], "no broadcast 'nope'"),
        (["emergency", "stop"], "no emergency is active"),
    ]:
        res = runner.invoke(app, [*base, *args])
        assert res.exit_code != 0, args
        assert says in res.output, (args, res.output)


def test_cli_reaches_clusters_directly_when_the_controller_is_down(
    tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker, fleet: Fleet
) -> None:
    load_site(sqlite_url)
    settings = make_settings(tmp_path, sqlite_url, mosquitto)
    ctl = Controller(settings)
    ctl.start()  # once, so the broker keeps a session for it while it is down
    assert ctl.link is not None and ctl.link.connected.wait(10)
    ctl.stop()
    base = ["--data-dir", str(settings.data_dir), "--db-url", sqlite_url]
    env = {"LOUDSPEAKER_BROKER": mosquitto.endpoint.url}
    res = runner.invoke(
        app,
        [*base, "emergency", "Vỡ đê", "--siren", "--hamlet", "coc-xa", "--json", "--wait", "20"],
        env=env,
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert "controller not running" in res.stderr
    assert sorted(data["direct"]["sent"]) == ["lb-09", "lb-10"]
    assert wait_until(lambda: all(len(_plays(fleet, c)) == 1 for c in ("lb-09", "lb-10")), 20)
    # The controller comes back and reconciles from the acknowledgements kept for it.
    ctl2 = Controller(settings)
    ctl2.start()
    try:
        assert wait_until(lambda: _status(base, data["id"])["played"] == ["lb-09", "lb-10"], 20)
    finally:
        ctl2.stop()
    assert all(len(_plays(fleet, c)) == 1 for c in ("lb-09", "lb-10"))


def test_prepared_announcement_plays_as_an_emergency(controller: Controller, fleet: Fleet) -> None:
    base = _base(controller)
    ann = _json(
        [
            *base,
            "announce",
            "tts",
            "Lũ quét, sơ tán ngay.",
            "--title",
            "Lũ quét",
            "--engine",
            "offline",
            "--json",
        ]
    )
    e = _json(
        [
            *base,
            "emergency",
            "Lũ quét",
            "--announcement",
            str(ann["id"]),
            "--hamlet",
            "pac-cap",
            "--json",
            "--wait",
            "10",
        ]
    )
    assert e["media"]["sha256"] == ann["sha256"]  # type: ignore[index]
    eid = str(e["id"])
    assert wait_until(lambda: _status(base, eid)["played"] == ["lb-05"], 30)
