"""Rendering settings: one frozen, validated value object."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from audio.exceptions import InvalidAudioSettings

# Sample rates every MPEG-1/2 layer III decoder (and so every cheap receiver box) plays.
MP3_SAMPLE_RATES = frozenset({16000, 22050, 24000, 32000, 44100, 48000})
# Layer III bitrates valid for MPEG-2 (16-24 kHz) and MPEG-1 (32-48 kHz) respectively.
_MPEG2_BITRATES = frozenset({8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160})
_MPEG1_BITRATES = frozenset({32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320})

# Fields that only change how long we wait, never the bytes we produce.
_NOT_IN_CACHE_KEY = frozenset(
    {
        "max_recording_s",
        "tts_timeout_s",
        "gtts_retries",
        "auto_tts_timeout_s",
        "extra_abbreviations",
    }
)


@dataclass(frozen=True)
class AudioSettings:
    """How audio is rendered. All fields are validated on construction.

    Defaults suit speech on outdoor horn speakers; docs/audio.md explains each choice.
    """

    target_lufs: float = -16.0
    """Integrated loudness target (EBU R128 / ITU-R BS.1770), LUFS."""
    true_peak_dbtp: float = -1.5
    """True-peak ceiling of the output, dBTP."""
    bitrate_kbps: int = 32
    """MP3 bitrate (constant), kbit/s."""
    sample_rate: int = 24000
    """Output sample rate, Hz."""
    trim_silence: bool = True
    """Trim leading and trailing silence of speech and recordings."""
    silence_threshold_db: float = -45.0
    """Level below which audio counts as silence, dBFS."""
    chime: bool = True
    """Play a chime before and after speech and recordings."""
    chime_path: Path | None = None
    """Audio file used as the chime; None means the built-in generated chime."""
    max_recording_s: float = 1800.0
    """Recordings longer than this are refused, seconds."""
    tts_timeout_s: float = 10.0
    """Per-request timeout of online TTS, seconds."""
    gtts_retries: int = 3
    """How often online TTS retries a request refused with HTTP 429 or 5xx."""
    auto_tts_timeout_s: float = 3.0
    """Per-request timeout when engine='auto' tries online TTS first, seconds."""
    sentence_pause_s: float = 0.35
    """Pause inserted between sentences by engines that render sentence by sentence."""
    extra_abbreviations: Path | None = None
    """Optional TOML file with site abbreviations/units, merged over the built-in ones."""

    def __post_init__(self) -> None:
        _check_range("target_lufs", self.target_lufs, -40.0, -5.0)
        _check_range("true_peak_dbtp", self.true_peak_dbtp, -9.0, 0.0)
        if self.true_peak_dbtp - self.target_lufs < 6.0:
            raise InvalidAudioSettings(
                f"true_peak_dbtp ({self.true_peak_dbtp}) must be at least 6 dB above "
                f"target_lufs ({self.target_lufs}); lower target_lufs or raise the ceiling"
            )
        if self.sample_rate not in MP3_SAMPLE_RATES:
            raise InvalidAudioSettings(
                f"sample_rate {self.sample_rate} is not an MP3 rate; use one of "
                f"{sorted(MP3_SAMPLE_RATES)}"
            )
        allowed = _MPEG1_BITRATES if self.sample_rate >= 32000 else _MPEG2_BITRATES
        if self.bitrate_kbps not in allowed:
            raise InvalidAudioSettings(
                f"bitrate_kbps {self.bitrate_kbps} is not valid for MP3 at "
                f"{self.sample_rate} Hz; use one of {sorted(allowed)}"
            )
        _check_range("silence_threshold_db", self.silence_threshold_db, -90.0, -10.0)
        _check_range("max_recording_s", self.max_recording_s, 1.0, 4 * 3600.0)
        _check_range("tts_timeout_s", self.tts_timeout_s, 0.1, 300.0)
        _check_range("auto_tts_timeout_s", self.auto_tts_timeout_s, 0.1, 300.0)
        _check_range("sentence_pause_s", self.sentence_pause_s, 0.0, 5.0)
        if not 0 <= self.gtts_retries <= 10:
            raise InvalidAudioSettings(f"gtts_retries must be 0-10, got {self.gtts_retries}")
        if self.chime_path is not None and not Path(self.chime_path).is_file():
            raise InvalidAudioSettings(
                f"chime_path {self.chime_path} is not a file; fix the path or set it to None "
                "to use the built-in chime"
            )
        if self.extra_abbreviations is not None and not Path(self.extra_abbreviations).is_file():
            raise InvalidAudioSettings(
                f"extra_abbreviations {self.extra_abbreviations} is not a file; fix the path"
            )

    def cache_key_fields(self) -> dict[str, Any]:
        """The settings that change rendered bytes, as JSON-ready values.

        A custom chime enters by the hash of its content, so replacing the file
        re-renders everything that used it.
        """
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in _NOT_IN_CACHE_KEY:
                continue
            value = getattr(self, f.name)
            if f.name == "chime_path":
                value = _file_sha256(Path(value)) if value is not None else None
            out[f.name] = value
        return out


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or not low <= value <= high:
        raise InvalidAudioSettings(f"{name} must be between {low} and {high}, got {value!r}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
