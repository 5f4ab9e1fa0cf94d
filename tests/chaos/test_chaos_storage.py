"""The database locked by another writer; the media disk full."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import text

from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.db import make_engine
from loudspeaker.media import MediaServer, MediaStore
from tests.chaos.chaos_support import (
    CLUSTERS,
    ROOT,
    assert_correct,
    count_in,
    finished,
    plays,
    queue_broadcast,
)
from tests.conftest import load_site, make_settings
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


@contextmanager
def write_locked(db_url: str) -> Iterator[None]:
    """Another process-like writer holding the write lock until the block ends."""
    if db_url.startswith("sqlite"):
        conn = sqlite3.connect(db_url.split("///", 1)[1], isolation_level=None, timeout=5)
        conn.execute("BEGIN EXCLUSIVE")  # in WAL mode: writers wait, readers go on
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = make_engine(db_url)
    with engine.connect() as conn:
        # EXCLUSIVE blocks every write to these tables but still lets readers read.
        conn.execute(text("LOCK TABLE delivery, delivery_event, cluster_status IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            conn.rollback()
    engine.dispose()


def test_database_locked_by_another_writer_loses_nothing(
    tmp_path: Path,
    db_url: str,
    mosquitto: EmbeddedBroker,
    fleet: Fleet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    load_site(db_url)
    # A short busy timeout keeps the test fast; the behaviour is the same at 30 s.
    ctl = Controller(make_settings(tmp_path, db_url, mosquitto, db_busy_timeout_s=0.2))
    ctl.start()
    try:
        assert ctl.dispatcher is not None
        engine = ctl.dispatcher.engine
        assert wait_until(ctl.dispatcher.link.connected.is_set, 10)
        bid, sha = queue_broadcast(engine, ctl.settings.media_dir, tmp_path, seconds=1.0, freq=560)
        caplog.set_level(logging.WARNING, logger="loudspeaker.db_faults")
        with write_locked(db_url):
            ctl.dispatcher.poke()
            # The whole broadcast plays out while not one acknowledgement can be written.
            assert wait_until(
                lambda: all(plays(tmp_path / "fleet", c, sha) == 1 for c in CLUSTERS), 20
            )
            assert count_in(engine, bid, ["played"]) == 0
            if db_url.startswith("sqlite"):
                # The dispatcher says so, keeps its events and retries (db_faults.py).
                assert wait_until(
                    lambda: (
                        "dispatcher: database error" in caplog.text
                        and "database is locked" in caplog.text
                    ),
                    5,
                )
        assert wait_until(lambda: finished(engine, bid), 30)
        assert_correct(engine, bid, sha, tmp_path / "fleet")
    finally:
        ctl.stop()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            check=False,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _announce(data_dir: Path, title: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "--data-dir",
            str(data_dir),
            "announce",
            "tts",
            "Thông báo của Ủy ban nhân dân xã về lịch tiêm phòng cho đàn gia súc "
            "tại nhà văn hóa thôn vào sáng thứ bảy tuần này.",
            "--title",
            title,
            "--engine",
            "offline",
            "--json",
        ],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_media_disk_full_is_a_clear_error_and_nothing_half_written_is_served(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    media = data / "media"
    if not _mount_tmpfs(media, "512k"):
        pytest.skip("needs root to mount a small tmpfs as the media disk")
    try:
        # Leave a few kB: enough to start writing a bulletin, not to finish it.
        filler = media / "filler.bin"
        with filler.open("wb") as fh, suppress(OSError):
            fh.write(b"\0" * (512 * 1024 - 24 * 1024))
        full = _announce(data, "tiêm phòng")
        assert full.returncode == 1, full.stdout + full.stderr
        assert "disk is full (No space left on device)" in full.stderr, full.stderr
        assert "Traceback" not in full.stderr
        left = sorted(p.name for p in media.iterdir())
        assert left == ["filler.bin"], f"half-written files left behind: {left}"
        listed = subprocess.run(
            [sys.executable, "-m", "cli", "--data-dir", str(data), "announce", "list", "--json"],
            cwd=ROOT,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0 and '"id"' not in listed.stdout, listed.stdout

        # Space freed: the same command works and the served bytes are what was recorded.
        filler.unlink()
        ok = _announce(data, "tiêm phòng")
        assert ok.returncode == 0, ok.stderr
        files = [p for p in media.iterdir() if p.suffix == ".mp3"]
        assert len(files) == 1
        server = MediaServer(MediaStore(media), "127.0.0.1", 0, on_poke=lambda: None)
        server.start()
        try:
            url = f"http://127.0.0.1:{server.port}/media/{files[0].name}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read()
        finally:
            server.stop()
        assert hashlib.sha256(body).hexdigest() == files[0].stem
    finally:
        subprocess.run(["umount", "-l", str(media)], check=False, capture_output=True, timeout=10)


def test_register_media_on_a_full_disk_says_so(tmp_path: Path) -> None:
    media = tmp_path / "media"
    if not _mount_tmpfs(media, "64k"):
        pytest.skip("needs root to mount a small tmpfs as the media disk")
    try:
        big = tmp_path / "big.mp3"
        big.write_bytes(b"\1" * (200 * 1024))
        from loudspeaker.exceptions import LoudspeakerError

        with pytest.raises(LoudspeakerError, match=r"No space left on device.*disk full"):
            MediaStore(media).add_file(big, "mp3")
        assert list(media.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(media)], check=False, capture_output=True, timeout=10)
