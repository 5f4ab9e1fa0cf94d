"""Hardware implementations: a simulated box with fault injection, a host without an MCU,
and :class:`HardwareSink`, the audio path that keeps the hardware told about playback.

The simulated amplifier follows the physics a technician relies on: it draws current only
when its relay is closed, more while audio plays into a healthy line, next to nothing into
an open line (a cut cable or dead horn) and far too much into a short. That is how the
diagnostic test tone finds a dead speaker line.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from firmware_bridge.abc import (
    AudioSink,
    Hardware,
    LinkCounters,
    PlayResult,
    SelfTestResult,
    SensorReadings,
)
from firmware_bridge.exceptions import HardwareError, SinkError
from firmware_bridge.sinks import SimulatedSink

logger = logging.getLogger(__name__)

NOMINAL_SUPPLY_V = 13.6  # 12 V lead-acid battery on float charge
IDLE_CURRENT_A = 0.25  # amplifier quiescent draw, relay closed, no audio
FULL_SCALE_CURRENT_A = 2.0  # extra draw at 100 % volume into a healthy line
SHORT_CURRENT_A = 6.0  # what a shorted line pulls before the amplifier protects itself


@dataclass(frozen=True)
class Faults:
    """Faults injected into a :class:`SimulatedHardware`; all off by default."""

    overheat_c: float | None = None  # amplifier temperature pinned at this value
    line: str | None = None  # "open" or "short"
    supply_v: float | None = None  # power sag: supply voltage pinned at this value
    clock_skew_s: float = 0.0  # the box's clock runs this far ahead (negative: behind)
    stuck_playback: bool = False  # the player never finishes; the watchdog fails it
    free_storage_mb: float | None = None
    self_test_fail: str | None = None  # name of the failing self-test check
    link_errors: int = 0  # serial-link errors added per sensor read
    hang: bool = False  # sensor reads block (a wedged MCU link): heartbeats stop
    relay_stuck: bool = False  # welded relay contacts: switching does nothing


FAULT_NAMES = (
    "overheat",
    "line_open",
    "line_short",
    "power_sag",
    "clock_drift",
    "stuck_playback",
    "storage_low",
    "self_test_fail",
    "link_errors",
    "hang",
    "relay_stuck",
)


class SimulatedHardware(Hardware):
    """A pretend receiver box: relay, volume, sensors, self-test, faults on demand."""

    name = "simulated"

    def __init__(
        self, *, firmware: str = "sim-1.0.0", seed: int | None = None, amp_power: bool = True
    ) -> None:
        self.firmware = firmware
        self.faults = Faults()
        self._amp_power = amp_power
        self._volume = 70
        self._playing = False
        self._counters = LinkCounters()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._unhang = threading.Event()
        self._unhang.set()
        self.reboots = 0

    # -- fault injection ------------------------------------------------------------------

    def inject(self, fault: str, value: float | None = None) -> None:
        """Turn on a fault by name (see :data:`FAULT_NAMES`), with an optional value."""
        f = self.faults
        if fault == "overheat":
            f = replace(f, overheat_c=85.0 if value is None else value)
        elif fault in ("line_open", "line_short"):
            f = replace(f, line=fault.removeprefix("line_"))
        elif fault == "power_sag":
            f = replace(f, supply_v=10.4 if value is None else value)
        elif fault == "clock_drift":
            f = replace(f, clock_skew_s=30.0 if value is None else value)
        elif fault == "stuck_playback":
            f = replace(f, stuck_playback=True)
        elif fault == "storage_low":
            f = replace(f, free_storage_mb=20.0 if value is None else value)
        elif fault == "self_test_fail":
            f = replace(f, self_test_fail="amplifier_bias")
        elif fault == "link_errors":
            f = replace(f, link_errors=5 if value is None else int(value))
        elif fault == "hang":
            f = replace(f, hang=True)
            self._unhang.clear()
        elif fault == "relay_stuck":
            f = replace(f, relay_stuck=True)
        else:
            raise HardwareError(f"unknown fault {fault!r}; known: {', '.join(FAULT_NAMES)}")
        self.faults = f
        logger.info("simulated hardware: fault %s injected", fault)

    def clear(self, fault: str | None = None) -> None:
        """Clear one fault by name, or all of them."""
        if fault is None:
            self.faults = Faults()
        else:
            names = {
                "overheat": {"overheat_c": None},
                "line_open": {"line": None},
                "line_short": {"line": None},
                "power_sag": {"supply_v": None},
                "clock_drift": {"clock_skew_s": 0.0},
                "stuck_playback": {"stuck_playback": False},
                "storage_low": {"free_storage_mb": None},
                "self_test_fail": {"self_test_fail": None},
                "link_errors": {"link_errors": 0},
                "hang": {"hang": False},
                "relay_stuck": {"relay_stuck": False},
            }
            if fault not in names:
                raise HardwareError(f"unknown fault {fault!r}; known: {', '.join(FAULT_NAMES)}")
            self.faults = replace(self.faults, **names[fault])  # type: ignore[arg-type]
        if not self.faults.hang:
            self._unhang.set()

    # -- Hardware ---------------------------------------------------------------------------

    def close(self) -> None:
        self._unhang.set()

    def _wedged(self) -> None:
        if not self._unhang.is_set():
            # A wedged link blocks every call; bounded so shutdown never hangs for good.
            self._unhang.wait(30)

    def read_sensors(self) -> SensorReadings:
        self._wedged()
        f = self.faults
        with self._lock:
            if f.link_errors:
                counters = self._counters
                self._counters = replace(
                    counters,
                    rx_errors=counters.rx_errors + f.link_errors,
                    retransmissions=counters.retransmissions + 1,
                )
            self._counters = replace(self._counters, rx_frames=self._counters.rx_frames + 1)
            power, volume, playing = self._amp_power, self._volume, self._playing
        line = f.line or "ok"
        temp = f.overheat_c if f.overheat_c is not None else (46.0 if playing else 38.0)
        temp += self._rng.uniform(-0.3, 0.3)
        supply = f.supply_v if f.supply_v is not None else NOMINAL_SUPPLY_V
        supply += self._rng.uniform(-0.05, 0.05)
        current = self.amplifier_current(power, playing, volume, line)
        return SensorReadings(
            amp_power=power,
            volume=volume,
            amp_temp_c=round(temp, 1),
            supply_v=round(supply, 2),
            amp_current_a=round(current, 3),
            line=line,
            rssi_dbm=-71 + self._rng.randint(-2, 2),
        )

    @staticmethod
    def amplifier_current(power: bool, playing: bool, volume: int, line: str) -> float:
        """The draw the amplifier's current sensor would read in these conditions."""
        if not power:
            return 0.0
        if not playing:
            return IDLE_CURRENT_A
        if line == "open":
            return IDLE_CURRENT_A + 0.01  # nothing to drive: only the quiescent draw
        if line == "short":
            return SHORT_CURRENT_A
        return IDLE_CURRENT_A + FULL_SCALE_CURRENT_A * max(volume, 5) / 100

    def set_volume(self, pct: int) -> int:
        if not 0 <= pct <= 100:
            raise HardwareError(f"volume {pct} is not between 0 and 100")
        self._wedged()
        with self._lock:
            self._volume = pct
        return pct

    def set_amplifier_power(self, on: bool) -> bool:
        self._wedged()
        with self._lock:
            if not self.faults.relay_stuck:
                self._amp_power = on
            return self._amp_power

    def self_test(self) -> SelfTestResult:
        self._wedged()
        names = ("ram", "flash_crc", "relay_driver", "amplifier_bias", "sensor_bus")
        failing = self.faults.self_test_fail
        checks = {n: n != failing for n in names}
        ok = all(checks.values())
        return SelfTestResult(ok=ok, checks=checks, detail="" if ok else f"{failing} failed")

    def link_counters(self) -> LinkCounters:
        with self._lock:
            return self._counters

    def free_storage_mb(self, path: Path) -> float | None:
        if self.faults.free_storage_mb is not None:
            return self.faults.free_storage_mb
        return super().free_storage_mb(path)

    def now(self) -> datetime:
        return super().now() + timedelta(seconds=self.faults.clock_skew_s)

    def on_playback(self, active: bool) -> None:
        with self._lock:
            self._playing = active

    def reboot(self) -> bool:
        self.reboots += 1
        with self._lock:
            self._counters = LinkCounters()
            self._playing = False
        return False

    @property
    def stuck(self) -> bool:
        """Whether playback is set to hang (read by :class:`FaultySimulatedSink`)."""
        return self.faults.stuck_playback


class HostHardware(Hardware):
    """A box with no microcontroller: volume kept in software, no relay, no sensors."""

    name = "host"

    def __init__(self) -> None:
        self._volume = 70

    def read_sensors(self) -> SensorReadings:
        return SensorReadings(volume=self._volume)

    def set_volume(self, pct: int) -> int:
        if not 0 <= pct <= 100:
            raise HardwareError(f"volume {pct} is not between 0 and 100")
        self._volume = pct
        return pct

    def set_amplifier_power(self, on: bool) -> bool:
        raise HardwareError("this box has no amplifier relay (no microcontroller attached)")

    def self_test(self) -> SelfTestResult:
        return SelfTestResult(
            ok=False, checks={}, detail="no microcontroller on this box", present=False
        )


class FaultySimulatedSink(SimulatedSink):
    """A :class:`SimulatedSink` whose player hangs while ``stuck_playback`` is injected.

    A hung player is cut off by a watchdog after ``2 x duration + grace`` (scaled like
    the audio), as :class:`~firmware_bridge.sinks.SystemPlayerSink` does, and reported
    as a failure.
    """

    def __init__(
        self,
        hardware: SimulatedHardware,
        log_path: Path | None = None,
        *,
        time_scale: float = 1.0,
        grace_s: float = 0.5,
    ) -> None:
        super().__init__(log_path, time_scale=time_scale)
        self.hardware = hardware
        self.grace_s = grace_s

    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        if not self.hardware.stuck:
            return super().play(path, duration_s=duration_s, stop=stop)
        watchdog = duration_s * 2 * self.time_scale + self.grace_s
        if stop.wait(watchdog):
            return PlayResult.STOPPED
        raise SinkError(f"player hung: no end of playback {watchdog:.1f} s after start")


class HardwareSink(AudioSink):
    """The agent's audio path: tells the hardware when audio plays, closes the relay for it.

    With ``auto_power`` an amplifier switched off by the technician is powered for the
    duration of each item and switched off again after: off means no hum between
    broadcasts, not a silenced flood warning. A diagnostic test tone never delays a
    broadcast: a broadcast arriving during the tone stops the tone first.
    """

    def __init__(self, inner: AudioSink, hardware: Hardware, *, auto_power: bool = True) -> None:
        self.inner = inner
        self.hardware = hardware
        self.auto_power = auto_power
        self.name = inner.name
        self._lock = threading.Lock()
        self._tone_stop: threading.Event | None = None
        self.active = False
        # The box's own volume while an item plays at its own (an emergency's), to return to.
        self._volume_lock = threading.Lock()
        self._saved_volume: int | None = None
        self._item_volume = False

    def start(self) -> None:
        self.inner.start()

    def close(self) -> None:
        self.inner.close()

    def set_volume(self, percent: int) -> None:
        try:
            self.hardware.set_volume(percent)
        except HardwareError as exc:
            logger.warning("could not set the amplifier volume to %d %%: %s", percent, exc)
        self.inner.set_volume(percent)

    def set_box_volume(self, percent: int) -> int:
        """Set the box's own volume (a technician's command); return the volume in effect.

        It takes effect at once; while an item plays at its own volume it is also what the
        box returns to afterwards.
        """
        in_effect = self.hardware.set_volume(percent)
        self.inner.set_volume(in_effect)
        with self._volume_lock:
            if self._item_volume:
                self._saved_volume = in_effect
        return in_effect

    def set_item_volume(self, percent: int) -> None:
        """Play the next item at ``percent``; :meth:`restore_volume` returns to the box's own."""
        with self._volume_lock:
            if not self._item_volume:
                try:
                    self._saved_volume = self.hardware.read_sensors().volume
                except HardwareError as exc:
                    logger.warning("cannot read the volume to restore it later: %s", exc)
                    self._saved_volume = None
                self._item_volume = True
        self.set_volume(percent)

    def restore_volume(self) -> None:
        """After an item with its own volume: back to the volume the box had before it."""
        with self._volume_lock:
            saved, had = self._saved_volume, self._item_volume
            self._saved_volume, self._item_volume = None, False
        if had and saved is not None:
            self.set_volume(saved)

    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        tone = self._tone_stop
        if tone is not None:
            tone.set()
        with self._lock:
            return self._play_locked(path, duration_s, stop)

    def play_tone(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        """Play a diagnostic tone; it yields to any broadcast that arrives meanwhile."""
        if not self._lock.acquire(timeout=0.1):
            return PlayResult.STOPPED
        try:
            self._tone_stop = stop
            return self._play_locked(path, duration_s, stop)
        finally:
            self._tone_stop = None
            self._lock.release()

    def _play_locked(self, path: Path, duration_s: float, stop: threading.Event) -> PlayResult:
        switched_on = False
        if self.auto_power:
            try:
                if self.hardware.read_sensors().amp_power is False:
                    self.hardware.set_amplifier_power(True)
                    switched_on = True
            except HardwareError as exc:
                logger.warning("could not close the amplifier relay before playback: %s", exc)
        self.active = True
        self.hardware.on_playback(True)
        try:
            return self.inner.play(path, duration_s=duration_s, stop=stop)
        finally:
            self.hardware.on_playback(False)
            self.active = False
            if switched_on:
                try:
                    self.hardware.set_amplifier_power(False)
                except HardwareError as exc:
                    logger.warning("could not open the amplifier relay after playback: %s", exc)
