"""Interfaces of the cluster side that have several implementations."""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path


class PlayResult(StrEnum):
    """How a call to :meth:`AudioSink.play` ended."""

    COMPLETED = "completed"
    STOPPED = "stopped"


class AudioSink(ABC):
    """Where a cluster's audio goes: a real player, or a simulated amplifier."""

    name: str = "sink"

    def start(self) -> None:  # noqa: B027 - optional hook, most sinks need none
        """Acquire what the sink needs (devices, processes)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` acquired."""

    def set_volume(self, percent: int) -> None:  # noqa: B027 - optional hook
        """Set the output volume (0-100) for what plays next; sinks without one ignore it."""

    @abstractmethod
    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        """Play ``path`` to the end, or until ``stop`` is set; raise ``SinkError`` on failure."""


# -- hardware of the receiver box -----------------------------------------------------------
# Plain dataclasses so the MCU-backed implementation maps its serial replies onto them.


@dataclass(frozen=True)
class SensorReadings:
    """One reading of the box's sensors; ``None`` where the box has no such sensor."""

    amp_power: bool | None = None
    volume: int | None = None
    amp_temp_c: float | None = None
    supply_v: float | None = None
    amp_current_a: float | None = None
    line: str = "unknown"  # ok | open | short | unknown
    rssi_dbm: int | None = None


@dataclass(frozen=True)
class SelfTestResult:
    """The microcontroller's self-test: ``ok`` and one line per failed check.

    ``present`` False means the box has no microcontroller: nothing was tested.
    """

    ok: bool
    checks: dict[str, bool] = field(default_factory=dict)
    detail: str = ""
    present: bool = True


@dataclass(frozen=True)
class LinkCounters:
    """Error counters of the box's links (serial bus to the MCU, modem)."""

    rx_frames: int = 0
    rx_errors: int = 0  # frames dropped for a bad CRC or framing
    timeouts: int = 0
    retransmissions: int = 0


@dataclass(frozen=True)
class ControlLinkState:
    """The serial link to the box's microcontroller: ``up``, and why not when it is down."""

    up: bool
    detail: str = ""


class Hardware(ABC):
    """What the agent reads and switches on the box: sensors, relay, volume, self-test.

    Implementations: :class:`~firmware_bridge.hardware.SimulatedHardware` (with fault
    injection), :class:`~firmware_bridge.hardware.HostHardware` (a box with no MCU), and
    the MCU-backed one over the serial link. Methods may block briefly (a serial round
    trip) and raise ``HardwareError`` with a message for the technician.
    """

    name: str = "hardware"
    firmware: str = ""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Open what the hardware needs (serial port)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`start` opened."""

    @abstractmethod
    def read_sensors(self) -> SensorReadings:
        """Read every sensor once."""

    @abstractmethod
    def set_volume(self, pct: int) -> int:
        """Set the amplifier volume (0-100); return the volume now in effect."""

    @abstractmethod
    def set_amplifier_power(self, on: bool) -> bool:
        """Switch the amplifier's mains relay; return the relay state now in effect."""

    @abstractmethod
    def self_test(self) -> SelfTestResult:
        """Run the microcontroller's self-test."""

    def link_counters(self) -> LinkCounters:
        """Error counters of the control link (zeros when there is none)."""
        return LinkCounters()

    def free_storage_mb(self, path: Path) -> float | None:
        """Free space where the agent keeps its audio, in MB."""
        try:
            st = os.statvfs(path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize / 1e6

    def now(self) -> datetime:
        """The box's own clock (a drifting RTC shows here)."""
        return datetime.now(UTC)

    def on_playback(self, active: bool) -> None:  # noqa: B027 - optional hook
        """Told when audio starts and stops (simulations model the amplifier's draw)."""

    def reboot(self) -> bool:
        """Restart the box; return True if the power will be cut (the process dies).

        False means the agent restarts itself in place (reconnects with a new boot id).
        """
        return False

    def control_link(self) -> ControlLinkState | None:
        """State of the control link to the MCU; None when the box has no such link."""
        return None
