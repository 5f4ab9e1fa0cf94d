"""Generated signals: the emergency siren and the default chime.

Both are synthesized here rather than shipped as files, so nothing is downloaded and the
exact waveform is reproducible (and so cacheable) from the code alone.
"""

from __future__ import annotations

import functools
import math
from array import array

from audio.exceptions import UnknownTone
from audio.pcm import Pcm

TONE_KINDS = ("siren", "chime")

# Wail siren: the pitch glides 650 -> 1350 -> 650 Hz every 2 s. Horn speakers reproduce
# 0.5-4 kHz best and the ear is most sensitive around 1 kHz; a glide is recognised as an
# alarm (and not as music or speech) across languages.
_SIREN_CENTER_HZ = 1000.0
_SIREN_DEVIATION_HZ = 350.0
_SIREN_PERIOD_S = 2.0
_FADE_S = 0.02


def siren(seconds: float, rate: int) -> Pcm:
    """A wail siren of exactly ``seconds``, faded in/out over 20 ms to avoid clicks."""
    if not 0.5 <= seconds <= 3600:
        raise ValueError(f"siren length must be 0.5-3600 s, got {seconds}")
    cycle = _siren_cycle(rate)
    frames = round(seconds * rate)
    reps = -(-frames // len(cycle))  # ceil
    samples = (cycle * reps)[:frames]
    _fade(samples, round(_FADE_S * rate))
    return Pcm(data=samples.tobytes(), rate=rate)


@functools.cache
def _siren_cycle(rate: int) -> array[int]:
    # One period loops seamlessly: center * period is a whole number of cycles and the
    # FM phase term returns to its start, so the cycle is tiled instead of recomputed.
    n = round(_SIREN_PERIOD_S * rate)
    fm = 1.0 / _SIREN_PERIOD_S
    beta = _SIREN_DEVIATION_HZ / fm
    out = array("h", bytes(2 * n))
    for i in range(n):
        t = i / rate
        phase = 2 * math.pi * _SIREN_CENTER_HZ * t - beta * math.cos(2 * math.pi * fm * t)
        # A little third harmonic makes it cut through like a mechanical siren.
        value = 0.8 * math.sin(phase) + 0.15 * math.sin(3 * phase)
        out[i] = round(value * 0.7 * 32767)
    return out


# Default chime: a two-note "ding-dong" (E5 then C5) with bell-like decaying partials.
_CHIME_NOTES = ((0.0, 659.25), (0.55, 523.25))
_CHIME_PARTIALS = ((1.0, 1.0), (2.0, 0.35), (3.0, 0.15), (4.2, 0.08))
_CHIME_LENGTH_S = 1.9


@functools.cache
def chime(rate: int) -> Pcm:
    """The built-in chime (about 1.9 s)."""
    n = round(_CHIME_LENGTH_S * rate)
    acc = [0.0] * n
    for start_s, freq in _CHIME_NOTES:
        start = round(start_s * rate)
        for i in range(n - start):
            t = i / rate
            env = math.exp(-3.2 * t) * min(1.0, t / 0.005)
            acc[start + i] += env * sum(
                amp * math.sin(2 * math.pi * freq * mult * t) for mult, amp in _CHIME_PARTIALS
            )
    peak = max(abs(v) for v in acc) or 1.0
    samples = array("h", (round(v / peak * 0.7 * 32767) for v in acc))
    _fade(samples, round(_FADE_S * rate))
    return Pcm(data=samples.tobytes(), rate=rate)


def tone(kind: str, seconds: float, rate: int) -> Pcm:
    """Generate ``kind`` ("siren" or "chime"); ``seconds`` applies to the siren only."""
    if kind == "siren":
        return siren(seconds, rate)
    if kind == "chime":
        return chime(rate)
    raise UnknownTone(f"unknown tone {kind!r}; use one of {', '.join(TONE_KINDS)}")


def _fade(samples: array[int], n: int) -> None:
    n = min(n, len(samples) // 2)
    for i in range(n):
        gain = i / n
        samples[i] = round(samples[i] * gain)
        samples[-1 - i] = round(samples[-1 - i] * gain)
