"""What plays: text, recordings and tones rendered to cached, loudness-normalized MP3."""

from __future__ import annotations

from audio.exceptions import AudioError, FfmpegNotFound
from audio.ffmpeg import find_ffmpeg
from audio.normalize import normalize_text
from audio.render import EngineSet, RenderedAudio, render_recording, render_text, render_tone
from audio.settings import AudioSettings

__all__ = [
    "AudioError",
    "AudioSettings",
    "EngineSet",
    "FfmpegNotFound",
    "RenderedAudio",
    "find_ffmpeg",
    "normalize_text",
    "render_recording",
    "render_text",
    "render_tone",
]
