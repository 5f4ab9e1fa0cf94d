"""A broken sensor reads out of range: named in the report, never fatal to it.

The protocol's models bound every reading (``rssi_dbm`` <= 0, currents <= 100 A, ...). A
hand-written hardware returns readings outside those bounds; the agent's diagnose must
fail only the test that read it (naming the reading and its value) and report the others,
and the heartbeat must keep going with that reading left out and named in ``last_error``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.abc import Hardware, SelfTestResult, SensorReadings
from firmware_bridge.hardware import HardwareSink
from firmware_bridge.health import ControlHandler, HeartbeatReporter
from firmware_bridge.protocol import (
    ControlResult,
    DiagnoseCommand,
    Heartbeat,
    decode_heartbeat,
    new_id,
    utcnow,
)
from firmware_bridge.sinks import SimulatedSink
from tests.helpers import wait_until

GOOD = SensorReadings(
    amp_power=True,
    volume=60,
    amp_temp_c=40.0,
    supply_v=13.6,
    amp_current_a=1.2,
    line="ok",
    rssi_dbm=-60,
)


class FakeHardware(Hardware):
    """Returns whatever ``readings`` holds; switches nothing real."""

    name = "fake"

    def __init__(self, readings: SensorReadings, checks: dict[str, bool] | None = None) -> None:
        self.readings = readings
        self.checks = checks if checks is not None else {"relay": True, "adc": True}

    def read_sensors(self) -> SensorReadings:
        return self.readings

    def set_volume(self, pct: int) -> int:
        return pct

    def set_amplifier_power(self, on: bool) -> bool:
        return on

    def self_test(self) -> SelfTestResult:
        return SelfTestResult(ok=all(self.checks.values()), checks=self.checks)


@dataclass
class Journal:
    states: dict[str, str] = field(default_factory=dict)

    def set(self, command_id: str, state: str) -> None:
        self.states[command_id] = state


@dataclass
class Box:
    hardware: FakeHardware
    reporter: HeartbeatReporter
    handler: ControlHandler
    results: list[ControlResult] = field(default_factory=list)
    beats: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def diagnose(self, tone_s: float = 0.2) -> ControlResult:
        t = utcnow()
        cmd = DiagnoseCommand(
            id=new_id(),
            cluster="lb-01",
            issued_at=t,
            expires_at=t + timedelta(minutes=1),
            tests=["self_test", "tone", "link", "clock"],
            tone_s=tone_s,
        )
        self.handler.submit(cmd)
        assert wait_until(lambda: any(r.command == cmd.id for r in self.results), 20)
        return next(r for r in self.results if r.command == cmd.id)

    def heartbeats(self) -> list[Heartbeat]:
        with self.lock:
            return [decode_heartbeat(b) for b in self.beats]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    hw = FakeHardware(GOOD)
    beats: list[bytes] = []
    lock = threading.Lock()

    def publish_beat(payload: bytes) -> None:
        with lock:
            beats.append(payload)

    reporter = HeartbeatReporter(
        cluster="lb-01",
        hardware=hw,
        publish=publish_beat,
        interval_s=0.2,
        storage_path=tmp_path,
        agent_version="test",
        playing=lambda: None,
    )
    results: list[ControlResult] = []

    def publish_result(result: ControlResult, on_done: Any) -> None:
        results.append(result)
        if on_done is not None:
            on_done(True, "")

    handler = ControlHandler(
        cluster="lb-01",
        hardware=hw,
        output=HardwareSink(SimulatedSink(), hw),
        journal=Journal(),
        publish=publish_result,
        reporter=reporter,
        busy=lambda: None,
        mqtt_reconnects=lambda: 0,
        restart=lambda _why: None,
        work_dir=tmp_path,
    )
    handler.start()
    b = Box(hw, reporter, handler, results, beats, lock)
    try:
        yield b
    finally:
        handler.stop()
        reporter.stop()


def test_in_range_readings_pass_every_diagnose_test(box: Box) -> None:
    res = box.diagnose()
    assert res.ok, res.reason
    tests = res.detail["tests"]
    assert {k: v["status"] for k, v in tests.items()} == dict.fromkeys(
        ("self_test", "tone", "link", "clock"), "passed"
    )


def test_an_out_of_range_reading_fails_only_its_test_and_names_the_value(box: Box) -> None:
    box.hardware.readings = SensorReadings(
        amp_power=True, volume=60, amp_current_a=250.0, line="ok", rssi_dbm=25
    )
    res = box.diagnose()
    assert res.ok, res.reason  # the diagnose ran: its tests say what is wrong
    tests = res.detail["tests"]
    assert tests["link"]["status"] == "failed"
    assert "rssi_dbm=25" in tests["link"]["reason"], tests["link"]
    assert tests["tone"]["status"] == "failed"
    assert "idle_a=250.0" in tests["tone"]["reason"], tests["tone"]
    assert "out of range" in tests["tone"]["reason"]
    # Every other test is still reported.
    assert tests["self_test"]["status"] == "passed"
    assert tests["clock"]["status"] == "passed" and tests["clock"]["box_time"]


def test_a_self_test_check_name_too_long_fails_the_self_test_only(box: Box) -> None:
    box.hardware.checks = {"x" * 80: True}
    res = box.diagnose()
    tests = res.detail["tests"]
    assert tests["self_test"]["status"] == "failed"
    assert "checks=" in tests["self_test"]["reason"], tests["self_test"]
    assert {tests[k]["status"] for k in ("tone", "link", "clock")} == {"passed"}


def test_a_heartbeat_leaves_out_a_bad_reading_and_names_it() -> None:
    hw = FakeHardware(
        SensorReadings(amp_power=True, volume=60, supply_v=13.6, amp_current_a=-3.0, rssi_dbm=7)
    )
    reporter = HeartbeatReporter(
        cluster="lb-01",
        hardware=hw,
        publish=lambda _p: None,
        interval_s=15,
        storage_path=Path("."),
        agent_version="test",
        playing=lambda: None,
    )
    hb = reporter.build(hw.read_sensors())
    assert hb.rssi_dbm is None and hb.amp_current_a is None
    assert hb.volume == 60 and hb.supply_v == 13.6 and hb.amp_power is True
    assert hb.last_error is not None
    assert "rssi_dbm=7" in hb.last_error and "amp_current_a=-3.0" in hb.last_error
    assert reporter.last_error == hb.last_error


def test_heartbeats_keep_going_while_a_sensor_stays_broken(box: Box) -> None:
    box.hardware.readings = SensorReadings(amp_power=True, volume=60, amp_temp_c=900.0)
    box.reporter.start()
    assert wait_until(lambda: len(box.heartbeats()) >= 3, 10), box.heartbeats()
    for hb in box.heartbeats():
        assert hb.amp_temp_c is None and hb.volume == 60
        assert hb.last_error is not None and "amp_temp_c=900.0" in hb.last_error
    # Once the sensor reads sanely again its value is reported again.
    box.hardware.readings = GOOD
    assert wait_until(lambda: box.heartbeats()[-1].amp_temp_c == 40.0, 10)
