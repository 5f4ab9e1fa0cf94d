"""Loudness mastering and encoding: PCM in, an MP3 file at the target loudness out.

Two-pass ffmpeg loudnorm in *linear* mode (one exact gain) is the accurate way to hit an
EBU R128 target, but loudnorm only stays linear when the signal's peak-to-loudness
ratio (PLR) fits under the ceiling: TP - I <= true_peak_dbtp - target_lufs. Raw speech,
and espeak-ng in particular (PLR ~20 dB), does not fit, and loudnorm then falls back to
its dynamic mode, which on short clips misses the target by 1-2 LU. So when the PLR is
too high a look-ahead limiter first shaves the peaks, its drive raised until the PLR
fits; loudnorm then applies one exact gain. Limiting speech peaks is what a broadcast
processor does anyway, and it makes quiet syllables carry further on horn speakers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from audio.exceptions import AudioError
from audio.ffmpeg import (
    Loudness,
    loudnorm_json,
    measure_file_loudness,
    measure_loudness,
    pcm_input_args,
    pcm_timeout,
    run_ffmpeg,
)
from audio.pcm import Pcm
from audio.settings import AudioSettings
from audio.tts.abc import ProgressFn

logger = logging.getLogger(__name__)

# Room left under the true-peak ceiling for the MP3 encoder's own overshoot.
_ENCODER_MARGIN_DB = 0.5
_LIMIT_DBFS = -6.0
_MAX_LIMITER_TRIES = 5
# Re-encode once when the encoded file misses the target by more than this.
_CORRECT_ABOVE_LU = 0.3
# Below this the input is digital silence or close to it: there is nothing to normalize.
_SILENT_LUFS = -70.0


@dataclass(frozen=True)
class MasterResult:
    duration_s: float
    output_lufs: float
    output_true_peak_dbtp: float
    normalization_type: str
    limiter_gain_db: float | None


def master_to_mp3(
    pcm: Pcm, settings: AudioSettings, out_path: Path, *, progress: ProgressFn | None = None
) -> MasterResult:
    """Normalize ``pcm`` to the settings' loudness and encode it to ``out_path`` as MP3."""

    def report(fraction: float) -> None:
        if progress is not None:
            progress(fraction)

    if pcm.frames == 0:
        raise AudioError("nothing to encode: the audio is empty")
    first = measure_loudness(pcm)
    if first.integrated_lufs <= _SILENT_LUFS:
        raise AudioError(
            f"the audio is too quiet to normalize ({first.integrated_lufs:.1f} LUFS); "
            "check the source"
        )
    report(0.2)
    chain, gain = _limiter_chain(pcm, first, settings)
    report(0.45)
    lufs, tp = settings.target_lufs, settings.true_peak_dbtp
    af = f"{chain}," if chain else ""
    measure = run_ffmpeg(
        [
            *pcm_input_args(pcm.rate),
            "-af",
            f"{af}loudnorm=I={lufs}:TP={tp}:LRA=50:print_format=json",
            "-f",
            "null",
            "-",
        ],
        what="measuring loudness (loudnorm pass 1)",
        input_data=pcm.data,
        timeout_s=pcm_timeout(pcm.duration_s),
    )
    measured = loudnorm_json(measure.stderr)
    report(0.7)
    tmp = out_path.with_name(f".{out_path.name}.part")
    target = lufs
    kind = "unknown"
    output = Loudness(float("nan"), float("nan"))
    try:
        for attempt in range(2):
            stats = _encode(
                pcm, af, measured=measured, target_lufs=target, settings=settings, out=tmp
            )
            kind = str(stats.get("normalization_type", "unknown"))
            output = measure_file_loudness(tmp)
            miss = lufs - output.integrated_lufs
            report(0.85 + 0.15 * attempt)
            # The encoder's low-pass drops a few tenths of a LU (K-weighting favours the
            # highs it removes); aim pass 2 that much higher once, within the peak margin.
            # Never past the true-peak ceiling: upward only by the headroom measured.
            step = min(miss, settings.true_peak_dbtp - output.true_peak_dbtp)
            if attempt == 0 and abs(miss) > _CORRECT_ABOVE_LU and abs(step) > 0.1:
                target = lufs + max(-_ENCODER_MARGIN_DB, min(_ENCODER_MARGIN_DB, step))
                logger.debug(
                    "output %.2f LUFS, re-encoding aiming %.2f", output.integrated_lufs, target
                )
                continue
            break
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    if kind != "linear":
        logger.warning(
            "loudnorm fell back to %s normalization (input %s LUFS, %s dBTP); "
            "loudness may miss the target",
            kind,
            measured["input_i"],
            measured["input_tp"],
        )
    report(1.0)
    return MasterResult(
        duration_s=pcm.duration_s,
        output_lufs=output.integrated_lufs,
        output_true_peak_dbtp=output.true_peak_dbtp,
        normalization_type=kind,
        limiter_gain_db=gain,
    )


def _encode(
    pcm: Pcm,
    af: str,
    *,
    measured: dict[str, float | str],
    target_lufs: float,
    settings: AudioSettings,
    out: Path,
) -> dict[str, float | str]:
    m = measured
    loudnorm = (
        f"loudnorm=I={target_lufs:.2f}:TP={settings.true_peak_dbtp}:LRA=50"
        f":measured_I={m['input_i']}:measured_TP={m['input_tp']}"
        f":measured_LRA={m['input_lra']}:measured_thresh={m['input_thresh']}"
        f":offset={m['target_offset']}:linear=true:print_format=json"
    )
    proc = run_ffmpeg(
        [
            *pcm_input_args(pcm.rate),
            "-af",
            f"{af}{loudnorm},aresample={settings.sample_rate}",
            "-ar",
            str(settings.sample_rate),
            "-ac",
            "1",
            "-c:a",
            "libmp3lame",
            "-b:a",
            f"{settings.bitrate_kbps}k",
            # No tags and no encoder-version strings: the bytes depend on the audio only.
            "-map_metadata",
            "-1",
            "-id3v2_version",
            "0",
            "-write_id3v1",
            "0",
            "-fflags",
            "+bitexact",
            "-flags:a",
            "+bitexact",
            "-f",
            "mp3",
            "-y",
            str(out),
        ],
        what="normalizing and encoding (loudnorm pass 2)",
        input_data=pcm.data,
        timeout_s=pcm_timeout(pcm.duration_s),
    )
    return loudnorm_json(proc.stderr)


def _limiter_chain(pcm: Pcm, first: Loudness, settings: AudioSettings) -> tuple[str, float | None]:
    allowed = settings.true_peak_dbtp - settings.target_lufs - _ENCODER_MARGIN_DB
    plr = first.true_peak_dbtp - first.integrated_lufs
    if plr <= allowed:
        return "", None
    # Drive the limiter so peaks exceed its threshold by the excess PLR (plus a little);
    # each dB of drive removes well under a dB of PLR, so raise it until the PLR fits.
    gain = _LIMIT_DBFS - first.true_peak_dbtp + (plr - allowed) + 1.0
    chain = ""
    for attempt in range(_MAX_LIMITER_TRIES):
        chain = _limiter(gain)
        after = measure_loudness(pcm, chain)
        plr = after.true_peak_dbtp - after.integrated_lufs
        logger.debug(
            "limiter try %d: gain %.1f dB -> PLR %.1f dB (allowed %.1f)",
            attempt,
            gain,
            plr,
            allowed,
        )
        if plr <= allowed:
            break
        gain += 2.0 * (plr - allowed) + 0.5
    else:
        logger.warning("peak limiting left PLR at %.1f dB (allowed %.1f)", plr, allowed)
    return chain, gain


def _limiter(gain_db: float) -> str:
    limit = 10 ** (_LIMIT_DBFS / 20)
    # level=false: keep the output level; attack/release short enough to catch plosives,
    # long enough not to distort vowels.
    return f"volume={gain_db:.2f}dB,alimiter=limit={limit:.4f}:attack=1:release=30:level=false"
