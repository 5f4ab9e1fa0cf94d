"""Master side of the serial control link: one port, stop-and-wait requests, reconnects.

``SerialLink`` is the bus master. It serves both a cluster agent talking to its own
microcontroller (point-to-point, one address) and a gateway driving many addressed
receivers on a half-duplex RS-485 bus: every request names the unit address, only one
transaction is on the wire at a time, and sequence numbers are kept per address.

Threads: ``start()`` spawns one reader thread that owns opening, reading, closing and
reopening the port. ``request()`` may be called from any thread; calls are serialised.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import TracebackType

from serial import Serial, SerialException

from firmware_bridge.backoff import Backoff
from firmware_bridge.exceptions import (
    FrameError,
    LinkDownError,
    LinkTimeoutError,
    NakError,
)
from firmware_bridge.framing import (
    BROADCAST_ADDRESS,
    MAX_PAYLOAD,
    MAX_UNIT_ADDRESS,
    MIN_UNIT_ADDRESS,
    Frame,
    FrameDecoder,
    FrameType,
    NakReason,
)

logger = logging.getLogger(__name__)


DEFAULT_RETRANSMIT = Backoff(initial=0.1, factor=1.5, cap=0.5, max_attempts=5)
DEFAULT_RECONNECT = Backoff(initial=0.05, factor=2.0, cap=5.0)


class LinkState(enum.Enum):
    """Where the port is; ``DISCONNECTED`` is the alarm state."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(slots=True)
class LinkStats:
    """Counters since ``start()``; ``SerialLink.stats`` returns a copy."""

    frames_sent: int = 0
    frames_received: int = 0
    bad_frames: int = 0
    retransmissions: int = 0
    requests_ok: int = 0
    requests_failed: int = 0
    naks: int = 0
    stale_frames: int = 0
    events: int = 0
    connects: int = 0
    open_failures: int = 0
    port_errors: int = 0


@dataclass(slots=True)
class _Pending:
    address: int
    seq: int
    command: int
    done: threading.Event
    response: Frame | None = None
    garbled: bool = False

    def matches(self, frame: Frame) -> bool:
        return (
            frame.type in (FrameType.RESPONSE, FrameType.NAK)
            and frame.address == self.address
            and frame.seq == self.seq
            and frame.command == self.command
        )


def _wire(frame: Frame) -> bytes:
    # The leading delimiter ends whatever partial (corrupted) frame the receiver may be
    # holding, so one lost 0x00 costs one frame, not also the next one.
    return b"\x00" + frame.encode()


StateCallback = Callable[["LinkState"], None]
EventCallback = Callable[[Frame], None]


class SerialLink:
    """Bus master over one serial port (a pty, a USB adapter, an RS-485 converter).

    ``port`` is a path that is opened again after every failure, so give a stable
    one (``/dev/serial/by-id/...``) rather than ``/dev/ttyUSB0``. The port is opened
    with ``exclusive=True`` and both read and write timeouts.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        retransmit: Backoff = DEFAULT_RETRANSMIT,
        reconnect: Backoff = DEFAULT_RECONNECT,
        read_timeout: float = 0.05,
        write_timeout: float = 1.0,
        on_state_change: StateCallback | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        if read_timeout <= 0 or write_timeout <= 0:
            raise ValueError("read and write timeouts must be positive: None blocks forever")
        self.port = port
        self.baudrate = baudrate
        self.retransmit = retransmit
        self.reconnect = reconnect
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._on_state_change = on_state_change
        self._on_event = on_event
        self._state = LinkState.STOPPED
        self._state_changed = threading.Condition()
        self._stats = LinkStats()
        self._stats_lock = threading.Lock()
        self._serial: Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._port_failed = threading.Event()
        # Held for every write and for closing, so a write never hits a closed (and
        # possibly reused) file descriptor.
        self._write_lock = threading.Lock()
        self._transaction_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: _Pending | None = None
        self._seq: dict[int, int] = {}
        self._last_event: dict[int, tuple[int, int, bytes]] = {}

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the reader thread, which opens the port and keeps it open."""
        if self._thread is not None:
            raise RuntimeError("SerialLink already started")
        self._stop.clear()
        self._port_failed.clear()
        self._stats = LinkStats()
        self._seq.clear()
        self._last_event.clear()
        self._set_state(LinkState.CONNECTING)
        self._thread = threading.Thread(
            target=self._run, name=f"serial-link {self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the port and join the reader thread; pending requests fail."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        with self._pending_lock:
            if self._pending is not None:
                self._pending.done.set()
        thread.join(timeout=self.read_timeout + self.write_timeout + 2.0)
        if thread.is_alive():
            logger.error("serial link reader for %s did not stop", self.port)
        self._thread = None
        self._set_state(LinkState.STOPPED)

    def __enter__(self) -> SerialLink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        """Current state of the port."""
        return self._state

    @property
    def alarm(self) -> bool:
        """True while the port is lost (unplugged, failing to open): a transmission-path fault."""
        return self._state is LinkState.DISCONNECTED

    @property
    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            return replace(self._stats)

    @property
    def serial(self) -> Serial | None:
        """The open ``Serial``, or None while disconnected."""
        return self._serial

    def wait_for_state(self, state: LinkState, timeout: float) -> bool:
        """Block until the link is in ``state``; False if ``timeout`` seconds pass first."""
        with self._state_changed:
            return self._state_changed.wait_for(lambda: self._state is state, timeout)

    # -- requests --------------------------------------------------------------------

    def request(
        self,
        address: int,
        command: int,
        payload: bytes = b"",
        *,
        retransmit: Backoff | None = None,
    ) -> Frame:
        """Send a REQUEST to ``address`` and return its RESPONSE frame.

        Retransmits the same frame (same seq, so the receiver answers from its cache
        instead of executing twice) until an answer arrives or the retry policy is
        used up. Raises :class:`NakError` if the unit refused the request,
        :class:`LinkTimeoutError` if it never answered, :class:`LinkDownError` if the
        port is gone or the link stopped.
        """
        if not MIN_UNIT_ADDRESS <= address <= MAX_UNIT_ADDRESS:
            raise ValueError(f"unit address must be 0x01-0xf7, got {address:#x}")
        self._check_payload(command, payload)
        policy = retransmit or self.retransmit
        with self._transaction_lock:
            self._require_running()
            seq = self._next_seq(address)
            wire = _wire(Frame(FrameType.REQUEST, address, seq, command, payload))
            pending = _Pending(address, seq, command, threading.Event())
            with self._pending_lock:
                self._pending = pending
            try:
                response = self._exchange(pending, wire, policy)
            finally:
                with self._pending_lock:
                    self._pending = None
        if response.type is FrameType.NAK:
            self._count("naks")
            code = response.payload[0] if response.payload else 0
            try:
                reason = NakReason(code).name
            except ValueError:
                reason = f"code 0x{code:02x}"
            raise NakError(f"unit 0x{address:02x} refused command 0x{command:02x}: {reason}", code)
        self._count("requests_ok")
        return response

    def broadcast(self, command: int, payload: bytes = b"", *, repeats: int = 2) -> None:
        """Send a REQUEST to every unit (address 0x00); nobody answers.

        The same frame is sent ``repeats`` times: units de-duplicate by seq, so this
        raises the chance of delivery without executing twice. Delivery is not known.
        """
        self._check_payload(command, payload)
        if repeats < 1:
            raise ValueError("repeats must be at least 1")
        with self._transaction_lock:
            self._require_running()
            seq = self._next_seq(BROADCAST_ADDRESS)
            wire = _wire(Frame(FrameType.REQUEST, BROADCAST_ADDRESS, seq, command, payload))
            sent = sum(self._write(wire) for _ in range(repeats))
        if not sent:
            raise LinkDownError(f"serial port {self.port} is unavailable: broadcast not sent")

    def _exchange(self, pending: _Pending, wire: bytes, policy: Backoff) -> Frame:
        attempts = 0
        while True:
            if self._stop.is_set():
                raise LinkDownError("serial link stopped")
            pending.garbled = False
            pending.done.clear()
            if pending.response is not None:
                return pending.response
            if attempts:
                self._count("retransmissions")
            self._write(wire)
            pending.done.wait(policy.delay(attempts))
            attempts += 1
            if pending.response is not None:
                return pending.response
            if policy.exhausted(attempts):
                self._count("requests_failed")
                if self._state is not LinkState.CONNECTED:
                    raise LinkDownError(
                        f"serial port {self.port} is unavailable (unplugged?): "
                        f"command 0x{pending.command:02x} to unit 0x{pending.address:02x} "
                        "not delivered"
                    )
                raise LinkTimeoutError(
                    f"no valid answer from unit 0x{pending.address:02x} to command "
                    f"0x{pending.command:02x} after {attempts} attempts: check the unit's "
                    "power, address and wiring"
                )
            if pending.garbled:
                # On a half-duplex link a garbled frame during our wait is almost surely
                # the answer: resend now instead of waiting out the timeout.
                logger.debug("garbled answer from unit 0x%02x, resending", pending.address)

    def _check_payload(self, command: int, payload: bytes) -> None:
        if not 0 <= command <= 0xFF:
            raise ValueError(f"command must fit in one byte, got {command!r}")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")

    def _require_running(self) -> None:
        if self._thread is None or self._stop.is_set():
            raise LinkDownError("serial link is not started")

    def _next_seq(self, address: int) -> int:
        previous = self._seq.get(address)
        # A random first seq makes it unlikely that a restarted master repeats the seq
        # the unit has cached from before the restart.
        seq = random.randrange(256) if previous is None else (previous + 1) & 0xFF
        self._seq[address] = seq
        return seq

    def _write(self, data: bytes) -> bool:
        with self._write_lock:
            port = self._serial
            if port is None or self._port_failed.is_set():
                return False
            try:
                port.write(data)
            except (SerialException, OSError) as exc:
                # Includes SerialTimeoutException: a write that cannot drain means the
                # port is wedged; let the reader thread reopen it.
                logger.warning("write to %s failed: %s", self.port, exc)
                self._count("port_errors")
                self._port_failed.set()
                return False
        self._count("frames_sent")
        return True

    # -- reader thread ---------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if failures:
                delay = self.reconnect.delay(failures - 1)
                logger.debug("reopening %s in %.3f s (attempt %d)", self.port, delay, failures)
                if self._stop.wait(delay):
                    break
            try:
                port = self._open()
            except (SerialException, OSError) as exc:
                failures += 1
                self._count("open_failures")
                if self._state is not LinkState.DISCONNECTED:
                    logger.warning("cannot open serial port %s: %s", self.port, exc)
                self._set_state(LinkState.DISCONNECTED)
                continue
            failures = 0
            self._count("connects")
            self._set_state(LinkState.CONNECTED)
            try:
                self._read_loop(port)
            except (SerialException, OSError) as exc:
                logger.warning("serial port %s failed: %s", self.port, exc)
                self._count("port_errors")
            except Exception:
                # Anything else is a bug in this module; keep the link alive anyway.
                logger.exception("unexpected error reading %s", self.port)
            finally:
                self._close(port)
            if not self._stop.is_set():
                failures = 1
                self._set_state(LinkState.DISCONNECTED)

    def _open(self) -> Serial:
        port = Serial(
            self.port,
            baudrate=self.baudrate,
            timeout=self.read_timeout,
            write_timeout=self.write_timeout,
            exclusive=True,
        )
        port.reset_input_buffer()
        with self._write_lock:
            self._port_failed.clear()
            self._serial = port
        logger.info("serial port %s open at %d baud", self.port, self.baudrate)
        return port

    def _close(self, port: Serial) -> None:
        with self._write_lock:
            self._serial = None
            try:
                port.close()
            except (SerialException, OSError) as exc:
                logger.debug("closing %s: %s", self.port, exc)

    def _read_loop(self, port: Serial) -> None:
        decoder = FrameDecoder()
        while not self._stop.is_set():
            if self._port_failed.is_set():
                raise SerialException("a write failed")
            data = port.read(max(1, port.in_waiting))
            if not data:
                continue
            garbled = False
            for item in decoder.feed(data):
                if isinstance(item, FrameError):
                    garbled = True
                    self._count("bad_frames")
                    logger.warning(
                        "dropped malformed frame from %s: %s [%s]",
                        self.port,
                        item,
                        item.data.hex(" "),
                    )
                else:
                    try:
                        self._dispatch(item)
                    except Exception:
                        logger.exception("error handling frame %s from %s", item, self.port)
            if garbled:
                # Once per read, not per error: a corrupted byte that became 0x00 splits
                # one answer into two bad frames, which must not cost two attempts.
                self._signal_garbled()

    def _signal_garbled(self) -> None:
        with self._pending_lock:
            pending = self._pending
            if pending is not None and pending.response is None:
                pending.garbled = True
                pending.done.set()

    def _dispatch(self, frame: Frame) -> None:
        self._count("frames_received")
        if frame.type in (FrameType.RESPONSE, FrameType.NAK):
            with self._pending_lock:
                pending = self._pending
                if pending is not None and pending.matches(frame):
                    pending.response = frame
                    pending.done.set()
                    return
            # A late answer to an attempt we already retransmitted, or already answered.
            self._count("stale_frames")
            logger.debug("stale %s dropped", frame)
        elif frame.type is FrameType.EVENT:
            self._write(_wire(Frame(FrameType.ACK, frame.address, frame.seq, frame.command)))
            key = (frame.seq, frame.command, frame.payload)
            if self._last_event.get(frame.address) == key:
                logger.debug("duplicate event %s acknowledged again", frame)
                return
            self._last_event[frame.address] = key
            self._count("events")
            if self._on_event is not None:
                try:
                    self._on_event(frame)
                except Exception:
                    logger.exception("on_event callback failed for %s", frame)
        else:
            # REQUEST/ACK frames: our own echo on a bus whose transceiver hears itself,
            # or another master. Neither is ours to answer.
            logger.debug("ignored %s", frame)

    # -- helpers ---------------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        with self._state_changed:
            if state is self._state:
                return
            self._state = state
            self._state_changed.notify_all()
        logger.info("serial link %s: %s", self.port, state.value)
        if self._on_state_change is not None:
            try:
                self._on_state_change(state)
            except Exception:
                logger.exception("on_state_change callback failed")

    def _count(self, name: str, amount: int = 1) -> None:
        with self._stats_lock:
            setattr(self._stats, name, getattr(self._stats, name) + amount)
