"""The demo's scratch installation: real processes on embedded defaults.

``loudspeaker serve`` (with its private mosquitto) and ``loudspeaker simulate`` run as
child processes, as in production, on a data directory the demo made itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from loudspeaker.config import Settings
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.models import ClusterStatus
from loudspeaker.runtime import ControllerCard

DEMO_TEXT = (
    "Thông báo của Ủy ban nhân dân xã Lục Bình. Sáng mai, từ 7h, "
    "bà con 8/8 thôn tham gia tổng vệ sinh môi trường, khơi thông cống rãnh "
    "để phòng chống ngập úng mùa mưa bão."
)
DEMO_TITLE = "Tổng vệ sinh môi trường"
START_TIMEOUT_S = 30.0
_MARKER = ".loudspeaker-demo"


def fresh_dir(path: Path) -> None:
    """Empty ``path`` for the demo; refused unless the demo made it (or it is empty)."""
    # Only ever wipe a directory the demo itself made: never someone's real data.
    if path.exists() and any(path.iterdir()):
        if not (path / _MARKER).exists():
            raise LoudspeakerError(
                f"{path} exists and is not a demo directory; choose another --demo-dir"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / _MARKER).write_text("made by `loudspeaker demo`; safe to delete\n")


@contextmanager
def _child(settings: Settings, command: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    args = [sys.executable, "-m", "cli", "--data-dir", str(settings.data_dir), command]
    with log.open("ab") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


@contextmanager
def controller(settings: Settings, log: Path) -> Iterator[ControllerCard]:
    """A ``loudspeaker serve`` child, once its address card is up; stopped on exit."""
    with _child(settings, "serve", log) as proc:
        started = _wait_until(
            lambda: ControllerCard.read(settings.run_dir) is not None or proc.poll() is not None,
            START_TIMEOUT_S,
        )
        if not started:
            raise LoudspeakerError(f"controller did not start; see {log}")
        card = ControllerCard.read(settings.run_dir)
        if card is None or proc.poll() is not None:
            raise LoudspeakerError(f"controller exited with {proc.returncode}; see {log}")
        yield card


@contextmanager
def simulated_clusters(settings: Settings, engine: Engine, log: Path, count: int) -> Iterator[None]:
    """A ``loudspeaker simulate`` child, once ``count`` clusters are online; stopped on exit."""

    def online() -> int:
        with Session(engine) as s:
            return len(s.exec(select(ClusterStatus).where(col(ClusterStatus.online))).all())

    with _child(settings, "simulate", log):
        if not _wait_until(lambda: online() >= count, START_TIMEOUT_S):
            raise LoudspeakerError(f"simulated clusters did not come online; see {log}")
        yield
