"""The agent's health side: heartbeats, and the control commands a technician sends.

:class:`HeartbeatReporter` samples the hardware about once a second and publishes a
:class:`~firmware_bridge.protocol.Heartbeat` every interval, at once after connecting, and
early when something a technician cares about changes. :class:`ControlHandler` runs
volume, power, reboot and diagnose commands on its own thread (serial round trips and a
test tone take time; the MQTT loop must never wait) and answers each with a
:class:`~firmware_bridge.protocol.ControlResult`: confirmed, or failed with a reason.
"""

from __future__ import annotations

import logging
import math
import queue
import statistics
import struct
import threading
import time
import uuid
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from firmware_bridge.abc import Hardware, PlayResult, SensorReadings
from firmware_bridge.bad_readings import bad_fields, describe
from firmware_bridge.exceptions import BridgeError, HardwareError, SinkError
from firmware_bridge.hardware import HardwareSink
from firmware_bridge.protocol import (
    DUPLICATE_DONE,
    ClockReport,
    ControlCommand,
    ControlResult,
    DiagnoseCommand,
    DiagnoseDetail,
    DiagnoseTests,
    Heartbeat,
    LineState,
    LinkReport,
    PowerCommand,
    RebootCommand,
    SelfTestReport,
    ToneReport,
    VolumeCommand,
    encode,
)

logger = logging.getLogger(__name__)

# A heartbeat goes out early when a sensor moves this much since the last one.
_TEMP_JUMP_C = 3.0
_SUPPLY_JUMP_V = 0.5
_DONE = "confirmed"
_FAILED = "failed"


class HeartbeatReporter:
    """Publishes heartbeats from its own thread. ``start()`` spawns it, ``stop()`` joins."""

    def __init__(
        self,
        *,
        cluster: str,
        hardware: Hardware,
        publish: Callable[[bytes], None],
        interval_s: float,
        storage_path: Path,
        agent_version: str,
        playing: Callable[[], str | None],
    ) -> None:
        self.cluster = cluster
        self.hardware = hardware
        self._publish = publish
        self.interval_s = interval_s
        self.storage_path = storage_path
        self.agent_version = agent_version
        self._playing = playing
        self.boot_id = uuid.uuid4().hex[:16]
        self._booted = time.monotonic()
        self._seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.play_failures = 0
        self.last_error: str | None = None
        self.sent = 0

    @property
    def sample_period_s(self) -> float:
        """How often the sensors are read (the heartbeat may go out early on change)."""
        return min(1.0, self.interval_s / 2)

    def start(self) -> None:
        """Start sampling and publishing."""
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.cluster}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def request(self) -> None:
        """Publish a heartbeat now (after a reconnect, or a state change)."""
        self._wake.set()

    def new_boot(self) -> None:
        """Start a new boot: new id, uptime from zero, sequence from zero."""
        with self._lock:
            self.boot_id = uuid.uuid4().hex[:16]
            self._booted = time.monotonic()
            self._seq = 0

    def note_playback(self, ok: bool, error: str | None = None) -> None:
        """Count consecutive playback failures; a success resets the count."""
        with self._lock:
            if ok:
                self.play_failures = 0
            else:
                self.play_failures += 1
                self.last_error = error
        self._wake.set()

    def note_error(self, error: str) -> None:
        """Remember the last error for the next heartbeat."""
        with self._lock:
            self.last_error = error[:300]
        self._wake.set()

    def build(self, readings: SensorReadings) -> Heartbeat:
        """A heartbeat from one sensor reading and the agent's own state."""
        link = self._control_link()
        with self._lock:
            seq = self._seq
            self._seq += 1
            boot_id, booted = self.boot_id, self._booted
            failures, last_error = self.play_failures, self.last_error
        sensed: dict[str, Any] = {
            "volume": readings.volume,
            "amp_power": readings.amp_power,
            "amp_temp_c": readings.amp_temp_c,
            "supply_v": readings.supply_v,
            "amp_current_a": readings.amp_current_a,
            "rssi_dbm": readings.rssi_dbm,
            "free_storage_mb": _round(self.hardware.free_storage_mb(self.storage_path)),
        }
        own: dict[str, Any] = {
            "cluster": self.cluster,
            "ts": self.hardware.now(),
            "seq": seq,
            "boot_id": boot_id,
            "interval_s": self.interval_s,
            "uptime_s": round(time.monotonic() - booted, 3),
            "agent": self.agent_version,
            "firmware": self.hardware.firmware,
            "line": _line(readings.line),
            "playing": self._playing(),
            "play_failures": failures,
            "control_link": link,
        }
        try:
            return Heartbeat.model_validate({**own, **sensed, "last_error": last_error})
        except ValidationError as exc:
            bad = bad_fields(exc)
            if not bad or not set(bad) <= set(sensed):
                raise  # not a reading: the agent's own bug, which _run logs
            error = describe(exc)
        # A broken sensor must not stop the heartbeats: its value is left out (null) and
        # named in last_error. Set directly, not by note_error: no wake-up, so a sensor
        # that stays broken does not turn the heartbeat into a busy loop.
        with self._lock:
            changed, self.last_error = self.last_error != error, error
        if changed:  # logged once, not every sample while the sensor stays broken
            logger.warning("%s: heartbeat: %s", self.cluster, error)
        kept = {k: (None if k in bad else v) for k, v in sensed.items()}
        return Heartbeat.model_validate({**own, **kept, "last_error": error})

    def _control_link(self) -> Literal["ok", "down"] | None:
        state = self.hardware.control_link()
        if state is None:
            return None
        if state.up:
            return "ok"
        # The reason goes with every heartbeat while the link is down, not only once.
        self.note_error(f"control link: {state.detail}")
        self._wake.clear()
        return "down"

    def _run(self) -> None:
        last_sent: Heartbeat | None = None
        next_due = 0.0
        while not self._stop.is_set():
            requested = self._wake.wait(self.sample_period_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                try:
                    readings = self.hardware.read_sensors()
                except HardwareError as exc:
                    self.note_error(f"sensors: {exc}")
                    self._wake.clear()
                    readings = SensorReadings()
                now = time.monotonic()
                heartbeat = self.build(readings)
                if requested or now >= next_due or _changed(last_sent, heartbeat):
                    self._publish(encode(heartbeat))
                    self.sent += 1
                    last_sent = heartbeat
                    next_due = now + self.interval_s
            except Exception:
                # The heartbeat is how a broken box is noticed: never let it die quietly.
                logger.exception("%s: heartbeat failed", self.cluster)
                self._stop.wait(1.0)


def _line(value: str) -> LineState:
    if value == "ok":
        return "ok"
    if value == "open":
        return "open"
    if value == "short":
        return "short"
    return "unknown"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _changed(old: Heartbeat | None, new: Heartbeat) -> bool:
    if old is None:
        return True
    for name in (
        "amp_power",
        "volume",
        "line",
        "playing",
        "last_error",
        "play_failures",
        "control_link",
    ):
        if getattr(old, name) != getattr(new, name):
            return True
    for name, jump in (("amp_temp_c", _TEMP_JUMP_C), ("supply_v", _SUPPLY_JUMP_V)):
        before, after = getattr(old, name), getattr(new, name)
        if (before is None) != (after is None) or (
            before is not None and abs(before - after) >= jump
        ):
            return True
    return False


def tone_file(directory: Path, seconds: float, freq: float = 1000.0, rate: int = 8000) -> Path:
    """A mono 16-bit WAV sine tone at -12 dBFS, written once and reused."""
    path = directory / f"diag-tone-{int(seconds * 1000)}ms-{int(freq)}hz.wav"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    amplitude = 0.25 * 32767
    frames = b"".join(
        struct.pack("<h", int(amplitude * math.sin(2 * math.pi * freq * n / rate)))
        for n in range(int(seconds * rate))
    )
    tmp = path.with_suffix(".tmp")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    tmp.replace(path)
    return path


class ControlHandler:
    """Runs control commands in order on its own thread and answers every one."""

    def __init__(
        self,
        *,
        cluster: str,
        hardware: Hardware,
        output: HardwareSink,
        journal: Any,
        publish: Callable[[ControlResult, Callable[[bool, str], None] | None], None],
        reporter: HeartbeatReporter,
        busy: Callable[[], str | None],
        mqtt_reconnects: Callable[[], int],
        restart: Callable[[str], None],
        work_dir: Path,
    ) -> None:
        self.cluster = cluster
        self.hardware = hardware
        self.output = output
        self._journal = journal
        self._publish = publish
        self.reporter = reporter
        self._busy = busy
        self._mqtt_reconnects = mqtt_reconnects
        self._restart = restart
        self.work_dir = work_dir
        self._queue: queue.Queue[ControlCommand | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(
            target=self._run, name=f"control-{self.cluster}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Finish the current command and stop."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(10)

    def submit(self, command: ControlCommand) -> None:
        """Take an admitted command (MQTT loop thread: no blocking here).

        The agent has already checked its signature, freshness and id (one place for every
        command type, ``ClusterAgent._admit``); this only queues it.
        """
        self._journal.set(command.id, "received")
        self._queue.put(command)

    def answer_duplicate(self, command: ControlCommand, seen: str) -> None:
        """Answer a command id seen before: its result again if finished.

        An unfinished one gets no answer now: a ``ControlResult`` has no in-progress state,
        and its one real result follows when it finishes (docs/protocol.md §5).
        """
        logger.info("%s: duplicate control command %s (%s)", self.cluster, command.id, seen)
        if seen in (_DONE, _FAILED):
            self._answer(command, seen == _DONE, DUPLICATE_DONE, {"duplicate": True})
        elif seen != "received":
            # The id was used by another command type (a sender's bug): never run it.
            self._answer(command, False, DUPLICATE_DONE, {"duplicate": True})

    def _answer(
        self,
        command: ControlCommand,
        ok: bool,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
        on_done: Callable[[bool, str], None] | None = None,
    ) -> None:
        result = ControlResult(
            cluster=self.cluster,
            command=command.id,
            type=command.type,
            ok=ok,
            ts=self.hardware.now(),
            reason=None if ok else (reason or "failed")[:500],
            detail=detail or {},
        )
        if ok and reason:
            result = result.model_copy(update={"reason": reason[:500]})
        self._publish(result, on_done)

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            if command is None:
                return
            try:
                self._execute(command)
            except Exception as exc:
                logger.exception("%s: control command %s crashed", self.cluster, command.id)
                self._journal.set(command.id, _FAILED)
                self._answer(command, False, f"agent error: {exc}")

    def _execute(self, command: ControlCommand) -> None:
        if command.expires_at <= self.hardware.now():
            self._journal.set(command.id, _FAILED)
            self._answer(command, False, "expired before it could run")
            return
        try:
            if isinstance(command, VolumeCommand):
                # The box's own setting: also what it returns to after an item's own volume.
                now_in_effect = self.output.set_box_volume(command.volume)
                ok = now_in_effect == command.volume
                detail: dict[str, Any] = {"volume": now_in_effect}
                reason = None if ok else f"volume is {now_in_effect}, not {command.volume}"
            elif isinstance(command, PowerCommand):
                relay = self.hardware.set_amplifier_power(command.on)
                ok = relay == command.on
                detail = {"amp_power": relay}
                reason = None if ok else f"relay stayed {'on' if relay else 'off'}"
            elif isinstance(command, RebootCommand):
                self._reboot(command)
                return
            else:
                detail = self._diagnose(command)
                ok, reason = True, None
        except (BridgeError, OSError) as exc:
            self._journal.set(command.id, _FAILED)
            self.reporter.note_error(f"{command.type}: {exc}")
            self._answer(command, False, str(exc))
            return
        self._journal.set(command.id, _DONE if ok else _FAILED)
        self._answer(command, ok, reason, detail)
        self.reporter.request()

    def _reboot(self, command: RebootCommand) -> None:
        self._journal.set(command.id, _DONE)
        sent = threading.Event()
        self._answer(
            command,
            True,
            "rebooting",
            {"boot_id": self.reporter.boot_id},
            on_done=lambda ok, reason: sent.set(),
        )
        # Let the answer reach the broker before the link goes down.
        sent.wait(3.0)
        self._restart("reboot requested by the controller")

    # -- diagnose ---------------------------------------------------------------------------

    def _diagnose(self, command: DiagnoseCommand) -> dict[str, Any]:
        started = time.monotonic()
        received = self.hardware.now()
        reports: dict[str, Any] = {}
        for name in command.tests:
            try:
                if name == "self_test":
                    reports[name] = self._self_test()
                elif name == "tone":
                    reports[name] = self._tone_test(command.tone_s)
                elif name == "link":
                    reports[name] = self._link_test()
                elif name == "clock":
                    reports[name] = ClockReport(status="passed", box_time=self.hardware.now())
            except (BridgeError, OSError) as exc:
                failed = {"status": "failed", "reason": str(exc)[:300] or type(exc).__name__}
                reports[name] = _REPORTS[name].model_validate(failed)
            except ValidationError as exc:
                # A reading outside what the report allows: the sensor is broken. This test
                # fails naming it; the other tests are still reported.
                logger.warning("%s: diagnose %s: %s", self.cluster, name, describe(exc))
                failed = {"status": "failed", "reason": describe(exc)}
                reports[name] = _REPORTS[name].model_validate(failed)
        detail = DiagnoseDetail(
            received=received,
            took_s=round(time.monotonic() - started, 3),
            hardware=self.hardware.name[:64],
            tests=DiagnoseTests(**reports),
        )
        return detail.model_dump(mode="json")

    def _self_test(self) -> SelfTestReport:
        result = self.hardware.self_test()
        if not result.present:
            return SelfTestReport(
                status="not_present", reason=result.detail or "no microcontroller"
            )
        if result.ok:
            return SelfTestReport(status="passed", checks=result.checks)
        failed = [name for name, passed in result.checks.items() if not passed]
        why = result.detail or ", ".join(failed) or "self-test failed"
        return SelfTestReport(status="failed", reason=why[:300], checks=result.checks)

    def _link_test(self) -> LinkReport:
        counters = self.hardware.link_counters()
        return LinkReport(
            status="passed",
            rx_frames=counters.rx_frames,
            rx_errors=counters.rx_errors,
            timeouts=counters.timeouts,
            retransmissions=counters.retransmissions,
            mqtt_reconnects=self._mqtt_reconnects(),
            rssi_dbm=self.hardware.read_sensors().rssi_dbm,
        )

    def _tone_test(self, seconds: float) -> ToneReport:
        busy = self._busy()
        if busy:
            why = f"busy playing broadcast {busy}; never interrupted for a test"
            return ToneReport(status="skipped", reason=why[:300])
        path = tone_file(self.work_dir, seconds)
        before = self.hardware.read_sensors()
        switched_on = before.amp_power is False
        if switched_on:
            # Idle draw is only meaningful with the relay closed: measure it that way.
            self.hardware.set_amplifier_power(True)
        try:
            return self._tone_measured(path, seconds, before)
        finally:
            if switched_on:
                self.hardware.set_amplifier_power(False)

    def _tone_measured(self, path: Path, seconds: float, before: SensorReadings) -> ToneReport:
        idle = self.hardware.read_sensors()
        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def play() -> None:
            try:
                outcome["result"] = self.output.play_tone(path, duration_s=seconds, stop=stop).value
            except SinkError as exc:
                outcome["result"] = "error"
                outcome["error"] = str(exc)[:300]

        player = threading.Thread(target=play, name=f"tone-{self.cluster}", daemon=True)
        player.start()
        samples: list[float] = []
        lines: set[LineState] = set()
        bound = time.monotonic() + seconds * 3 + 5
        while player.is_alive() and time.monotonic() < bound:
            if self.output.active:
                readings = self.hardware.read_sensors()
                if readings.amp_current_a is not None:
                    samples.append(readings.amp_current_a)
                lines.add(_line(readings.line))
            player.join(0.03)
        if player.is_alive():
            stop.set()
            player.join(2)
            outcome.setdefault("result", "timeout")
        result = outcome.get("result", "timeout")
        status: Literal["passed", "failed", "skipped"] = "passed"
        reason: str | None = None
        if result == PlayResult.COMPLETED.value:
            self.reporter.note_playback(True)
        elif result == PlayResult.STOPPED.value:
            status, reason = "skipped", "the test tone gave way to a broadcast"
        else:
            status = "failed"
            reason = outcome.get("error") or f"no end of playback ({result})"
            self.reporter.note_playback(False, f"test tone: {reason}")
        return ToneReport(
            status=status,
            reason=reason,
            result=result,
            seconds=seconds,
            amp_power_before=before.amp_power,
            volume=before.volume,
            idle_a=idle.amp_current_a,
            tone_a=round(statistics.median(samples), 3) if samples else None,
            peak_a=max(samples) if samples else None,
            samples=len(samples),
            line=_line(before.line),
            lines_during=sorted(lines),
        )


_REPORTS: dict[str, type[SelfTestReport | ToneReport | LinkReport | ClockReport]] = {
    "self_test": SelfTestReport,
    "tone": ToneReport,
    "link": LinkReport,
    "clock": ClockReport,
}
