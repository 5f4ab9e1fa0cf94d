"""The controller SIGKILLed mid-dispatch and at an air time, then restarted."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import decode_ack
from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.db import as_utc, make_engine
from loudspeaker.models import Broadcast, Delivery, now
from tests.chaos.chaos_support import (
    CLUSTERS,
    ServeProcess,
    assert_correct,
    count_in,
    finished,
    play_starts,
    plays,
    queue_broadcast,
)
from tests.conftest import load_site
from tests.helpers import wait_event, wait_until

pytestmark = pytest.mark.integration

_STAGED_OR_LATER = {"staged", "playing", "played", "interrupted", "failed"}


def test_controller_killed_between_publish_and_record_then_mid_playback(
    tmp_path: Path, db_url: str, mosquitto: EmbeddedBroker, fleet: Fleet
) -> None:
    load_site(db_url)
    engine = make_engine(db_url)
    serve = ServeProcess(tmp_path / "data", db_url, mosquitto.endpoint.url)
    # A spy on the command topics kills the controller the instant its first command
    # reaches the broker: published, but not yet recorded as sent.
    killed = threading.Event()

    def on_command(_topic: str, _payload: bytes) -> None:
        if not killed.is_set():
            killed.set()
            serve.kill()

    loop = MqttLoop("spy")
    loop.start()
    spy = MqttLink(
        "chaos-spy",
        mosquitto.endpoint,
        on_message=on_command,
        subscriptions=("loudspeaker/luc-binh/+/cmd",),
    )
    loop.add(spy)
    try:
        assert wait_event(spy.connected, 10)
        card = serve.start()
        bid, sha = queue_broadcast(
            engine, tmp_path / "data" / "media", tmp_path, seconds=2.0, freq=510
        )
        card.poke()
        assert wait_event(killed, 15), serve.log_tail()
        loop.close_link(spy)
        still_queued = count_in(engine, bid, ["queued"])
        assert still_queued > 0, "the kill came after the dispatcher recorded every send"

        # The clusters that got a command cannot fetch its audio from a dead controller:
        # they keep trying (not "failed") until it is back.
        assert not any(plays(tmp_path / "fleet", c, sha) for c in CLUSTERS)
        serve.start()
        # The restarted controller re-sends the unrecorded commands with the same ids; kill
        # it again while the answers stream in.
        assert wait_until(lambda: count_in(engine, bid, ["played"]) > 0, 20, interval=0.01)
        serve.kill()
        serve.start()
        assert wait_until(lambda: finished(engine, bid), 30), serve.log_tail()
        assert_correct(engine, bid, sha, tmp_path / "fleet")
    finally:
        loop.stop()
        serve.stop()
        engine.dispose()


def test_controller_killed_at_air_time_clusters_play_on_time(
    tmp_path: Path, db_url: str, mosquitto: EmbeddedBroker, fleet: Fleet
) -> None:
    load_site(db_url)
    engine = make_engine(db_url)
    serve = ServeProcess(tmp_path / "data", db_url, mosquitto.endpoint.url)
    # What the clusters say, straight from the broker: the controller is killed the moment
    # the last of them reports the timed item staged, however long staging took.
    acks: dict[str, str] = {}  # command id -> the latest state its cluster reported
    commands: set[str] = set()  # the timed broadcast's commands, once known
    lock = threading.Lock()
    all_staged = threading.Event()

    def check() -> None:
        if commands and all(acks.get(cmd) in _STAGED_OR_LATER for cmd in commands):
            all_staged.set()

    def on_ack(_topic: str, payload: bytes) -> None:
        ack = decode_ack(payload)
        with lock:
            acks[ack.command] = ack.state.value
            check()

    loop = MqttLoop("spy")
    loop.start()
    spy = MqttLink(
        "chaos-spy",
        mosquitto.endpoint,
        on_message=on_ack,
        subscriptions=("loudspeaker/luc-binh/+/ack",),
    )
    loop.add(spy)
    try:
        assert wait_event(spy.connected, 10)
        card = serve.start()
        # A first, untimed broadcast measures how long staging takes on this machine now;
        # the timed one airs well after that, so the kill lands before its air time even
        # when the machine is loaded.
        t0 = time.monotonic()
        warm, _ = queue_broadcast(
            engine, tmp_path / "data" / "media", tmp_path, seconds=1.0, freq=519
        )
        card.poke()
        assert wait_until(lambda: finished(engine, warm), 30), serve.log_tail()
        lead = max(4.0, 5 * (time.monotonic() - t0))
        bid, sha = queue_broadcast(
            engine, tmp_path / "data" / "media", tmp_path, seconds=1.0, freq=520, air_in_s=lead
        )
        with Session(engine) as s:
            b = s.get(Broadcast, bid)
            assert b is not None
            air = as_utc(b.scheduled_for)
            assert air is not None
            rows = s.exec(select(Delivery).where(Delivery.broadcast_id == bid)).all()
        with lock:
            commands.update(d.command_id for d in rows)
            check()  # the acks may all be in already
        card.poke()
        assert wait_event(all_staged, 30), f"not all clusters staged the item: {acks}"
        serve.kill()
        killed_at = now()
        with lock:
            early = {cmd: acks[cmd] for cmd in commands if acks[cmd] != "staged"}
        assert killed_at < air and not early, (
            f"staging took longer than the {lead:.1f} s lead: killed at {killed_at}, air time "
            f"{air}, clusters already past staged: {early}"
        )
        # The controller stays down through the air time: the clusters play on their own.
        assert wait_until(
            lambda: all(plays(tmp_path / "fleet", c, sha) == 1 for c in CLUSTERS), lead + 15
        ), "the clusters did not play their held item while the controller was down"
        for c in CLUSTERS:
            for started in play_starts(tmp_path / "fleet", c, sha):
                assert started >= air, f"{c} started {started} before its air time {air}"
        serve.start()
        assert wait_until(lambda: finished(engine, bid), 30), serve.log_tail()
        assert_correct(engine, bid, sha, tmp_path / "fleet")
    finally:
        loop.stop()
        serve.stop()
        engine.dispose()
