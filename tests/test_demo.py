"""`loudspeaker demo` end to end: real processes on the embedded defaults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_demo_json_reports_every_cluster_played(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--json", "--demo-dir", str(tmp_path / "demo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert res.returncode == 0, res.stderr + res.stdout
    summary = json.loads(res.stdout)
    assert summary["ok"] is True
    assert summary["counts"] == {"played": 10}
    assert len(summary["clusters"]) == 10
    for c in summary["clusters"]:
        for step in ("queued", "sent", "received", "staged", "playing", "played"):
            assert c["times"][step], (c["cluster"], step)
    assert summary["media"]["engine"] == "espeak-ng"
    # The controller ran its own mosquitto, and cleaned up after itself.
    log = (tmp_path / "demo" / "demo.log").read_text()
    assert "embedded mosquitto" in log
    assert not (tmp_path / "demo" / "run" / "controller.json").exists()


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "loudspeaker.db").write_text("real data")
    res = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--demo-dir", str(precious)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1
    assert "not a demo directory" in res.stderr
    assert (precious / "loudspeaker.db").read_text() == "real data"
