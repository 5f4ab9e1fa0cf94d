"""What a box cannot do is decided from what it reports, never from a flag."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_support import SITE, KitRun, issue_key, run_kit

from firmware_bridge.abc import SensorReadings
from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.hardware import HostHardware
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

CLUSTER = "lb-03"


class NoVolumeReadback(HostHardware):
    """A box that sets its volume but cannot read it back (heartbeat volume null)."""

    def read_sensors(self) -> SensorReadings:
        return SensorReadings()


@pytest.fixture
def quiet_box_run(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[KitRun]:
    keys = issue_key(tmp_path / "keys.json", CLUSTER)
    agent = ClusterAgent(
        AgentConfig(
            site=SITE,
            cluster=CLUSTER,
            endpoint=mosquitto.endpoint,
            state_dir=tmp_path / "box",
            keys_file=keys,
            heartbeat_s=1.0,
        ),
        SimulatedSink(),
        hardware=NoVolumeReadback(),
    )
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        yield run_kit(
            tmp_path,
            mosquitto.endpoint.url,
            CLUSTER,
            "--keys-file",
            str(keys),
            "--only",
            "status",
            "--only",
            "volume-restored",
            "--only",
            "heartbeat",
        )
    finally:
        agent.stop()


def test_a_box_that_reports_no_volume_is_not_judged_on_restoring_it(
    quiet_box_run: KitRun,
) -> None:
    assert quiet_box_run.outcomes() == {
        "status": "pass",
        "volume-restored": "not applicable",
        "heartbeat": "pass",
    }
    assert "heartbeat volume is null" in quiet_box_run.result("volume-restored")["detail"]
    # Not applicable is no failure.
    assert quiet_box_run.exit_code == 0
