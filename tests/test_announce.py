"""`loudspeaker announce`: records, preview, removal, and broadcasts by announcement id."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
from typer.testing import CliRunner

from cli import app
from firmware_bridge.simulator import Fleet
from loudspeaker.controller import Controller

runner = CliRunner()


def _cli(data: Path, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["--data-dir", str(data), *args])
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.integration
def test_tts_announcement_lifecycle(tmp_path: Path) -> None:
    code, out, err = _cli(
        tmp_path,
        "announce",
        "tts",
        "Họp UBND xã lúc 8h30.",
        "--title",
        "Họp",
        "--engine",
        "offline",
        "--json",
    )
    assert code == 0, err
    ann = json.loads(out)
    assert ann["engine"] == "espeak-ng"
    assert ann["source"] == "Họp UBND xã lúc 8h30."
    assert "Ủy ban nhân dân" in ann["spoken_text"]
    assert "tám giờ ba mươi" in ann["spoken_text"]
    assert ann["duration_s"] > 1
    code, out, _ = _cli(tmp_path, "announce", "list", "--json")
    assert [a["id"] for a in json.loads(out)] == [ann["id"]]
    code, out, _ = _cli(tmp_path, "announce", "show", ann["id"], "--json")
    assert json.loads(out)["sha256"] == ann["sha256"]
    wav = tmp_path / "out.mp3"
    code, _, err = _cli(tmp_path, "announce", "preview", ann["id"], "-o", str(wav))
    assert code == 0, err
    data = wav.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ann["sha256"] and len(data) == ann["size"]
    code, _, _ = _cli(tmp_path, "announce", "remove", ann["id"])
    assert code == 0
    code, out, _ = _cli(tmp_path, "announce", "list", "--json")
    assert json.loads(out) == []
    code, _, err = _cli(tmp_path, "announce", "show", ann["id"])
    assert code == 1 and "no announcement" in err


def test_dry_run_prints_the_spoken_text_and_stores_nothing(tmp_path: Path) -> None:
    code, out, _ = _cli(tmp_path, "announce", "tts", "8/8 thôn, gọi 0912345678.", "--dry-run")
    assert code == 0
    assert "tám trên tám thôn" in out
    assert "không chín một hai, ba bốn năm, sáu bảy tám" in out
    code, out, _ = _cli(tmp_path, "announce", "list", "--json")
    assert json.loads(out) == []


@pytest.mark.integration
def test_recording_announcement_and_refusals(tmp_path: Path) -> None:
    wav = tmp_path / "phone.wav"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:duration=2",
            "-ac",
            "1",
            str(wav),
        ],
        check=True,
        timeout=60,
    )
    code, out, err = _cli(tmp_path, "announce", "file", str(wav), "--title", "Ghi âm", "--json")
    assert code == 0, err
    assert json.loads(out)["kind"] == "file"
    text = tmp_path / "notes.mp3"
    text.write_text("this is not audio")
    code, _, err = _cli(tmp_path, "announce", "file", str(text), "--title", "x")
    assert code == 1 and "error:" in err
    code, _, err = _cli(tmp_path, "announce", "file", str(wav))
    assert code == 1 and "--title" in err
    code, _, err = _cli(tmp_path, "announce", "tts", "Xin chào", "--title", "t", "--engine", "nope")
    assert code == 1 and "unknown TTS engine" in err


@pytest.mark.integration
def test_broadcast_by_announcement_id_and_removal_guard(
    controller: Controller, fleet: Fleet
) -> None:
    base = [
        "--data-dir",
        str(controller.settings.data_dir),
        "--db-url",
        controller.settings.database_url,
    ]
    res = runner.invoke(
        app,
        [
            *base,
            "announce",
            "tts",
            "Thông báo thử.",
            "--title",
            "Thử",
            "--engine",
            "offline",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    ann = json.loads(res.stdout)
    res = runner.invoke(
        app,
        [
            *base,
            "broadcast",
            ann["id"],
            "--to",
            "hamlet:coc-xa",
            "--wait",
            "--json",
            "--timeout",
            "60",
        ],
    )
    assert res.exit_code == 0, res.output
    view = json.loads(res.stdout)
    assert view["title"] == "Thử"
    assert view["media"]["sha256"] == ann["sha256"]
    assert view["counts"] == {"played": 2}
    # While a broadcast still needs it, the announcement cannot be removed.
    res = runner.invoke(
        app, [*base, "broadcast", ann["id"], "--to", "all", "--repeat", "10", "--json"]
    )
    assert res.exit_code == 0, res.output
    busy = json.loads(res.stdout)["id"]
    res = runner.invoke(app, [*base, "announce", "remove", ann["id"]])
    assert res.exit_code == 1
    assert f"still needed by broadcast {busy}" in res.stderr
    res = runner.invoke(app, [*base, "broadcast", "status", busy, "--wait", "--json"])
    assert json.loads(res.stdout)["counts"] == {"played": 10}
    res = runner.invoke(app, [*base, "announce", "remove", ann["id"]])
    assert res.exit_code == 0, res.output
