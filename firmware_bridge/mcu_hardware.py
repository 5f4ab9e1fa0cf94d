"""The box's hardware through its microcontroller over the serial link.

:class:`McuHardware` maps the MCU commands of ``docs/serial-protocol.md`` onto the
:class:`~firmware_bridge.abc.Hardware` interface that heartbeats, diagnosis and remote
control use, so a cluster's telemetry is what its MCU measures. It serves two setups:

- a cluster agent and its own MCU: give ``port``; the hardware owns a point-to-point
  :class:`~firmware_bridge.seriallink.SerialLink` (opened in :meth:`start`);
- one receiver on the serial gateway's RS-485 bus: give the shared ``link`` (owned by the
  gateway) and the receiver's ``address``.

Every serial failure becomes a :class:`~firmware_bridge.exceptions.HardwareError` whose
message tells the technician what to check. The link's state (port unplugged, unit not
answering) is reported by :meth:`McuHardware.control_link`, which the heartbeat carries
and the controller turns into the ``control_link`` alarm.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from firmware_bridge.abc import (
    ControlLinkState,
    Hardware,
    LinkCounters,
    SelfTestResult,
    SensorReadings,
)
from firmware_bridge.backoff import Backoff
from firmware_bridge.exceptions import (
    HardwareError,
    LinkDownError,
    LinkTimeoutError,
    McuResponseError,
    NakError,
    SerialLinkError,
)
from firmware_bridge.mcu import DEFAULT_MCU_ADDRESS, LineState, McuClient
from firmware_bridge.seriallink import (
    DEFAULT_RECONNECT,
    DEFAULT_RETRANSMIT,
    LinkState,
    SerialLink,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_LINE = {LineState.OK: "ok", LineState.OPEN: "open", LineState.SHORT: "short"}


class McuHardware(Hardware):
    """A :class:`Hardware` whose relays, volume, sensors and self-test live on an MCU.

    Give either ``port`` (this object owns the link) or ``link`` (shared, owned by the
    caller). ``cache_s`` lets several sensor reads within that time share one bus poll
    (a gateway's bus is slow and shared); ``recheck_s`` is how long, after a unit failed to
    answer, routine sensor polls report the failure without asking again, so one dead
    receiver does not hold the bus for everyone else. Commands (relay, volume, self-test)
    always try.
    """

    name = "mcu"

    def __init__(
        self,
        port: str | None = None,
        *,
        link: SerialLink | None = None,
        address: int = DEFAULT_MCU_ADDRESS,
        baudrate: int = 115200,
        retransmit: Backoff = DEFAULT_RETRANSMIT,
        reconnect: Backoff = DEFAULT_RECONNECT,
        cache_s: float = 0.0,
        recheck_s: float = 5.0,
        connect_wait_s: float = 1.0,
    ) -> None:
        if (port is None) == (link is None):
            raise ValueError("give McuHardware either a port to open or a shared link")
        if not 1 <= address <= 0xF7:
            raise ValueError(f"MCU address must be 1-247, got {address}")
        self.port = port if port is not None else link.port  # type: ignore[union-attr]
        self.address = address
        self.baudrate = baudrate
        self.retransmit = retransmit
        self.reconnect = reconnect
        self.cache_s = cache_s
        self.recheck_s = recheck_s
        self.connect_wait_s = connect_wait_s
        self.firmware = ""
        self._shared = link
        self._link: SerialLink | None = link
        self._lock = threading.Lock()
        self._cached: tuple[float, SensorReadings] | None = None
        self._fault: str | None = None
        self._quiet_until = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Open the port (own link only) and wait briefly for it; a missing port is an alarm."""
        if self._shared is None:
            self._link = SerialLink(
                self.port,
                baudrate=self.baudrate,
                retransmit=self.retransmit,
                reconnect=self.reconnect,
            )
            self._link.start()
        if not self.link.wait_for_state(LinkState.CONNECTED, self.connect_wait_s):
            logger.warning(
                "MCU port %s not open yet; retrying in the background (alarm raised)", self.port
            )

    def close(self) -> None:
        """Close the port if this object opened it."""
        if self._shared is None and self._link is not None:
            self._link.stop()

    @property
    def link(self) -> SerialLink:
        """The serial link in use (after :meth:`start` for an owned one)."""
        if self._link is None:
            raise HardwareError(f"MCU on {self.port} is not started")
        return self._link

    @property
    def where(self) -> str:
        """The unit, for messages: ``unit 0x02 on /dev/ttyUSB0``."""
        return f"unit 0x{self.address:02x} on {self.port}"

    # -- Hardware ---------------------------------------------------------------------------

    def read_sensors(self) -> SensorReadings:
        now = time.monotonic()
        with self._lock:
            cached = self._cached
            quiet = self._fault if now < self._quiet_until else None
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        if quiet is not None and self.link.state is LinkState.CONNECTED:
            raise HardwareError(quiet)

        def poll(mcu: McuClient) -> SensorReadings:
            relays = mcu.relays()
            volume = mcu.volume()
            sensors = mcu.read_sensors()
            if not self.firmware:
                self.firmware = str(mcu.firmware_version())
            return SensorReadings(
                amp_power=relays.relay1,
                volume=volume,
                amp_temp_c=round(sensors.temperature_c, 1),
                supply_v=round(sensors.supply_voltage_v, 2),
                amp_current_a=round(sensors.amplifier_current_a, 3),
                line=_LINE.get(sensors.line_state, "unknown"),
            )

        readings = self._do("read the sensors", poll)
        with self._lock:
            self._cached = (time.monotonic(), readings)
        return readings

    def set_volume(self, pct: int) -> int:
        if not 0 <= pct <= 100:
            raise HardwareError(f"volume {pct} is not between 0 and 100")
        self._forget()
        return self._do(f"set the volume to {pct} %", lambda mcu: mcu.set_volume(pct))

    def set_amplifier_power(self, on: bool) -> bool:
        """Close (on) or open (off) both relays: relay 1 powers the amplifier, relay 2
        connects the speaker line. On: amplifier first, line second; off: the reverse, so
        the horns never see the amplifier's switch-on thump. Returns relay 1's state."""

        def switch(mcu: McuClient) -> bool:
            order = (1, 2) if on else (2, 1)
            state = None
            for relay in order:
                state = mcu.set_relay(relay, on)
            assert state is not None
            return state.relay1

        self._forget()
        return self._do(f"switch the amplifier {'on' if on else 'off'}", switch)

    def relays_closed(self) -> bool:
        """True if both relays are closed (the receiver is on air)."""
        state = self._do("read the relays", lambda mcu: mcu.relays())
        return state.relay1 and state.relay2

    def self_test(self) -> SelfTestResult:
        result = self._do("run the self-test", lambda mcu: mcu.self_test())
        checks = {check.name.lower(): ok for check, ok in result.checks}
        failed = ", ".join(check.name.lower() for check in result.failed)
        return SelfTestResult(
            ok=result.passed, checks=checks, detail=f"{failed} failed" if failed else ""
        )

    def link_counters(self) -> LinkCounters:
        if self._link is None:
            return LinkCounters()
        st = self._link.stats
        return LinkCounters(
            rx_frames=st.frames_received,
            rx_errors=st.bad_frames,
            timeouts=st.requests_failed,
            retransmissions=st.retransmissions,
        )

    def control_link(self) -> ControlLinkState:
        link = self._link
        if link is None or link.state is LinkState.STOPPED:
            return ControlLinkState(False, f"serial link to {self.where} is not running")
        if link.state is not LinkState.CONNECTED:
            return ControlLinkState(
                False, f"serial port {self.port} is unavailable (unplugged?): reconnecting"
            )
        with self._lock:
            fault = self._fault
        if fault is not None:
            return ControlLinkState(False, fault)
        return ControlLinkState(True)

    # -- helpers ----------------------------------------------------------------------------

    def _forget(self) -> None:
        with self._lock:
            self._cached = None

    def _do(self, what: str, action: Callable[[McuClient], _T]) -> _T:
        link = self.link
        if link.state is not LinkState.CONNECTED:
            raise HardwareError(
                f"cannot {what}: serial port {self.port} is unavailable (unplugged?); "
                "check the cable or USB adapter"
            )
        try:
            result = action(McuClient(link, self.address))
        except LinkTimeoutError as exc:
            why = (
                f"{self.where} does not answer ({exc}); check the receiver's power, "
                "its address and the bus wiring"
            )
            with self._lock:
                self._fault = why
                self._quiet_until = time.monotonic() + self.recheck_s
                self._cached = None
            raise HardwareError(f"cannot {what}: {why}") from None
        except LinkDownError as exc:
            raise HardwareError(f"cannot {what}: {exc}") from None
        except NakError as exc:
            raise HardwareError(f"{self.where} refused to {what}: {exc}") from None
        except (McuResponseError, SerialLinkError) as exc:
            raise HardwareError(f"cannot {what}: {self.where}: {exc}") from None
        with self._lock:
            if self._fault is not None:
                logger.info("%s answers again", self.where)
            self._fault = None
            self._quiet_until = 0.0
        return result
