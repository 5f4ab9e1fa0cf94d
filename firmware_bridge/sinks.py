"""Audio sinks: a system player for real boxes, a simulated one for tests and the demo."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware_bridge.abc import AudioSink, PlayResult
from firmware_bridge.exceptions import SinkError
from firmware_bridge.protocol import utcnow

logger = logging.getLogger(__name__)

# Players tried in order; each plays a file to the default audio output and exits.
_PLAYERS: tuple[tuple[str, ...], ...] = (
    ("ffplay", "-nodisp", "-autoexit", "-loglevel", "error"),
    ("mpg123", "-q"),
    ("mpv", "--no-video", "--really-quiet"),
    ("cvlc", "--play-and-exit", "--quiet"),
)


@dataclass(frozen=True)
class PlayRecord:
    """One playback as the simulated amplifier saw it."""

    file: str
    started_at: str
    ended_at: str
    result: str
    volume: int | None = None


class SimulatedSink(AudioSink):
    """Plays nothing, takes the audio's duration (times ``time_scale``), records each play.

    With ``log_path`` every play is appended as a JSON line, so a test in another process
    can check that each item played exactly once.
    """

    name = "simulated"

    def __init__(self, log_path: Path | None = None, *, time_scale: float = 1.0) -> None:
        self.log_path = log_path
        self.time_scale = time_scale
        self.plays: list[PlayRecord] = []
        self.volume: int | None = None
        self._lock = threading.Lock()

    def set_volume(self, percent: int) -> None:
        self.volume = percent

    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        if not path.is_file():
            raise SinkError(f"audio file {path} is missing")
        started = utcnow()
        interrupted = stop.wait(max(0.0, duration_s * self.time_scale))
        result = PlayResult.STOPPED if interrupted else PlayResult.COMPLETED
        record = PlayRecord(
            path.name, started.isoformat(), utcnow().isoformat(), result.value, self.volume
        )
        with self._lock:
            self.plays.append(record)
            if self.log_path is not None:
                with self.log_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(asdict(record)) + "\n")
        return result


class SystemPlayerSink(AudioSink):
    """Plays through the first command-line player found on the box (ffplay, mpg123...)."""

    name = "system"

    def __init__(self, command: tuple[str, ...] | None = None) -> None:
        self._command = command

    def start(self) -> None:
        if self._command is None:
            for candidate in _PLAYERS:
                if shutil.which(candidate[0]):
                    self._command = candidate
                    break
        if self._command is None or not shutil.which(self._command[0]):
            names = ", ".join(p[0] for p in _PLAYERS)
            raise SinkError(
                f"no audio player found on this box: install one of {names}, "
                "or run the agent with --sink simulated"
            )
        logger.info("playing through %s", self._command[0])

    def play(self, path: Path, *, duration_s: float, stop: threading.Event) -> PlayResult:
        if self._command is None:
            raise SinkError("sink not started")
        try:
            proc = subprocess.Popen(
                [*self._command, str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except OSError as exc:
            raise SinkError(f"cannot start {self._command[0]}: {exc}") from None
        # A player that hangs must not block the cluster for ever.
        deadline = time.monotonic() + duration_s * 2 + 30
        while proc.poll() is None:
            if stop.wait(0.05) or time.monotonic() > deadline:
                proc.terminate()
                try:
                    proc.wait(2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if stop.is_set():
                    return PlayResult.STOPPED
                raise SinkError(f"{self._command[0]} did not finish within {deadline:.0f} s")
        if proc.returncode != 0:
            err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")[-300:]
            raise SinkError(f"{self._command[0]} exited {proc.returncode}: {err.strip()}")
        return PlayResult.COMPLETED
