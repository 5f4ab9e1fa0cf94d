"""MCU emulator at the far end of a real pty pair, with fault injection.

One :class:`McuEmulator` is one serial bus: a pty whose slave side is reached through
a stable symlink (``<dir>/ttyMCU``, like ``/dev/serial/by-id/...``), with one or more
:class:`EmulatedAmplifier` units answering at their own addresses (several units make
an emulated multi-drop RS-485 bus for the gateway).

Unplug is emulated the way a USB adapter disappears: the pty's master side is closed
(the open slave now fails reads with "returned no data" and writes with EIO) and the
symlink is removed, so reopening fails with "No such file" until :meth:`replug`
creates a new pty and points the symlink at it.

The emulator is a test and demo tool; it uses the real framing and MCU codecs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import queue
import random
import select
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from firmware_bridge.exceptions import FrameError
from firmware_bridge.framing import (
    BROADCAST_ADDRESS,
    Frame,
    FrameDecoder,
    FrameType,
    NakReason,
)
from firmware_bridge.mcu import (
    Command,
    FirmwareVersion,
    LineState,
    McuLinkCounters,
    RelayState,
    SelfTestCheck,
    SelfTestResult,
    SensorReadings,
)

logger = logging.getLogger(__name__)

PORT_NAME = "ttyMCU"
DEFAULT_FIRMWARE = FirmwareVersion(1, 4, 2)


@dataclass
class Faults:
    """Faults to inject; change the fields at any time, they apply to the next frame."""

    corrupt_probability: float = 0.0
    """Chance that each byte, in either direction, is replaced by a different value."""
    drop_request_probability: float = 0.0
    """Chance that a well-formed frame from the master (request or ACK) is lost."""
    drop_response_probability: float = 0.0
    """Chance that an answer is executed but lost on the way back."""
    no_answer: bool = False
    """Units neither execute nor answer (powered off, wrong address, cut bus)."""
    answer_delay: float = 0.0
    """Seconds a unit waits before answering (a slow MCU)."""


@dataclass(frozen=True, slots=True)
class ExecutedCommand:
    """A request that a unit actually executed (never logged for duplicates or NAKs)."""

    address: int
    seq: int
    command: int
    payload: bytes


class EmulatedAmplifier:
    """One receiver box: relays, volume, a thermal model, a speaker line, sensors.

    Relay 1 powers the amplifier, relay 2 connects the speaker line. ``audio_present``
    says whether audio is being fed to the amplifier. ``time_scale`` speeds the thermal
    model up for demos (10 = ten emulated seconds per real second).
    """

    QUIESCENT_CURRENT_A = 0.08
    FULL_LOAD_CURRENT_A = 3.0
    SHORT_CIRCUIT_CURRENT_A = 8.0
    SOURCE_RESISTANCE_OHM = 0.25

    def __init__(
        self,
        address: int,
        *,
        firmware: FirmwareVersion = DEFAULT_FIRMWARE,
        ambient_c: float = 30.0,
        supply_voltage_v: float = 24.0,
        thermal_time_constant_s: float = 120.0,
        time_scale: float = 1.0,
    ) -> None:
        self.address = address
        self.firmware = firmware
        self.ambient_c = ambient_c
        self.supply_voltage_v = supply_voltage_v
        self.thermal_time_constant_s = thermal_time_constant_s
        self.time_scale = time_scale
        self.relays = [False, False]
        self.volume = 50
        self.audio_present = False
        self.line_state = LineState.OK
        self.stuck_relays: set[int] = set()
        self.rx_frames = 0
        self.rx_errors = 0
        self.duplicates = 0
        self.tx_frames = 0
        self._temperature_c = ambient_c
        self._updated = time.monotonic()
        self._last: tuple[tuple[int, int, bytes], Frame | None] | None = None
        self._last_broadcast: tuple[int, int, bytes] | None = None
        self._lock = threading.RLock()

    # -- physics ---------------------------------------------------------------------

    @property
    def amplifier_on(self) -> bool:
        """Relay 1 powers the amplifier."""
        return self.relays[0]

    @property
    def driving_line(self) -> bool:
        """Amplifier on, line connected, audio playing."""
        return self.relays[0] and self.relays[1] and self.audio_present

    @property
    def current_a(self) -> float:
        """Amplifier supply current: ~0 A beyond quiescent on an open line."""
        if not self.amplifier_on:
            return 0.0
        if not self.driving_line:
            return self.QUIESCENT_CURRENT_A
        if self.line_state is LineState.SHORT:
            return self.SHORT_CIRCUIT_CURRENT_A
        if self.line_state is LineState.OPEN:
            return self.QUIESCENT_CURRENT_A
        return self.QUIESCENT_CURRENT_A + self.FULL_LOAD_CURRENT_A * self.volume / 100

    @property
    def voltage_v(self) -> float:
        """Supply voltage, sagging under load."""
        return max(0.0, self.supply_voltage_v - self.SOURCE_RESISTANCE_OHM * self.current_a)

    @property
    def temperature_c(self) -> float:
        """Amplifier heatsink temperature (first-order thermal model)."""
        with self._lock:
            self._advance()
            return self._temperature_c

    def _target_temperature(self) -> float:
        if not self.amplifier_on:
            return self.ambient_c
        # Idle amplifier warms a little; dissipation grows with the current drawn.
        return self.ambient_c + 6.0 + 9.0 * self.current_a

    def _advance(self) -> None:
        now = time.monotonic()
        elapsed = (now - self._updated) * self.time_scale
        self._updated = now
        target = self._target_temperature()
        blend = 1.0 - math.exp(-elapsed / self.thermal_time_constant_s)
        self._temperature_c += (target - self._temperature_c) * blend

    def _change(self, update: Callable[[], None]) -> None:
        # The thermal model integrates up to "now" under the old conditions first.
        with self._lock:
            self._advance()
            update()

    def set_audio(self, present: bool) -> None:
        """Feed (or stop feeding) audio to the amplifier."""
        self._change(lambda: setattr(self, "audio_present", present))

    def set_line_state(self, state: LineState) -> None:
        """Inject a speaker line fault (or clear it with ``LineState.OK``)."""
        self._change(lambda: setattr(self, "line_state", state))

    def sensors(self) -> SensorReadings:
        """What the MCU would report now."""
        with self._lock:
            return SensorReadings(
                temperature_c=round(self.temperature_c, 2),
                supply_voltage_v=round(self.voltage_v, 3),
                amplifier_current_a=round(self.current_a, 3),
                line_state=self.line_state,
                audio_present=self.audio_present,
            )

    def self_test(self) -> SelfTestResult:
        """Run every check against the current (possibly faulty) state."""
        with self._lock:
            return SelfTestResult(
                (
                    (SelfTestCheck.RELAY_1, 1 not in self.stuck_relays),
                    (SelfTestCheck.RELAY_2, 2 not in self.stuck_relays),
                    (SelfTestCheck.SUPPLY_VOLTAGE, 21.6 <= self.voltage_v <= 26.4),
                    (SelfTestCheck.TEMPERATURE, self.temperature_c < 80.0),
                    # The MCU measures line impedance with a pilot tone, audio or not.
                    (SelfTestCheck.SPEAKER_LINE, self.line_state is LineState.OK),
                )
            )

    # -- protocol --------------------------------------------------------------------

    def handle(self, frame: Frame, executed: Callable[[ExecutedCommand], None]) -> Frame | None:
        """Answer one REQUEST addressed to this unit or broadcast; None means stay silent."""
        with self._lock:
            self.rx_frames += 1
            key = (frame.seq, frame.command, frame.payload)
            if frame.address == BROADCAST_ADDRESS:
                if key == self._last_broadcast:
                    self.duplicates += 1
                    return None
                self._last_broadcast = key
                self._execute(frame, executed)
                return None
            if self._last is not None and self._last[0] == key:
                # A retransmission: the answer was lost, not the request. Re-answer, do
                # not execute again.
                self.duplicates += 1
                return self._last[1]
            answer = self._execute(frame, executed)
            self._last = (key, answer)
            return answer

    def _execute(self, frame: Frame, executed: Callable[[ExecutedCommand], None]) -> Frame:
        try:
            payload = self._run(frame.command, frame.payload)
        except _Refused as refused:
            logger.info("unit 0x%02x refuses %s: %s", self.address, frame, refused.reason.name)
            return Frame(
                FrameType.NAK, self.address, frame.seq, frame.command, bytes((refused.reason,))
            )
        executed(ExecutedCommand(frame.address, frame.seq, frame.command, frame.payload))
        return Frame(FrameType.RESPONSE, self.address, frame.seq, frame.command, payload)

    def _run(self, command: int, payload: bytes) -> bytes:
        if command == Command.GET_FIRMWARE_VERSION:
            self._expect(payload, 0)
            return self.firmware.to_payload()
        if command == Command.GET_RELAYS:
            self._expect(payload, 0)
            return self._relay_state().to_payload()
        if command == Command.SET_RELAY:
            self._expect(payload, 2)
            relay, on = payload
            if relay not in (1, 2) or on not in (0, 1):
                raise _Refused(NakReason.BAD_PAYLOAD)
            if relay not in self.stuck_relays:
                self._change(lambda: self.relays.__setitem__(relay - 1, bool(on)))
            return self._relay_state().to_payload()
        if command == Command.GET_VOLUME:
            self._expect(payload, 0)
            return bytes((self.volume,))
        if command == Command.SET_VOLUME:
            self._expect(payload, 1)
            if payload[0] > 100:
                raise _Refused(NakReason.BAD_PAYLOAD)
            self._change(lambda: setattr(self, "volume", payload[0]))
            return bytes((self.volume,))
        if command == Command.READ_SENSORS:
            self._expect(payload, 0)
            return self.sensors().to_payload()
        if command == Command.SELF_TEST:
            self._expect(payload, 0)
            return self.self_test().to_payload()
        if command == Command.GET_LINK_COUNTERS:
            self._expect(payload, 0)
            return McuLinkCounters(
                self.rx_frames, self.rx_errors, self.duplicates, self.tx_frames
            ).to_payload()
        raise _Refused(NakReason.UNKNOWN_COMMAND)

    def _relay_state(self) -> RelayState:
        return RelayState(*self.relays)

    @staticmethod
    def _expect(payload: bytes, size: int) -> None:
        if len(payload) != size:
            raise _Refused(NakReason.BAD_PAYLOAD)


class _Refused(Exception):
    def __init__(self, reason: NakReason) -> None:
        super().__init__(reason.name)
        self.reason = reason


@dataclass(slots=True)
class _PendingEvent:
    frame: Frame
    sent: int = 0
    next_send: float = 0.0


class McuEmulator:
    """A pty-backed serial bus with one or more emulated amplifier units.

    ``addresses`` are the unit addresses answering on the bus. ``seed`` makes fault
    injection reproducible. ``directory`` holds the port symlink (a fresh temporary
    directory if None). ``event_retry_interval``/``event_max_sends`` govern how an
    unacknowledged EVENT frame is repeated.
    """

    def __init__(
        self,
        addresses: Iterable[int] = (1,),
        *,
        faults: Faults | None = None,
        seed: int | None = None,
        directory: str | Path | None = None,
        time_scale: float = 1.0,
        event_retry_interval: float = 0.1,
        event_max_sends: int = 5,
    ) -> None:
        self.faults = faults or Faults()
        self.units = {
            address: EmulatedAmplifier(address, time_scale=time_scale) for address in addresses
        }
        self.event_retry_interval = event_retry_interval
        self.event_max_sends = event_max_sends
        self.corrupted_bytes = 0
        self.dropped_frames = 0
        self.bad_frames = 0
        self._rng = random.Random(seed)
        self._directory = Path(directory) if directory is not None else None
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._decoder = FrameDecoder()
        self._executed: list[ExecutedCommand] = []
        self._executed_lock = threading.Lock()
        self._control: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._events: dict[int, _PendingEvent] = {}
        self._event_seq = random.Random(seed).randrange(256)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Create the pty and the port symlink, then start answering."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        if self._directory is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="mcu-emulator-")
            self._directory = Path(self._tempdir.name)
        self._stop.clear()
        self._plug()
        self._thread = threading.Thread(target=self._run, name="mcu-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop answering, close the pty and remove the symlink."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None
        self._unplug()
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
            self._directory = None

    def __enter__(self) -> McuEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests and demos use -----------------------------------------------------

    @property
    def port(self) -> str:
        """Stable path of the serial port (a symlink to the current pty slave)."""
        if self._directory is None:
            raise RuntimeError("emulator not started")
        return str(self._directory / PORT_NAME)

    @property
    def device(self) -> str:
        """The pty slave the symlink currently points to ('' while unplugged)."""
        return self._slave_name

    def unit(self, address: int = 1) -> EmulatedAmplifier:
        """The emulated unit at ``address``."""
        return self.units[address]

    @property
    def executed(self) -> list[ExecutedCommand]:
        """Every command executed so far, in order, over all units."""
        with self._executed_lock:
            return list(self._executed)

    @property
    def pending_events(self) -> int:
        """Events sent but not yet acknowledged (nor given up on)."""
        return len(self._events)

    def unplug(self) -> None:
        """Make the port vanish: close the pty master and remove the symlink."""
        self._call(self._unplug)

    def replug(self) -> None:
        """Bring the port back as a new pty behind the same symlink."""
        self._call(self._plug)

    def send_event(self, address: int, command: int, payload: bytes = b"") -> None:
        """Have ``address`` send an EVENT, repeated until the master ACKs it."""

        def queue_event() -> None:
            self._event_seq = (self._event_seq + 1) & 0xFF
            frame = Frame(FrameType.EVENT, address, self._event_seq, command, payload)
            self._events[address] = _PendingEvent(frame)

        self._call(queue_event)

    def inject_raw(self, data: bytes) -> None:
        """Write raw bytes towards the master, bypassing framing (line noise)."""
        self._call(lambda: self._write_raw(data))

    def _call(self, action: Callable[[], None]) -> None:
        # The emulator thread owns the file descriptors; hand it the work and wait.
        if self._thread is None:
            action()
            return
        done = threading.Event()
        self._control.put((action, done))
        if not done.wait(timeout=5):
            raise TimeoutError("emulator thread did not respond")

    # -- pty ----------------------------------------------------------------------------

    def _plug(self) -> None:
        if self._master is not None:
            return
        master, slave = os.openpty()
        # Raw mode from the start, so nothing is echoed or line-edited before the link
        # opens (pyserial sets raw mode too when it opens the slave).
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._decoder = FrameDecoder()  # a new device starts a fresh byte stream
        self._slave_name = os.ttyname(slave)
        link = Path(self.port)
        tmp = link.with_name(f".{PORT_NAME}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self._slave_name)
        tmp.replace(link)  # atomic: the link never points nowhere while plugged
        logger.info("emulated MCU port %s -> %s", link, self._slave_name)

    def _unplug(self) -> None:
        if self._directory is not None:
            with contextlib.suppress(FileNotFoundError):
                Path(self.port).unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self._slave_name = ""
        logger.info("emulated MCU port unplugged")

    # -- emulator thread ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                logger.exception("emulator step failed")
                self._stop.wait(0.01)

    def _step(self) -> None:
        while True:
            try:
                action, done = self._control.get_nowait()
            except queue.Empty:
                break
            try:
                action()
            finally:
                done.set()
        self._send_due_events()
        master = self._master
        if master is None:
            self._stop.wait(0.01)
            return
        readable, _, _ = select.select([master], [], [], 0.01)
        if not readable:
            return
        try:
            data = os.read(master, 4096)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EIO):
                raise
            # EIO: nobody holds the slave open right now.
            self._stop.wait(0.01)
            return
        for item in self._decoder.feed(self._corrupt(data)):
            if isinstance(item, FrameError):
                self.bad_frames += 1
                for unit in self.units.values():
                    unit.rx_errors += 1
                logger.info("emulator dropped malformed frame: %s [%s]", item, item.data.hex(" "))
            else:
                self._on_frame(item)

    def _on_frame(self, frame: Frame) -> None:
        if frame.type not in (FrameType.REQUEST, FrameType.ACK):
            return
        if self._rng.random() < self.faults.drop_request_probability:
            self.dropped_frames += 1
            return
        if frame.type is FrameType.ACK:
            self._on_ack(frame)
        elif not self.faults.no_answer:
            self._on_request(frame)

    def _on_ack(self, frame: Frame) -> None:
        pending = self._events.get(frame.address)
        if pending is not None and pending.frame.seq == frame.seq:
            del self._events[frame.address]

    def _on_request(self, frame: Frame) -> None:
        if frame.address == BROADCAST_ADDRESS:
            for unit in self.units.values():
                unit.handle(frame, self._record)
            return
        target = self.units.get(frame.address)
        if target is None:
            return  # someone else's address: stay off the bus
        answer = target.handle(frame, self._record)
        if answer is not None:
            self._answer(target, answer)

    def _answer(self, unit: EmulatedAmplifier, answer: Frame) -> None:
        if self.faults.answer_delay and self._stop.wait(self.faults.answer_delay):
            return
        if self._rng.random() < self.faults.drop_response_probability:
            self.dropped_frames += 1
            return
        unit.tx_frames += 1
        self._write_frame(answer)

    def _send_due_events(self) -> None:
        now = time.monotonic()
        for address, pending in list(self._events.items()):
            if now < pending.next_send:
                continue
            if pending.sent >= self.event_max_sends:
                logger.info("event %s never acknowledged, giving up", pending.frame)
                del self._events[address]
                continue
            pending.sent += 1
            pending.next_send = now + self.event_retry_interval
            self.units[address].tx_frames += 1
            self._write_frame(pending.frame)

    def _record(self, command: ExecutedCommand) -> None:
        with self._executed_lock:
            self._executed.append(command)

    def _write_frame(self, frame: Frame) -> None:
        self._write_raw(self._corrupt(b"\x00" + frame.encode()))

    def _write_raw(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except OSError as exc:
            # EIO: the link has the port closed (reconnecting); EAGAIN: nobody reads.
            logger.debug("emulator write dropped: %s", exc)

    def _corrupt(self, data: bytes) -> bytes:
        probability = self.faults.corrupt_probability
        if probability <= 0:
            return data
        out = bytearray(data)
        for index in range(len(out)):
            if self._rng.random() < probability:
                out[index] ^= self._rng.randrange(1, 256)
                self.corrupted_bytes += 1
        return bytes(out)


def main() -> None:
    """Run one emulated MCU until interrupted (``python -m firmware_bridge.mcu_emulator``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with McuEmulator(time_scale=10.0) as emulator:
        logger.info("emulated MCU listening at %s; Ctrl-C to stop", emulator.port)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
