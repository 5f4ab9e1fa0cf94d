from __future__ import annotations

from pathlib import Path

import pytest

import audio
from audio.ffmpeg import measure_file_loudness

pytestmark = pytest.mark.integration


def test_render_text_offline_produces_mp3_at_target(tmp_path: Path) -> None:
    settings = audio.AudioSettings(chime=False)
    out = audio.render_text(
        "Xin chào bà con thôn Đông. Hôm nay xã tổ chức họp dân.",
        cache_dir=tmp_path,
        engine="offline",
        settings=settings,
    )
    assert out.engine == "espeak-ng"
    assert out.path == tmp_path / f"{out.sha256}.mp3"
    assert out.size == out.path.stat().st_size
    assert 1.0 < out.duration_s < 15.0
    loud = measure_file_loudness(out.path)
    assert abs(loud.integrated_lufs - settings.target_lufs) <= 1.0


def test_siren(tmp_path: Path) -> None:
    out = audio.render_tone("siren", cache_dir=tmp_path, seconds=3.0)
    assert out.engine == "tone"
    assert abs(out.duration_s - 3.0) < 0.01
