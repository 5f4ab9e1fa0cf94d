"""The cluster agent against a real mosquitto and a real HTTP media server."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import (
    Ack,
    Kind,
    MediaRef,
    PlayCommand,
    StopCommand,
    decode_ack,
    decode_status,
    encode,
    new_id,
    topic,
    utcnow,
)
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broker import EmbeddedBroker
from tests.helpers import make_tone_mp3, wait_event, wait_until

pytestmark = pytest.mark.integration

SITE = "luc-binh"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


class Controller:
    """A stand-in controller: a plain MQTT client that sends commands and collects acks."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.acks: list[Ack] = []
        self.onlines = 0  # "online" statuses of lb-01 seen (the retained one included)
        self.loop = MqttLoop("test-controller")
        self.link = MqttLink(
            "test-controller",
            broker.endpoint,
            on_message=self._on_message,
            subscriptions=(f"loudspeaker/{SITE}/+/ack", f"loudspeaker/{SITE}/lb-01/status"),
        )

    def _on_message(self, topic_: str, payload: bytes) -> None:
        if topic_.endswith("/status"):
            self.onlines += decode_status(payload).state == "online"
        else:
            self.acks.append(decode_ack(payload))

    def wait_agent_online(self, count: int = 1) -> None:
        """Wait for the agent's ``count``-th "online" status.

        "Connected" is not enough: the agent subscribes to its command topic after the
        connect, and a command that reaches the broker before that subscription is lost.
        It publishes "online" after subscribing, so the broker has both in that order.
        """
        assert wait_until(lambda: self.onlines >= count, 10), "the agent never said online"

    def __enter__(self) -> Controller:
        self.loop.start()
        self.loop.add(self.link)
        assert wait_event(self.link.connected, 10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.close_link(self.link)
        self.loop.stop()

    def send(self, cmd: PlayCommand | StopCommand, raw: bytes | None = None) -> None:
        self.link.publish(
            topic(SITE, cmd.cluster, Kind.CMD), raw if raw is not None else encode(cmd)
        )

    def states(self, command_id: str) -> list[str]:
        return [a.state.value for a in self.acks if a.command == command_id]


def _command(url: str, path: Path, seconds: float, **kw: object) -> PlayCommand:
    data = path.read_bytes()
    t = utcnow()
    fields: dict[str, object] = {
        "id": new_id(),
        "cluster": "lb-01",
        "broadcast": new_id()[:12],
        "issued_at": t,
        "expires_at": t + timedelta(minutes=5),
        "media": MediaRef(
            url=f"{url}/{path.name}",
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            duration_s=seconds,
        ),
    }
    fields.update(kw)
    return PlayCommand.model_validate(fields)


def _agent(tmp_path: Path, broker: EmbeddedBroker) -> tuple[ClusterAgent, SimulatedSink]:
    sink = SimulatedSink(tmp_path / "agent" / "plays.jsonl", time_scale=0.2)
    agent = ClusterAgent(
        AgentConfig(
            site=SITE,
            cluster="lb-01",
            endpoint=broker.endpoint,
            state_dir=tmp_path / "agent",
            insecure_unsigned=True,
        ),
        sink,
    )
    return agent, sink


def test_play_is_acknowledged_step_by_step(
    tmp_path: Path, mosquitto: EmbeddedBroker, media_server: tuple[str, Path]
) -> None:
    url, root = media_server
    make_tone_mp3(root / "a.mp3", 1.0)
    agent, sink = _agent(tmp_path, mosquitto)
    agent.start()
    try:
        with Controller(mosquitto) as ctl:
            ctl.wait_agent_online()
            cmd = _command(url, root / "a.mp3", 1.0)
            ctl.send(cmd)
            assert wait_until(lambda: "played" in ctl.states(cmd.id), 15)
            assert ctl.states(cmd.id) == ["received", "staged", "playing", "played"]
            assert len(sink.plays) == 1
    finally:
        agent.stop()


def test_redelivered_command_never_plays_twice_even_after_restart(
    tmp_path: Path, mosquitto: EmbeddedBroker, media_server: tuple[str, Path]
) -> None:
    url, root = media_server
    make_tone_mp3(root / "a.mp3", 0.5)
    cmd = _command(url, root / "a.mp3", 0.5)
    agent, _sink = _agent(tmp_path, mosquitto)
    agent.start()
    with Controller(mosquitto) as ctl:
        ctl.wait_agent_online()
        ctl.send(cmd)
        ctl.send(cmd)  # what a QoS 1 redelivery looks like to the agent
        assert wait_until(lambda: "played" in ctl.states(cmd.id), 15)
        agent.stop()
        # A new process on the same box (same state dir) gets the same command again.
        agent2, sink2 = _agent(tmp_path, mosquitto)
        agent2.start()
        try:
            ctl.wait_agent_online(2)
            ctl.send(cmd)
            assert wait_until(lambda: ctl.states(cmd.id).count("played") >= 2, 10)
        finally:
            agent2.stop()
    lines = (tmp_path / "agent" / "plays.jsonl").read_text().splitlines()
    assert len(lines) == 1, lines
    assert sink2.plays == []


def test_audio_that_fails_verification_is_not_played(
    tmp_path: Path, mosquitto: EmbeddedBroker, media_server: tuple[str, Path]
) -> None:
    url, root = media_server
    make_tone_mp3(root / "a.mp3", 0.5)
    agent, sink = _agent(tmp_path, mosquitto)
    agent.start()
    try:
        with Controller(mosquitto) as ctl:
            ctl.wait_agent_online()
            good = _command(url, root / "a.mp3", 0.5)
            bad_sha = good.model_copy(
                update={"id": new_id(), "media": good.media.model_copy(update={"sha256": "0" * 64})}
            )
            missing = good.model_copy(
                update={
                    "id": new_id(),
                    "media": good.media.model_copy(update={"url": f"{url}/nope.mp3"}),
                }
            )
            for c in (bad_sha, missing):
                ctl.send(c)
            assert wait_until(
                lambda: all("failed" in ctl.states(c.id) for c in (bad_sha, missing)), 15
            )
            reasons = [a.reason or "" for a in ctl.acks if a.state.value == "failed"]
            assert any("sha256 mismatch" in r for r in reasons)
            assert any("404" in r for r in reasons)
            assert sink.plays == []
    finally:
        agent.stop()


def test_expired_and_malformed_commands_are_refused(
    tmp_path: Path, mosquitto: EmbeddedBroker, media_server: tuple[str, Path]
) -> None:
    url, root = media_server
    make_tone_mp3(root / "a.mp3", 0.5)
    agent, sink = _agent(tmp_path, mosquitto)
    agent.start()
    try:
        with Controller(mosquitto) as ctl:
            ctl.wait_agent_online()
            t = utcnow()
            expired = _command(
                url,
                root / "a.mp3",
                0.5,
                issued_at=t - timedelta(hours=1),
                expires_at=t - timedelta(minutes=1),
            )
            ctl.send(expired)
            broken = json.loads(encode(_command(url, root / "a.mp3", 0.5)))
            broken["repeat"] = 99
            ctl.send(expired, raw=json.dumps(broken).encode())
            ctl.send(expired, raw=b"\x00garbage")
            other = _command(url, root / "a.mp3", 0.5, cluster="lb-02")
            ctl.link.publish(topic(SITE, "lb-01", Kind.CMD), encode(other))
            assert wait_until(lambda: "failed" in ctl.states(broken["id"]), 10)
            assert wait_until(lambda: "failed" in ctl.states(expired.id), 10)
            refusal = next(a for a in ctl.acks if a.command == broken["id"])
            assert refusal.reason is not None and "repeat" in refusal.reason
            # Still alive and serving after all that.
            good = _command(url, root / "a.mp3", 0.5)
            ctl.send(good)
            assert wait_until(lambda: "played" in ctl.states(good.id), 15)
            assert ctl.states(other.id) == []
            assert len(sink.plays) == 1
    finally:
        agent.stop()


def test_stop_interrupts_playback(
    tmp_path: Path, mosquitto: EmbeddedBroker, media_server: tuple[str, Path]
) -> None:
    url, root = media_server
    make_tone_mp3(root / "long.mp3", 1.0)
    agent, sink = _agent(tmp_path, mosquitto)
    agent.start()
    try:
        with Controller(mosquitto) as ctl:
            ctl.wait_agent_online()
            # Announced as 1000 s (x0.2 = 200 s simulated): only a stop ends it.
            cmd = _command(url, root / "long.mp3", 1000.0)
            ctl.send(cmd)
            assert wait_until(lambda: "playing" in ctl.states(cmd.id), 10)
            t = utcnow()
            ctl.send(
                StopCommand(
                    id=new_id(),
                    cluster="lb-01",
                    broadcast=cmd.broadcast,
                    issued_at=t,
                    expires_at=t + timedelta(minutes=1),
                )
            )
            assert wait_until(lambda: "failed" in ctl.states(cmd.id), 10)
            final = [a for a in ctl.acks if a.command == cmd.id][-1]
            assert final.reason == "stopped by operator"
            assert sink.plays[0].result == "stopped"
    finally:
        agent.stop()
