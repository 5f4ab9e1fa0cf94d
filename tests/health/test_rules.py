"""Unit tests of the pure parts: alarm rules, diagnosis verdicts, amplifier physics, wire."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from firmware_bridge.exceptions import HardwareError, ProtocolError
from firmware_bridge.hardware import IDLE_CURRENT_A, SimulatedHardware
from firmware_bridge.protocol import (
    ControlResult,
    DiagnoseCommand,
    Heartbeat,
    PowerCommand,
    VolumeCommand,
    decode_command,
    decode_heartbeat,
    decode_result,
    encode,
    utcnow,
)
from loudspeaker.alarms import AlarmKind, Observation, evaluate
from loudspeaker.diagnosis import Diagnosis, judge
from loudspeaker.exceptions import SiteError
from loudspeaker.metrics import _Family, render
from loudspeaker.site import HealthConfig, parse_site
from tests.conftest import SITE_FILE

T0 = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
CFG = HealthConfig()


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {
        "now": T0,
        "watching_since": T0 - timedelta(minutes=5),
        "online": True,
        "online_since": T0 - timedelta(minutes=5),
        "last_heartbeat_at": T0 - timedelta(seconds=5),
        "interval_s": 15.0,
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def findings(o: Observation, active: set[AlarmKind] | None = None) -> dict[AlarmKind, bool | None]:
    return {f.kind: f.active for f in evaluate(o, CFG, active or set())}


def test_a_healthy_cluster_has_no_alarm() -> None:
    f = findings(
        obs(amp_temp_c=40, supply_v=13.5, line="ok", clock_skew_s=0.1, free_storage_mb=900,
            play_failures=0)
    )  # fmt: skip
    assert not any(f.values())
    assert all(v is False for v in f.values())


@pytest.mark.parametrize(
    ("kw", "kind"),
    [
        ({"online": False, "offline_reason": "connection lost"}, AlarmKind.OFFLINE),
        ({"last_heartbeat_at": T0 - timedelta(seconds=46)}, AlarmKind.HEARTBEAT_MISSED),
        ({"last_heartbeat_at": None}, AlarmKind.HEARTBEAT_MISSED),
        ({"amp_temp_c": 75.0}, AlarmKind.OVERHEAT),
        ({"supply_v": 11.5}, AlarmKind.UNDERVOLTAGE),
        ({"line": "open"}, AlarmKind.LINE_OPEN),
        ({"line": "short"}, AlarmKind.LINE_SHORT),
        ({"clock_skew_s": -5.5}, AlarmKind.CLOCK_DRIFT),
        ({"free_storage_mb": 150.0}, AlarmKind.STORAGE_LOW),
        ({"play_failures": 3}, AlarmKind.PLAYBACK_FAILURES),
        (
            {"disconnects": [T0 - timedelta(seconds=s) for s in (10, 100, 200)]},
            AlarmKind.LINK_FLAPPING,
        ),
    ],
)
def test_each_rule_fires_at_its_threshold(kw: dict[str, object], kind: AlarmKind) -> None:
    f = findings(obs(**kw))
    assert f[kind] is True
    assert [k for k, v in f.items() if v] == [kind]


@pytest.mark.parametrize(
    ("kw", "kind"),
    [
        ({"last_heartbeat_at": T0 - timedelta(seconds=44)}, AlarmKind.HEARTBEAT_MISSED),
        ({"amp_temp_c": 74.9}, AlarmKind.OVERHEAT),
        ({"supply_v": 11.51}, AlarmKind.UNDERVOLTAGE),
        ({"clock_skew_s": 5.0}, AlarmKind.CLOCK_DRIFT),
        ({"free_storage_mb": 200.0}, AlarmKind.STORAGE_LOW),
        ({"play_failures": 2}, AlarmKind.PLAYBACK_FAILURES),
        (
            {"disconnects": [T0 - timedelta(seconds=s) for s in (10, 100, 301)]},
            AlarmKind.LINK_FLAPPING,
        ),
    ],
)
def test_each_rule_stays_quiet_just_inside_its_threshold(
    kw: dict[str, object], kind: AlarmKind
) -> None:
    assert findings(obs(**kw))[kind] is False


def test_hysteresis_keeps_an_alarm_until_the_value_is_clearly_back() -> None:
    active = {AlarmKind.OVERHEAT, AlarmKind.UNDERVOLTAGE, AlarmKind.CLOCK_DRIFT}
    f = findings(obs(amp_temp_c=72, supply_v=11.7, clock_skew_s=4.5), active)
    assert f[AlarmKind.OVERHEAT] and f[AlarmKind.UNDERVOLTAGE] and f[AlarmKind.CLOCK_DRIFT]
    f = findings(obs(amp_temp_c=69.9, supply_v=11.81, clock_skew_s=3.9), active)
    assert not f[AlarmKind.OVERHEAT] and not f[AlarmKind.UNDERVOLTAGE]
    assert not f[AlarmKind.CLOCK_DRIFT]


def test_no_data_means_no_opinion_and_offline_hides_missed_beats() -> None:
    f = findings(obs(online=None, line="unknown"))
    assert f[AlarmKind.OFFLINE] is None and f[AlarmKind.LINE_OPEN] is None
    assert f[AlarmKind.OVERHEAT] is None and f[AlarmKind.CLOCK_DRIFT] is None
    f = findings(obs(online=False, last_heartbeat_at=T0 - timedelta(hours=1)))
    assert f[AlarmKind.OFFLINE] is True and f[AlarmKind.HEARTBEAT_MISSED] is False


def test_missed_heartbeats_use_the_clusters_own_interval() -> None:
    f = findings(obs(interval_s=1.0, last_heartbeat_at=T0 - timedelta(seconds=3.5)))
    assert f[AlarmKind.HEARTBEAT_MISSED] is True


def _detail(**tests: object) -> dict[str, object]:
    return {"received": "2026-11-30T05:00:00Z", "took_s": 1.0, "tests": tests}


def _judge(detail: dict[str, object], rtt: float = 0.1, offset: float = 0.0) -> tuple[str, str]:
    d = _diagnosis(detail, rtt, offset)
    return d.status, d.verdict


def _diagnosis(detail: dict[str, object], rtt: float = 0.1, offset: float = 0.0) -> Diagnosis:
    sent = T0
    answered = T0 + timedelta(seconds=1.0 + rtt)
    ts = answered - timedelta(seconds=rtt / 2) + timedelta(seconds=offset)
    return judge(detail, sent_at=sent, answered_at=answered, cluster_ts=ts, cfg=CFG)


PASSED = {"status": "passed"}
GOOD_TONE = {"status": "passed", "result": "completed", "idle_a": 0.25, "tone_a": 1.6}
CLOCK = {"status": "passed", "box_time": "2026-11-30T05:00:00Z"}


def _tone(**kw: object) -> dict[str, object]:
    return {"status": "passed", "result": "completed", **kw}


def _link(**kw: object) -> dict[str, object]:
    return {"status": "passed", **kw}


@pytest.mark.parametrize(
    ("detail", "status", "words"),
    [
        (
            _detail(
                self_test=PASSED,
                tone=GOOD_TONE,
                link=_link(mqtt_reconnects=0, rssi_dbm=-70),
                clock=CLOCK,
            ),
            "ok",
            "healthy: every test passed",
        ),
        (_detail(tone=_tone(idle_a=0.25, tone_a=0.26)), "fault", "speaker line open"),
        (_detail(tone=_tone(idle_a=0.25, tone_a=6.0)), "fault", "speaker line short"),
        (
            _detail(tone={"status": "failed", "reason": "player hung", "result": "error"}),
            "fault",
            "player hung",
        ),
        (_detail(tone={"status": "skipped", "reason": "busy"}), "ok", "tone not run"),
        (_detail(tone=_tone(idle_a=None, tone_a=None)), "ok", "tone not run"),
        (
            _detail(
                self_test={
                    "status": "failed",
                    "reason": "flash_crc failed",
                    "checks": {"ram": True, "flash_crc": False},
                }
            ),
            "fault",
            "flash_crc",
        ),
        (_detail(self_test={"status": "failed", "reason": "no reply"}), "fault", "did not answer"),
        (
            _detail(self_test={"status": "not_present", "reason": "no microcontroller"}),
            "ok",
            "self_test not present",
        ),
        (_detail(link=_link(rx_errors=4, timeouts=1)), "warning", "serial link errors"),
        (_detail(link=_link(mqtt_reconnects=7, rssi_dbm=-90)), "warning", "network link unstable"),
        (
            _detail(link=_link(mqtt_reconnects=0, rssi_dbm=-110)),
            "warning",
            "network link unstable",
        ),
        (_detail(self_test={"ok": True}), "fault", "not understood"),
        (_detail(self_test={"status": "skipped"}), "fault", "not understood"),
    ],
)
def test_diagnosis_verdicts(detail: dict[str, object], status: str, words: str) -> None:
    got_status, verdict = _judge(detail)
    assert got_status == status
    assert words in verdict


def test_a_test_that_did_not_run_is_never_reported_passed() -> None:
    d = _diagnosis(
        _detail(
            self_test={"status": "not_present", "reason": "no microcontroller on this box"},
            tone={"status": "skipped", "reason": "busy playing broadcast b1"},
            link=_link(mqtt_reconnects=None, rssi_dbm=None),
        )
    )
    by_name = {c.name: c for c in d.checks}
    assert by_name["self_test"].status == "not_present"
    assert "passed" not in by_name["self_test"].summary
    assert by_name["tone"].status == "skip"
    assert "every test passed" not in d.verdict
    # Unknown numbers are said to be unknown, never printed as "None".
    assert by_name["link"].summary == "links clean (reconnects unknown, signal unknown)"
    assert "None" not in json.dumps(d.to_json())


def test_a_test_the_box_did_not_report_is_shown_as_not_run() -> None:
    detail = _detail(link=_link(mqtt_reconnects=0, rssi_dbm=-70))
    d = judge(
        detail,
        sent_at=T0,
        answered_at=T0 + timedelta(seconds=1.1),
        cluster_ts=T0 + timedelta(seconds=1.05),
        cfg=CFG,
        asked=["self_test", "link"],
    )
    assert {c.name: c.status for c in d.checks}["self_test"] == "skip"
    assert d.verdict == "healthy: round_trip, link passed; self_test not run"


def test_diagnosis_measures_clock_offset_and_round_trip() -> None:
    assert _judge(_detail(clock=CLOCK), offset=30.0) == ("fault", "clock 30.0 s ahead")
    assert _judge(_detail(clock=CLOCK), offset=-2.0)[0] == "ok"
    assert _judge(_detail(), rtt=5.0)[1] == "slow command round trip 5.0 s"
    assert _judge(_detail(), rtt=12.0)[0] == "fault"


@pytest.mark.parametrize(
    ("power", "playing", "line", "expected"),
    [
        (False, True, "ok", 0.0),
        (True, False, "ok", IDLE_CURRENT_A),
        (True, True, "ok", IDLE_CURRENT_A + 1.4),
        (True, True, "open", IDLE_CURRENT_A + 0.01),
        (True, True, "short", 6.0),
    ],
)
def test_amplifier_current_follows_relay_playback_and_line(
    power: bool, playing: bool, line: str, expected: float
) -> None:
    hw = SimulatedHardware(seed=1, amp_power=power)
    hw.set_volume(70)
    if line != "ok":
        hw.inject(f"line_{line}")
    hw.on_playback(playing)
    assert hw.read_sensors().amp_current_a == pytest.approx(expected, abs=0.001)


def test_simulated_faults_inject_and_clear() -> None:
    hw = SimulatedHardware(seed=2)
    hw.inject("power_sag")
    hw.inject("clock_drift", 12)
    assert hw.read_sensors().supply_v == pytest.approx(10.4, abs=0.1)
    assert (hw.now() - utcnow()).total_seconds() == pytest.approx(12, abs=0.5)
    hw.clear("power_sag")
    assert hw.read_sensors().supply_v == pytest.approx(13.6, abs=0.1)
    hw.clear()
    assert abs((hw.now() - utcnow()).total_seconds()) < 0.5
    with pytest.raises(HardwareError, match="unknown fault 'fire'"):
        hw.inject("fire")


def test_control_commands_and_health_messages_round_trip() -> None:
    t = utcnow()
    common = {"id": "c0ffee0000000009", "cluster": "lb-01", "issued_at": t, "expires_at": t}
    for cmd in (
        VolumeCommand(**common, volume=40),  # type: ignore[arg-type]
        PowerCommand(**common, on=False),  # type: ignore[arg-type]
        DiagnoseCommand(**common, tests=["tone"], tone_s=1.0),  # type: ignore[arg-type]
    ):
        assert decode_command(encode(cmd)) == cmd
    hb = Heartbeat(cluster="lb-01", ts=t, seq=1, boot_id="b1", interval_s=15, uptime_s=3)
    assert decode_heartbeat(encode(hb)) == hb
    res = ControlResult(cluster="lb-01", command="c0ffee0000000009", type="power", ok=True, ts=t)
    assert decode_result(encode(res)) == res


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"volume": 101}, "volume"),
        ({"line": "melted"}, "line"),
        ({"ts": "2026-11-30T05:00:00"}, "ts"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_heartbeats_name_the_field(change: dict[str, object], says: str) -> None:
    hb = Heartbeat(cluster="lb-01", ts=utcnow(), seq=1, boot_id="b1", interval_s=15, uptime_s=3)
    data = json.loads(encode(hb))
    data.update(change)
    with pytest.raises(ProtocolError, match=says):
        decode_heartbeat(json.dumps(data).encode())
    with pytest.raises(ProtocolError, match="bad command"):
        decode_command(b'{"v":1,"type":"volume","id":"c0ffee0000000009","cluster":"lb-01"}')


def test_health_table_is_validated_with_line_numbers() -> None:
    text = SITE_FILE.read_text(encoding="utf-8")
    site = parse_site(text + "\n[health]\ntemp_max_c = 70\n")
    assert site.health.temp_max_c == 70
    assert parse_site(text).health == HealthConfig()
    bad = text + "\n[health]\ntemp_max_c = -3\n"
    line = len(bad.splitlines())
    with pytest.raises(SiteError, match=rf"health\.temp_max_c \(line {line}\)"):
        parse_site(bad)
    with pytest.raises(SiteError, match="history_coarse_s"):
        parse_site(text + "\n[health]\nhistory_fine_s = 900\n")


def test_metrics_text_format() -> None:
    f = _Family("x_total", "counter", "Things")
    f.add(3, cluster='a"b\\c')
    f.add(None, cluster="skipped")
    g = _Family("y", "gauge", "Y")
    g.add(1.5)
    assert render([f, g]) == (
        "# HELP x_total Things\n# TYPE x_total counter\n"
        'x_total{cluster="a\\"b\\\\c"} 3\n'
        "# HELP y Y\n# TYPE y gauge\ny 1.5\n"
    )
