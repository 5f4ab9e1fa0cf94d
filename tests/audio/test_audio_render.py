"""The public render API end to end: real espeak-ng, real ffmpeg, real loudness."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from audio import (
    AudioError,
    AudioSettings,
    EngineSet,
    RenderedAudio,
    normalize_text,
    render_text,
    render_tone,
)
from audio.exceptions import EmptyText, UnknownEngine, UnknownTone
from audio.ffmpeg import measure_file_loudness
from audio.pcm import Pcm
from audio.tts.abc import ProgressFn, TtsEngine
from audio.tts.espeak import EspeakEngine

TEXT = "Xin chào bà con thôn Đông. UBND xã thông báo lịch họp dân ngày 30/11."
NO_CHIME = AudioSettings(chime=False)


class ExplodingEngine(TtsEngine):
    """Proves a cache hit: fails the test if it is ever asked to speak."""

    name = "espeak-ng"

    def __init__(self, identity: str) -> None:
        self._identity = identity

    @property
    def identity(self) -> str:
        return self._identity

    def synthesize(
        self, text: str, *, speed: float = 1.0, progress: ProgressFn | None = None
    ) -> Pcm:
        raise AssertionError("the engine ran although the render was cached")


def offline(tmp_path: Path, **kwargs: object) -> RenderedAudio:
    options: dict[str, object] = {"cache_dir": tmp_path, "engine": "offline", "settings": NO_CHIME}
    options.update(kwargs)
    return render_text(TEXT, **options)  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.parametrize(
    "settings",
    [
        AudioSettings(chime=False),
        AudioSettings(chime=True),
        AudioSettings(chime=False, target_lufs=-23.0, true_peak_dbtp=-2.0),
        AudioSettings(chime=False, target_lufs=-14.0, true_peak_dbtp=-1.0),
    ],
    ids=["-16", "-16-chime", "-23", "-14"],
)
def test_text_loudness_within_1_lu_of_target(tmp_path: Path, settings: AudioSettings) -> None:
    out = offline(tmp_path, settings=settings)
    loud = measure_file_loudness(out.path)
    assert abs(loud.integrated_lufs - settings.target_lufs) <= 1.0
    assert loud.true_peak_dbtp <= settings.true_peak_dbtp + 0.5


@pytest.mark.integration
def test_rendered_audio_fields(tmp_path: Path) -> None:
    out = offline(tmp_path)
    data = out.path.read_bytes()
    import hashlib

    assert out.sha256 == hashlib.sha256(data).hexdigest()
    assert out.path == tmp_path / f"{out.sha256}.mp3"
    assert out.size == len(data)
    assert (out.format, out.mime, out.engine) == ("mp3", "audio/mpeg", "espeak-ng")
    assert out.spoken_text == normalize_text(TEXT)
    assert data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")  # an MPEG audio frame, no ID3


@pytest.mark.integration
def test_output_is_mono_at_the_configured_rate(ffmpeg: str, tmp_path: Path) -> None:
    out = offline(tmp_path, settings=AudioSettings(chime=False, sample_rate=22050, bitrate_kbps=24))
    info = subprocess.run(
        [ffmpeg, "-hide_banner", "-i", str(out.path)],
        check=False,  # ffmpeg exits 1 when given no output; we only want its input report
        capture_output=True,
        text=True,
        timeout=30,
    ).stderr
    assert "22050 Hz, mono" in info
    assert "24 kb/s" in info


@pytest.mark.integration
def test_same_input_renders_once(tmp_path: Path) -> None:
    first = offline(tmp_path)
    engines = EngineSet(online=None, offline=ExplodingEngine(EspeakEngine().identity))
    again = offline(tmp_path, engines=engines)
    assert again == first
    assert len(list(tmp_path.glob("*.mp3"))) == 1


@pytest.mark.integration
@pytest.mark.parametrize(
    "change",
    [
        {"settings": AudioSettings(chime=False, bitrate_kbps=48)},
        {"settings": AudioSettings(chime=False, target_lufs=-20.0)},
        {"speed": 0.8},
    ],
    ids=["bitrate", "loudness", "speed"],
)
def test_changed_settings_render_again(tmp_path: Path, change: dict[str, object]) -> None:
    first = offline(tmp_path)
    second = offline(tmp_path, **change)
    assert second.sha256 != first.sha256
    assert second.path.exists() and first.path.exists()


@pytest.mark.integration
def test_slower_speech_is_longer(tmp_path: Path) -> None:
    normal = offline(tmp_path)
    slow = offline(tmp_path, speed=0.7)
    assert slow.duration_s > normal.duration_s * 1.2


@pytest.mark.integration
def test_chime_wraps_speech(tmp_path: Path) -> None:
    plain = offline(tmp_path)
    chimed = offline(tmp_path, settings=AudioSettings(chime=True))
    # Built-in chime 1.9 s plus a 0.4 s gap, before and after.
    assert chimed.duration_s == pytest.approx(plain.duration_s + 2 * 2.3, abs=0.1)


@pytest.mark.integration
def test_custom_chime_file(ffmpeg: str, tmp_path: Path) -> None:
    bell = tmp_path / "bell.wav"
    subprocess.run(
        [ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=f=880:d=0.5", "-ac", "1", str(bell)],
        check=True,
        timeout=30,
    )
    plain = offline(tmp_path)
    chimed = offline(tmp_path, settings=AudioSettings(chime=True, chime_path=bell))
    assert chimed.duration_s == pytest.approx(plain.duration_s + 2 * 0.9, abs=0.1)
    # Replacing the file's content re-renders even though the path is the same.
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=f=660:d=1.0",
            "-ac",
            "1",
            str(bell),
        ],
        check=True,
        timeout=30,
    )
    again = offline(tmp_path, settings=AudioSettings(chime=True, chime_path=bell))
    assert again.duration_s == pytest.approx(plain.duration_s + 2 * 1.4, abs=0.1)


@pytest.mark.integration
def test_progress_reports_monotonically_to_one(tmp_path: Path) -> None:
    seen: list[float] = []
    offline(tmp_path, progress=seen.append)
    assert seen, "no progress reported"
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in seen)


@pytest.mark.integration
def test_evicted_media_is_rendered_again(tmp_path: Path) -> None:
    first = offline(tmp_path)
    first.path.unlink()
    again = offline(tmp_path)
    assert again.path.exists()
    assert again.path.name == f"{again.sha256}.mp3"
    # espeak-ng's pitch flutter carries over between calls, so a re-render of speech is
    # equivalent but not byte-identical; the render index, not determinism, dedups.
    assert again.duration_s == pytest.approx(first.duration_s, abs=0.05)


@pytest.mark.integration
def test_tones_are_byte_identical_when_re_rendered(tmp_path: Path) -> None:
    first = render_tone("siren", cache_dir=tmp_path / "a", seconds=2.0)
    second = render_tone("siren", cache_dir=tmp_path / "b", seconds=2.0)
    assert first.sha256 == second.sha256


@pytest.mark.integration
def test_siren(tmp_path: Path) -> None:
    out = render_tone("siren", cache_dir=tmp_path, seconds=3.0)
    assert out.engine == "tone"
    assert out.spoken_text is None
    assert out.duration_s == pytest.approx(3.0, abs=0.01)
    loud = measure_file_loudness(out.path)
    assert abs(loud.integrated_lufs - AudioSettings().target_lufs) <= 1.0


@pytest.mark.integration
def test_siren_length_and_chime(tmp_path: Path) -> None:
    long = render_tone("siren", cache_dir=tmp_path, seconds=12.5)
    assert long.duration_s == pytest.approx(12.5, abs=0.01)
    bell = render_tone("chime", cache_dir=tmp_path)
    assert bell.duration_s == pytest.approx(1.9, abs=0.01)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnknownTone, match="siren, chime"):
        render_tone("foghorn", cache_dir=tmp_path)
    with pytest.raises(AudioError, match="siren length"):
        render_tone("siren", cache_dir=tmp_path, seconds=0.0)
    with pytest.raises(UnknownEngine, match="auto, gtts, offline"):
        render_text("Xin chào", cache_dir=tmp_path, engine="festival")
    with pytest.raises(EmptyText):
        render_text(" \n - ", cache_dir=tmp_path)
    with pytest.raises(AudioError, match="speed"):
        render_text("Xin chào", cache_dir=tmp_path, speed=3.0)
