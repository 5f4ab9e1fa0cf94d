"""Loading and validating recordings from officers' phones and PCs.

Anything ffmpeg reads is accepted (mp3, wav, m4a, ogg, amr, 3gp...). What cannot be
broadcast is refused with :class:`RecordingRejected`, whose message says what to fix.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from audio.cache import sha256_file
from audio.exceptions import FfmpegFailed, RecordingRejected
from audio.ffmpeg import run_ffmpeg
from audio.pcm import Pcm, peak_dbfs
from audio.settings import AudioSettings

logger = logging.getLogger(__name__)

_DURATION_RE = re.compile(rb"Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)")
# Decoder complaints that mean damaged data even when ffmpeg exits 0.
_DECODE_ERROR_RE = re.compile(
    rb"Error submitting packet to decoder|Header missing|[Ee]rror while decoding|"
    rb"Invalid data found when processing input|[Pp]acket corrupt|corrupt decoded frame|"
    rb"invalid frame|decode_band_types",
)
# A decode shorter than this share of the declared length means the file was cut off.
_TRUNCATED_SHARE = 0.9


def load_recording(path: Path, settings: AudioSettings) -> tuple[Pcm, str]:
    """Decode and validate ``path``; return mono PCM at the output rate and the file's sha256.

    Raises:
        RecordingRejected: with reason missing, empty, not_audio, corrupt, silent or too_long.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise RecordingRejected("missing", f"recording {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise RecordingRejected(
            "empty", f"{name} is an empty file (0 bytes); record or copy it again"
        )
    limit = settings.max_recording_s
    try:
        proc = run_ffmpeg(
            # -t: never decode more than we could accept; a 3-hour file is refused quickly.
            [
                "-i",
                str(path),
                "-map",
                "0:a:0",
                "-t",
                f"{limit + 1:.3f}",
                "-ac",
                "1",
                "-ar",
                str(settings.sample_rate),
                "-f",
                "s16le",
                "pipe:1",
            ],
            what=f"decoding {name}",
            timeout_s=60.0 + limit,
        )
    except FfmpegFailed as exc:
        raise _classify_failure(name, exc) from exc
    # The file name is echoed in the log and could contain any of the words we look for.
    stderr = proc.stderr.replace(str(path).encode(), b"<input>")
    pcm = Pcm(data=proc.stdout, rate=settings.sample_rate)
    declared = _declared_duration(stderr)
    if pcm.duration_s > limit or (declared is not None and declared > limit + 1):
        length = _fmt_duration(declared) if declared else f"more than {_fmt_duration(limit)}"
        raise RecordingRejected(
            "too_long",
            f"{name} is {length} long; the limit is {_fmt_duration(limit)}. Cut it into "
            "shorter parts or raise AudioSettings.max_recording_s",
        )
    errors = _DECODE_ERROR_RE.findall(stderr)
    if errors:
        raise RecordingRejected(
            "corrupt",
            f"{name} is damaged: ffmpeg reported {len(errors)} decoding error(s) "
            f"({errors[0].decode(errors='replace')}). Export or record it again",
        )
    if declared is not None and declared > 1.0 and pcm.duration_s < _TRUNCATED_SHARE * declared:
        raise RecordingRejected(
            "corrupt",
            f"{name} is cut off: it declares {_fmt_duration(declared)} but only "
            f"{_fmt_duration(pcm.duration_s)} decodes. Copy or upload the file again",
        )
    if pcm.frames == 0:
        raise RecordingRejected("corrupt", f"{name} contains no audio samples; record it again")
    peak = peak_dbfs(pcm)
    if peak < settings.silence_threshold_db:
        raise RecordingRejected(
            "silent",
            f"{name} is silent (loudest point {peak:.0f} dBFS, below "
            f"{settings.silence_threshold_db:.0f} dBFS). Check the microphone and record again",
        )
    logger.info("loaded recording %s: %.1f s, peak %.1f dBFS", name, pcm.duration_s, peak)
    return pcm, sha256_file(path)


def _classify_failure(name: str, exc: FfmpegFailed) -> RecordingRejected:
    log = exc.stderr.decode("utf-8", "replace")
    message = str(exc)
    if "matches no streams" in log or "does not contain any stream" in log:
        return RecordingRejected(
            "not_audio", f"{name} contains no audio track; choose an audio file"
        )
    if "moov atom not found" in log:
        return RecordingRejected(
            "corrupt",
            f"{name} is incomplete (its index is missing, as when a phone stops saving "
            "midway); record or export it again",
        )
    if "Invalid data found when processing input" in log:
        return RecordingRejected(
            "not_audio",
            f"{name} is not an audio file ffmpeg can read (or is damaged beyond reading); "
            "use mp3, wav, m4a, ogg, amr or 3gp",
        )
    return RecordingRejected(
        "corrupt", f"{name} could not be decoded ({message}); export or record it again"
    )


def _declared_duration(stderr: bytes) -> float | None:
    match = _DURATION_RE.search(stderr)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _fmt_duration(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{seconds:.1f} s"


__all__ = ["load_recording"]
