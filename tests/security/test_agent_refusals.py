"""The real agent on a real mosquitto refuses unsigned, forged, stale and replayed commands.

The test plays the controller (and the attacker) with its own MQTT link; the agent's
simulated amplifier records every play, so "never plays them" is checked directly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.keys import KeyEntry, new_secret, write_key_file
from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import (
    Ack,
    Kind,
    MediaRef,
    PlayCommand,
    decode_ack,
    encode,
    new_id,
    sign_command,
    topic,
    utcnow,
)
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.media import MediaServer, MediaStore
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

SITE, CLUSTER = "luc-binh", "lb-01"
K1 = KeyEntry("k1", new_secret(), "2026-11-30T00:00:00Z")
K2 = KeyEntry("k2", new_secret(), "2026-11-30T01:00:00Z")


@dataclass
class Rig:
    agent: ClusterAgent
    sink: SimulatedSink
    link: MqttLink
    media: MediaRef
    key_file: Path
    acks: list[Ack] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def command(self, **kw: object) -> PlayCommand:
        t = utcnow()
        base: dict[str, object] = {
            "id": new_id(),
            "cluster": CLUSTER,
            "broadcast": new_id()[:12],
            "issued_at": t,
            "expires_at": t + timedelta(minutes=5),
            "media": self.media,
        }
        base.update(kw)
        return PlayCommand.model_validate(base)

    def send(self, cmd: PlayCommand) -> None:
        self.link.publish(topic(SITE, CLUSTER, Kind.CMD), encode(cmd))

    def final(self, command_id: str, timeout: float = 10) -> Ack:
        def done() -> Ack | None:
            with self.lock:
                for a in self.acks:
                    if a.command == command_id and a.state in ("played", "failed"):
                        return a
            return None

        assert wait_until(lambda: done() is not None, timeout), f"no final ack for {command_id}"
        ack = done()
        assert ack is not None
        return ack

    def played(self) -> int:
        return len(self.sink.plays)


@pytest.fixture
def rig(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Rig]:
    store = MediaStore(tmp_path / "media")
    audio = make_tone_mp3(tmp_path / "tone.mp3", 0.4)
    sha, size = store.add_file(audio.path, "mp3")
    server = MediaServer(store, "127.0.0.1", 0, on_poke=lambda: None)
    server.start()
    media = MediaRef(
        url=f"http://127.0.0.1:{server.port}/media/{sha}.mp3",
        sha256=sha,
        size=size,
        duration_s=0.4,
    )
    state = tmp_path / "box"
    key_file = state / "keys.json"
    write_key_file(key_file, SITE, CLUSTER, [K1])
    sink = SimulatedSink(time_scale=0.25)
    agent = ClusterAgent(
        AgentConfig(
            site=SITE,
            cluster=CLUSTER,
            endpoint=mosquitto.endpoint,
            state_dir=state,
            key_rotation_window_s=0,
        ),
        sink,
    )
    loop = MqttLoop(name="test-controller")
    loop.start()
    acks: list[Ack] = []
    lock = threading.Lock()

    def on_message(_topic: str, payload: bytes) -> None:
        with lock:
            acks.append(decode_ack(payload))

    link = MqttLink(
        "test-controller",
        mosquitto.endpoint,
        on_message=on_message,
        subscriptions=(topic(SITE, CLUSTER, Kind.ACK),),
    )
    loop.add(link)
    agent.start()
    assert link.connected.wait(10) and agent.link.connected.wait(10)
    r = Rig(agent, sink, link, media, key_file, acks, lock)
    # "Connected" comes before the broker has the subscriptions: ping until a refusal
    # (an unsigned command, never played) comes back, so no test command is lost.
    for _ in range(20):
        rig_ping = r.command()
        r.send(rig_ping)
        if wait_until(lambda: bool(r.acks), 0.5):
            break
    assert r.acks, "agent never answered"
    assert wait_until(lambda: all(a.state == "failed" for a in r.acks), 1)
    with lock:
        acks.clear()
    yield r
    agent.stop()
    loop.close_link(link)
    loop.stop()
    server.stop()


def test_signed_command_plays(rig: Rig) -> None:
    cmd = sign_command(rig.command(), K1.secret, "k1")
    rig.send(cmd)
    assert rig.final(cmd.id).state == "played"
    assert rig.played() == 1


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda r: r.command(), "refused: command is not signed"),
        (lambda r: sign_command(r.command(), new_secret(), "k1"), "refused: signature does not"),
        (lambda r: sign_command(r.command(), K1.secret, "k9"), "refused: unknown or retired key"),
        (
            lambda r: sign_command(
                r.command(
                    issued_at=utcnow() - timedelta(minutes=10),
                    expires_at=utcnow() - timedelta(minutes=1),
                ),
                K1.secret,
                "k1",
            ),
            "refused: expired",
        ),
        (
            lambda r: sign_command(
                r.command(
                    issued_at=utcnow() + timedelta(hours=1),
                    expires_at=utcnow() + timedelta(hours=2),
                ),
                K1.secret,
                "k1",
            ),
            "refused: issued",
        ),
    ],
    ids=["unsigned", "wrong-key", "unknown-key", "expired", "from-the-future"],
)
def test_bad_commands_are_refused_reported_and_never_played(
    rig: Rig, make: object, says: str
) -> None:
    cmd = make(rig)  # type: ignore[operator]
    rig.send(cmd)
    ack = rig.final(cmd.id)
    assert ack.state == "failed"
    assert ack.reason is not None and ack.reason.startswith(says)
    # A good command sent afterwards plays, so the refusal was not a dead box.
    good = sign_command(rig.command(), K1.secret, "k1")
    rig.send(good)
    assert rig.final(good.id).state == "played"
    assert rig.played() == 1


def test_replayed_command_is_not_played_again(rig: Rig) -> None:
    cmd = sign_command(rig.command(), K1.secret, "k1")

    def answers() -> list[Ack]:
        with rig.lock:
            return [a for a in rig.acks if a.command == cmd.id and a.reason]

    rig.send(cmd)
    assert rig.final(cmd.id).state == "played"
    rig.send(cmd)  # a captured command sent again, byte for byte
    assert wait_until(lambda: len(answers()) == 1, 5)
    assert answers()[0].reason == "duplicate command; already handled"
    # Also after a restart: the journal is on disk.
    rig.agent.stop()
    rig.agent = ClusterAgent(rig.agent.config, rig.sink)
    rig.agent.start()
    assert rig.agent.link.connected.wait(10)
    for _ in range(10):  # resend until the new session's subscription is in place
        rig.send(cmd)
        if wait_until(lambda: len(answers()) >= 2, 0.5):
            break
    assert len(answers()) >= 2
    assert rig.played() == 1


def test_key_rotation_keeps_the_cluster(rig: Rig) -> None:
    # The new key file (new key first, old kept) is installed while the box runs.
    write_key_file(rig.key_file, SITE, CLUSTER, [K2, K1])
    old = sign_command(rig.command(), K1.secret, "k1")
    rig.send(old)
    assert rig.final(old.id).state == "played", "old key must work until the switch"
    new = sign_command(rig.command(), K2.secret, "k2")
    rig.send(new)
    assert rig.final(new.id).state == "played"
    # Rotation window (0 s here) over: the old key is retired on the box.
    late = sign_command(rig.command(), K1.secret, "k1")
    rig.send(late)
    ack = rig.final(late.id)
    assert ack.state == "failed" and "retired" in (ack.reason or "")
    assert rig.played() == 2
    state = json.loads((rig.key_file.parent / "key-rotation.json").read_text())
    assert state["kid"] == "k2"
