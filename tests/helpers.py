"""Helpers shared by the tests: real processes, real files, bounded waits."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from audio import RenderedAudio
from firmware_bridge.mqtt import BrokerEndpoint
from firmware_bridge.simulator import Fleet

# Every deadline in the tests is multiplied by this (a slow or loaded machine sets it
# above 1). Deadlines are upper bounds on waits for a state, never the thing under test,
# so a generous factor only makes a failing run slower to report.
TIME_FACTOR = float(os.environ.get("LOUDSPEAKER_TEST_TIME_FACTOR", "1") or "1")


def scaled(seconds: float) -> float:
    """``seconds`` stretched by ``LOUDSPEAKER_TEST_TIME_FACTOR``."""
    return seconds * TIME_FACTOR


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds (scaled) pass; return its last value."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def wait_event(event: threading.Event, timeout: float) -> bool:
    """``event.wait`` with a scaled deadline."""
    return event.wait(scaled(timeout))


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """Teardown of a child: SIGTERM (it stops its own children), then SIGKILL; always waited.

    Never leaves it running, and never leaves a Popen that was not waited for: that one
    warns "subprocess N is still running" when collected, failing some later test.
    """
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(scaled(10))


def make_tone_mp3(path: Path, seconds: float = 1.0, freq: int = 440) -> RenderedAudio:
    """Encode a real MP3 tone with ffmpeg (no TTS involved) and describe it."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"sine=frequency={freq}:duration={seconds}",
            "-ac",
            "1",
            "-ar",
            "22050",
            "-b:a",
            "32k",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    data = path.read_bytes()
    return RenderedAudio(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        duration_s=seconds,
        format="mp3",
        mime="audio/mpeg",
        engine="tone",
        spoken_text=None,
    )


@contextmanager
def running_fleet(
    clusters: Sequence[str], endpoint: BrokerEndpoint, state_root: Path, **kw: object
) -> Iterator[Fleet]:
    """Simulated agents of the Lục Bình site (audio 4x faster), connected, then stopped."""
    kw.setdefault("time_scale", 0.25)
    fleet = Fleet("luc-binh", clusters, endpoint, state_root, **kw)  # type: ignore[arg-type]
    fleet.start()
    try:
        assert fleet.wait_connected(20), "simulated clusters did not connect"
        yield fleet
    finally:
        fleet.stop()


def prepared_emergency(
    media_dir: Path, scratch: Path, *, hamlet: str | None = None, given_s_ago: float = 0.0
) -> Any:
    """An emergency as the service prepares it (``emergency.PreparedEmergency``): its audio
    (any bytes, never decoded) in the media store, to ``hamlet`` or every hamlet."""
    from datetime import timedelta

    from firmware_bridge.protocol import new_id
    from loudspeaker.emergency import PreparedEmergency
    from loudspeaker.media import MediaStore
    from loudspeaker.models import now

    sound = scratch / f"sound-{hamlet or 'all'}.mp3"
    sound.write_bytes(b"ID3 not really audio, never decoded here " + (hamlet or "").encode())
    sha, size = MediaStore(media_dir).add_file(sound, "mp3")
    return PreparedEmergency(
        broadcast_id=new_id()[:12],
        created_at=now() - timedelta(seconds=given_s_ago),
        text="Lũ về",
        hamlets=(hamlet,) if hamlet else (),
        target=f"hamlet:{hamlet}" if hamlet else "all",
        source_kind="tone",
        source="siren",
        announcement_id=None,
        repeat=1,
        gap_s=0.0,
        validity_s=600.0,
        sha256=sha,
        size=size,
        duration_s=8.0,
        format="mp3",
        mime="audio/mpeg",
        engine="tone",
    )
