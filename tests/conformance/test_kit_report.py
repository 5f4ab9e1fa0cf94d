"""The kit's face: the 80-column table, its errors, and a box that is not there."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import Kind, offline_will, topic
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.conformance import CHECKS, CheckResult, as_json, format_table, passed


def _results() -> list[CheckResult]:
    long = "the box answered something long and winding " * 6
    return [
        CheckResult("play", "4", "play: received, staged, playing, played", "pass", "ok"),
        CheckResult("status", "1", "retained status 'online' on subscribe", "fail", long),
        CheckResult("will", "1", "last will " + "x" * 120, "skipped", "give --kill-command"),
        CheckResult("expired", "10", "already expired", "not applicable", "why"),
    ]


def test_the_table_fits_80_columns_sorted_by_section() -> None:
    text = format_table(_results(), "Conformance of luc-binh/lb-01 on mqtt://h:1 " * 3)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    rows = [line for line in lines if line.startswith("§") and not line.startswith("§ ")]
    assert [r.split()[0] for r in rows] == ["§1", "§1", "§4", "§10"]
    assert "FAIL" in rows[0] and "n/a" in rows[3]
    # Why a check did not pass is shown under it, wrapped; a pass needs no words.
    assert "long and winding" in text and "give --kill-command" in text
    assert lines[-1] == "DOES NOT CONFORM: 1 pass, 1 fail, 1 skipped, 1 not applicable"


def test_skipped_and_not_applicable_do_not_fail_a_box() -> None:
    results = [r for r in _results() if r.result != "fail"]
    assert passed(results)
    assert as_json(results, {"cluster": "lb-01"})["passed"] is True
    assert not passed(_results())


def test_every_check_has_a_unique_key_a_section_and_a_short_title() -> None:
    keys = [c.key for c in CHECKS]
    assert len(keys) == len(set(keys))
    for c in CHECKS:
        assert c.section in {"1", "3", "4", "5", "7", "8", "10", "11"}
        assert len(c.title) <= 60, c.title


def _kit(tmp_path: Path, *argv: str) -> tuple[int, str]:
    out = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "conformance", *argv])
    return out.exit_code, out.output


BASE = ["--broker", "mqtt://127.0.0.1:1", "--cluster", "lb-01", "--site", "x"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--broker", "mqtt://127.0.0.1:1", "--cluster", "lb-01"], "give --site"),
        (
            [
                "--broker",
                "mqtt://127.0.0.1:1",
                "--cluster",
                "lb-01",
                "--site",
                "x",
                "--only",
                "nope",
            ],
            "no check nope; checks:",
        ),
        (["--broker", "http://x", "--cluster", "lb-01", "--site", "x"], "is not mqtt://"),
        ([*BASE, "--keys-file", "/nonexistent/keys.json"], "cannot read key file"),
    ],
)
def test_bad_input_says_what_to_fix(tmp_path: Path, argv: list[str], message: str) -> None:
    code, output = _kit(tmp_path, *argv)
    assert code == 1
    assert message in output and "Traceback" not in output


@pytest.mark.integration
def test_an_unreachable_broker_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        argv = ["--broker", f"mqtt://127.0.0.1:{port}", "--cluster", "lb-01", "--site", "x"]
        code, output = _kit(tmp_path, *argv, "--timeout", "2")
    assert code == 1
    assert "cannot connect to the broker" in output and "Traceback" not in output


@pytest.mark.integration
def test_a_box_that_is_not_there_fails_status_and_skips_the_rest(
    tmp_path: Path, mosquitto: EmbeddedBroker
) -> None:
    argv = ["--broker", mosquitto.endpoint.url, "--cluster", "lb-07", "--site", "luc-binh"]
    code, output = _kit(tmp_path, *argv, "--timeout", "2", "--only", "status", "--only", "play")
    assert code == 1
    assert all(len(line) <= 80 for line in output.splitlines())
    assert "no retained status within 2 s" in output
    assert "not run: the box is not online" in output
    assert "DOES NOT CONFORM: 0 pass, 1 fail, 1 skipped, 0 not applicable" in output


def _credentials(path: Path, port: int, mode: int = 0o600, user: str = "_operator") -> Path:
    data = {
        "url": f"mqtt://127.0.0.1:{port}",
        "username": user,
        "password": "pw",
        "site": "luc-binh",
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    path.chmod(mode)
    return path


def test_a_credentials_file_open_to_others_is_refused(tmp_path: Path) -> None:
    creds = _credentials(tmp_path / "_operator.json", 1, mode=0o644)
    code, output = _kit(tmp_path, *BASE[:4], "--credentials", str(creds))
    assert code == 1
    assert "chmod 640" in output and "Traceback" not in output


def test_the_controllers_own_account_is_refused(tmp_path: Path) -> None:
    # Client id = user name on the broker: the kit would take over the controller's session.
    creds = _credentials(tmp_path / "_controller.json", 1, user="_controller")
    code, output = _kit(tmp_path, *BASE[:4], "--credentials", str(creds))
    assert code == 1
    assert "controller's own account" in output and "_operator.json" in output
    assert "Traceback" not in output


@pytest.mark.integration
def test_the_site_and_broker_come_from_the_operators_credentials(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        creds = _credentials(tmp_path / "_operator.json", port, mode=0o640)
        argv = ["--cluster", "lb-01"]
        code, output = _kit(tmp_path, *argv, "--credentials", str(creds), "--timeout", "2")
    # No --site, no --broker: the file named both; the kit got as far as that broker.
    assert code == 1
    assert f"checking luc-binh/lb-01 on mqtt://127.0.0.1:{port}" in output
    assert "cannot connect to the broker" in output


@pytest.mark.integration
def test_a_box_that_left_its_will_behind_is_reported_offline(
    tmp_path: Path, mosquitto: EmbeddedBroker
) -> None:
    # What a dead box leaves on the broker: its retained last will.
    loop = MqttLoop(name="test-will")
    loop.start()
    done = threading.Event()
    link = MqttLink("test-will", mosquitto.endpoint, on_message=lambda *_: None)
    loop.add(link)
    try:
        assert link.connected.wait(10)
        link.publish(
            topic("luc-binh", "lb-07", Kind.STATUS),
            offline_will("lb-07", "0.1.0"),
            retain=True,
            on_done=lambda ok, _reason: done.set(),
        )
        assert done.wait(10)
    finally:
        loop.close_link(link)
        loop.stop()
    argv = ["--broker", mosquitto.endpoint.url, "--cluster", "lb-07", "--site", "luc-binh"]
    code, output = _kit(tmp_path, *argv, "--timeout", "2", "--only", "status")
    assert code == 1
    assert "status is 'offline' (connection lost); start the box" in output
