"""SerialLink over real ptys against the emulator: delivery, faults, reconnect, bus."""

from __future__ import annotations

import logging
import random
import re
import threading
import time

import pytest
import serial
from serial_support import FAST_RECONNECT, FAST_RETRANSMIT, StateLog

from firmware_bridge.backoff import Backoff
from firmware_bridge.exceptions import LinkDownError, LinkTimeoutError, NakError
from firmware_bridge.framing import Frame, FrameType, NakReason
from firmware_bridge.mcu import Command, McuClient, RelayState
from firmware_bridge.mcu_emulator import McuEmulator
from firmware_bridge.seriallink import LinkState, SerialLink
from tests.helpers import scaled, wait_until

pytestmark = pytest.mark.integration


def test_backoff_is_exponential_and_capped() -> None:
    policy = Backoff(initial=0.05, factor=2.0, cap=0.3, max_attempts=4)
    assert [policy.delay(n) for n in range(6)] == [0.05, 0.1, 0.2, 0.3, 0.3, 0.3]
    assert policy.delay(10_000) == 0.3
    assert not policy.exhausted(3)
    assert policy.exhausted(4)
    assert not Backoff(initial=1.0).exhausted(10**6)
    with pytest.raises(ValueError):
        Backoff(initial=0.0)
    with pytest.raises(ValueError):
        Backoff(initial=1.0, cap=0.5)


def test_port_is_exclusive_with_read_and_write_timeouts(
    link: SerialLink, emulator: McuEmulator
) -> None:
    port = link.serial
    assert port is not None
    assert port.exclusive is True
    assert port.timeout == link.read_timeout
    assert port.timeout is not None and port.timeout > 0
    assert port.write_timeout is not None and port.write_timeout > 0
    with pytest.raises(serial.SerialException, match="exclusively lock"):
        serial.Serial(emulator.port, timeout=0.1, write_timeout=0.1, exclusive=True)


def test_timeouts_must_be_set() -> None:
    with pytest.raises(ValueError, match="timeouts"):
        SerialLink("/dev/null", read_timeout=0)


def test_client_api_round_trip(link: SerialLink, emulator: McuEmulator) -> None:
    client = McuClient(link)
    unit = emulator.unit(1)
    assert str(client.firmware_version()) == "1.4.2"
    assert client.relays() == RelayState(False, False)
    assert client.set_relay(1, True) == RelayState(True, False)
    assert client.set_relay(2, True) == RelayState(True, True)
    assert unit.relays == [True, True]
    assert client.set_volume(65) == 65
    assert unit.volume == 65
    assert client.volume() == 65
    assert client.set_relay(1, False) == RelayState(False, True)
    assert unit.relays == [False, True]
    assert client.self_test().passed
    counters = client.link_counters()
    # Nine requests (this one included) reached the unit; any extra were
    # retransmissions answered from the cache.
    assert counters.rx_frames == 9 + counters.duplicates
    assert counters.rx_errors == 0
    assert [(c.command, c.payload) for c in emulator.executed] == [
        (Command.GET_FIRMWARE_VERSION, b""),
        (Command.GET_RELAYS, b""),
        (Command.SET_RELAY, b"\x01\x01"),
        (Command.SET_RELAY, b"\x02\x01"),
        (Command.SET_VOLUME, b"\x41"),
        (Command.GET_VOLUME, b""),
        (Command.SET_RELAY, b"\x01\x00"),
        (Command.SELF_TEST, b""),
        (Command.GET_LINK_COUNTERS, b""),
    ]


def _random_commands(client: McuClient, count: int, seed: int) -> list[tuple[int, bytes]]:
    """Issue ``count`` mixed commands; return what was sent, in order."""
    rng = random.Random(seed)
    sent: list[tuple[int, bytes]] = []
    for _ in range(count):
        choice = rng.randrange(5)
        if choice == 0:
            volume = rng.randrange(101)
            assert client.set_volume(volume) == volume
            sent.append((Command.SET_VOLUME, bytes((volume,))))
        elif choice == 1:
            relay, on = rng.choice((1, 2)), rng.random() < 0.5
            assert client.set_relay(relay, on)[relay] is on
            sent.append((Command.SET_RELAY, bytes((relay, int(on)))))
        elif choice == 2:
            client.volume()
            sent.append((Command.GET_VOLUME, b""))
        elif choice == 3:
            client.read_sensors()
            sent.append((Command.READ_SENSORS, b""))
        else:
            client.self_test()
            sent.append((Command.SELF_TEST, b""))
    return sent


def test_one_percent_corruption_both_ways_executes_exactly_what_was_sent(
    link: SerialLink, emulator: McuEmulator
) -> None:
    emulator.faults.corrupt_probability = 0.01
    client = McuClient(link)
    # Every call must succeed (an exception fails the test): all commands delivered.
    sent = _random_commands(client, 400, seed=5)
    executed = [(c.command, c.payload) for c in emulator.executed]
    # Same commands, same order, none lost, none altered, none executed twice.
    assert executed == sent
    # The test only means something if corruption really hit both directions and the
    # retransmission and duplicate paths really ran.
    stats = link.stats
    assert emulator.corrupted_bytes > 50
    assert emulator.bad_frames > 10, "requests were corrupted"
    assert stats.bad_frames > 10, "answers were corrupted"
    assert stats.retransmissions > 20
    assert emulator.unit(1).duplicates > 5
    assert stats.requests_ok == 400
    assert stats.requests_failed == 0


def test_lost_answers_are_re_answered_not_re_executed(
    link: SerialLink, emulator: McuEmulator
) -> None:
    emulator.faults.drop_response_probability = 0.3
    emulator.faults.drop_request_probability = 0.1
    sent = _random_commands(McuClient(link), 150, seed=9)
    assert [(c.command, c.payload) for c in emulator.executed] == sent
    assert emulator.unit(1).duplicates > 20


def test_no_answer_fails_after_bounded_retries(link: SerialLink, emulator: McuEmulator) -> None:
    emulator.faults.no_answer = True
    before = link.stats.frames_sent
    budget = sum(FAST_RETRANSMIT.delay(n) for n in range(10))
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError, match="after 10 attempts"):
        McuClient(link).set_volume(20)
    elapsed = time.monotonic() - started
    # It waited out every retransmission timeout (a loaded machine only adds to this);
    # "bounded" is the 10 attempts, counted on the wire below.
    assert elapsed >= budget * 0.9
    assert link.stats.frames_sent - before == 10
    assert link.state is LinkState.CONNECTED
    assert not link.alarm
    assert emulator.executed == []


def test_slow_answer_is_waited_for_and_executed_once(
    link: SerialLink, emulator: McuEmulator
) -> None:
    emulator.faults.answer_delay = 0.08  # longer than the first timeouts, below the cap
    client = McuClient(link)
    assert client.set_volume(33) == 33
    assert link.stats.retransmissions >= 1
    emulator.faults.answer_delay = 0.0
    # The next command still works even though late duplicate answers are in flight.
    assert client.set_volume(34) == 34
    assert [(c.command, c.payload) for c in emulator.executed] == [
        (Command.SET_VOLUME, b"\x21"),
        (Command.SET_VOLUME, b"\x22"),
    ]


def test_nak_is_raised_not_retried_and_not_executed(
    link: SerialLink, emulator: McuEmulator
) -> None:
    before = link.stats.frames_sent
    with pytest.raises(NakError, match="UNKNOWN_COMMAND") as unknown:
        link.request(1, 0x7E)
    assert unknown.value.reason == NakReason.UNKNOWN_COMMAND
    with pytest.raises(NakError, match="BAD_PAYLOAD") as bad:
        link.request(1, Command.SET_VOLUME, b"\x65")  # 101 %
    assert bad.value.reason == NakReason.BAD_PAYLOAD
    assert link.stats.frames_sent - before == 2
    assert emulator.executed == []
    assert emulator.unit(1).volume == 50


def test_unplug_raises_alarm_backs_off_and_reconnects(
    link: SerialLink,
    emulator: McuEmulator,
    state_log: StateLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="firmware_bridge.seriallink")
    client = McuClient(link)
    assert client.set_volume(40) == 40
    first_port = link.serial

    emulator.unplug()
    assert link.wait_for_state(LinkState.DISCONNECTED, timeout=5)
    assert link.alarm
    with pytest.raises(LinkDownError, match="unavailable"):
        client.volume()
    # Let the backoff reach its cap before the port comes back.
    assert wait_until(lambda: link.stats.open_failures >= 6, timeout=5)
    assert link.alarm

    emulator.replug()
    assert link.wait_for_state(LinkState.CONNECTED, timeout=5)
    assert not link.alarm
    assert client.volume() == 40
    port = link.serial
    assert port is not None and port is not first_port
    assert port.exclusive is True and port.timeout is not None

    assert state_log.states == [
        LinkState.CONNECTING,
        LinkState.CONNECTED,
        LinkState.DISCONNECTED,
        LinkState.CONNECTED,
    ]
    delays = [
        float(match.group(1))
        for record in caplog.records
        if (match := re.search(r"reopening .* in ([0-9.]+) s", record.getMessage()))
    ]
    expected = [FAST_RECONNECT.delay(n) for n in range(len(delays))]
    assert len(delays) >= 6
    assert delays == pytest.approx(expected, abs=0.001)
    assert delays[:5] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.16], abs=0.001)


def test_stop_wakes_a_waiting_request(link: SerialLink, emulator: McuEmulator) -> None:
    emulator.faults.no_answer = True
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            link.request(1, Command.GET_VOLUME, retransmit=Backoff(1.0, cap=1.0, max_attempts=30))
        except Exception as exc:
            outcome.append(exc)

    sent = link.stats.frames_sent
    worker = threading.Thread(target=call)
    worker.start()
    # The request is on the wire, waiting for an answer that will not come (for 30 s).
    assert wait_until(lambda: link.stats.frames_sent > sent, 5)
    link.stop()
    worker.join(timeout=scaled(10))
    assert not worker.is_alive()
    # Woken by the stop (LinkDownError), not by running out of retransmissions.
    assert len(outcome) == 1 and isinstance(outcome[0], LinkDownError), outcome
    assert link.state is LinkState.STOPPED
    with pytest.raises(LinkDownError, match="not started"):
        link.request(1, Command.GET_VOLUME)


def test_receive_loop_survives_garbage_and_failing_callbacks(emulator: McuEmulator) -> None:
    def broken_callback(_: object) -> None:
        raise RuntimeError("callback bug")

    with SerialLink(
        emulator.port,
        retransmit=FAST_RETRANSMIT,
        on_state_change=broken_callback,
        on_event=broken_callback,
    ) as link:
        assert link.wait_for_state(LinkState.CONNECTED, timeout=5)
        emulator.inject_raw(b"\x00\x07\x07\x07\x00\xff\xff\x00" + b"\x01" * 600 + b"\x00")
        emulator.inject_raw(Frame(FrameType.RESPONSE, 1, 1, 0x12, b"\x05").encode()[:-4] + b"\x00")
        emulator.send_event(1, Command.EVENT_LINE_STATE, b"\x01")
        assert wait_until(lambda: link.stats.bad_frames >= 3 and link.stats.events == 1, 5)
        assert McuClient(link).set_volume(12) == 12
        assert link.state is LinkState.CONNECTED


def test_events_are_acknowledged_and_delivered_once() -> None:
    received: list[Frame] = []
    with (
        McuEmulator(seed=3, event_retry_interval=0.02, event_max_sends=5) as emulator,
        SerialLink(emulator.port, on_event=received.append) as link,
    ):
        assert link.wait_for_state(LinkState.CONNECTED, timeout=5)
        emulator.send_event(1, Command.EVENT_LINE_STATE, b"\x01")
        assert wait_until(lambda: emulator.pending_events == 0, 5)
        assert [(f.type, f.address, f.command, f.payload) for f in received] == [
            (FrameType.EVENT, 1, Command.EVENT_LINE_STATE, b"\x01")
        ]
        sent_after_first = emulator.unit(1).tx_frames
        assert sent_after_first == 1  # acknowledged at once, not repeated

        # Lose every ACK: the unit repeats the event, the master delivers it once.
        emulator.faults.drop_request_probability = 1.0
        emulator.send_event(1, Command.EVENT_LINE_STATE, b"\x02")
        assert wait_until(lambda: emulator.pending_events == 0, 5)
        assert emulator.unit(1).tx_frames - sent_after_first == 5
        assert wait_until(lambda: link.stats.frames_sent >= 6, 5)
        assert [f.payload for f in received] == [b"\x01", b"\x02"]
        assert link.stats.events == 2


def test_multidrop_bus_addresses_and_broadcast() -> None:
    with (
        McuEmulator(addresses=(1, 2, 3), seed=4) as bus,
        SerialLink(bus.port, retransmit=FAST_RETRANSMIT) as link,
    ):
        assert link.wait_for_state(LinkState.CONNECTED, timeout=5)
        clients = {address: McuClient(link, address) for address in (1, 2, 3)}
        for address, client in clients.items():
            assert client.set_volume(10 * address) == 10 * address
        assert [bus.unit(a).volume for a in (1, 2, 3)] == [10, 20, 30]
        assert clients[2].set_relay(2, True) == RelayState(False, True)
        assert [bus.unit(a).relays for a in (1, 2, 3)] == [
            [False, False],
            [False, True],
            [False, False],
        ]

        link.broadcast(Command.SET_RELAY, b"\x01\x01", repeats=3)
        # Units answer in order, so once unit 3 answers, all broadcast copies are done.
        assert clients[3].relays() == RelayState(True, False)
        assert [bus.unit(a).relays[0] for a in (1, 2, 3)] == [True, True, True]
        broadcast_runs = [c for c in bus.executed if c.address == 0]
        assert len(broadcast_runs) == 3  # once per unit, despite three copies
        assert all(bus.unit(a).duplicates >= 2 for a in (1, 2, 3))

        with pytest.raises(LinkTimeoutError, match="unit 0x09"):
            link.request(9, Command.GET_VOLUME, retransmit=Backoff(0.02, max_attempts=2))
        with pytest.raises(ValueError, match="address"):
            link.request(0, Command.GET_VOLUME)
