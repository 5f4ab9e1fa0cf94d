"""The kit against a serial cluster: the gateway's stand-in on a pty bus with the MCU emulator.

The gateway runs as a real ``loudspeaker-gateway`` process; the kit talks to lb-09 exactly
as to an IP box. Every check applies to a serial cluster behind this gateway (relays,
volume and sensors are the receiver's, read over the bus), so every one must pass; what a
box cannot do the kit decides from its heartbeat (see test_kit_capabilities).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_support import SKIPPED_WITH_KEY, KitRun, every_check, issue_key, run_kit

from firmware_bridge.mcu_emulator import McuEmulator
from loudspeaker.broker import EmbeddedBroker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MIXED_SITE = ROOT / "sites" / "luc-binh-mixed.toml"
CLUSTER = "lb-09"


@pytest.fixture(scope="module")
def gateway_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitRun]:
    tmp = tmp_path_factory.mktemp("kit-gateway")
    broker = EmbeddedBroker(tmp / "mosquitto", supervise=False)
    broker.start()
    keys_dir = tmp / "keys"
    for cluster in ("lb-09", "lb-10"):
        issue_key(keys_dir / f"{cluster}.json", cluster)
    log = tmp / "gateway.log"
    try:
        with McuEmulator(addresses=(1, 2)) as bus, log.open("wb") as out:
            gateway = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "firmware_bridge.gateway",
                    "--site-file",
                    str(MIXED_SITE),
                    "--gateway",
                    "hall",
                    "--port",
                    bus.port,
                    "--broker",
                    broker.endpoint.url,
                    "--keys-dir",
                    str(keys_dir),
                    "--state-dir",
                    str(tmp / "gw"),
                    "--sink",
                    "simulated",
                    "--heartbeat",
                    "2",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                run = run_kit(
                    tmp,
                    broker.endpoint.url,
                    CLUSTER,
                    "--keys-file",
                    str(keys_dir / f"{CLUSTER}.json"),
                    "--kill-command",
                    f"kill -9 {gateway.pid}",
                    "--allow-reboot",
                )
            finally:
                if gateway.poll() is None:
                    gateway.kill()
                gateway.wait(10)
        yield run
    finally:
        broker.stop()


@pytest.mark.parametrize("key", every_check())
def test_the_serial_cluster_passes(gateway_run: KitRun, key: str) -> None:
    result = gateway_run.result(key)
    expected = "skipped" if key in SKIPPED_WITH_KEY else "pass"
    assert result["result"] == expected, result["detail"]
