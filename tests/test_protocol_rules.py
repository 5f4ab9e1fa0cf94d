"""The pure parts of the protocol answers: freshness, keyless boxes, typed diagnose, volume."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_bridge.abc import SensorReadings
from firmware_bridge.exceptions import BadSignature, ProtocolError, StaleCommand
from firmware_bridge.hardware import HardwareSink, HostHardware
from firmware_bridge.player import Outcome, Player
from firmware_bridge.protocol import (
    PlayCommand,
    SelfTestReport,
    VolumeCommand,
    check_freshness,
    decode_diagnose_detail,
    encode,
    sent_string,
    sign_command,
    verify_command,
)
from firmware_bridge.sinks import SimulatedSink
from tests.helpers import wait_until
from tests.test_player import Recorder, cmd

NOW = datetime(2026, 11, 30, 5, 0, tzinfo=UTC)
KEY = bytes(range(32))


def _volume(issued: timedelta, lifetime: timedelta) -> VolumeCommand:
    return VolumeCommand(
        id="c0ffee0000000009",
        cluster="lb-01",
        issued_at=NOW + issued,
        expires_at=NOW + issued + lifetime,
        volume=50,
    )


@pytest.mark.parametrize(
    ("issued", "lifetime", "says"),
    [
        (timedelta(hours=1), timedelta(minutes=1), "issued 3600 s in the future"),
        (timedelta(0), timedelta(days=30), "lifetime longer than the 48 h allowed"),
        (timedelta(minutes=-10), timedelta(minutes=1), "expired at 2026-11-30T04:51:00Z"),
    ],
    ids=["an-hour-ahead", "30-days", "expired"],
)
def test_control_commands_get_the_same_freshness_rules(
    issued: timedelta, lifetime: timedelta, says: str
) -> None:
    with pytest.raises(StaleCommand, match=says):
        check_freshness(_volume(issued, lifetime), NOW)
    check_freshness(_volume(timedelta(seconds=100), timedelta(minutes=1)), NOW)


def test_the_expiry_refusal_quotes_the_time_as_sent() -> None:
    late = _volume(timedelta(minutes=-10), timedelta(minutes=1))
    sent = "2026-11-30T11:51:00.000+07:00"
    with pytest.raises(StaleCommand) as refused:
        check_freshness(late, NOW, expires_as_sent=sent)
    assert str(refused.value) == f"expired at {sent}"
    payload = encode(late).replace(b'"expires_at":"2026-11-30T04:51:00Z"', b'"expires_at":"X"')
    assert sent_string(payload, "expires_at") == "X"
    assert sent_string(b"not json", "expires_at") is None
    assert sent_string(b"[1]", "expires_at") is None


def test_a_box_without_keys_ignores_sig_but_not_freshness() -> None:
    forged = sign_command(_volume(timedelta(0), timedelta(minutes=1)), b"k" * 32, "k1")
    verify_command(forged, None, NOW)
    with pytest.raises(BadSignature):
        verify_command(forged, {"k1": KEY}, NOW)
    stale = sign_command(_volume(timedelta(hours=1), timedelta(minutes=1)), b"k" * 32, "k1")
    with pytest.raises(StaleCommand):
        verify_command(stale, None, NOW)


def test_diagnose_reports_are_typed() -> None:
    with pytest.raises(ValueError, match="must say why"):
        SelfTestReport(status="not_present")
    detail = {"received": "2026-11-30T05:00:00Z", "took_s": 0.1, "tests": {}}
    assert decode_diagnose_detail(detail).tests.self_test is None
    bad = {**detail, "tests": {"link": {"status": "passed", "rssi_dbm": "None"}}}
    with pytest.raises(ProtocolError, match="rssi_dbm"):
        decode_diagnose_detail(bad)
    with pytest.raises(ProtocolError, match="status"):
        decode_diagnose_detail({**detail, "tests": {"clock": {"ok": True}}})


class _Hardware(HostHardware):
    """A box without an MCU whose volume reads can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.readable = True

    def read_sensors(self) -> SensorReadings:
        return super().read_sensors() if self.readable else SensorReadings()


def test_an_items_own_volume_is_undone_afterwards_and_the_box_setting_wins() -> None:
    hw = _Hardware()
    out = HardwareSink(SimulatedSink(), hw)
    out.set_box_volume(40)
    out.set_item_volume(100)  # an emergency
    assert hw.read_sensors().volume == 100
    out.set_item_volume(90)  # a second item with its own volume: still returns to 40
    out.restore_volume()
    assert hw.read_sensors().volume == 40
    out.restore_volume()  # nothing to undo
    assert hw.read_sensors().volume == 40
    out.set_item_volume(100)
    out.set_box_volume(25)  # a technician turns it down during the emergency: at once ...
    assert hw.read_sensors().volume == 25
    out.restore_volume()  # ... and it is what the box returns to
    assert hw.read_sensors().volume == 25
    hw.readable = False  # a box that cannot read its volume leaves it as it is
    out.set_item_volume(100)
    out.restore_volume()
    assert HostHardware.read_sensors(hw).volume == 100


def test_the_player_runs_after_once_per_played_item_and_drops_nothing_at_shutdown(
    tmp_path: Path,
) -> None:
    audio = tmp_path / "a.mp3"
    audio.write_bytes(b"x")
    rec = Recorder()
    after: list[str] = []
    player = Player(SimulatedSink(), rec, after=lambda c: after.append(c.title))
    player.start()
    try:
        player.submit(cmd("short", 0.05), audio)
        assert wait_until(lambda: rec.of("short") == [Outcome.PLAYING, Outcome.PLAYED], 5)
        assert wait_until(lambda: after == ["short"], 5)
        long: PlayCommand = cmd("long", 30.0)
        player.submit(long, audio)
        assert wait_until(lambda: rec.of("long") == [Outcome.PLAYING], 5)
    finally:
        player.stop()
    # Cut off by shutdown: no final report, so the agent keeps it to resume after restart.
    assert rec.of("long") == [Outcome.PLAYING]
    assert after == ["short", "long"]
