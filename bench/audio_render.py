"""Benchmark the audio package: render time of 1-, 5- and 15-minute bulletins.

For each length it times, in one run and on the same speech:
  - offline TTS: render_text(engine="offline") from an empty cache (espeak-ng, trim,
    chime, limiter + two-pass loudnorm, MP3 encode, hash);
  - recording: render_recording() of the same speech as a phone-style AAC .m4a;
  - baseline: one plain ffmpeg transcode of that .m4a to the same MP3 format, i.e. what
    any converter costs with no processing;
  - cache hit: render_text() again with the same input;
and reports output bytes per minute of audio.

Usage: .venv/bin/python bench/audio_render.py [--minutes 1 5 15]
Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from audio import AudioSettings, render_recording, render_text
from audio.ffmpeg import find_ffmpeg
from audio.normalize import normalize_text
from audio.tts.espeak import EspeakEngine

PARAGRAPH = (
    "UBND xã Lục Bình thông báo: ngày 30/11/2026, lúc 8h30, tại nhà văn hóa thôn Đông tổ "
    "chức họp dân về chuyển đổi số. Đến nay 8/8 thôn đã có loa thông minh, đạt 100%. "
    "Mức hỗ trợ mỗi hộ là 1.500.000 đồng. Bà con cần hỗ trợ xin gọi số 0912 345 678. "
    "Trời rét, nhiệt độ thấp nhất 12°C, bà con chú ý giữ ấm cho người già và trẻ nhỏ."
)


def bulletin_text(minutes: float) -> str:
    """Repeat the paragraph until espeak-ng would speak for about ``minutes``."""
    one = EspeakEngine().synthesize(normalize_text(PARAGRAPH)).duration_s
    reps = max(1, round(minutes * 60 / one))
    return "\n".join([PARAGRAPH] * reps)


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_length(minutes: float, ffmpeg: str, work: Path) -> dict[str, Any]:
    settings = AudioSettings()
    text = bulletin_text(minutes)
    cache = work / f"cache-{minutes}"

    tts_s, rendered = timed(lambda: render_text(text, cache_dir=cache, engine="offline"))
    hit_s, _ = timed(lambda: render_text(text, cache_dir=cache, engine="offline"))

    # The same speech as a phone recording (AAC in .m4a).
    pcm = EspeakEngine().synthesize(normalize_text(text))
    wav = work / f"speech-{minutes}.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(pcm.rate)
        out.writeframes(pcm.data)
    m4a = work / f"speech-{minutes}.m4a"
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-i", str(wav), "-c:a", "aac", "-b:a", "64k", str(m4a)],
        check=True,
        timeout=600,
    )
    rec_s, recorded = timed(lambda: render_recording(m4a, cache_dir=cache, settings=settings))
    plain = work / f"plain-{minutes}.mp3"
    base_s, _ = timed(
        lambda: subprocess.run(
            [
                ffmpeg,
                "-v",
                "error",
                "-y",
                "-i",
                str(m4a),
                "-ac",
                "1",
                "-ar",
                str(settings.sample_rate),
                "-c:a",
                "libmp3lame",
                "-b:a",
                f"{settings.bitrate_kbps}k",
                str(plain),
            ],
            check=True,
            timeout=600,
        )
    )
    return {
        "minutes_requested": minutes,
        "tts_output_duration_s": rendered.duration_s,
        "recording_output_duration_s": recorded.duration_s,
        "offline_tts_render_s": round(tts_s, 3),
        "recording_render_s": round(rec_s, 3),
        "plain_ffmpeg_transcode_s": round(base_s, 3),
        "recording_vs_plain_transcode": round(rec_s / base_s, 1),
        "cache_hit_s": round(hit_s, 4),
        "bytes": rendered.size,
        "bytes_per_minute": round(rendered.size / (rendered.duration_s / 60)),
        "realtime_factor_tts": round(rendered.duration_s / tts_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 5.0, 15.0])
    args = parser.parse_args()
    ffmpeg = find_ffmpeg()
    settings = AudioSettings()
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        results = [bench_length(m, ffmpeg, Path(tmp)) for m in args.minutes]
    report = {
        "benchmark": "audio",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "ffmpeg": ffmpeg,
        "format": f"mp3 {settings.bitrate_kbps} kbps mono {settings.sample_rate} Hz",
        "target": f"{settings.target_lufs} LUFS / {settings.true_peak_dbtp} dBTP, chime on",
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
