"""MediaCache: bounded, least recently used evicted first, needed media kept."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from audio import AudioSettings, render_text
from audio.cache import MediaCache


def put(directory: Path, content: bytes, last_used: float) -> str:
    sha = hashlib.sha256(content).hexdigest()
    path = directory / f"{sha}.mp3"
    path.write_bytes(content)
    os.utime(path, (last_used, last_used))
    return sha


def test_prune_evicts_least_recently_used_first(tmp_path: Path) -> None:
    old = put(tmp_path, b"a" * 100, 1000)
    mid = put(tmp_path, b"b" * 100, 2000)
    new = put(tmp_path, b"c" * 100, 3000)
    result = MediaCache(tmp_path, max_bytes=150).prune(keep=set())
    assert result.evicted == [old, mid]
    assert result.freed_bytes == 200
    assert result.total_bytes == 100
    assert [e.sha256 for e in MediaCache(tmp_path, 150).entries()] == [new]


def test_prune_keeps_what_schedules_need(tmp_path: Path) -> None:
    needed = put(tmp_path, b"a" * 100, 1000)  # oldest, but scheduled
    other = put(tmp_path, b"b" * 100, 2000)
    newest = put(tmp_path, b"c" * 100, 3000)
    result = MediaCache(tmp_path, max_bytes=200).prune(keep={needed})
    assert result.evicted == [other]
    remaining = {e.sha256 for e in MediaCache(tmp_path, 200).entries()}
    assert remaining == {needed, newest}


def test_needed_media_over_the_limit_is_never_evicted(tmp_path: Path) -> None:
    a = put(tmp_path, b"a" * 100, 1000)
    b = put(tmp_path, b"b" * 100, 2000)
    result = MediaCache(tmp_path, max_bytes=10).prune(keep={a, b})
    assert result.evicted == []
    assert result.total_bytes == 200


def test_under_the_limit_nothing_is_evicted(tmp_path: Path) -> None:
    put(tmp_path, b"a" * 100, 1000)
    assert MediaCache(tmp_path, max_bytes=1000).prune(keep=set()).evicted == []


def test_touch_makes_a_file_recent(tmp_path: Path) -> None:
    old = put(tmp_path, b"a" * 100, 1000)
    new = put(tmp_path, b"b" * 100, 2000)
    cache = MediaCache(tmp_path, max_bytes=100)
    assert cache.touch(old)
    assert not cache.touch("0" * 64)
    assert cache.prune(keep=set()).evicted == [new]


def test_other_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"x" * 1000)
    (tmp_path / ".renders").mkdir()
    put(tmp_path, b"a" * 10, 1000)
    cache = MediaCache(tmp_path, max_bytes=0)
    assert cache.total_bytes() == 10
    cache.prune(keep=set())
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.integration
def test_render_cache_recovers_after_prune(tmp_path: Path) -> None:
    settings = AudioSettings(chime=False)
    first = render_text("Xin chào bà con.", cache_dir=tmp_path, engine="offline", settings=settings)
    other = render_text("Hẹn gặp lại.", cache_dir=tmp_path, engine="offline", settings=settings)
    os.utime(first.path, (1000, 1000))
    MediaCache(tmp_path, max_bytes=other.size).prune(keep={other.sha256})
    assert not first.path.exists() and other.path.exists()
    again = render_text("Xin chào bà con.", cache_dir=tmp_path, engine="offline", settings=settings)
    assert again.path.exists()
    # A cache hit counts as a use: it refreshes the file's recency.
    os.utime(other.path, (1000, 1000))
    render_text("Hẹn gặp lại.", cache_dir=tmp_path, engine="offline", settings=settings)
    assert other.path.stat().st_mtime > 1000
