"""The process guard fails an unmarked test that starts a process, and only such a test.

Runs a small synthetic test module in a child pytest that loads this suite's conftest, so
the guard under test is the real one (an integration test itself: it starts pytest).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import scaled

pytestmark = pytest.mark.integration

SYNTHETIC = """
import os
import subprocess
import sys

import pytest


def test_pure() -> None:
    assert sum([1, 2]) == 3


def test_starts_a_subprocess() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_swallows_the_refusal() -> None:
    try:
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    except Exception:
        pass


def test_opens_a_pty() -> None:
    master, slave = os.openpty()
    os.close(master)
    os.close(slave)


def test_wants_a_broker(mosquitto) -> None:
    raise AssertionError("never reached: the fixture refuses first")


def test_sqlite_is_no_process(db_url: str) -> None:
    assert db_url.startswith("sqlite")


@pytest.mark.integration
def test_marked_may_start_one() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
"""

INI = """
[pytest]
markers =
    integration: needs real processes
    postgres: runs against PostgreSQL
"""


def run_synthetic(tmp_path: Path, *args: str) -> dict[str, str]:
    """Run the synthetic module under this suite's conftest; each test's failure text."""
    (tmp_path / "test_synthetic.py").write_text(textwrap.dedent(SYNTHETIC))
    (tmp_path / "pytest.ini").write_text(INI)
    report = tmp_path / "report.xml"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-q",
            f"--junitxml={report}",
            *args,
            "test_synthetic.py",
        ],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)},
        capture_output=True,
        timeout=scaled(120),
        check=False,
    )
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        outcomes[case.attrib["name"]] = "" if problem is None else problem.attrib["message"]
    return outcomes


def test_unmarked_tests_that_start_processes_fail_and_say_which_mark(tmp_path: Path) -> None:
    outcomes = run_synthetic(tmp_path, "-m", "not integration")
    # The PostgreSQL variant of db_url carries the mark itself, so it is deselected.
    assert set(outcomes) == {
        "test_pure",
        "test_starts_a_subprocess",
        "test_swallows_the_refusal",
        "test_opens_a_pty",
        "test_wants_a_broker",
        "test_sqlite_is_no_process[sqlite]",
    }
    assert outcomes["test_pure"] == ""
    assert outcomes["test_sqlite_is_no_process[sqlite]"] == ""
    for name in ("test_starts_a_subprocess", "test_swallows_the_refusal"):
        assert "started a process (subprocess.Popen" in outcomes[name], outcomes[name]
        assert "mark it @pytest.mark.integration" in outcomes[name], outcomes[name]
    assert "os.openpty" in outcomes["test_opens_a_pty"]
    broker = outcomes["test_wants_a_broker"]
    assert "uses a real mosquitto broker (fixture 'mosquitto')" in broker, broker
    assert "not marked integration" in broker


def test_marked_tests_may_start_processes(tmp_path: Path) -> None:
    outcomes = run_synthetic(tmp_path, "-k", "marked_may or sqlite", "-m", "not postgres")
    assert outcomes == {"test_marked_may_start_one": "", "test_sqlite_is_no_process[sqlite]": ""}
