"""gTTS engine against a local server that answers like Google's endpoint."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from audio_helpers import FakeGoogleTts

from audio import AudioSettings, EngineSet, normalize_text, render_text
from audio.exceptions import TtsError, TtsUnavailable
from audio.ffmpeg import measure_file_loudness
from audio.tts.espeak import EspeakEngine
from audio.tts.gtts import GttsEngine, backoff_delays


def engine(fake: FakeGoogleTts, **kwargs: object) -> tuple[GttsEngine, list[float]]:
    slept: list[float] = []
    options: dict[str, object] = {"timeout_s": 2.0, "retries": 3, "backoff_s": 0.01}
    options.update(kwargs)
    return GttsEngine(endpoint=fake.url, sleep=slept.append, **options), slept  # type: ignore[arg-type]


@pytest.mark.integration
def test_renders_sentence_by_sentence_in_vietnamese(fake_google: FakeGoogleTts) -> None:
    tts, _ = engine(fake_google, sentence_pause_s=0.5)
    pcm = tts.synthesize("Xin chào bà con. Hôm nay họp dân! Ai vắng? Báo lại.")
    assert fake_google.texts == ["Xin chào bà con.", "Hôm nay họp dân!", "Ai vắng?", "Báo lại."]
    assert set(fake_google.langs) == {"vi"}
    assert pcm.rate == 24000
    # Four sentences of speech plus three 0.5 s pauses.
    assert pcm.duration_s > 1.5 + 3 * 0.5


@pytest.mark.integration
def test_retries_429_and_5xx_with_exponential_backoff(fake_google: FakeGoogleTts) -> None:
    fake_google.script = ["429", "500", "500", "audio"]
    tts, slept = engine(fake_google, retries=3, backoff_s=0.01)
    pcm = tts.synthesize("Xin chào.")
    assert pcm.frames > 0
    assert len(fake_google.texts) == 4
    assert slept == [0.01, 0.02, 0.04]


@pytest.mark.integration
def test_gives_up_after_retries_with_clear_message(fake_google: FakeGoogleTts) -> None:
    fake_google.script = ["500"] * 10
    tts, slept = engine(fake_google, retries=2)
    with pytest.raises(TtsUnavailable, match=r"HTTP 500.*3 time\(s\).*engine='offline'"):
        tts.synthesize("Xin chào.")
    assert len(fake_google.texts) == 3
    assert len(slept) == 2


@pytest.mark.integration
def test_rate_limit_exhausted_is_unavailable(fake_google: FakeGoogleTts) -> None:
    fake_google.script = ["429"] * 10
    tts, _ = engine(fake_google, retries=1)
    with pytest.raises(TtsUnavailable, match="HTTP 429"):
        tts.synthesize("Xin chào.")


@pytest.mark.integration
def test_hang_times_out_without_retrying(fake_google: FakeGoogleTts) -> None:
    fake_google.script = ["hang"]
    tts, slept = engine(fake_google, timeout_s=0.5, retries=3)
    with pytest.raises(TtsUnavailable, match=r"did not answer within 0.5 s"):
        tts.synthesize("Xin chào.")
    assert len(fake_google.texts) == 1
    assert slept == []


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["garbage", "bad_audio"])
def test_garbage_is_an_error_not_audio(fake_google: FakeGoogleTts, mode: str) -> None:
    fake_google.script = [mode]
    tts, _ = engine(fake_google)
    with pytest.raises(TtsError, match="API may have changed") as info:
        tts.synthesize("Xin chào.")
    assert not isinstance(info.value, TtsUnavailable)


def test_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: connection refused.
    tts = GttsEngine(endpoint=f"http://127.0.0.1:{port}/x", timeout_s=2.0, retries=3)
    with pytest.raises(TtsUnavailable, match="cannot reach Google TTS"):
        tts.synthesize("Xin chào.")


def test_backoff_is_capped() -> None:
    assert list(backoff_delays(5, 1.0, 4.0)) == [1.0, 2.0, 4.0, 4.0, 4.0]


def engines_for(fake: FakeGoogleTts, *, timeout_s: float = 2.0) -> EngineSet:
    online = GttsEngine(endpoint=fake.url, timeout_s=timeout_s, retries=1, backoff_s=0.01)
    return EngineSet(online=online, offline=EspeakEngine(), auto_online=online)


TEXT = "UBND xã thông báo: ngày 30/11 họp lúc 8h30."


@pytest.mark.integration
def test_render_with_gtts_reports_engine_and_spoken_text(
    fake_google: FakeGoogleTts, tmp_path: Path
) -> None:
    settings = AudioSettings(chime=False)
    out = render_text(
        TEXT, cache_dir=tmp_path, engine="gtts", settings=settings, engines=engines_for(fake_google)
    )
    assert out.engine == "gtts"
    assert out.spoken_text == normalize_text(TEXT)
    assert fake_google.texts[0].startswith("Ủy ban nhân dân xã thông báo:")
    loudness = measure_file_loudness(out.path)
    assert abs(loudness.integrated_lufs - settings.target_lufs) <= 1.0


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["hang", "500", "garbage"])
def test_auto_falls_back_to_offline(fake_google: FakeGoogleTts, tmp_path: Path, mode: str) -> None:
    fake_google.script = [mode] * 5
    out = render_text(
        TEXT,
        cache_dir=tmp_path,
        engine="auto",
        settings=AudioSettings(chime=False),
        engines=engines_for(fake_google, timeout_s=0.5),
    )
    assert out.engine == "espeak-ng"
    assert len(fake_google.texts) >= 1


@pytest.mark.integration
def test_auto_uses_gtts_when_it_answers(fake_google: FakeGoogleTts, tmp_path: Path) -> None:
    out = render_text(
        TEXT,
        cache_dir=tmp_path,
        engine="auto",
        settings=AudioSettings(chime=False),
        engines=engines_for(fake_google),
    )
    assert out.engine == "gtts"


@pytest.mark.integration
def test_explicit_gtts_does_not_fall_back(fake_google: FakeGoogleTts, tmp_path: Path) -> None:
    fake_google.script = ["500"] * 5
    with pytest.raises(TtsUnavailable):
        render_text(
            TEXT,
            cache_dir=tmp_path,
            engine="gtts",
            settings=AudioSettings(chime=False),
            engines=engines_for(fake_google),
        )
