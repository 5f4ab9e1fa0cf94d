"""The kit against a deliberately broken box: it must fail exactly the rules broken, exit 1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broken_agent import BROKEN_CHECKS, BrokenAgent
from conformance_support import PENDING, SITE, KitRun, issue_key, run_kit

from firmware_bridge.agent import AgentConfig
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

CLUSTER = "lb-02"


@pytest.fixture
def broken_run(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[tuple[KitRun, SimulatedSink]]:
    keys = issue_key(tmp_path / "keys.json", CLUSTER)
    sink = SimulatedSink()
    agent = BrokenAgent(
        AgentConfig(
            site=SITE,
            cluster=CLUSTER,
            endpoint=mosquitto.endpoint,
            state_dir=tmp_path / "box",
            keys_file=keys,
            heartbeat_s=1.0,
        ),
        sink,
    )
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        yield run_kit(tmp_path, mosquitto.endpoint.url, CLUSTER, "--keys-file", str(keys)), sink
    finally:
        agent.stop()


def test_the_kit_fails_exactly_the_broken_rules(broken_run: tuple[KitRun, SimulatedSink]) -> None:
    run, sink = broken_run
    assert run.exit_code == 1
    assert run.report["passed"] is False
    failed = run.failed()
    assert failed >= BROKEN_CHECKS, run.outcomes()
    # Decisions the project's agent does not follow yet fail here too (see test_kit_agent).
    assert failed <= BROKEN_CHECKS | set(PENDING), run.outcomes()
    # Each failure says what the box did.
    assert "played it again" in run.result("duplicate-done")["detail"]
    assert "answered received" in run.result("duplicate-pending")["detail"]
    assert "first ack received" in run.result("expired")["detail"]
    assert "no failed 'withdrawn: schedule changed'" in run.result("withdraw")["detail"]
    # The kit's verdicts are the box's real behaviour: the duplicate and the expired
    # command did play (play, duplicate, later item, expired, stop, emergency x2, ...).
    assert len(sink.plays) >= 5
