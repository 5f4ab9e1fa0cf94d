"""One contract suite for every TTS engine (espeak-ng library and program, gTTS)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest
from audio_helpers import FakeGoogleTts

from audio.exceptions import TtsError
from audio.tts.abc import TtsEngine
from audio.tts.espeak import EspeakEngine
from audio.tts.gtts import GttsEngine

pytestmark = pytest.mark.integration

SENTENCE = "Xin chào bà con thôn Đông, hôm nay xã tổ chức họp dân."


@pytest.fixture(params=["espeak-library", "espeak-program", "gtts"])
def make_engine(request: pytest.FixtureRequest, ffmpeg: str) -> Iterator[Callable[[], TtsEngine]]:
    if request.param == "espeak-library":
        yield lambda: EspeakEngine(backend="library")
    elif request.param == "espeak-program":
        if shutil.which("espeak-ng") is None:
            pytest.skip("the espeak-ng program is not installed (apt-get install espeak-ng)")
        yield lambda: EspeakEngine(backend="binary")
    else:
        fake = FakeGoogleTts(ffmpeg)
        fake.thread.start()
        try:
            yield lambda: GttsEngine(endpoint=fake.url, timeout_s=5.0, retries=0)
        finally:
            fake.release.set()
            fake.server.shutdown()
            fake.server.server_close()
            fake.thread.join(timeout=5)


def test_speaks_a_sentence(make_engine: Callable[[], TtsEngine]) -> None:
    pcm = make_engine().synthesize(SENTENCE)
    assert pcm.rate >= 16000
    assert 1.0 < pcm.duration_s < 15.0
    assert max(pcm.data[1::2]) > 0x10  # not silence


def test_empty_text_is_an_error(make_engine: Callable[[], TtsEngine]) -> None:
    with pytest.raises(TtsError):
        make_engine().synthesize("   ")


def test_speed_changes_duration(make_engine: Callable[[], TtsEngine]) -> None:
    engine = make_engine()
    normal = engine.synthesize(SENTENCE).duration_s
    fast = engine.synthesize(SENTENCE, speed=1.5).duration_s
    assert fast < normal * 0.85


def test_identity_is_stable_and_names_the_engine(make_engine: Callable[[], TtsEngine]) -> None:
    engine = make_engine()
    assert engine.identity == make_engine().identity
    assert engine.name in ("espeak-ng", "gtts")
    assert engine.identity.startswith(engine.name)


def test_progress_reaches_one(make_engine: Callable[[], TtsEngine]) -> None:
    seen: list[float] = []
    make_engine().synthesize(SENTENCE + "\nHẹn gặp lại.", progress=seen.append)
    assert seen == sorted(seen)
    assert seen[-1] == 1.0
