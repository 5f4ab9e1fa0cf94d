"""The controller SIGKILLed mid-dispatch and at an air time, then restarted."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import pytest
from sqlmodel import Session

from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.db import as_utc, make_engine
from loudspeaker.models import Broadcast
from tests.chaos.chaos_support import (
    CLUSTERS,
    ServeProcess,
    assert_correct,
    count_in,
    finished,
    plays,
    queue_broadcast,
)
from tests.conftest import load_site
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


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
        assert spy.connected.wait(10)
        card = serve.start()
        bid, sha = queue_broadcast(
            engine, tmp_path / "data" / "media", tmp_path, seconds=2.0, freq=510
        )
        card.poke()
        assert killed.wait(15), serve.log_tail()
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
    try:
        card = serve.start()
        bid, sha = queue_broadcast(
            engine, tmp_path / "data" / "media", tmp_path, seconds=1.0, freq=520, air_in_s=4.0
        )
        with Session(engine) as s:
            b = s.get(Broadcast, bid)
            assert b is not None
            air = as_utc(b.scheduled_for)
            assert air is not None
        card.poke()
        assert wait_until(lambda: count_in(engine, bid, ["staged"]) == len(CLUSTERS), 15)
        assert count_in(engine, bid, ["playing", "played"]) == 0, "played before its air time"
        # The controller dies just before the air time and stays down through it.
        serve.kill()
        assert wait_until(
            lambda: all(plays(tmp_path / "fleet", c, sha) == 1 for c in CLUSTERS), 15
        ), "the clusters did not play their held item while the controller was down"
        for c in CLUSTERS:
            for line in (tmp_path / "fleet" / c / "plays.jsonl").read_text().splitlines():
                started = datetime.fromisoformat(json.loads(line)["started_at"])
                assert started >= air, f"{c} started {started} before its air time {air}"
        serve.start()
        assert wait_until(lambda: finished(engine, bid), 30), serve.log_tail()
        assert_correct(engine, bid, sha, tmp_path / "fleet")
    finally:
        serve.stop()
        engine.dispose()
