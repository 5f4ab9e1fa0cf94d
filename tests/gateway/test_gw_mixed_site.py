"""Point 3 of issue #7: a broadcast to a mixed site reaches IP and serial clusters alike.

Real mosquitto, the in-process controller on ``sites/luc-binh-mixed.toml`` (8 MQTT
clusters, 2 serial ones on gateway "hall"), a Fleet for the MQTT clusters, and the
gateway driving an emulated RS-485 bus (two receivers at addresses 1 and 2) over a real
pty, with a simulated hall audio output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import (
    FAST_RECONNECT,
    FAST_RETRANSMIT,
    HEARTBEAT_S,
    MIXED_SITE,
    active_alarms,
    health_row,
    show,
    site_with_health,
)
from sqlmodel import Session, select

from firmware_bridge.gateway import Gateway, GatewayConfig, load_gateway_site
from firmware_bridge.mcu import Command
from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.protocol import Priority
from firmware_bridge.simulator import Fleet
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broadcasts import BroadcastView, broadcast_status, create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.media import MediaStore
from loudspeaker.models import ClusterStatus, DeliveryEvent
from loudspeaker.targets import resolve_targets
from tests.conftest import load_site, make_settings
from tests.helpers import make_tone_mp3, running_fleet, wait_until

pytestmark = pytest.mark.integration

MQTT_CLUSTERS = [f"lb-{i:02d}" for i in range(1, 9)]
SERIAL = {"lb-09": 1, "lb-10": 2}
ALL = [*MQTT_CLUSTERS, *SERIAL]


@pytest.fixture
def ctl(tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker) -> Iterator[Controller]:
    load_site(sqlite_url, site_with_health(MIXED_SITE, tmp_path / "site.toml"))
    controller = Controller(make_settings(tmp_path, sqlite_url, mosquitto, ack_timeout_s=5.0))
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Fleet]:
    with running_fleet(
        MQTT_CLUSTERS, mosquitto.endpoint, tmp_path / "fleet", heartbeat_s=HEARTBEAT_S
    ) as f:
        yield f


@pytest.fixture
def bus() -> Iterator[McuEmulator]:
    with McuEmulator(addresses=tuple(SERIAL.values()), seed=9) as emu:
        yield emu


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: EmbeddedBroker, bus: McuEmulator) -> Iterator[Gateway]:
    site = load_gateway_site(MIXED_SITE, "hall", port=bus.port)
    assert {c.id: c.address for c in site.clusters} == SERIAL
    gw = Gateway(
        site,
        GatewayConfig(
            endpoint=mosquitto.endpoint,
            state_dir=tmp_path / "gateway",
            retransmit=FAST_RETRANSMIT,
            reconnect=FAST_RECONNECT,
            heartbeat_s=HEARTBEAT_S,
            sensor_cache_s=0.2,
            recheck_s=0.5,
            gather_s=0.3,
            insecure_unsigned=True,
        ),
        SimulatedSink(tmp_path / "hall-plays.jsonl", time_scale=0.25),
    )
    gw.start()
    assert gw.wait_connected(20), "gateway stand-ins did not connect"
    yield gw
    gw.stop()


def _online(ctl: Controller) -> set[str]:
    assert ctl.dispatcher is not None
    with Session(ctl.dispatcher.engine) as s:
        return {st.cluster_id for st in s.exec(select(ClusterStatus)).all() if st.online}


def _broadcast(
    ctl: Controller,
    tmp_path: Path,
    target: str,
    *,
    seconds: float = 1.0,
    priority: Priority = Priority.NORMAL,
    freq: int = 440,
) -> str:
    assert ctl.dispatcher is not None
    af = make_tone_mp3(tmp_path / f"tone-{freq}.mp3", seconds, freq)
    with Session(ctl.dispatcher.engine) as s:
        media = register_media(s, MediaStore(ctl.settings.media_dir), af)
        b = create_broadcast(
            s,
            media=media,
            title=f"thử {priority.value}",
            target=target,
            clusters=resolve_targets(s, target),
            priority=priority,
        )
    ctl.dispatcher.poke()
    return b.id


def _status(ctl: Controller, bid: str) -> BroadcastView:
    assert ctl.dispatcher is not None
    with Session(ctl.dispatcher.engine) as s:
        return broadcast_status(s, bid)


def _finished(ctl: Controller, bid: str) -> bool:
    return _status(ctl, bid).finished


def _trail(ctl: Controller, bid: str, cluster: str) -> list[str]:
    assert ctl.dispatcher is not None
    view = _status(ctl, bid)
    with Session(ctl.dispatcher.engine) as s:
        from loudspeaker.models import Delivery

        d = s.exec(
            select(Delivery).where(Delivery.broadcast_id == bid, Delivery.cluster_id == cluster)
        ).one()
        events = s.exec(select(DeliveryEvent).where(DeliveryEvent.delivery_id == d.id)).all()
    assert view.broadcast.id == bid
    return [e.state for e in sorted(events, key=lambda e: (e.at, e.id or 0))]


def _switches(bus: McuEmulator, address: int) -> list[tuple[int, ...]]:
    return [
        tuple(c.payload)
        for c in bus.executed
        if c.address == address and c.command == Command.SET_RELAY
    ]


def test_broadcast_to_all_reaches_ip_and_serial_clusters(
    ctl: Controller, fleet: Fleet, gateway: Gateway, bus: McuEmulator, tmp_path: Path
) -> None:
    assert wait_until(lambda: _online(ctl) == set(ALL), 15), _online(ctl)
    bid = _broadcast(ctl, tmp_path, "all")
    assert wait_until(lambda: _finished(ctl, bid), 30)
    view = _status(ctl, bid)
    assert view.counts == {"played": 10}, [(d.cluster, d.state, d.reason) for d in view.deliveries]
    for cluster in SERIAL:
        # The same acknowledgement states as an IP cluster, in order.
        trail = [s for s in _trail(ctl, bid, cluster) if s != "sent"]
        assert trail == ["received", "staged", "playing", "played"], trail

    # One play on the hall output, both receivers on air together.
    on_air = [a for a in gateway.hall.history if a.key[0] == bid]
    assert len(on_air) == 1, gateway.hall.history
    assert set(on_air[0].clusters) == set(SERIAL)
    assert on_air[0].result == "completed"
    hall_plays = [
        json.loads(line) for line in (tmp_path / "hall-plays.jsonl").read_text().splitlines()
    ]
    assert len(hall_plays) == 1
    for address in SERIAL.values():
        # Amplifier then line on; line then amplifier off; nothing left on.
        assert _switches(bus, address) == [(1, 1), (2, 1), (2, 0), (1, 0)]
        assert bus.unit(address).relays == [False, False]
    executed = [c for c in bus.executed if c.command == Command.SET_RELAY]
    ons = [i for i, c in enumerate(executed) if c.payload[1] == 1]
    offs = [i for i, c in enumerate(executed) if c.payload[1] == 0]
    assert max(ons) < min(offs), "a receiver was switched off before the other came on"

    # The serial clusters' health comes from their receivers.
    bus.unit(2).supply_voltage_v = 22.5
    assert wait_until(
        lambda: (
            (row := health_row(ctl, "lb-10")) is not None and row.supply_v == pytest.approx(22.5)
        ),
        10,
    )
    shown = show(ctl, "lb-10")
    assert shown["transport"] == "serial"
    assert shown["firmware"] == "1.4.2"
    assert shown["line"] == "ok"
    assert not active_alarms(ctl, "lb-09") and not active_alarms(ctl, "lb-10")


def test_a_silent_receiver_fails_alone_with_a_reason(
    ctl: Controller, fleet: Fleet, gateway: Gateway, bus: McuEmulator, tmp_path: Path
) -> None:
    assert wait_until(lambda: _online(ctl) == set(ALL), 15), _online(ctl)
    # lb-10's receiver loses power: it is no longer on the bus at all.
    dead = bus.units.pop(SERIAL["lb-10"])
    assert wait_until(lambda: "control_link" in active_alarms(ctl, "lb-10"), 10)
    assert "does not answer" in (show(ctl, "lb-10")["last_error"] or "")

    bid = _broadcast(ctl, tmp_path, "all")
    assert wait_until(lambda: _finished(ctl, bid), 30)
    view = _status(ctl, bid)
    states = {d.cluster: (d.state, d.reason) for d in view.deliveries}
    state, reason = states.pop("lb-10")
    assert state == "failed"
    assert "unit 0x02" in reason and "does not answer" in reason, reason
    assert {s for s, _ in states.values()} == {"played"}, states
    on_air = [a for a in gateway.hall.history if a.key[0] == bid]
    assert [a.clusters for a in on_air] == [("lb-09",)]
    assert not active_alarms(ctl, "lb-09")

    bus.units[SERIAL["lb-10"]] = dead
    assert wait_until(lambda: "control_link" not in active_alarms(ctl, "lb-10"), 10)


def test_unplugged_bus_fails_the_serial_clusters_only_and_replug_recovers(
    ctl: Controller, fleet: Fleet, gateway: Gateway, bus: McuEmulator, tmp_path: Path
) -> None:
    assert wait_until(lambda: _online(ctl) == set(ALL), 15), _online(ctl)
    bus.unplug()
    for cluster in SERIAL:
        assert wait_until(lambda c=cluster: "control_link" in active_alarms(ctl, c), 10)
    bid = _broadcast(ctl, tmp_path, "all")
    assert wait_until(lambda: _finished(ctl, bid), 30)
    states = {d.cluster: (d.state, d.reason) for d in _status(ctl, bid).deliveries}
    for cluster in SERIAL:
        state, reason = states.pop(cluster)
        assert state == "failed"
        assert "unplugged" in reason, reason
    assert {s for s, _ in states.values()} == {"played"}, states

    bus.replug()
    for cluster in SERIAL:
        assert wait_until(lambda c=cluster: "control_link" not in active_alarms(ctl, c), 10)
    again = _broadcast(ctl, tmp_path, "hamlet:coc-xa", freq=550)
    assert wait_until(lambda: _finished(ctl, again), 30)
    assert _status(ctl, again).counts == {"played": 2}


def test_an_emergency_on_one_serial_cluster_preempts_a_bulletin_on_the_other(
    ctl: Controller, fleet: Fleet, gateway: Gateway, bus: McuEmulator, tmp_path: Path
) -> None:
    assert wait_until(lambda: _online(ctl) == set(ALL), 15), _online(ctl)
    bulletin = _broadcast(ctl, tmp_path, "cluster:lb-09", seconds=8.0)  # 2 s at 4x
    assert wait_until(lambda: bus.unit(1).relays == [True, True], 10), "bulletin not on air"
    alarm = _broadcast(
        ctl, tmp_path, "cluster:lb-10", seconds=1.0, priority=Priority.EMERGENCY, freq=880
    )
    assert wait_until(lambda: _finished(ctl, alarm) and _finished(ctl, bulletin), 30)
    assert _status(ctl, alarm).counts == {"played": 1}
    assert _status(ctl, bulletin).counts == {"played": 1}
    # The bulletin was cut for the emergency and replayed whole afterwards.
    assert "interrupted" in _trail(ctl, bulletin, "lb-09")
    keys = [(a.key[0], a.clusters, a.result) for a in gateway.hall.history]
    assert keys == [
        (bulletin, ("lb-09",), "stopped"),
        (alarm, ("lb-10",), "completed"),
        (bulletin, ("lb-09",), "completed"),
    ], keys
