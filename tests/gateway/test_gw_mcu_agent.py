"""Point 2 of issue #7: the agent drives its own microcontroller over a real pty.

A real ``ClusterAgent`` with :class:`McuHardware` talks to the MCU emulator at the far
end of a pty pair, to a real mosquitto and to the in-process controller. What the
emulator measures shows in ``loudspeaker clusters show``; its faults raise alarms; the
technician's power command moves its relays.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import (
    FAST_RECONNECT,
    FAST_RETRANSMIT,
    HEARTBEAT_S,
    PLAIN_SITE,
    active_alarms,
    alarm_history,
    cli,
    health_row,
    show,
    site_with_health,
)
from sqlmodel import Session

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.mcu import Command, LineState
from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.mcu_hardware import McuHardware
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broadcasts import broadcast_status, create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.media import MediaStore
from loudspeaker.targets import resolve_targets
from tests.conftest import load_site, make_settings
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

CLUSTER = "lb-03"


@pytest.fixture
def ctl(tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker) -> Iterator[Controller]:
    load_site(sqlite_url, site_with_health(PLAIN_SITE, tmp_path / "site.toml"))
    controller = Controller(make_settings(tmp_path, sqlite_url, mosquitto, ack_timeout_s=5.0))
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def emulator() -> Iterator[McuEmulator]:
    with McuEmulator(addresses=(1,), seed=7) as emu:
        yield emu


@pytest.fixture
def agent(
    tmp_path: Path, mosquitto: EmbeddedBroker, emulator: McuEmulator
) -> Iterator[ClusterAgent]:
    hardware = McuHardware(
        emulator.port, retransmit=FAST_RETRANSMIT, reconnect=FAST_RECONNECT, recheck_s=0.5
    )
    a = ClusterAgent(
        AgentConfig(
            site="luc-binh",
            cluster=CLUSTER,
            endpoint=mosquitto.endpoint,
            state_dir=tmp_path / "agent",
            heartbeat_s=HEARTBEAT_S,
            insecure_unsigned=True,
        ),
        SimulatedSink(time_scale=0.25),
        hardware=hardware,
    )
    a.start()
    assert a.link.connected.wait(10), "agent did not connect"
    yield a
    a.stop()


def test_telemetry_alarms_and_power_come_from_the_mcu(
    ctl: Controller, agent: ClusterAgent, emulator: McuEmulator
) -> None:
    unit = emulator.unit(1)
    unit.supply_voltage_v = 23.1
    unit.volume = 42

    def telemetry_arrived() -> bool:
        row = health_row(ctl, CLUSTER)
        return row is not None and row.supply_v == pytest.approx(23.1) and row.volume == 42

    assert wait_until(telemetry_arrived, 10), "the MCU's readings did not reach the controller"
    shown = show(ctl, CLUSTER)
    assert shown["supply_v"] == pytest.approx(23.1)
    assert shown["volume"] == 42
    assert shown["temperature_c"] == pytest.approx(30.0, abs=0.5)  # relays off: ambient
    assert shown["amp_power"] is False
    assert shown["amp_current_a"] == 0.0
    assert shown["line"] == "ok"
    assert shown["firmware"] == "1.4.2"
    assert not active_alarms(ctl, CLUSTER)

    # A cut speaker cable, as the MCU measures it.
    unit.set_line_state(LineState.OPEN)
    assert wait_until(lambda: "line_open" in active_alarms(ctl, CLUSTER), 10)
    assert show(ctl, CLUSTER)["line"] == "open"
    unit.set_line_state(LineState.OK)
    assert wait_until(lambda: "line_open" not in active_alarms(ctl, CLUSTER), 10)

    # The technician's power command moves the emulated relays, both ways.
    code, out = cli(ctl, "cluster", "power", CLUSTER, "on", "--timeout", "15")
    assert code == 0, out
    assert unit.relays == [True, True]
    assert wait_until(lambda: show(ctl, CLUSTER)["amp_power"] is True, 5)
    code, out = cli(ctl, "cluster", "power", CLUSTER, "off", "--timeout", "15")
    assert code == 0, out
    assert unit.relays == [False, False]
    assert wait_until(lambda: show(ctl, CLUSTER)["amp_current_a"] == 0.0, 5)

    # Volume and the self-test go through the MCU too.
    code, out = cli(ctl, "cluster", "volume", CLUSTER, "65", "--timeout", "15")
    assert code == 0, out
    assert unit.volume == 65


def test_unplugged_mcu_raises_the_control_link_alarm_and_replug_clears_it(
    ctl: Controller, agent: ClusterAgent, emulator: McuEmulator
) -> None:
    assert wait_until(lambda: health_row(ctl, CLUSTER) is not None, 10)
    assert wait_until(lambda: show(ctl, CLUSTER)["firmware"] == "1.4.2", 5)

    emulator.unplug()
    assert wait_until(lambda: "control_link" in active_alarms(ctl, CLUSTER), 10)
    shown = show(ctl, CLUSTER)
    assert "unavailable" in (shown["last_error"] or ""), shown["last_error"]
    assert shown["supply_v"] is None  # nothing measured while the link is down
    [alarm] = [a for a in alarm_history(ctl, CLUSTER, "control_link") if a.cleared_at is None]
    assert alarm.severity == "critical"
    assert "unplugged" in alarm.message

    emulator.replug()
    assert wait_until(lambda: "control_link" not in active_alarms(ctl, CLUSTER), 10)
    assert wait_until(lambda: show(ctl, CLUSTER)["supply_v"] == pytest.approx(24.0), 5)
    assert all(a.cleared_at is not None for a in alarm_history(ctl, CLUSTER, "control_link"))


def test_a_broadcast_closes_the_relays_for_its_duration(
    ctl: Controller, agent: ClusterAgent, emulator: McuEmulator, tmp_path: Path
) -> None:
    assert ctl.dispatcher is not None
    assert wait_until(lambda: health_row(ctl, CLUSTER) is not None, 10)
    af = make_tone_mp3(tmp_path / "tone.mp3", 0.5)
    with Session(ctl.dispatcher.engine) as s:
        media = register_media(s, MediaStore(ctl.settings.media_dir), af)
        target = f"cluster:{CLUSTER}"
        bid = create_broadcast(
            s, media=media, title="thử", target=target, clusters=resolve_targets(s, target)
        ).id
    ctl.dispatcher.poke()

    def played() -> bool:
        with Session(ctl.dispatcher.engine) as s:  # type: ignore[union-attr]
            return broadcast_status(s, bid).counts == {"played": 1}

    assert wait_until(played, 20)
    switches = [tuple(c.payload) for c in emulator.executed if c.command == Command.SET_RELAY]
    # Amplifier first, then the line; after the item, line first, then the amplifier.
    assert switches == [(1, 1), (2, 1), (2, 0), (1, 0)]
    assert emulator.unit(1).relays == [False, False]
