"""End to end: the controller signs, the box verifies, and a key rotation loses nobody."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import decode_command
from firmware_bridge.sinks import SimulatedSink
from loudspeaker import keys
from loudspeaker.auth import Actor
from loudspeaker.broadcasts import create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.control import request_control
from loudspeaker.controller import Controller
from loudspeaker.db import make_engine
from loudspeaker.keystore import Keystore
from loudspeaker.media import MediaStore
from loudspeaker.models import (
    ClusterRecord,
    ClusterStatus,
    ControlRequest,
    ControlState,
    Delivery,
)
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

ADMIN = Actor("admin1", "admin")


@pytest.fixture
def spy(mosquitto: EmbeddedBroker) -> Iterator[list[bytes]]:
    seen: list[bytes] = []
    lock = threading.Lock()

    def on_message(_t: str, payload: bytes) -> None:
        with lock:
            seen.append(payload)

    loop = MqttLoop(name="spy")
    loop.start()
    link = MqttLink(
        "spy",
        mosquitto.endpoint,
        on_message=on_message,
        subscriptions=("loudspeaker/luc-binh/lb-01/cmd",),
    )
    loop.add(link)
    assert link.connected.wait(10)
    yield seen
    loop.close_link(link)
    loop.stop()


def _broadcast(ctl: Controller, tmp_path: Path, name: str) -> str:
    engine = make_engine(ctl.settings.database_url)

    def online() -> bool:
        # The agent subscribes before it says "online", and the broker keeps that order.
        with Session(engine) as s:
            st = s.get(ClusterStatus, "lb-01")
            return bool(st and st.online)

    assert wait_until(online, 10)
    audio = make_tone_mp3(tmp_path / f"{name}.mp3", 0.4)
    with Session(engine) as s:
        media = register_media(s, MediaStore(ctl.settings.media_dir), audio)
        lb01 = s.get(ClusterRecord, "lb-01")
        assert lb01 is not None
        b = create_broadcast(s, media=media, title=name, target="cluster:lb-01", clusters=[lb01])
        bid = b.id
    assert ctl.dispatcher is not None
    ctl.dispatcher.poke()

    def state() -> str:
        with Session(engine) as s:
            return s.exec(select(Delivery.state).where(Delivery.broadcast_id == bid)).one()

    assert wait_until(lambda: state() in ("played", "failed", "unreachable"), 20), state()
    final = state()
    engine.dispose()
    return final


def test_controller_signs_and_rotation_keeps_the_cluster(
    controller: Controller, mosquitto: EmbeddedBroker, tmp_path: Path, spy: list[bytes]
) -> None:
    engine = make_engine(controller.settings.database_url)
    keystore = Keystore.of(controller.settings)
    box = tmp_path / "box"
    with Session(engine) as s:
        keys.issue(s, "lb-01", ADMIN, keystore=keystore)
        s.flush()
        keys.export(s, "luc-binh", "lb-01", box / "keys.json", ADMIN, keystore=keystore)
        s.commit()
    agent = ClusterAgent(
        AgentConfig(site="luc-binh", cluster="lb-01", endpoint=mosquitto.endpoint, state_dir=box),
        SimulatedSink(time_scale=0.25),
    )
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        assert _broadcast(controller, tmp_path, "first") == "played"
        first = decode_command(spy[-1])
        assert first.sig is not None
        old_kid = first.sig.kid
        # Rotate: new key file on the box first, then switch the controller over.
        with Session(engine) as s:
            keys.rotate(s, "lb-01", ADMIN, keystore=keystore)
            s.flush()
            keys.export(s, "luc-binh", "lb-01", box / "keys.json", ADMIN, keystore=keystore)
            s.commit()
        assert _broadcast(controller, tmp_path, "during") == "played"
        with Session(engine) as s:
            new_kid = keys.activate(s, "lb-01", ADMIN).kid
            s.commit()
        assert controller.dispatcher is not None
        controller.dispatcher.signer.refresh_s = 0  # see the activation at once
        assert _broadcast(controller, tmp_path, "after") == "played"
        last = decode_command(spy[-1])
        assert last.sig is not None and last.sig.kid == new_kid != old_kid
    finally:
        agent.stop()
        engine.dispose()


def test_box_with_a_key_refuses_an_unsigned_controller(
    controller: Controller, mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    # The box was given a key but the controller has none for it (e.g. a restored DB).
    from firmware_bridge.keys import KeyEntry, new_secret, write_key_file

    box = tmp_path / "box"
    write_key_file(box / "keys.json", "luc-binh", "lb-01", [KeyEntry("k1", new_secret())])
    sink = SimulatedSink(time_scale=0.25)
    agent = ClusterAgent(
        AgentConfig(site="luc-binh", cluster="lb-01", endpoint=mosquitto.endpoint, state_dir=box),
        sink,
    )
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        assert _broadcast(controller, tmp_path, "unsigned") == "failed"
        engine = make_engine(controller.settings.database_url)
        with Session(engine) as s:
            d = s.exec(select(Delivery)).one()
        engine.dispose()
        assert d.reason == "refused: command is not signed"
        assert sink.plays == []
    finally:
        agent.stop()


def test_unopenable_key_fails_the_command_and_sends_nothing(
    controller: Controller, mosquitto: EmbeddedBroker, tmp_path: Path, spy: list[bytes]
) -> None:
    # lb-01's key is sealed under a key store the controller does not have (lost, or the
    # database came from elsewhere): its commands must fail, never go out unsigned.
    engine = make_engine(controller.settings.database_url)
    elsewhere = Keystore(tmp_path / "elsewhere" / "keystore.key")
    box = tmp_path / "box"
    with Session(engine) as s:
        keys.issue(s, "lb-01", ADMIN, keystore=elsewhere)
        s.flush()
        keys.export(s, "luc-binh", "lb-01", box / "keys.json", ADMIN, keystore=elsewhere)
        s.commit()
    sink = SimulatedSink(time_scale=0.25)
    agent = ClusterAgent(
        AgentConfig(site="luc-binh", cluster="lb-01", endpoint=mosquitto.endpoint, state_dir=box),
        sink,
    )
    agent.start()
    try:
        assert agent.link.connected.wait(10)
        assert controller.dispatcher is not None and controller.health is not None
        assert _broadcast(controller, tmp_path, "unopenable") == "failed"
        with Session(engine) as s:
            d = s.exec(select(Delivery)).one()
        assert "not signed, so not sent" in d.reason, d.reason
        assert f"key store {controller.settings.keystore_path} is missing" in d.reason
        assert "keys reset --all --yes" in d.reason

        # The health monitor's path: a volume request fails with the same reason.
        with Session(engine) as s:
            req_id = request_control(s, "lb-01", "volume", {"volume": 10}).id
        controller.health.poke()

        def control() -> ControlRequest:
            with Session(engine) as s:
                r = s.get(ControlRequest, req_id)
                assert r is not None
                return r

        assert wait_until(lambda: control().state == ControlState.FAILED.value, 20)
        assert "not signed, so not sent" in control().reason
        assert "is missing" in control().reason
        assert spy == [], "a command went out although its key could not be opened"
        assert sink.plays == []
    finally:
        agent.stop()
        engine.dispose()
