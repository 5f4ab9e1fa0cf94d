"""The leak finder the autouse fixture in conftest.py relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import leaks

pytestmark = pytest.mark.integration


def test_a_child_left_running_is_found_and_killed(tmp_path: Path) -> None:
    before = leaks.children_keys()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        left = leaks.left_running(before, None)
        assert [p.cmdline for p in left] == ["sleep 60"]
        leaks.kill(left, timeout=5)
        assert leaks.left_running(before, None) == []
    finally:
        proc.kill()
        proc.wait(5)


def test_an_orphan_naming_the_tests_directory_is_found(tmp_path: Path) -> None:
    marker = tmp_path / "state"
    sleeper = f"{sys.executable} -c 'import time; time.sleep(60)' {marker}"
    # The shell exits at once, so the sleeper is re-parented away from this process.
    subprocess.run(["sh", "-c", f"{sleeper} >/dev/null 2>&1 &"], check=True, timeout=10)
    left = leaks.left_running(leaks.children_keys(), tmp_path)
    assert len(left) == 1 and left[0].cmdline.endswith(str(marker)), left
    leaks.kill(left, timeout=5)
    assert leaks.left_running(set(), tmp_path) == []
    assert leaks.left_running(set(), tmp_path.parent / "other") == []
