"""Remote control and diagnosis end to end: CLI -> database -> controller -> cluster -> back.

Each command is confirmed by the cluster or reported as failed, and every diagnosis
verdict is produced by a real fault injected into a simulated cluster.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from cli import app
from firmware_bridge.simulator import Fleet
from loudspeaker.control import request_control
from loudspeaker.controller import Controller
from loudspeaker.models import ClusterHealth, ControlRequest
from tests.health.test_alarms import _beating, _broadcast
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _cli(ctl: Controller, *argv: str) -> tuple[int, str]:
    args = ["--data-dir", str(ctl.settings.data_dir), "--db-url", ctl.settings.database_url]
    out = CliRunner().invoke(app, [*args, *argv])
    return out.exit_code, out.output


def _health(ctl: Controller, cluster: str) -> ClusterHealth:
    assert ctl.health is not None
    with Session(ctl.health.engine) as s:
        row = s.get(ClusterHealth, cluster)
        assert row is not None
        return row


def test_volume_power_and_reboot_are_confirmed(hcontroller: Controller, hfleet: Fleet) -> None:
    ctl = hcontroller
    assert wait_until(_beating(ctl), 15)
    hw = hfleet.hardware["lb-04"]

    code, out = _cli(ctl, "cluster", "volume", "lb-04", "35", "--json")
    assert code == 0, out
    assert json.loads(out)["state"] == "confirmed"
    assert json.loads(out)["result"]["detail"] == {"volume": 35}
    assert hw.read_sensors().volume == 35
    assert wait_until(lambda: _health(ctl, "lb-04").volume == 35, 5)

    code, out = _cli(ctl, "cluster", "power", "lb-04", "off", "--json")
    assert code == 0, out
    assert hw.read_sensors().amp_power is False
    assert wait_until(lambda: _health(ctl, "lb-04").amp_power is False, 5)
    assert _health(ctl, "lb-04").amp_current_a == 0.0  # off is off, not muted
    code, out = _cli(ctl, "cluster", "power", "lb-04", "on")
    assert code == 0, out
    assert "confirmed" in out
    assert hw.read_sensors().amp_power is True

    boot = _health(ctl, "lb-04").boot_id
    code, out = _cli(ctl, "cluster", "reboot", "lb-04", "--json", "--timeout", "20")
    assert code == 0, out
    result = json.loads(out)
    assert result["state"] == "confirmed"
    assert result["result"]["boot_id_before"] == boot
    assert result["result"]["boot_id_after"] != boot
    assert hw.reboots == 1
    assert wait_until(lambda: _health(ctl, "lb-04").boot_id != boot, 5)


def test_failures_are_reported_with_a_reason(hcontroller: Controller, hfleet: Fleet) -> None:
    ctl = hcontroller
    assert wait_until(_beating(ctl), 15)
    # Welded relay contacts: the cluster says the relay did not move.
    hfleet.inject("lb-02", "relay_stuck")
    code, out = _cli(ctl, "cluster", "power", "lb-02", "off", "--json")
    assert code == 1
    assert json.loads(out)["state"] == "failed"
    assert json.loads(out)["reason"] == "relay stayed on"
    # An offline cluster: refused at once, nothing queued for later.
    hfleet.stop_agent("lb-03")
    assert wait_until(lambda: "offline" in _alarm_kinds(ctl, "lb-03"), 5)
    code, out = _cli(ctl, "cluster", "volume", "lb-03", "50", "--json")
    assert code == 1
    assert "offline" in json.loads(out)["reason"]
    # A wedged agent: no answer within the timeout.
    hfleet.inject("lb-05", "hang")
    code, out = _cli(ctl, "cluster", "volume", "lb-05", "50", "--json", "--timeout", "10")
    assert code == 1
    assert "no answer" in json.loads(out)["reason"]
    code, out = _cli(ctl, "cluster", "volume", "lb-99", "50")
    assert code == 1
    assert "no cluster 'lb-99'" in out


def test_control_needs_the_running_controller(hcontroller: Controller, tmp_path: Path) -> None:
    args = [
        "--data-dir",
        str(tmp_path / "elsewhere"),
        "--db-url",
        hcontroller.settings.database_url,
    ]
    out = CliRunner().invoke(app, [*args, "cluster", "volume", "lb-01", "10"])
    assert out.exit_code == 1
    assert "controller is not running" in out.output


def _alarm_kinds(ctl: Controller, cluster: str) -> set[str]:
    from tests.health.test_alarms import _active

    return _active(ctl).get(cluster, set())


# cluster -> (fault, expected status, words in the verdict)
VERDICTS = {
    "lb-01": (None, "ok", "healthy"),
    "lb-02": ("line_open", "fault", "speaker line open"),
    "lb-03": ("line_short", "fault", "speaker line short"),
    "lb-04": ("self_test_fail", "fault", "self-test failed: amplifier_bias"),
    "lb-05": ("stuck_playback", "fault", "player hung"),
    "lb-06": ("link_errors", "warning", "serial link errors"),
    "lb-07": ("clock_drift", "fault", "clock 30.0 s ahead"),
    "lb-08": ("power_cut", "unreachable", "offline"),
    "lb-09": ("hang", "unreachable", "no answer"),
}


def test_every_diagnosis_verdict(hcontroller: Controller, hfleet: Fleet) -> None:
    ctl = hcontroller
    assert ctl.health is not None
    assert wait_until(_beating(ctl), 15)
    for cluster, (fault, _, _) in VERDICTS.items():
        if fault == "power_cut":
            hfleet.stop_agent(cluster)
        elif fault is not None:
            hfleet.inject(cluster, fault)
    assert wait_until(lambda: "offline" in _alarm_kinds(ctl, "lb-08"), 5)
    ids = {}
    with Session(ctl.health.engine) as s:
        for cluster in VERDICTS:
            req = request_control(s, cluster, "diagnose", {"tone_s": 1.0})
            ids[cluster] = req.id
    ctl.health.poke()

    def finished() -> bool:
        with Session(ctl.health.engine) as s:  # type: ignore[union-attr]
            return all(
                s.get(ControlRequest, i).state in ("confirmed", "failed") for i in ids.values()
            )  # type: ignore[union-attr]

    assert wait_until(finished, 20)
    with Session(ctl.health.engine) as s:
        for cluster, (_, status, words) in VERDICTS.items():
            req = s.get(ControlRequest, ids[cluster])
            assert req is not None
            diag = req.result["diagnosis"]
            assert diag["status"] == status, (cluster, diag)
            assert words in diag["verdict"], (cluster, diag["verdict"])
            assert diag["action"], cluster
    # The healthy cluster's tone drew real current; the open line drew none beyond idle.
    with Session(ctl.health.engine) as s:
        ok = s.get(ControlRequest, ids["lb-01"])
        dead = s.get(ControlRequest, ids["lb-02"])
        assert ok is not None and dead is not None
        tone_ok = ok.result["detail"]["tests"]["tone"]
        tone_dead = dead.result["detail"]["tests"]["tone"]
        assert tone_ok["tone_a"] - tone_ok["idle_a"] > 1.0
        assert tone_dead["tone_a"] - tone_dead["idle_a"] < 0.05

    # Through the CLI: a fault exits 1 and names the action.
    code, out = _cli(ctl, "diagnose", "lb-02", "--tone", "1")
    assert code == 1
    assert "speaker line open" in out
    assert "Suggested action" in out
    code, out = _cli(ctl, "diagnose", "lb-01", "--json", "--tone", "1")
    assert code == 0, out
    assert json.loads(out)["result"]["diagnosis"]["status"] == "ok"


def test_tone_never_interrupts_a_broadcast(
    hcontroller: Controller, hfleet: Fleet, tmp_path: Path
) -> None:
    ctl = hcontroller
    assert ctl.health is not None
    assert wait_until(_beating(ctl), 15)
    hfleet.agents["lb-01"].sink.time_scale = 8.0  # type: ignore[attr-defined]
    _broadcast(ctl, tmp_path, "cluster:lb-01", 1)
    assert wait_until(lambda: bool(_health(ctl, "lb-01").playing), 10)
    code, out = _cli(ctl, "diagnose", "lb-01", "--json")
    assert code == 0, out
    tone = json.loads(out)["result"]["diagnosis"]["checks"]
    assert [c["status"] for c in tone if c["name"] == "tone"] == ["skip"]


def test_metrics_endpoint(hcontroller: Controller, hfleet: Fleet, tmp_path: Path) -> None:
    ctl = hcontroller
    assert ctl.media is not None
    assert wait_until(_beating(ctl), 15)
    hfleet.inject("lb-03", "overheat")
    _broadcast(ctl, tmp_path, "cluster:lb-01", 1)
    url = f"http://127.0.0.1:{ctl.media.port}/metrics"

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return str(resp.read().decode())

    def value(text: str, name: str, **labels: str) -> float | None:
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return None

    assert wait_until(
        lambda: (
            value(scrape(), "loudspeaker_deliveries_total", cluster="lb-01", state="played") == 1.0
        ),
        15,
    )
    assert wait_until(
        lambda: (
            value(scrape(), "loudspeaker_cluster_alarm_active", cluster="lb-03", kind="overheat")
            == 1.0
        ),
        10,
    )
    text = scrape()
    sample = re.compile(
        r'^[a-z_]+(\{([a-z_]+="[^"\\]*",?)*\})? -?[0-9.e+]+$|^[a-z_]+(\{.*\})? (NaN|[+-]Inf)$'
    )
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
        else:
            assert sample.match(line), line
    assert value(text, "loudspeaker_cluster_up", cluster="lb-02", hamlet="ban-cau") == 1.0
    temp = value(text, "loudspeaker_cluster_amplifier_temperature_celsius", cluster="lb-03")
    assert temp is not None and temp > 80
    volts = value(text, "loudspeaker_cluster_supply_voltage_volts", cluster="lb-02")
    assert volts is not None and 13 < volts < 14
    assert value(text, "loudspeaker_cluster_last_seen_timestamp_seconds", cluster="lb-02")
    assert "loudspeaker_dispatcher_queue_depth 0" in text
    assert "loudspeaker_mqtt_connected 1" in text
    assert "# TYPE loudspeaker_mqtt_reconnects_total counter" in text
