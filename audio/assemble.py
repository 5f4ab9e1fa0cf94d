"""Building the programme before mastering: silence trimming and the chime wrap."""

from __future__ import annotations

import logging

from audio.exceptions import AudioError
from audio.ffmpeg import measure_loudness, run_ffmpeg
from audio.pcm import Pcm, apply_gain, concat, trim_silence
from audio.settings import AudioSettings
from audio.tones import chime

logger = logging.getLogger(__name__)

CHIME_GAP_S = 0.4
# The chime sits a little under the speech so it announces without startling.
CHIME_BELOW_SPEECH_LU = 3.0


def assemble(pcm: Pcm, settings: AudioSettings, *, speech: bool) -> Pcm:
    """Trim (speech only) and wrap in chimes (speech only) per ``settings``."""
    if not speech:
        return pcm
    if settings.trim_silence:
        trimmed = trim_silence(pcm, settings.silence_threshold_db)
        if trimmed.frames == 0:
            raise AudioError(
                f"the audio is silent (nothing above {settings.silence_threshold_db} dBFS); "
                "check the source or lower AudioSettings.silence_threshold_db"
            )
        pcm = trimmed
    if not settings.chime:
        return pcm
    bell = chime_pcm(settings, pcm.rate)
    speech_lufs = measure_loudness(pcm).integrated_lufs
    bell_lufs = measure_loudness(bell).integrated_lufs
    bell = apply_gain(bell, speech_lufs - CHIME_BELOW_SPEECH_LU - bell_lufs)
    gap = Pcm.silence(CHIME_GAP_S, pcm.rate)
    return concat([bell, gap, pcm, gap, bell])


def chime_pcm(settings: AudioSettings, rate: int) -> Pcm:
    """The configured chime (AudioSettings.chime_path) or the built-in one, at ``rate``."""
    if settings.chime_path is None:
        return chime(rate)
    proc = run_ffmpeg(
        [
            "-i",
            str(settings.chime_path),
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(rate),
            "-t",
            "30",
            "-f",
            "s16le",
            "pipe:1",
        ],
        what=f"decoding the chime {settings.chime_path} (check AudioSettings.chime_path)",
    )
    pcm = Pcm(data=proc.stdout, rate=rate)
    if pcm.frames == 0:
        raise AudioError(f"the chime {settings.chime_path} holds no audio; replace the file")
    return pcm
