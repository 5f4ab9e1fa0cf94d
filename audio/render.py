"""The public rendering API: text, recordings and tones to cached, normalized MP3."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from audio.cache import RenderIndex, render_key, sha256_file
from audio.exceptions import AudioError, EmptyText, TtsError, UnknownEngine
from audio.ffmpeg import find_ffmpeg
from audio.master import master_to_mp3
from audio.normalize import normalize_text
from audio.pcm import Pcm
from audio.settings import AudioSettings
from audio.tones import TONE_KINDS, tone
from audio.tts.abc import TtsEngine
from audio.tts.espeak import EspeakEngine
from audio.tts.gtts import GttsEngine

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]
ENGINES = ("auto", "gtts", "offline")
FORMAT = "mp3"
MIME = "audio/mpeg"
# Bump when the processing chain changes so old renders are not reused.
_PIPELINE_VERSION = 1


@dataclass(frozen=True)
class RenderedAudio:
    """An encoded, loudness-normalized file in the cache directory."""

    path: Path
    """The encoded file in the cache dir, named ``<sha256>.<ext>``."""
    sha256: str
    """SHA-256 of the encoded bytes."""
    size: int
    """Size in bytes."""
    duration_s: float
    format: str
    """"mp3"."""
    mime: str
    """"audio/mpeg"."""
    engine: str
    """What produced the audio: "espeak-ng", "gtts", "recording" or "tone"."""
    spoken_text: str | None
    """The normalized text actually spoken (TTS only)."""


@dataclass(frozen=True)
class EngineSet:
    """The TTS engines render_text chooses from. ``auto_online`` is the online engine
    as used by engine="auto" (short timeout); it defaults to ``online``."""

    online: TtsEngine | None
    offline: TtsEngine
    auto_online: TtsEngine | None = None

    @classmethod
    def default(cls, settings: AudioSettings) -> EngineSet:
        """gTTS online (settings' timeout and retries), espeak-ng offline, and for
        engine="auto" a gTTS with the short ``auto_tts_timeout_s`` and at most one retry."""
        return cls(
            online=GttsEngine(
                timeout_s=settings.tts_timeout_s,
                retries=settings.gtts_retries,
                sentence_pause_s=settings.sentence_pause_s,
            ),
            offline=EspeakEngine(),
            auto_online=GttsEngine(
                timeout_s=settings.auto_tts_timeout_s,
                retries=min(1, settings.gtts_retries),
                backoff_s=0.5,
                sentence_pause_s=settings.sentence_pause_s,
            ),
        )


def render_text(
    text: str,
    *,
    cache_dir: Path,
    engine: str = "auto",
    speed: float = 1.0,
    settings: AudioSettings | None = None,
    progress: ProgressFn | None = None,
    engines: EngineSet | None = None,
) -> RenderedAudio:
    """Speak ``text`` and return the cached, normalized MP3.

    ``engine``: "offline" (espeak-ng), "gtts" (Google, needs the internet) or "auto"
    (gTTS with a short timeout, falling back to offline). The engine actually used is
    in ``RenderedAudio.engine``. The same text, speed, settings and engine render once.

    Raises:
        EmptyText: nothing to speak after normalization.
        TtsUnavailable: engine="gtts" and Google cannot be reached.
        AudioError: any other failure, with a message saying what to do.
    """
    settings = settings or AudioSettings()
    if engine not in ENGINES:
        raise UnknownEngine(f"unknown TTS engine {engine!r}; use one of {', '.join(ENGINES)}")
    if not 0.5 <= speed <= 2.0:
        raise AudioError(f"speed must be between 0.5 and 2.0, got {speed}")
    spoken = normalize_text(text, extra_abbreviations=settings.extra_abbreviations)
    if not spoken.strip():
        raise EmptyText("the bulletin text is empty; type something to read out")
    engines = engines or EngineSet.default(settings)
    candidates: list[TtsEngine]
    if engine == "offline" or (engine == "auto" and engines.online is None):
        candidates = [engines.offline]
    elif engine == "gtts":
        if engines.online is None:
            raise UnknownEngine("no online engine is configured; use engine='offline'")
        candidates = [engines.online]
    else:
        candidates = [engines.auto_online or engines.online or engines.offline, engines.offline]
    last_error: TtsError | None = None
    for tts in candidates:
        key = render_key(
            {
                "kind": "text",
                "text": spoken,
                "speed": speed,
                "engine": tts.identity,
                "settings": settings.cache_key_fields(),
                "pipeline": _PIPELINE_VERSION,
            }
        )
        cached = _cached(cache_dir, key)
        if cached is not None:
            _report(progress, 1.0)
            return cached
        try:
            pcm = tts.synthesize(spoken, speed=speed, progress=_scaled(progress, 0.0, 0.4))
        except TtsError as exc:
            last_error = exc
            if tts is not candidates[-1]:
                logger.warning(
                    "%s failed (%s); falling back to %s", tts.name, exc, candidates[-1].name
                )
                continue
            raise
        return _finish(
            pcm,
            settings=settings,
            cache_dir=cache_dir,
            key=key,
            engine=tts.name,
            spoken_text=spoken,
            speech=True,
            progress=_scaled(progress, 0.4, 1.0),
        )
    raise AssertionError(f"unreachable: no TTS candidate ran ({last_error})")


def render_tone(
    kind: str,
    *,
    cache_dir: Path,
    seconds: float = 5.0,
    settings: AudioSettings | None = None,
    progress: ProgressFn | None = None,
) -> RenderedAudio:
    """Render a generated tone.

    ``kind``: "siren" (emergency alert tone, generated, not downloaded; exactly
    ``seconds`` long) or "chime" (the built-in chime, or AudioSettings.chime_path if set;
    ``seconds`` is ignored).
    """
    settings = settings or AudioSettings()
    if kind not in TONE_KINDS:
        tone(kind, seconds, settings.sample_rate)  # raises UnknownTone with the choices
    key = render_key(
        {
            "kind": "tone",
            "tone": kind,
            "seconds": seconds if kind == "siren" else None,
            "settings": settings.cache_key_fields(),
            "pipeline": _PIPELINE_VERSION,
        }
    )
    cached = _cached(cache_dir, key)
    if cached is not None:
        _report(progress, 1.0)
        return cached
    try:
        if kind == "chime":
            pcm = _chime_pcm(settings, settings.sample_rate)
        else:
            pcm = tone(kind, seconds, settings.sample_rate)
    except ValueError as exc:
        raise AudioError(str(exc)) from exc
    return _finish(
        pcm,
        settings=settings,
        cache_dir=cache_dir,
        key=key,
        engine="tone",
        spoken_text=None,
        speech=False,
        progress=progress,
    )


def render_recording(
    path: Path,
    *,
    cache_dir: Path,
    settings: AudioSettings | None = None,
    progress: ProgressFn | None = None,
) -> RenderedAudio:
    """Process a recording (anything ffmpeg reads: mp3, wav, m4a, ogg, amr, 3gp...).

    Raises:
        RecordingRejected: the file is missing, empty, not audio, corrupt, silent or
            longer than AudioSettings.max_recording_s; ``reason`` says which.
    """
    from audio.recording import load_recording

    settings = settings or AudioSettings()
    path = Path(path)
    pcm, source_sha = load_recording(path, settings)
    _report(progress, 0.2)
    key = render_key(
        {
            "kind": "recording",
            "source": source_sha,
            "settings": settings.cache_key_fields(),
            "pipeline": _PIPELINE_VERSION,
        }
    )
    cached = _cached(cache_dir, key)
    if cached is not None:
        _report(progress, 1.0)
        return cached
    return _finish(
        pcm,
        settings=settings,
        cache_dir=cache_dir,
        key=key,
        engine="recording",
        spoken_text=None,
        speech=True,
        progress=_scaled(progress, 0.2, 1.0),
    )


def _finish(
    pcm: Pcm,
    *,
    settings: AudioSettings,
    cache_dir: Path,
    key: str,
    engine: str,
    spoken_text: str | None,
    speech: bool,
    progress: ProgressFn | None,
) -> RenderedAudio:
    from audio.assemble import assemble

    find_ffmpeg()  # fail early with FfmpegNotFound rather than midway
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    program = assemble(pcm, settings, speech=speech)
    tmp = cache_dir / f".render-{os.getpid()}-{uuid.uuid4().hex}.{FORMAT}"
    try:
        result = master_to_mp3(program, settings, tmp, progress=progress)
        sha = sha256_file(tmp)
        final = cache_dir / f"{sha}.{FORMAT}"
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    rendered = RenderedAudio(
        path=final,
        sha256=sha,
        size=final.stat().st_size,
        duration_s=round(result.duration_s, 3),
        format=FORMAT,
        mime=MIME,
        engine=engine,
        spoken_text=spoken_text,
    )
    record = asdict(rendered)
    record["path"] = None
    record["file"] = final.name
    RenderIndex(cache_dir).put(key, record)
    logger.info(
        "rendered %s with %s: %.1f s, %d bytes, loudnorm %s -> %.1f LUFS %.1f dBTP",
        final.name,
        engine,
        rendered.duration_s,
        rendered.size,
        result.normalization_type,
        result.output_lufs,
        result.output_true_peak_dbtp,
    )
    return rendered


def _cached(cache_dir: Path, key: str) -> RenderedAudio | None:
    record: dict[str, Any] | None = RenderIndex(Path(cache_dir)).get(key)
    if record is None:
        return None
    logger.debug("render cache hit %s -> %s", key, record["file"])
    return RenderedAudio(
        path=Path(cache_dir) / record["file"],
        sha256=record["sha256"],
        size=record["size"],
        duration_s=record["duration_s"],
        format=record["format"],
        mime=record["mime"],
        engine=record["engine"],
        spoken_text=record["spoken_text"],
    )


def _chime_pcm(settings: AudioSettings, rate: int) -> Pcm:
    from audio.assemble import chime_pcm

    return chime_pcm(settings, rate)


def _report(progress: ProgressFn | None, fraction: float) -> None:
    if progress is not None:
        progress(fraction)


def _scaled(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    if progress is None:
        return None
    target = progress

    def scaled(fraction: float) -> None:
        target(start + (end - start) * min(1.0, max(0.0, fraction)))

    return scaled
