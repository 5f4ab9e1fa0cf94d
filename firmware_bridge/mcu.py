"""Typed client for the cluster's microcontroller (relays, volume, sensors, self-test).

The command codes and payload layouts here are the wire contract with the MCU
firmware; ``docs/serial-protocol.md`` lists them and the emulator imports them from
here. All multi-byte integers are big-endian.
"""

from __future__ import annotations

import enum
import logging
import struct
from dataclasses import dataclass
from typing import Protocol

from firmware_bridge.exceptions import McuResponseError
from firmware_bridge.framing import Frame

logger = logging.getLogger(__name__)

DEFAULT_MCU_ADDRESS = 0x01
RELAYS = (1, 2)


class Command(enum.IntEnum):
    """Command byte of MCU requests (and of the events the MCU sends)."""

    GET_FIRMWARE_VERSION = 0x01
    GET_RELAYS = 0x10
    SET_RELAY = 0x11
    GET_VOLUME = 0x12
    SET_VOLUME = 0x13
    READ_SENSORS = 0x20
    SELF_TEST = 0x21
    GET_LINK_COUNTERS = 0x22
    EVENT_LINE_STATE = 0x80


class LineState(enum.IntEnum):
    """State of the speaker line as the MCU measures it."""

    OK = 0
    OPEN = 1
    SHORT = 2


class SelfTestCheck(enum.IntEnum):
    """One check of the MCU self-test."""

    RELAY_1 = 1
    RELAY_2 = 2
    SUPPLY_VOLTAGE = 3
    TEMPERATURE = 4
    SPEAKER_LINE = 5


def _unpack(fmt: str, payload: bytes, what: str) -> tuple[int, ...]:
    try:
        return struct.unpack(fmt, payload)
    except struct.error:
        raise McuResponseError(
            f"{what}: expected {struct.calcsize(fmt)} payload bytes, got {payload.hex(' ')!r}"
        ) from None


def _flag(value: int, what: str) -> bool:
    if value not in (0, 1):
        raise McuResponseError(f"{what}: expected 0 or 1, got {value}")
    return bool(value)


@dataclass(frozen=True, slots=True)
class FirmwareVersion:
    """MCU firmware version ``major.minor.patch``."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def to_payload(self) -> bytes:
        """Wire form: three bytes."""
        return struct.pack(">BBB", self.major, self.minor, self.patch)

    @classmethod
    def from_payload(cls, payload: bytes) -> FirmwareVersion:
        """Parse the wire form; :class:`McuResponseError` if malformed."""
        return cls(*_unpack(">BBB", payload, "firmware version"))


@dataclass(frozen=True, slots=True)
class RelayState:
    """Power relays: relay 1 powers the amplifier, relay 2 connects the speaker line."""

    relay1: bool
    relay2: bool

    def __getitem__(self, relay: int) -> bool:
        if relay not in RELAYS:
            raise KeyError(relay)
        return self.relay1 if relay == 1 else self.relay2

    def to_payload(self) -> bytes:
        """Wire form: two bytes, 0 = off, 1 = on."""
        return bytes((int(self.relay1), int(self.relay2)))

    @classmethod
    def from_payload(cls, payload: bytes) -> RelayState:
        """Parse the wire form; :class:`McuResponseError` if malformed."""
        one, two = _unpack(">BB", payload, "relay state")
        return cls(_flag(one, "relay 1"), _flag(two, "relay 2"))


@dataclass(frozen=True, slots=True)
class SensorReadings:
    """One reading of the amplifier's sensors."""

    temperature_c: float
    supply_voltage_v: float
    amplifier_current_a: float
    line_state: LineState
    audio_present: bool

    _FORMAT = ">hHHBB"  # centi-°C (signed), mV, mA, line state, audio present

    def __post_init__(self) -> None:
        if not -40.0 <= self.temperature_c <= 150.0:
            raise ValueError(f"temperature {self.temperature_c} °C out of range -40..150")
        if not 0.0 <= self.supply_voltage_v <= 60.0:
            raise ValueError(f"supply voltage {self.supply_voltage_v} V out of range 0..60")
        if not 0.0 <= self.amplifier_current_a <= 20.0:
            raise ValueError(f"current {self.amplifier_current_a} A out of range 0..20")

    def to_payload(self) -> bytes:
        """Wire form: int16 centi-°C, uint16 mV, uint16 mA, line state, audio flag."""
        return struct.pack(
            self._FORMAT,
            round(self.temperature_c * 100),
            round(self.supply_voltage_v * 1000),
            round(self.amplifier_current_a * 1000),
            self.line_state,
            int(self.audio_present),
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> SensorReadings:
        """Parse the wire form; :class:`McuResponseError` if malformed or out of range."""
        centi_c, millivolt, milliamp, line, audio = _unpack(cls._FORMAT, payload, "sensors")
        try:
            return cls(
                temperature_c=centi_c / 100,
                supply_voltage_v=millivolt / 1000,
                amplifier_current_a=milliamp / 1000,
                line_state=LineState(line),
                audio_present=_flag(audio, "audio present"),
            )
        except ValueError as exc:
            raise McuResponseError(f"sensors: {exc} in {payload.hex(' ')}") from None


@dataclass(frozen=True, slots=True)
class SelfTestResult:
    """Outcome of every check the MCU ran, in the order it ran them."""

    checks: tuple[tuple[SelfTestCheck, bool], ...]

    @property
    def passed(self) -> bool:
        """True if every check passed."""
        return all(ok for _, ok in self.checks)

    @property
    def failed(self) -> tuple[SelfTestCheck, ...]:
        """The checks that failed."""
        return tuple(check for check, ok in self.checks if not ok)

    def to_payload(self) -> bytes:
        """Wire form: count, then (check id, 1 = pass / 0 = fail) per check."""
        out = bytearray([len(self.checks)])
        for check, ok in self.checks:
            out += bytes((check, int(ok)))
        return bytes(out)

    @classmethod
    def from_payload(cls, payload: bytes) -> SelfTestResult:
        """Parse the wire form; :class:`McuResponseError` if malformed."""
        if not payload or len(payload) != 1 + 2 * payload[0]:
            raise McuResponseError(f"self-test: malformed payload {payload.hex(' ')!r}")
        checks = []
        for index in range(payload[0]):
            code, ok = payload[1 + 2 * index], payload[2 + 2 * index]
            try:
                check = SelfTestCheck(code)
            except ValueError:
                raise McuResponseError(f"self-test: unknown check 0x{code:02x}") from None
            checks.append((check, _flag(ok, f"self-test {check.name}")))
        return cls(tuple(checks))


@dataclass(frozen=True, slots=True)
class McuLinkCounters:
    """The MCU's own view of the link since it booted."""

    rx_frames: int
    rx_errors: int
    duplicates: int
    tx_frames: int

    def to_payload(self) -> bytes:
        """Wire form: four uint32 (wrapping)."""
        return struct.pack(
            ">IIII",
            *(
                v & 0xFFFFFFFF
                for v in (self.rx_frames, self.rx_errors, self.duplicates, self.tx_frames)
            ),
        )

    @classmethod
    def from_payload(cls, payload: bytes) -> McuLinkCounters:
        """Parse the wire form; :class:`McuResponseError` if malformed."""
        return cls(*_unpack(">IIII", payload, "link counters"))


def validate_volume(percent: int) -> int:
    """Return ``percent`` if it is an int in 0..100, else raise ValueError."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ValueError(f"volume must be an integer percentage 0-100, got {percent!r}")
    return percent


def validate_relay(relay: int) -> int:
    """Return ``relay`` if it is 1 or 2, else raise ValueError."""
    if isinstance(relay, bool) or relay not in RELAYS:
        raise ValueError(f"relay must be 1 or 2, got {relay!r}")
    return relay


class RequestLink(Protocol):
    """What :class:`McuClient` needs from a link (``SerialLink`` provides it)."""

    def request(self, address: int, command: int, payload: bytes = b"") -> Frame:
        """Send a request and return the response frame."""
        ...


class McuClient:
    """The agent's microcontroller at ``address`` on ``link``.

    Every method is one request/response transaction and raises what the link raises
    (``LinkTimeoutError``, ``LinkDownError``, ``NakError``) or
    :class:`McuResponseError` for an answer that does not parse. Arguments are
    validated before anything is sent.
    """

    def __init__(self, link: RequestLink, address: int = DEFAULT_MCU_ADDRESS) -> None:
        self.link = link
        self.address = address

    def firmware_version(self) -> FirmwareVersion:
        """Firmware version of the MCU."""
        return FirmwareVersion.from_payload(self._call(Command.GET_FIRMWARE_VERSION))

    def relays(self) -> RelayState:
        """Current state of both power relays."""
        return RelayState.from_payload(self._call(Command.GET_RELAYS))

    def set_relay(self, relay: int, on: bool) -> RelayState:
        """Switch relay 1 or 2; returns both relays' state after the switch."""
        validate_relay(relay)
        state = RelayState.from_payload(self._call(Command.SET_RELAY, bytes((relay, int(on)))))
        if state[relay] != bool(on):
            raise McuResponseError(f"relay {relay} still {'off' if on else 'on'} after switching")
        return state

    def volume(self) -> int:
        """Current amplifier volume in percent."""
        return self._volume(self._call(Command.GET_VOLUME))

    def set_volume(self, percent: int) -> int:
        """Set the amplifier volume (0-100 %); returns the volume the MCU applied."""
        validate_volume(percent)
        applied = self._volume(self._call(Command.SET_VOLUME, bytes((percent,))))
        if applied != percent:
            raise McuResponseError(f"asked for volume {percent} %, MCU applied {applied} %")
        return applied

    def read_sensors(self) -> SensorReadings:
        """Temperature, supply voltage, amplifier current, speaker line and audio presence."""
        return SensorReadings.from_payload(self._call(Command.READ_SENSORS))

    def self_test(self) -> SelfTestResult:
        """Run the MCU self-test and return every check's pass/fail."""
        return SelfTestResult.from_payload(self._call(Command.SELF_TEST))

    def link_counters(self) -> McuLinkCounters:
        """Frames and errors the MCU has counted on its side of the link."""
        return McuLinkCounters.from_payload(self._call(Command.GET_LINK_COUNTERS))

    def _call(self, command: Command, payload: bytes = b"") -> bytes:
        return self.link.request(self.address, command, payload).payload

    @staticmethod
    def _volume(payload: bytes) -> int:
        (percent,) = _unpack(">B", payload, "volume")
        try:
            return validate_volume(percent)
        except ValueError as exc:
            raise McuResponseError(str(exc)) from None
