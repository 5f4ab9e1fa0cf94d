"""Loading and validating recordings (placeholder: validation follows)."""

from __future__ import annotations

from pathlib import Path

from audio.cache import sha256_file
from audio.ffmpeg import run_ffmpeg
from audio.pcm import Pcm
from audio.settings import AudioSettings


def load_recording(path: Path, settings: AudioSettings) -> tuple[Pcm, str]:
    """Decode ``path`` to PCM at the output rate; also return the file's sha256."""
    proc = run_ffmpeg(
        [
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(settings.sample_rate),
            "-f",
            "s16le",
            "pipe:1",
        ],
        what=f"decoding {path}",
    )
    return Pcm(data=proc.stdout, rate=settings.sample_rate), sha256_file(path)
