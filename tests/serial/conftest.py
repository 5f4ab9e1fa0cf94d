"""Fixtures for the serial suite: a real pty emulator and a SerialLink on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serial_support import FAST_RECONNECT, FAST_RETRANSMIT, StateLog

from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.seriallink import LinkState, SerialLink
from tests.process_guard import require_integration


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> Iterator[McuEmulator]:
    require_integration(request, "a pty pair (the MCU emulator)")
    with McuEmulator(seed=20240607) as emu:
        yield emu


@pytest.fixture
def state_log() -> StateLog:
    return StateLog()


@pytest.fixture
def link(emulator: McuEmulator, state_log: StateLog) -> Iterator[SerialLink]:
    serial_link = SerialLink(
        emulator.port,
        retransmit=FAST_RETRANSMIT,
        reconnect=FAST_RECONNECT,
        on_state_change=state_log,
    )
    with serial_link:
        assert serial_link.wait_for_state(LinkState.CONNECTED, timeout=5)
        yield serial_link
