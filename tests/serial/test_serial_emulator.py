"""The emulated amplifier, read through the real client over a pty."""

from __future__ import annotations

import pytest
from serial_support import FAST_RETRANSMIT

from firmware_bridge.exceptions import McuResponseError
from firmware_bridge.mcu import LineState, McuClient, SelfTestCheck
from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.seriallink import LinkState, SerialLink
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def playing(client: McuClient, emulator: McuEmulator, volume: int) -> None:
    client.set_relay(1, True)
    client.set_relay(2, True)
    client.set_volume(volume)
    emulator.unit(1).set_audio(True)


def test_idle_amplifier(link: SerialLink, emulator: McuEmulator) -> None:
    client = McuClient(link)
    off = client.read_sensors()
    assert off.amplifier_current_a == 0.0
    assert off.supply_voltage_v == pytest.approx(24.0)
    assert off.line_state is LineState.OK
    assert not off.audio_present
    client.set_relay(1, True)
    idle = client.read_sensors()
    assert 0.0 < idle.amplifier_current_a < 0.2


def test_current_diagnoses_the_speaker_line(link: SerialLink, emulator: McuEmulator) -> None:
    client = McuClient(link)
    playing(client, emulator, volume=80)
    healthy = client.read_sensors()
    assert healthy.audio_present
    assert healthy.amplifier_current_a > 2.0
    assert healthy.supply_voltage_v < 24.0  # sags under load
    assert client.self_test().passed

    emulator.unit(1).set_line_state(LineState.OPEN)
    open_line = client.read_sensors()
    assert open_line.line_state is LineState.OPEN
    assert open_line.amplifier_current_a < 0.1  # playing, but nothing draws power
    assert client.self_test().failed == (SelfTestCheck.SPEAKER_LINE,)

    emulator.unit(1).set_line_state(LineState.SHORT)
    short = client.read_sensors()
    assert short.amplifier_current_a >= 8.0
    assert SelfTestCheck.SPEAKER_LINE in client.self_test().failed

    client.set_relay(1, False)
    assert client.read_sensors().amplifier_current_a == 0.0


def test_current_follows_volume(link: SerialLink, emulator: McuEmulator) -> None:
    client = McuClient(link)
    playing(client, emulator, volume=20)
    quiet = client.read_sensors().amplifier_current_a
    client.set_volume(90)
    loud = client.read_sensors().amplifier_current_a
    assert loud > quiet + 1.5


def test_temperature_rises_while_playing_and_falls_when_off() -> None:
    # 600x: every real second is ten emulated minutes (thermal time constant 2 min).
    with (
        McuEmulator(seed=1, time_scale=600.0) as emulator,
        SerialLink(emulator.port, retransmit=FAST_RETRANSMIT) as link,
    ):
        assert link.wait_for_state(LinkState.CONNECTED, timeout=5)
        client = McuClient(link)
        start = client.read_sensors().temperature_c
        assert start == pytest.approx(30.0, abs=0.5)
        playing(client, emulator, volume=100)
        assert wait_until(lambda: client.read_sensors().temperature_c > start + 20, 10)
        hot = client.read_sensors().temperature_c
        client.set_relay(1, False)
        assert wait_until(lambda: client.read_sensors().temperature_c < hot - 15, 10)


def test_low_supply_and_stuck_relay_fail_self_test(link: SerialLink, emulator: McuEmulator) -> None:
    client = McuClient(link)
    unit = emulator.unit(1)
    unit.supply_voltage_v = 19.0
    unit.stuck_relays.add(2)
    result = client.self_test()
    assert set(result.failed) == {SelfTestCheck.SUPPLY_VOLTAGE, SelfTestCheck.RELAY_2}
    with pytest.raises(McuResponseError, match="relay 2 still off"):
        client.set_relay(2, True)


def test_mcu_counts_link_errors(link: SerialLink, emulator: McuEmulator) -> None:
    client = McuClient(link)
    emulator.faults.corrupt_probability = 0.05
    for volume in range(60):
        client.set_volume(volume)
    emulator.faults.corrupt_probability = 0.0
    counters = client.link_counters()
    assert counters.rx_errors == emulator.bad_frames > 0
    assert counters.duplicates == emulator.unit(1).duplicates > 0
    assert counters.rx_frames >= 61
