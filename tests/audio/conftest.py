"""Fixtures for the audio suite: real ffmpeg, real espeak-ng, a real local HTTP server
that answers like Google's TTS endpoint."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from audio_helpers import FakeGoogleTts

from audio.ffmpeg import find_ffmpeg


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    return find_ffmpeg()


@pytest.fixture(scope="session")
def encoders(ffmpeg: str) -> str:
    return subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


@pytest.fixture
def fake_google(ffmpeg: str) -> Iterator[FakeGoogleTts]:
    fake = FakeGoogleTts(ffmpeg)
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        fake.server.shutdown()
        fake.server.server_close()
        fake.thread.join(timeout=5)
