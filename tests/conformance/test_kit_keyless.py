"""A bench box without keys: the kit sends unsigned commands, skips the signature checks,
and checks that the box ignores ``sig`` and still applies every freshness rule."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from conformance_support import SITE, KitRun, run_kit

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

CLUSTER = "lb-04"
ONLY = [
    "status",
    "play",
    "keyless-sig",
    "forged",
    "unsigned",
    "expired",
    "future",
    "lifetime",
    "refused-control",
    "refused-stop-withdraw",
]


@pytest.fixture
def keyless_run(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[KitRun]:
    extra: dict[str, Any] = {}
    # A keyless agent must be told so explicitly once the fail-closed agent lands.
    if "insecure_unsigned" in {f.name for f in fields(AgentConfig)}:
        extra["insecure_unsigned"] = True
    agent = ClusterAgent(
        AgentConfig(
            site=SITE,
            cluster=CLUSTER,
            endpoint=mosquitto.endpoint,
            state_dir=tmp_path / "box",
            heartbeat_s=1.0,
            **extra,
        ),
        SimulatedSink(),
    )
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        args = [a for key in ONLY for a in ("--only", key)]
        yield run_kit(tmp_path, mosquitto.endpoint.url, CLUSTER, *args)
    finally:
        agent.stop()


def test_a_keyless_box_is_checked_for_freshness_not_signatures(keyless_run: KitRun) -> None:
    assert keyless_run.report["signed"] is False
    outcomes = keyless_run.outcomes()
    assert outcomes == {
        key: ("skipped" if key in ("forged", "unsigned") else "pass") for key in ONLY
    }, {k: keyless_run.result(k)["detail"] for k, v in outcomes.items() if v == "fail"}
    assert "give --keys-file" in keyless_run.result("forged")["detail"]
    assert "signatures not tested" in keyless_run.result("refused-control")["detail"]
    assert keyless_run.exit_code == 0
