"""The hall output's rules, with real receivers on an emulated RS-485 bus (real pty).

No MQTT here: each request is what a serial cluster's player hands the hall. The rules
are in ``firmware_bridge/hall.py`` and ``docs/gateway.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from gw_support import FAST_RECONNECT, FAST_RETRANSMIT

from firmware_bridge.abc import PlayResult
from firmware_bridge.exceptions import SinkError
from firmware_bridge.hall import HallOutput, HallRequest
from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.mcu_hardware import McuHardware
from firmware_bridge.seriallink import LinkState, SerialLink
from firmware_bridge.sinks import SimulatedSink
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

ADDRESSES = (1, 2, 3)


@pytest.fixture
def bus() -> Iterator[McuEmulator]:
    with McuEmulator(addresses=ADDRESSES, seed=3) as emu:
        yield emu


@pytest.fixture
def link(bus: McuEmulator) -> Iterator[SerialLink]:
    with SerialLink(bus.port, retransmit=FAST_RETRANSMIT, reconnect=FAST_RECONNECT) as lk:
        assert lk.wait_for_state(LinkState.CONNECTED, 5)
        yield lk


@pytest.fixture
def receivers(link: SerialLink) -> dict[int, McuHardware]:
    out = {}
    for address in ADDRESSES:
        hw = McuHardware(link=link, address=address, recheck_s=0.2)
        hw.start()
        out[address] = hw
    return out


@pytest.fixture
def hall(tmp_path: Path) -> Iterator[HallOutput]:
    h = HallOutput(SimulatedSink(time_scale=1.0), gather_s=0.2)
    h.start()
    yield h
    h.stop()


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    path = tmp_path / "item.audio"
    path.write_bytes(b"audio")
    return path


class Caller:
    """One cluster's player thread asking the hall to play one item."""

    def __init__(
        self,
        hall: HallOutput,
        hw: McuHardware,
        cluster: str,
        key: str,
        rank: int,
        path: Path,
        duration_s: float,
    ) -> None:
        self.stop = threading.Event()
        self.preempted: list[str] = []
        self.result: PlayResult | str | None = None

        def switch_on() -> bool:
            was = hw.relays_closed()
            if not was:
                hw.set_amplifier_power(True)
            return was

        def preempt(why: str) -> bool:
            self.preempted.append(why)
            self.stop.set()
            return True

        self.request = HallRequest(
            cluster=cluster,
            key=(key, path.name),
            rank=rank,
            path=path,
            duration_s=duration_s,
            stop=self.stop,
            switch_on=switch_on,
            switch_off=lambda: self._off(hw),
            preempt=preempt,
            title=key,
        )
        self.thread = threading.Thread(target=self._run, args=(hall,), daemon=True)
        self.thread.start()

    @staticmethod
    def _off(hw: McuHardware) -> None:
        hw.set_amplifier_power(False)

    def _run(self, hall: HallOutput) -> None:
        try:
            self.result = hall.play(self.request)
        except SinkError as exc:
            self.result = str(exc)

    def wait(self) -> PlayResult | str | None:
        self.thread.join(10)
        assert not self.thread.is_alive(), "hall never answered"
        return self.result


def test_the_same_item_for_several_clusters_plays_once(
    hall: HallOutput, receivers: dict[int, McuHardware], bus: McuEmulator, audio: Path
) -> None:
    callers = [Caller(hall, receivers[a], f"c{a}", "b1", 2, audio, 0.3) for a in ADDRESSES]
    assert wait_until(lambda: all(bus.unit(a).relays == [True, True] for a in ADDRESSES), 5)
    assert [c.wait() for c in callers] == [PlayResult.COMPLETED] * 3
    assert [(a.clusters, a.result) for a in hall.history] == [(("c1", "c2", "c3"), "completed")]
    assert all(bus.unit(a).relays == [False, False] for a in ADDRESSES)


def test_different_items_are_serialised_by_priority_then_arrival(
    hall: HallOutput, receivers: dict[int, McuHardware], bus: McuEmulator, audio: Path
) -> None:
    first = Caller(hall, receivers[1], "c1", "normal-1", 2, audio, 0.4)
    assert wait_until(lambda: bool(bus.unit(1).relays[0]), 5)
    # While the first plays: a normal item, then a priority one, for other clusters.
    later = Caller(hall, receivers[2], "c2", "normal-2", 2, audio, 0.2)
    urgent = Caller(hall, receivers[3], "c3", "priority-3", 1, audio, 0.2)
    assert [first.wait(), urgent.wait(), later.wait()] == [PlayResult.COMPLETED] * 3
    order = [a.key[0] for a in hall.history]
    assert order == ["normal-1", "priority-3", "normal-2"]
    for before, after in zip(hall.history, hall.history[1:], strict=False):
        assert before.ended <= after.started, "two items were on air at once"
    assert not first.preempted  # a priority item waits: only an emergency pre-empts


def test_an_emergency_preempts_and_a_dead_receiver_fails_alone(
    hall: HallOutput, receivers: dict[int, McuHardware], bus: McuEmulator, audio: Path
) -> None:
    bulletin = Caller(hall, receivers[1], "c1", "bulletin", 2, audio, 5.0)
    assert wait_until(lambda: bool(bus.unit(1).relays[0]), 5)
    silent = bus.units.pop(3)  # c3's receiver has lost power
    alarm = [Caller(hall, receivers[a], f"c{a}", "flood", 0, audio, 0.3) for a in (2, 3)]
    assert bulletin.wait() is PlayResult.STOPPED
    assert bulletin.preempted == ["interrupted by emergency: flood"]
    assert alarm[0].wait() is PlayResult.COMPLETED
    failed = alarm[1].wait()
    assert isinstance(failed, str)
    assert "receiver did not switch on" in failed and "unit 0x03" in failed, failed
    assert [(a.key[0], a.clusters, a.result) for a in hall.history] == [
        ("bulletin", ("c1",), "stopped"),
        ("flood", ("c2",), "completed"),
    ]
    assert bus.unit(1).relays == [False, False] and bus.unit(2).relays == [False, False]
    assert silent.relays == [False, False]


def test_a_receiver_already_on_stays_on_and_a_stopped_wait_ends(
    hall: HallOutput, receivers: dict[int, McuHardware], bus: McuEmulator, audio: Path
) -> None:
    receivers[2].set_amplifier_power(True)  # the technician's `cluster power on`
    busy = Caller(hall, receivers[1], "c1", "long", 2, audio, 1.0)
    assert wait_until(lambda: bool(bus.unit(1).relays[0]), 5)
    waiting = Caller(hall, receivers[3], "c3", "other", 2, audio, 0.2)
    waiting.stop.set()  # its player stopped it (operator) before it went on air
    assert waiting.wait() is PlayResult.STOPPED
    kept = Caller(hall, receivers[2], "c2", "other-2", 2, audio, 0.1)
    assert busy.wait() is PlayResult.COMPLETED
    assert kept.wait() is PlayResult.COMPLETED
    assert bus.unit(2).relays == [True, True]
    assert bus.unit(3).relays == [False, False]
    assert "c3" not in {c for a in hall.history for c in a.clusters}
