"""MCU payload codecs and client validation, without a port (a hand-written fake link)."""

from __future__ import annotations

import pytest

from firmware_bridge.exceptions import McuResponseError
from firmware_bridge.framing import Frame, FrameType
from firmware_bridge.mcu import (
    Command,
    FirmwareVersion,
    LineState,
    McuClient,
    McuLinkCounters,
    RelayState,
    SelfTestCheck,
    SelfTestResult,
    SensorReadings,
)


class ScriptedLink:
    """Answers each request with the next scripted payload and records what was sent."""

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[int, int, bytes]] = []

    def request(self, address: int, command: int, payload: bytes = b"") -> Frame:
        self.sent.append((address, command, payload))
        return Frame(FrameType.RESPONSE, address, 0, command, self.answers.pop(0))


def test_sensor_payload_is_byte_exact() -> None:
    readings = SensorReadings(41.25, 23.38, 2.48, LineState.OK, True)
    payload = bytes.fromhex("10 1d 5b 54 09 b0 00 01")
    assert readings.to_payload() == payload
    assert SensorReadings.from_payload(payload) == readings
    cold = SensorReadings.from_payload(bytes.fromhex("fc 18 5d c0 00 00 01 00"))
    assert cold == SensorReadings(-10.0, 24.0, 0.0, LineState.OPEN, False)


@pytest.mark.parametrize(
    "payload",
    [
        "10 1d 5b 54 09 b0 00",  # short
        "10 1d 5b 54 09 b0 03 01",  # line state 3
        "10 1d 5b 54 09 b0 00 02",  # audio flag 2
        "7f ff 5b 54 09 b0 00 01",  # 327.67 °C
        "10 1d ff ff 09 b0 00 01",  # 65.5 V
    ],
)
def test_bad_sensor_payloads_refused(payload: str) -> None:
    with pytest.raises(McuResponseError):
        SensorReadings.from_payload(bytes.fromhex(payload))


def test_self_test_payload() -> None:
    result = SelfTestResult(((SelfTestCheck.RELAY_1, True), (SelfTestCheck.SPEAKER_LINE, False)))
    assert result.to_payload() == bytes.fromhex("02 01 01 05 00")
    assert SelfTestResult.from_payload(result.to_payload()) == result
    assert not result.passed
    assert result.failed == (SelfTestCheck.SPEAKER_LINE,)
    for bad in ("", "02 01 01", "01 09 01", "01 01 02"):
        with pytest.raises(McuResponseError):
            SelfTestResult.from_payload(bytes.fromhex(bad))


def test_other_payloads_round_trip() -> None:
    assert FirmwareVersion.from_payload(b"\x01\x04\x02") == FirmwareVersion(1, 4, 2)
    assert str(FirmwareVersion(1, 4, 2)) == "1.4.2"
    assert RelayState.from_payload(b"\x01\x00") == RelayState(True, False)
    with pytest.raises(McuResponseError):
        RelayState.from_payload(b"\x01\x05")
    counters = McuLinkCounters(1, 2, 3, 2**32 + 4)
    assert McuLinkCounters.from_payload(counters.to_payload()) == McuLinkCounters(1, 2, 3, 4)


@pytest.mark.parametrize("volume", [-1, 101, 50.5, True, "50"])
def test_invalid_volume_never_sent(volume: object) -> None:
    link = ScriptedLink()
    with pytest.raises(ValueError, match="volume"):
        McuClient(link).set_volume(volume)  # type: ignore[arg-type]
    assert link.sent == []


@pytest.mark.parametrize("relay", [0, 3, True])
def test_invalid_relay_never_sent(relay: int) -> None:
    link = ScriptedLink()
    with pytest.raises(ValueError, match="relay"):
        McuClient(link).set_relay(relay, True)
    assert link.sent == []


def test_client_encodes_requests_and_checks_answers() -> None:
    link = ScriptedLink(b"\x01\x00", b"\x4b", b"\x00\x00", b"\x32", b"\x65")
    client = McuClient(link, address=0x05)
    assert client.set_relay(1, True) == RelayState(True, False)
    assert client.set_volume(75) == 75
    with pytest.raises(McuResponseError, match="still off"):
        client.set_relay(2, True)
    with pytest.raises(McuResponseError, match="applied 50"):
        client.set_volume(60)
    with pytest.raises(McuResponseError, match="0-100"):
        client.volume()
    assert link.sent == [
        (5, Command.SET_RELAY, b"\x01\x01"),
        (5, Command.SET_VOLUME, b"\x4b"),
        (5, Command.SET_RELAY, b"\x02\x01"),
        (5, Command.SET_VOLUME, b"\x3c"),
        (5, Command.GET_VOLUME, b""),
    ]
