"""``loudspeaker-gateway`` as the hall machine runs it: a real subprocess, SIGTERM to stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from gw_support import MIXED_SITE
from sqlmodel import Session, select

from firmware_bridge.gateway import main
from firmware_bridge.mcu_emulator import McuEmulator
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.models import ClusterStatus
from tests.conftest import load_site, make_settings
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def test_bad_configuration_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--site-file", str(MIXED_SITE), "--state-dir", str(tmp_path)]
    assert main([*args, "--gateway", "school"]) == 2
    assert "gateways in the file: hall" in capsys.readouterr().err


def _status(ctl: Controller) -> dict[str, tuple[bool, str]]:
    assert ctl.dispatcher is not None
    with Session(ctl.dispatcher.engine) as s:
        return {st.cluster_id: (st.online, st.reason) for st in s.exec(select(ClusterStatus))}


def test_gateway_process_brings_its_clusters_online_and_says_offline_on_stop(
    tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker
) -> None:
    load_site(sqlite_url, MIXED_SITE)
    ctl = Controller(make_settings(tmp_path, sqlite_url, mosquitto))
    ctl.start()
    try:
        log = tmp_path / "gateway.log"
        with McuEmulator(addresses=(1, 2)) as bus, log.open("wb") as out:
            proc = subprocess.Popen(
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
                    mosquitto.endpoint.url,
                    "--state-dir",
                    str(tmp_path / "gw"),
                    "--sink",
                    "simulated",
                    "--heartbeat",
                    "1",
                    "--insecure-unsigned",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:

                def online() -> bool:
                    st = _status(ctl)
                    return all(st.get(c, (False, ""))[0] for c in ("lb-09", "lb-10"))

                assert wait_until(online, 20), (_status(ctl), log.read_text())
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        assert wait_until(lambda: not _status(ctl)["lb-09"][0], 10)
        st = _status(ctl)
        assert st["lb-09"] == (False, "agent stopped")
        assert st["lb-10"] == (False, "agent stopped")
    finally:
        ctl.stop()
