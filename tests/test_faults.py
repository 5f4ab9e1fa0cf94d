"""A cluster killed mid-broadcast, and a rogue client publishing garbage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, func, select

from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.simulator import Fleet
from loudspeaker.broadcasts import broadcast_status, create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.media import MediaStore
from loudspeaker.models import ClusterStatus, Delivery, DeliveryEvent
from loudspeaker.targets import resolve_targets
from tests.helpers import make_tone_mp3, stop_process, wait_until

pytestmark = pytest.mark.integration


def _queue(ctl: Controller, tmp_path: Path, target: str, seconds: float) -> str:
    assert ctl.dispatcher is not None
    af = make_tone_mp3(tmp_path / "tone.mp3", seconds)
    with Session(ctl.dispatcher.engine) as s:
        media = register_media(s, MediaStore(ctl.settings.media_dir), af)
        return create_broadcast(
            s, media=media, title="t", target=target, clusters=resolve_targets(s, target)
        ).id


def test_cluster_killed_mid_broadcast_is_unreachable_and_offline(
    tmp_path: Path, controller: Controller, mosquitto: EmbeddedBroker
) -> None:
    assert controller.dispatcher is not None
    engine = controller.dispatcher.engine
    others = Fleet(
        "luc-binh",
        ["lb-01", "lb-02", "lb-03"],
        mosquitto.endpoint,
        tmp_path / "fleet",
        time_scale=1.0,
    )
    others.start()
    victim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "firmware_bridge.cli",
            "--site",
            "luc-binh",
            "--cluster",
            "lb-04",
            "--broker",
            mosquitto.endpoint.url,
            "--state-dir",
            str(tmp_path / "victim"),
            "--sink",
            "simulated",
            "--insecure-unsigned",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert others.wait_connected(10)

        def online(cid: str) -> bool:
            with Session(engine) as s:
                st = s.get(ClusterStatus, cid)
                return st is not None and st.online

        assert wait_until(lambda: online("lb-04"), 15)
        bid = _queue(
            controller, tmp_path, "cluster:lb-01,cluster:lb-02,cluster:lb-03,cluster:lb-04", 4.0
        )
        controller.dispatcher.poke()

        def victim_state() -> str:
            with Session(engine) as s:
                d = s.exec(select(Delivery).where(Delivery.cluster_id == "lb-04")).one()
                return d.state

        assert wait_until(lambda: victim_state() == "playing", 15)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)

        def done() -> bool:
            with Session(engine) as s:
                return broadcast_status(s, bid).finished

        assert wait_until(done, 30)
        with Session(engine) as s:
            view = broadcast_status(s, bid)
            states = {d.cluster: (d.state, d.reason) for d in view.deliveries}
            st = s.get(ClusterStatus, "lb-04")
            assert st is not None and st.online is False
        assert states["lb-04"][0] == "unreachable"
        assert "offline while playing" in states["lb-04"][1]
        for c in ("lb-01", "lb-02", "lb-03"):
            assert states[c] == ("played", ""), states
    finally:
        stop_process(victim)
        others.stop()


ROGUE_PAYLOADS: list[tuple[str, bytes]] = [
    ("loudspeaker/luc-binh/lb-01/ack", b"{not json"),
    ("loudspeaker/luc-binh/lb-01/ack", b'{"v":1,"cluster":"lb-01","command":42,"state":"played"}'),
    (
        "loudspeaker/luc-binh/lb-01/ack",
        b'{"v":1,"cluster":"lb-02","command":"aaaaaaaaaaaa","state":"played","ts":"2026-11-30T00:00:00Z"}',
    ),
    (
        "loudspeaker/luc-binh/lb-99/ack",
        b'{"v":1,"cluster":"lb-99","command":"aaaaaaaaaaaa","state":"played","ts":"2026-11-30T00:00:00Z"}',
    ),
    (
        "loudspeaker/luc-binh/lb-01/ack",
        b'{"v":1,"cluster":"lb-01","command":"aaaaaaaaaaaa","state":"played","ts":"2026-11-30T00:00:00Z"}',
    ),
    ("loudspeaker/luc-binh/lb-01/status", b'{"v":1,"cluster":"lb-01","state":"sideways"}'),
    ("loudspeaker/luc-binh/lb-77/status", b'{"v":1,"cluster":"lb-77","state":"online"}'),
    ("loudspeaker/luc-binh/lb-01/ack", b"x" * (2 * 1024 * 1024)),
    ("loudspeaker/luc-binh/lb-01/ack", json.dumps([1] * 100000).encode()),
    ("loudspeaker/other-site/lb-01/ack", b"{}"),
    ("loudspeaker/luc-binh/lb-01/ack", "\u0000\ud800".encode("utf-8", "surrogatepass")),
]


def test_rogue_payloads_are_dropped_and_records_stay_intact(
    tmp_path: Path, controller: Controller, fleet: Fleet, mosquitto: EmbeddedBroker
) -> None:
    assert controller.dispatcher is not None
    engine = controller.dispatcher.engine
    bid = _queue(controller, tmp_path, "all", 0.5)
    controller.dispatcher.poke()

    def finished(b: str) -> bool:
        with Session(engine) as s:
            return broadcast_status(s, b).finished

    assert wait_until(lambda: finished(bid), 30)
    with Session(engine) as s:
        before = broadcast_status(s, bid).to_json()
        n_events = s.exec(select(func.count()).select_from(DeliveryEvent)).one()

    # The rogue also wants to replay a real ack for a finished delivery: must change nothing.
    with Session(engine) as s:
        real = s.exec(select(Delivery).where(Delivery.cluster_id == "lb-05")).one()
    replay = json.dumps(
        {
            "v": 1,
            "cluster": "lb-05",
            "command": real.command_id,
            "broadcast": real.broadcast_id,
            "state": "failed",
            "ts": "2026-11-30T00:00:00Z",
            "reason": "forged",
        }
    ).encode()
    loop = MqttLoop("rogue")
    loop.start()
    rogue = MqttLink("rogue", mosquitto.endpoint, on_message=lambda t, p: None)
    loop.add(rogue)
    try:
        assert rogue.connected.wait(10)
        for t, p in [*ROGUE_PAYLOADS, ("loudspeaker/luc-binh/lb-05/ack", replay)]:
            rogue.publish(t, p)
        # Everything but the other site's message (not even subscribed) is seen and dropped.
        expected_drops = len(ROGUE_PAYLOADS) - 1
        assert wait_until(lambda: controller.dispatcher.dropped_messages >= expected_drops, 10)
        assert controller.dispatcher.dropped_messages == expected_drops
    finally:
        loop.close_link(rogue)
        loop.stop()

    # Still alive: a new broadcast goes out and completes.
    bid2 = _queue(controller, tmp_path, "all", 0.5)
    controller.dispatcher.poke()
    assert wait_until(lambda: finished(bid2), 30)
    with Session(engine) as s:
        after = broadcast_status(s, bid).to_json()
        assert broadcast_status(s, bid2).counts == {"played": 10}
        n_after = s.exec(select(func.count()).select_from(DeliveryEvent)).one()
    assert after["counts"] == before["counts"] == {"played": 10}
    assert after["clusters"] == before["clusters"]
    # Only the new broadcast's events (and the forged one's trail entry) were added.
    assert n_after >= n_events + 10 * 5


def test_a_restarted_controller_keeps_its_broker_and_media_ports(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Boxes hold the broker's address and media URLs: a restart must not move them."""
    from loudspeaker.config import Settings
    from tests.conftest import load_site

    load_site(sqlite_url)
    settings = Settings(data_dir=tmp_path / "data", db_url=sqlite_url)
    first = Controller(settings)
    first.start()
    assert first.broker is not None and first.media is not None
    ports = (first.broker.port, first.media.port)
    first.stop()
    second = Controller(settings)
    second.start()
    try:
        assert second.broker is not None and second.media is not None
        assert (second.broker.port, second.media.port) == ports
    finally:
        second.stop()


def test_a_taken_broker_port_is_refused_not_mistaken_for_ours(tmp_path: Path) -> None:
    import socket

    from loudspeaker.broker import EmbeddedBroker
    from loudspeaker.exceptions import BrokerStartError

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = EmbeddedBroker(tmp_path / "b", port=port, supervise=False)
        with pytest.raises(BrokerStartError, match="already in use"):
            broker.start()
