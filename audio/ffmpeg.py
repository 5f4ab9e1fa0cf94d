"""Finding and running ffmpeg.

The imageio-ffmpeg wheel ships a static ffmpeg (with libmp3lame, libopus, loudnorm,
ebur128) but no ffprobe, so everything here talks to ffmpeg alone: inputs are decoded to
raw PCM and measured with filters instead of probed.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from audio.exceptions import FfmpegFailed, FfmpegNotFound
from audio.pcm import Pcm

logger = logging.getLogger(__name__)

_VERSION_TIMEOUT_S = 10.0


def find_ffmpeg(*, use_wheel: bool = True, search_path: str | None = None) -> str:
    """Return the path of a working ffmpeg executable.

    The imageio-ffmpeg wheel's binary is tried first, then ``ffmpeg`` on ``search_path``
    (default: the PATH environment variable). Each candidate must answer ``-version``.
    The default lookup is done once per process.

    Raises:
        FfmpegNotFound: when no candidate works; the message says how to fix it.
    """
    if use_wheel and search_path is None:
        return _default_ffmpeg()
    return _find_ffmpeg(use_wheel=use_wheel, search_path=search_path)


@functools.cache
def _default_ffmpeg() -> str:
    return _find_ffmpeg(use_wheel=True, search_path=None)


def _find_ffmpeg(*, use_wheel: bool, search_path: str | None) -> str:
    tried: list[str] = []
    candidates: list[str] = []
    if use_wheel:
        try:
            import imageio_ffmpeg

            candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
        except (ImportError, RuntimeError) as exc:
            tried.append(f"imageio-ffmpeg wheel ({exc})")
    on_path = shutil.which(
        "ffmpeg", path=search_path if search_path is not None else os.environ.get("PATH", "")
    )
    if on_path:
        candidates.append(on_path)
    else:
        tried.append("ffmpeg on PATH (not found)")
    for exe in candidates:
        problem = _check_ffmpeg(exe)
        if problem is None:
            logger.debug("using ffmpeg at %s", exe)
            return exe
        tried.append(f"{exe} ({problem})")
    raise FfmpegNotFound(
        "No working ffmpeg found; tried: "
        + "; ".join(tried)
        + ". Install the imageio-ffmpeg package (pip install imageio-ffmpeg) or the "
        "system ffmpeg (apt-get install ffmpeg)."
    )


def _check_ffmpeg(exe: str) -> str | None:
    try:
        proc = subprocess.run(
            [exe, "-hide_banner", "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_VERSION_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if proc.returncode != 0 or not proc.stdout.startswith(b"ffmpeg version"):
        return f"'-version' exited {proc.returncode}"
    return None


def run_ffmpeg(
    args: Sequence[str], *, what: str, input_data: bytes | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with ``args``; ``what`` completes "ffmpeg failed while ..." in errors."""
    cmd = [find_ffmpeg(), "-hide_banner", "-nostats", *args]
    if input_data is None:
        cmd.insert(1, "-nostdin")
    try:
        proc = subprocess.run(
            cmd,
            input=input_data,
            stdin=subprocess.DEVNULL if input_data is None else None,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise FfmpegFailed(
            f"ffmpeg timed out after {timeout_s:.0f} s while {what}; the input may be "
            "far longer than expected or the machine overloaded"
        ) from exc
    except OSError as exc:
        raise FfmpegNotFound(f"could not start ffmpeg ({exc}); reinstall imageio-ffmpeg") from exc
    if proc.returncode != 0:
        raise FfmpegFailed(f"ffmpeg failed while {what}: {last_error(proc.stderr)}", proc.stderr)
    return proc


def last_error(stderr: bytes) -> str:
    """The most telling line of an ffmpeg error log."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    # A full disk shows up in an "[out#...]" line that the loop below skips; say it plainly.
    for line in lines:
        if "No space left on device" in line or "Disk quota exceeded" in line:
            return f"the output disk is full ({line.split(': ', 1)[-1]}): free space, then retry"
    for line in reversed(lines):
        if not line.startswith(
            ("Conversion failed", "Exiting", "[out#", "Error opening output", "Error parsing")
        ):
            return line
    return lines[-1] if lines else "no error output"


def pcm_input_args(rate: int) -> list[str]:
    return ["-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", "pipe:0"]


def pcm_timeout(duration_s: float) -> float:
    # Generous: measurement passes run at >100x real time; this only catches hangs.
    return 60.0 + duration_s


def decode_bytes(data: bytes, fmt: str, rate: int, *, what: str) -> Pcm:
    """Decode an in-memory encoded file (``fmt`` is an ffmpeg demuxer name) to PCM."""
    proc = run_ffmpeg(
        [
            "-f",
            fmt,
            "-i",
            "pipe:0",
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(rate),
            "-f",
            "s16le",
            "pipe:1",
        ],
        what=what,
        input_data=data,
    )
    return Pcm(data=proc.stdout, rate=rate)


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float
    true_peak_dbtp: float


_I_RE = re.compile(rb"I:\s+(-?[\d.]+|-?inf) LUFS")
_PEAK_RE = re.compile(rb"Peak:\s+(-?[\d.]+|-?inf) dBFS")


def measure_loudness(pcm: Pcm, chain: str = "") -> Loudness:
    """Integrated loudness and true peak of ``pcm`` after the filter ``chain``."""
    af = f"{chain}," if chain else ""
    proc = run_ffmpeg(
        [
            *pcm_input_args(pcm.rate),
            "-af",
            f"{af}ebur128=peak=true:framelog=quiet",
            "-f",
            "null",
            "-",
        ],
        what="measuring loudness",
        input_data=pcm.data,
        timeout_s=pcm_timeout(pcm.duration_s),
    )
    return _parse_ebur128(proc.stderr)


def measure_file_loudness(path: Path) -> Loudness:
    """Integrated loudness and true peak of an encoded file (used by tests and checks)."""
    proc = run_ffmpeg(
        ["-i", str(path), "-af", "ebur128=peak=true:framelog=quiet", "-f", "null", "-"],
        what=f"measuring loudness of {path}",
    )
    return _parse_ebur128(proc.stderr)


def _parse_ebur128(stderr: bytes) -> Loudness:
    i_match = _I_RE.findall(stderr)
    p_match = _PEAK_RE.findall(stderr)
    if not i_match or not p_match:
        raise FfmpegFailed(f"ffmpeg ebur128 printed no summary: {last_error(stderr)}")
    return Loudness(float(i_match[-1]), float(p_match[-1]))


def loudnorm_json(stderr: bytes) -> dict[str, float | str]:
    """Parse the JSON block ffmpeg's loudnorm filter prints at the end of its log."""
    text = stderr.decode("utf-8", "replace")
    start = text.rfind("{")
    end = text.rfind("}")
    if start < 0 or end < start:
        raise FfmpegFailed(f"ffmpeg loudnorm printed no measurement: {last_error(stderr)}")
    raw = json.loads(text[start : end + 1])
    out: dict[str, float | str] = {}
    for key, value in raw.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            out[key] = value
        else:
            out[key] = number if math.isfinite(number) else (-99.0 if number < 0 else 99.0)
    return out


def change_tempo(pcm: Pcm, speed: float) -> Pcm:
    """Speed speech up or down (0.5-2.0) without changing its pitch."""
    proc = run_ffmpeg(
        [*pcm_input_args(pcm.rate), "-af", f"atempo={speed}", "-f", "s16le", "pipe:1"],
        what="changing speech tempo",
        input_data=pcm.data,
        timeout_s=pcm_timeout(pcm.duration_s),
    )
    return Pcm(data=proc.stdout, rate=pcm.rate)
