"""The kit against the project's own agent, run as a real ``loudspeaker-agent`` process.

The kit runs once for the module (it takes about half a minute); each check is then one
test, so a regression names the rule it broke.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conformance_support import (
    PENDING,
    SITE,
    SKIPPED_WITH_KEY,
    KitRun,
    every_check,
    issue_key,
    run_kit,
)

from loudspeaker.broker import EmbeddedBroker
from loudspeaker.conformance import CHECKS

pytestmark = pytest.mark.integration

CLUSTER = "lb-01"


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitRun]:
    tmp = tmp_path_factory.mktemp("kit-agent")
    broker = EmbeddedBroker(tmp / "mosquitto", supervise=False)
    broker.start()
    keys = issue_key(tmp / "keys.json", CLUSTER)
    log = tmp / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "firmware_bridge.cli",
                "--site",
                SITE,
                "--cluster",
                CLUSTER,
                "--broker",
                broker.endpoint.url,
                "--state-dir",
                str(tmp / "box"),
                "--sink",
                "simulated",
                "--keys-file",
                str(keys),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        # The kit waits (bounded) for the box's retained status itself.
        run = run_kit(
            tmp,
            broker.endpoint.url,
            CLUSTER,
            "--keys-file",
            str(keys),
            "--kill-command",
            f"kill -9 {agent.pid}",
            "--allow-reboot",
        )
        yield run
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.wait(10)
        broker.stop()


@pytest.mark.parametrize("key", every_check())
def test_the_agent_passes(agent_run: KitRun, key: str) -> None:
    result = agent_run.result(key)
    expected = "skipped" if key in SKIPPED_WITH_KEY else "pass"
    assert result["result"] == expected, result["detail"]


@pytest.mark.xfail(bool(PENDING), strict=True, reason="; ".join(PENDING.values()))
def test_the_agent_conforms_exit_0(agent_run: KitRun) -> None:
    assert agent_run.exit_code == 0, agent_run.failed()
    assert agent_run.report["passed"] is True


def test_json_shape_and_exit_code(agent_run: KitRun) -> None:
    report = agent_run.report
    assert set(report) == {"site", "cluster", "broker", "signed", "passed", "counts", "checks"}
    assert (report["site"], report["cluster"], report["signed"]) == (SITE, CLUSTER, True)
    assert [c["key"] for c in report["checks"]] == [c.key for c in CHECKS]
    for c in report["checks"]:
        assert set(c) == {"key", "section", "title", "result", "detail", "seconds"}
        assert c["result"] in ("pass", "fail", "skipped", "not applicable")
        assert c["section"].isdigit() and c["detail"], c
    counts = report["counts"]
    assert sum(counts.values()) == len(CHECKS)
    assert counts["fail"] == len(agent_run.failed())
    # Exit 0 exactly when nothing failed.
    assert report["passed"] is (counts["fail"] == 0)
    assert agent_run.exit_code == (0 if report["passed"] else 1)
