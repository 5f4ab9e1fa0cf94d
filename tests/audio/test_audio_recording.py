"""Recordings: real files of each kind made with ffmpeg, then accepted or refused."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from audio_helpers import speech_pcm, write_wav

from audio import AudioSettings, render_recording
from audio.exceptions import RecordingRejected
from audio.ffmpeg import measure_file_loudness
from audio.pcm import Pcm, concat

NO_CHIME = AudioSettings(chime=False)

# (extension, ffmpeg encoder, extra args) for what phones and PCs produce.
FORMATS = [
    ("wav", "pcm_s16le", []),
    ("mp3", "libmp3lame", ["-b:a", "64k"]),
    ("m4a", "aac", ["-b:a", "64k"]),
    ("ogg", "libvorbis", ["-q:a", "3"]),
    ("opus", "libopus", ["-b:a", "24k"]),
    ("amr", "libopencore_amrnb", ["-ar", "8000", "-b:a", "12.2k"]),
    ("3gp", "libopencore_amrnb", ["-ar", "8000", "-b:a", "12.2k"]),
]


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wav(tmp_path_factory.mktemp("src") / "speech.wav", speech_pcm())


def encode(ffmpeg: str, src: Path, dst: Path, encoder: str, args: list[str]) -> Path:
    subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-c:a",
            encoder,
            *args,
            str(dst),
        ],
        check=True,
        timeout=60,
    )
    return dst


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_accepts_common_formats(
    ffmpeg: str, encoders: str, speech_wav: Path, tmp_path: Path, fmt: tuple[str, str, list[str]]
) -> None:
    ext, encoder, args = fmt
    if f" {encoder} " not in encoders:
        pytest.skip(f"this ffmpeg build has no {encoder} encoder to make a .{ext} test file")
    src = encode(ffmpeg, speech_wav, tmp_path / f"rec.{ext}", encoder, args)
    out = render_recording(src, cache_dir=tmp_path / "cache", settings=NO_CHIME)
    assert out.engine == "recording"
    assert out.spoken_text is None
    assert out.path.name == f"{out.sha256}.mp3"
    assert 1.0 < out.duration_s < 10.0
    loud = measure_file_loudness(out.path)
    assert abs(loud.integrated_lufs - NO_CHIME.target_lufs) <= 1.0


@pytest.mark.integration
def test_leading_and_trailing_silence_trimmed(tmp_path: Path) -> None:
    speech = speech_pcm("Xin chào bà con.")
    padded = concat([Pcm.silence(2.0, speech.rate), speech, Pcm.silence(3.0, speech.rate)])
    src = write_wav(tmp_path / "padded.wav", padded)
    trimmed = render_recording(src, cache_dir=tmp_path, settings=NO_CHIME)
    kept = render_recording(
        src, cache_dir=tmp_path, settings=AudioSettings(chime=False, trim_silence=False)
    )
    assert abs(kept.duration_s - padded.duration_s) < 0.05
    assert trimmed.duration_s < speech.duration_s + 0.3
    assert trimmed.duration_s > speech.duration_s - 1.0


def test_missing(tmp_path: Path) -> None:
    with pytest.raises(RecordingRejected, match="does not exist") as info:
        render_recording(tmp_path / "nope.mp3", cache_dir=tmp_path)
    assert info.value.reason == "missing"


def test_empty(tmp_path: Path) -> None:
    (tmp_path / "empty.m4a").write_bytes(b"")
    with pytest.raises(RecordingRejected, match="empty file") as info:
        render_recording(tmp_path / "empty.m4a", cache_dir=tmp_path)
    assert info.value.reason == "empty"


@pytest.mark.integration
def test_text_file_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "bulletin.mp3"
    path.write_text("Đây là văn bản, không phải âm thanh.\n" * 20, "utf-8")
    with pytest.raises(RecordingRejected, match="not an audio file") as info:
        render_recording(path, cache_dir=tmp_path)
    assert info.value.reason == "not_audio"


@pytest.mark.integration
def test_image_is_not_audio(ffmpeg: str, tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=16x16:d=1",
            "-frames:v",
            "1",
            str(path),
        ],
        check=True,
        timeout=30,
    )
    with pytest.raises(RecordingRejected, match="no audio track") as info:
        render_recording(path, cache_dir=tmp_path)
    assert info.value.reason == "not_audio"


@pytest.mark.integration
def test_truncated_m4a_is_corrupt(ffmpeg: str, speech_wav: Path, tmp_path: Path) -> None:
    good = encode(ffmpeg, speech_wav, tmp_path / "good.m4a", "aac", [])
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RecordingRejected, match="incomplete") as info:
        render_recording(cut, cache_dir=tmp_path)
    assert info.value.reason == "corrupt"


@pytest.mark.integration
def test_truncated_mp3_is_corrupt(ffmpeg: str, speech_wav: Path, tmp_path: Path) -> None:
    good = encode(ffmpeg, speech_wav, tmp_path / "good.mp3", "libmp3lame", [])
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 4])
    with pytest.raises(RecordingRejected, match="cut off") as info:
        render_recording(cut, cache_dir=tmp_path)
    assert info.value.reason == "corrupt"


@pytest.mark.integration
def test_garbled_mp3_is_corrupt(ffmpeg: str, speech_wav: Path, tmp_path: Path) -> None:
    data = bytearray(encode(ffmpeg, speech_wav, tmp_path / "g.mp3", "libmp3lame", []).read_bytes())
    rng = random.Random(7)
    for i in range(2000, len(data) - 500):
        data[i] = rng.randrange(256)
    bad = tmp_path / "garbled.mp3"
    bad.write_bytes(bytes(data))
    with pytest.raises(RecordingRejected, match="damaged") as info:
        render_recording(bad, cache_dir=tmp_path)
    assert info.value.reason == "corrupt"


@pytest.mark.integration
def test_digital_silence(tmp_path: Path) -> None:
    src = write_wav(tmp_path / "silence.wav", Pcm.silence(3.0, 16000))
    with pytest.raises(RecordingRejected, match="silent") as info:
        render_recording(src, cache_dir=tmp_path)
    assert info.value.reason == "silent"


@pytest.mark.integration
def test_faint_hiss_counts_as_silent(ffmpeg: str, tmp_path: Path) -> None:
    path = tmp_path / "hiss.wav"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "anoisesrc=d=3:a=0.002:c=white",
            "-ac",
            "1",
            str(path),
        ],
        check=True,
        timeout=30,
    )
    with pytest.raises(RecordingRejected) as info:
        render_recording(path, cache_dir=tmp_path)
    assert info.value.reason == "silent"


@pytest.mark.integration
def test_too_long(ffmpeg: str, tmp_path: Path) -> None:
    path = tmp_path / "long.mp3"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=f=440:d=20",
            "-ac",
            "1",
            "-c:a",
            "libmp3lame",
            str(path),
        ],
        check=True,
        timeout=30,
    )
    settings = AudioSettings(max_recording_s=5.0)
    with pytest.raises(RecordingRejected, match=r"20\.0 s long; the limit is 5\.0 s") as info:
        render_recording(path, cache_dir=tmp_path, settings=settings)
    assert info.value.reason == "too_long"
    # Under a higher limit the same file is fine.
    out = render_recording(path, cache_dir=tmp_path, settings=AudioSettings(chime=False))
    assert abs(out.duration_s - 20.0) < 0.3
