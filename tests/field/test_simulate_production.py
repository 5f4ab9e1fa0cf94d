"""``loudspeaker simulate --broker-credentials-dir --keys-dir --processes N``, production broker.

The field suite runs the simulator in one process; this checks the multi-process path:
every child's boxes log in with their own passwords (none on any command line) and verify
commands with their own keys.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_bridge.credentials import read_credentials
from firmware_bridge.keys import read_key_file
from firmware_bridge.protocol import (
    VolumeCommand,
    decode_result,
    encode,
    new_id,
    sign_command,
    utcnow,
)
from tests.field.attack import MqttClient
from tests.field.deployment import BOXES, SITE, Deployment
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

T = f"loudspeaker/{SITE}"


@pytest.fixture
def shape(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp_path)
    try:
        d.prepare()
        d.start_broker()
        yield d
    finally:
        d.stop()


def _children(pid: int) -> list[int]:
    return [
        int(x)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for x in (task / "children").read_text().split()
    ]


def _volume(cluster: str, signer: str, d: Deployment, volume: int) -> VolumeCommand:
    key = read_key_file(d.keys / f"{signer}.json", SITE, signer)[0]
    t = utcnow()
    cmd = VolumeCommand(
        id=new_id(),
        cluster=cluster,
        issued_at=t,
        expires_at=t + timedelta(minutes=5),
        volume=volume,
    )
    return sign_command(cmd, key.secret, key.kid)


def test_each_box_of_each_process_logs_in_and_verifies_with_its_own_files(
    shape: Deployment,
) -> None:
    sim = shape.start_simulate(processes=2)
    ctl = read_credentials(shape.credentials("_controller"), group_readable=True)
    assert ctl.password is not None
    mon = MqttClient.connect(
        ctl.host,
        ctl.port,
        "_controller",
        ctl.password,
        client_id="monitor",
        subs=(f"{T}/+/status", f"{T}/+/result"),
    )
    try:

        def online() -> set[str]:
            last: dict[str, str] = {}
            for topic, payload, _ in list(mon.got):
                if topic.endswith("/status"):
                    last[topic.split("/")[2]] = json.loads(payload)["state"]
            return {c for c, state in last.items() if state == "online"}

        assert wait_until(lambda: set(BOXES) <= online(), 60), (online(), shape.log("simulate"))
        children = _children(sim.pid)
        assert len(children) == 2
        for pid in [sim.pid, *children]:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            for box in BOXES:
                assert shape.password(box) not in cmdline

        good = _volume("lb-03", "lb-03", shape, 42)
        other = _volume("lb-04", "lb-03", shape, 43)  # lb-03's key is not lb-04's
        for cmd in (good, other):
            assert mon.publish(f"{T}/{cmd.cluster}/cmd", encode(cmd)) == 0

        def result(cmd_id: str) -> dict[str, object] | None:
            for topic, payload, _ in list(mon.got):
                if topic.endswith("/result"):
                    r = decode_result(payload)
                    if r.command == cmd_id:
                        return {"ok": r.ok, "reason": r.reason}
            return None

        assert wait_until(lambda: result(good.id) is not None and result(other.id) is not None, 20)
        ok = result(good.id)
        assert ok is not None and ok["ok"] is True, ok
        bad = result(other.id)
        assert bad is not None and bad["ok"] is False
        assert str(bad["reason"]).startswith("refused"), bad
    finally:
        mon.close()
