"""The real mosquitto SIGKILLed mid-broadcast and restarted: everyone reconnects and ends."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from firmware_bridge.mqtt import BrokerEndpoint
from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker, wait_listening
from loudspeaker.controller import Controller
from loudspeaker.db import make_engine
from tests.chaos.chaos_support import (
    CLUSTERS,
    SITE,
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


def test_external_broker_killed_and_restarted_mid_broadcast(
    tmp_path: Path, controller: Controller, fleet: Fleet, mosquitto: EmbeddedBroker
) -> None:
    assert controller.dispatcher is not None and controller.link is not None
    engine = controller.dispatcher.engine
    bid, sha = queue_broadcast(
        engine, controller.settings.media_dir, tmp_path, seconds=2.0, freq=530
    )
    controller.dispatcher.poke()
    assert wait_until(lambda: count_in(engine, bid, ["received", "staged", "playing"]) > 0, 15)
    mosquitto.kill()
    # Down long enough that clusters finish playing while nobody can hear their acks.
    assert wait_until(lambda: any(plays(tmp_path / "fleet", c, sha) for c in CLUSTERS), 15)
    assert not controller.link.connected.is_set()
    mosquitto.start()
    assert wait_until(lambda: finished(engine, bid), 40)
    assert_correct(engine, bid, sha, tmp_path / "fleet")
    assert controller.link.reconnects >= 1
    assert all(a.link.reconnects >= 1 for a in fleet.agents.values())


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def test_embedded_broker_killed_is_restarted_by_the_controller(
    tmp_path: Path, sqlite_url: str
) -> None:
    load_site(sqlite_url)
    engine = make_engine(sqlite_url)
    serve = ServeProcess(tmp_path / "data", sqlite_url, None)
    fleet: Fleet | None = None
    try:
        card = serve.start()
        endpoint = BrokerEndpoint.parse(card.broker_url)
        fleet = Fleet(SITE, CLUSTERS, endpoint, tmp_path / "fleet", time_scale=0.25)
        fleet.start()
        assert fleet.wait_connected(20)
        bid, sha = queue_broadcast(
            engine, tmp_path / "data" / "media", tmp_path, seconds=2.0, freq=540
        )
        card.poke()
        assert wait_until(lambda: count_in(engine, bid, ["received", "staged", "playing"]) > 0, 15)
        assert serve.proc is not None
        broker_pids = [p for p in _children(serve.proc.pid) if "mosquitto" in _cmd(p)]
        assert len(broker_pids) == 1, broker_pids
        os.kill(broker_pids[0], signal.SIGKILL)
        # The controller's supervisor brings it back on the same port.
        assert wait_until(
            lambda: (
                [p for p in _children(serve.proc.pid) if "mosquitto" in _cmd(p)]  # type: ignore[union-attr]
                not in ([], broker_pids)
            ),
            15,
        ), serve.log_tail()
        assert wait_listening(endpoint.host, endpoint.port, 10)
        assert wait_until(lambda: finished(engine, bid), 40), serve.log_tail()
        assert_correct(engine, bid, sha, tmp_path / "fleet")
    finally:
        if fleet is not None:
            fleet.stop()
        serve.stop()
        engine.dispose()


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
