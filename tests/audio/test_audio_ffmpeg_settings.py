"""ffmpeg lookup and settings validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from audio import AudioError, AudioSettings, FfmpegNotFound, find_ffmpeg
from audio.exceptions import InvalidAudioSettings


@pytest.mark.integration
def test_default_lookup_finds_a_working_ffmpeg() -> None:
    assert os.access(find_ffmpeg(), os.X_OK)


def test_nothing_to_find_raises_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(FfmpegNotFound, match="pip install imageio-ffmpeg") as info:
        find_ffmpeg(use_wheel=False, search_path=str(tmp_path))
    assert isinstance(info.value, AudioError)


@pytest.mark.integration
def test_broken_ffmpeg_on_path_is_skipped(tmp_path: Path) -> None:
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(FfmpegNotFound, match=str(fake)):
        find_ffmpeg(use_wheel=False, search_path=str(tmp_path))


@pytest.mark.integration
def test_ffmpeg_on_path_is_used_without_the_wheel(tmp_path: Path) -> None:
    (tmp_path / "ffmpeg").symlink_to(find_ffmpeg())
    assert find_ffmpeg(use_wheel=False, search_path=str(tmp_path)) == str(tmp_path / "ffmpeg")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target_lufs", -3.0, "target_lufs"),
        ("true_peak_dbtp", 1.0, "true_peak_dbtp"),
        ("target_lufs", float("nan"), "target_lufs"),
        ("sample_rate", 12345, "not an MP3 rate"),
        ("bitrate_kbps", 33, "not valid for MP3"),
        ("bitrate_kbps", 8, "not valid for MP3"),  # fine at 24 kHz, not at 44.1 kHz
        ("max_recording_s", 0.0, "max_recording_s"),
        ("tts_timeout_s", 0.0, "tts_timeout_s"),
        ("gtts_retries", 11, "gtts_retries"),
        ("chime_path", Path("/nonexistent/chime.wav"), "chime_path"),
    ],
)
def test_invalid_settings(field: str, value: object, message: str) -> None:
    kwargs: dict[str, object] = {field: value}
    if field == "bitrate_kbps" and value == 8:
        kwargs["sample_rate"] = 44100
    with pytest.raises(InvalidAudioSettings, match=message):
        AudioSettings(**kwargs)  # type: ignore[arg-type]


def test_peak_must_leave_room_above_loudness() -> None:
    with pytest.raises(InvalidAudioSettings, match="at least 6 dB"):
        AudioSettings(target_lufs=-10.0, true_peak_dbtp=-5.0)


def test_cache_key_ignores_waiting_and_follows_chime_content(tmp_path: Path) -> None:
    assert (
        AudioSettings(tts_timeout_s=1.0).cache_key_fields()
        == AudioSettings(tts_timeout_s=30.0, gtts_retries=0).cache_key_fields()
    )
    bell = tmp_path / "bell.wav"
    bell.write_bytes(b"one")
    key1 = AudioSettings(chime_path=bell).cache_key_fields()
    bell.write_bytes(b"two")
    assert AudioSettings(chime_path=bell).cache_key_fields() != key1
