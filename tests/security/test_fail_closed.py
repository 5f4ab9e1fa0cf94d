"""Fail closed: a box without a readable key file does not start unless told it is a bench box.

Issue 13, item 5: ``loudspeaker-agent --keys-file`` naming a missing file used to run
unsigned and played a forged unsigned emergency. Real agent and gateway processes here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.exceptions import BridgeError
from firmware_bridge.keys import KeyEntry, new_secret, write_key_file
from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import (
    Kind,
    MediaRef,
    PlayCommand,
    Priority,
    encode,
    new_id,
    topic,
    utcnow,
)
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.media import MediaServer, MediaStore
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE, CLUSTER = "luc-binh", "lb-01"
GATEWAY_SITE = ROOT / "sites" / "luc-binh-mixed.toml"


def _agent_cmd(broker: str, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "firmware_bridge.cli",
        "--site",
        SITE,
        "--cluster",
        CLUSTER,
        "--broker",
        broker,
        "--state-dir",
        str(state),
        "--sink",
        "simulated",
        *extra,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)


def test_agent_with_a_missing_key_file_exits_2_with_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "keys.json"
    # No broker is needed: the agent refuses before it connects anywhere.
    r = _run(_agent_cmd("mqtt://127.0.0.1:9", tmp_path / "box", "--keys-file", str(missing)))
    assert r.returncode == 2, r.stderr
    assert f"no key file at {missing}" in r.stderr
    assert "loudspeaker keys issue lb-01" in r.stderr
    assert "--insecure-unsigned" in r.stderr
    assert "Traceback" not in r.stderr


def test_agent_with_an_unreadable_key_file_exits_2(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    write_key_file(key_file, SITE, CLUSTER, [KeyEntry("k1", new_secret())])
    key_file.chmod(0o644)  # too open: refused like ssh refuses a readable private key
    r = _run(_agent_cmd("mqtt://127.0.0.1:9", tmp_path / "box", "--keys-file", str(key_file)))
    assert r.returncode == 2, r.stderr
    assert "chmod 600" in r.stderr
    assert "Traceback" not in r.stderr
    # Even a bench flag does not make a broken key file acceptable.
    r = _run(
        _agent_cmd(
            "mqtt://127.0.0.1:9",
            tmp_path / "box",
            "--keys-file",
            str(key_file),
            "--insecure-unsigned",
        )
    )
    assert r.returncode == 2, r.stderr


def test_cluster_agent_start_raises_without_keys(tmp_path: Path, mosquitto: EmbeddedBroker) -> None:
    agent = ClusterAgent(
        AgentConfig(site=SITE, cluster=CLUSTER, endpoint=mosquitto.endpoint, state_dir=tmp_path),
        SimulatedSink(),
    )
    with pytest.raises(BridgeError, match="no key file at"):
        agent.start()


def test_gateway_without_key_files_exits_2(tmp_path: Path) -> None:
    r = _run(
        [
            sys.executable,
            "-m",
            "firmware_bridge.gateway",
            "--site-file",
            str(GATEWAY_SITE),
            "--gateway",
            "hall",
            "--port",
            str(tmp_path / "no-such-port"),
            "--broker",
            "mqtt://127.0.0.1:9",
            "--state-dir",
            str(tmp_path / "gw"),
            "--keys-dir",
            str(tmp_path / "keys"),
            "--sink",
            "simulated",
        ]
    )
    assert r.returncode == 2, r.stderr
    assert f"no key file at {tmp_path / 'keys'}" in r.stderr
    assert "--insecure-unsigned" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def forged(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[PlayCommand]:
    """A forged, unsigned emergency waiting (retained) on lb-01's command topic."""
    store = MediaStore(tmp_path / "media")
    audio = make_tone_mp3(tmp_path / "tone.mp3", 0.3)
    sha, size = store.add_file(audio.path, "mp3")
    server = MediaServer(store, "127.0.0.1", 0, on_poke=lambda: None)
    server.start()
    t = utcnow()
    cmd = PlayCommand(
        id=new_id(),
        cluster=CLUSTER,
        broadcast=new_id()[:12],
        issued_at=t,
        expires_at=t + timedelta(minutes=10),
        priority=Priority.EMERGENCY,
        title="forged: evacuate now",
        media=MediaRef(
            url=f"http://127.0.0.1:{server.port}/media/{sha}.mp3",
            sha256=sha,
            size=size,
            duration_s=0.3,
        ),
    )
    assert cmd.sig is None
    loop = MqttLoop(name="attacker")
    loop.start()
    link = MqttLink("attacker", mosquitto.endpoint, on_message=lambda _t, _p: None)
    loop.add(link)
    assert link.connected.wait(10)
    link.publish(topic(SITE, CLUSTER, Kind.CMD), encode(cmd), retain=True)
    yield cmd
    loop.close_link(link)
    loop.stop()
    server.stop()


def _plays(state: Path) -> str:
    path = state / "plays.jsonl"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def test_forged_unsigned_emergency_is_not_played_by_an_agent_without_keys(
    tmp_path: Path, mosquitto: EmbeddedBroker, forged: PlayCommand
) -> None:
    state = tmp_path / "box"
    missing = tmp_path / "keys.json"
    r = _run(_agent_cmd(mosquitto.endpoint.url, state, "--keys-file", str(missing)))
    assert r.returncode == 2, r.stderr
    assert _plays(state) == ""

    # The same box told explicitly that it is a bench box starts, warns, and (being
    # unauthenticated by choice) plays the forgery: what the flag's name says.
    log = tmp_path / "bench.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _agent_cmd(
                mosquitto.endpoint.url,
                state,
                "--keys-file",
                str(missing),
                "--insecure-unsigned",
                "--time-scale",
                "0.25",
            ),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert wait_until(lambda: _plays(state) != "", 30), log.read_text()
        text = log.read_text()
        assert "WARNING" in text and "NOT authenticated" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
