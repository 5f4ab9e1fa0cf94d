"""Overload on the inbound path without a broker: coalescing, rate limit, bounded inboxes.

The workers are built alone on a SQLite database in tmp_path, as in test_core_workers.py;
the router is fed raw MQTT payloads as the loop thread would.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from firmware_bridge.exceptions import PayloadTooDeep, PayloadTooLarge
from firmware_bridge.protocol import (
    MAX_JSON_DEPTH,
    MAX_PAYLOAD_BYTES,
    Ack,
    AckState,
    Kind,
    Status,
    decode_ack,
    encode,
    json_depth,
    topic,
)
from loudspeaker.dispatcher import Dispatcher
from loudspeaker.flooding import FloodGuard, RateLimit
from loudspeaker.health import HealthMonitor
from loudspeaker.inbound import AckIn, DropReason, Drops, InboundRouter, StatusIn
from loudspeaker.keystore import Keystore
from loudspeaker.models import AlarmRecord, ClusterAvailability, ClusterHealth, ClusterStatus
from loudspeaker.worker import EventWorker, Inbox
from tests.core_support import (
    SITE,
    RecordingLink,
    _ack,
    _broadcast,
    _deliveries,
    _status,
    dispatcher,
    engine,
    link,
)
from tests.test_core_workers import _heartbeat

__all__ = ["dispatcher", "engine", "link"]  # fixtures, used by name

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
# 30,000 nested arrays: 60,000 bytes, under the size limit.
DEEP = b"[" * 30_000 + b"]" * 30_000


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_status_flood_is_one_write_and_the_latest_status_wins(
    engine: Engine, dispatcher: Dispatcher
) -> None:
    for i in range(20_000):
        dispatcher.accept(_status("lb-01", "online" if i % 2 else "offline"))
    dispatcher.accept(_status("lb-02", "online"))
    # At most one entry per cluster and state, whatever the flood.
    assert dispatcher.backlog == 3
    dispatcher.step()
    assert dispatcher.backlog == 0
    with Session(engine) as s:
        st = s.get(ClusterStatus, "lb-01")
        assert st is not None and st.online  # the 20,000th toggle: online
        st2 = s.get(ClusterStatus, "lb-02")
        assert st2 is not None and st2.online


def test_a_reboot_queued_in_one_iteration_keeps_its_offline_spell_and_disconnect(
    engine: Engine, dispatcher: Dispatcher, link: RecordingLink, tmp_path: Path
) -> None:
    monitor = HealthMonitor(engine, link, site=SITE, keystore=Keystore(tmp_path / "keys"))
    monitor.load()
    dispatcher.accept(_status("lb-01", "online"))
    monitor.accept(_status("lb-01", "online"))
    dispatcher.step()
    monitor.step()
    # The box loses power and comes back before either worker's next iteration: the
    # broker's last will (offline) and the new online both wait in the inboxes.
    for worker in (dispatcher, monitor):
        worker.accept(_status("lb-01", "offline", reason="connection lost"))
        worker.accept(_status("lb-01", "online"))
    assert dispatcher.backlog == 2 and monitor.backlog == 2
    dispatcher.step()
    monitor.step()
    with Session(engine) as s:
        spells = s.exec(
            select(ClusterAvailability)
            .where(ClusterAvailability.cluster_id == "lb-01")
            .order_by(col(ClusterAvailability.id))
        ).all()
        st = s.get(ClusterStatus, "lb-01")
    assert [sp.online for sp in spells] == [True, False, True]
    assert spells[1].reason == "connection lost" and spells[1].ended_at is not None
    assert st is not None and st.online  # the latest still wins
    obs = monitor.observation("lb-01", datetime.now(UTC))
    assert len(obs.disconnects) == 1  # what the link_flapping rule counts
    assert obs.online is True


def test_heartbeats_are_downsampled_to_the_latest_per_cluster(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    monitor = HealthMonitor(engine, link, site=SITE, keystore=Keystore(tmp_path / "keys"))
    monitor.load()
    for seq in range(1, 1001):
        monitor.accept(_heartbeat("lb-01", seq))
    assert monitor.backlog == 1
    monitor.step()
    with Session(engine) as s:
        row = s.get(ClusterHealth, "lb-01")
        assert row is not None and (row.heartbeats, row.seq) == (1, 1000)


def test_repeated_acks_collapse_and_distinct_states_do_not(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    bid = _broadcast(engine, "lb-01")
    dispatcher.step()
    link.puback()
    d = _deliveries(engine, bid)["lb-01"]
    for _ in range(5_000):
        dispatcher.accept(_ack(d, AckState.RECEIVED))
    dispatcher.accept(_ack(d, AckState.PLAYING))
    assert dispatcher.backlog == 3  # the broker's answer, one "received", one "playing"
    dispatcher.step()
    assert _deliveries(engine, bid)["lb-01"].state == "playing"


def test_an_ack_naming_another_broadcast_never_replaces_the_genuine_one(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    bid = _broadcast(engine, "lb-01")
    dispatcher.step()
    link.puback()
    dispatcher.step()
    d = _deliveries(engine, bid)["lb-01"]
    dispatcher.accept(_ack(d, AckState.PLAYED))  # genuine
    dispatcher.accept(_ack(d, AckState.PLAYED, broadcast="b-someone-else"))  # forged after it
    assert dispatcher.backlog == 2
    dispatcher.step()
    assert _deliveries(engine, bid)["lb-01"].state == "played"


# -- bounded inbox ------------------------------------------------------------------------


def _unknown_ack(n: int, awaited: bool = False) -> AckIn:
    ack = Ack(cluster="lb-01", command=f"x{n:011d}", state=AckState.RECEIVED, ts=T0)
    return AckIn(ack, T0, awaited=awaited)


def test_a_full_inbox_refuses_what_may_be_refused_and_counts_it(dispatcher: Dispatcher) -> None:
    drops = dispatcher.drops
    dispatcher._inbound.capacity = 10
    dispatcher.accept(_status("lb-03", "offline"))
    for n in range(25):
        dispatcher.accept(_unknown_ack(n))
    assert dispatcher.backlog == 10
    assert drops.by_reason() == {("ack", "queue-full"): 16}
    # Never refused: acks of commands the dispatcher waits on, the worker's own events,
    # and status (retained, sent again only on a change: one refused would be wrong for
    # good), whether its cluster is queued already or not.
    dispatcher.accept(_unknown_ack(99, awaited=True))
    dispatcher.withdraw([1], "test")
    dispatcher.accept(_status("lb-03", "online"))
    dispatcher.accept(_status("lb-04", "online"))
    assert dispatcher.backlog == 14
    assert drops.by_reason() == {("ack", "queue-full"): 16}
    # Coalescing still bounds them: a repeat replaces its entry.
    dispatcher.accept(_status("lb-04", "online"))
    assert dispatcher.backlog == 14


def test_the_dispatcher_applies_in_slices_and_the_backlog_counts_them(
    dispatcher: Dispatcher,
) -> None:
    dispatcher.batch_max = 100
    for n in range(250):
        dispatcher.accept(_unknown_ack(n))
    dispatcher.step()
    assert dispatcher.backlog == 150
    assert dispatcher.drops.total() == 100  # unknown commands, dropped when applied
    dispatcher.step()
    dispatcher.step()
    assert dispatcher.backlog == 0
    assert dispatcher.drops.total() == 250


class _Held(EventWorker[int]):
    """A worker whose iteration waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__("held", poll_interval_s=0.05)
        self.inside = threading.Event()
        self.go = threading.Event()
        self.applied: list[int] = []

    def step(self) -> None:
        events = self._take()
        if events:
            self.inside.set()
            assert self.go.wait(10)
            self.applied += events


def test_the_backlog_counts_events_being_applied() -> None:
    worker = _Held()
    for n in range(3):
        worker._put(n)
    worker._start_thread()
    try:
        assert worker.inside.wait(10)
        # Taken off the inbox but not applied yet: still backlog.
        assert len(worker._inbound) == 0
        assert worker.backlog == 3
        worker.go.set()
    finally:
        worker.stop()
    assert worker.applied == [0, 1, 2]
    assert worker.backlog == 0


def test_an_inbox_keeps_order_and_moves_a_replaced_event_to_the_back() -> None:
    inbox: Inbox[tuple[str, int]] = Inbox(capacity=3, key=lambda e: e[0] if e[0] else None)
    for e in [("a", 1), ("", 2), ("a", 3), ("", 4)]:
        assert inbox.put(e)
    assert inbox.take(10) == [("", 2), ("a", 3), ("", 4)]


# -- rate limit ---------------------------------------------------------------------------


def test_the_bucket_admits_a_burst_then_the_rate_and_clears_after_calm() -> None:
    clock = FakeClock()
    guard = FloodGuard(RateLimit(rate_per_s=2.0, burst=10.0, calm_s=5.0), clock=clock)
    assert all(guard.admit("lb-01") for _ in range(10))
    assert guard.flooding("lb-01") is None
    assert not guard.admit("lb-01")
    why = guard.flooding("lb-01")
    assert why is not None and "over the limit of 2/s" in why
    assert guard.flooding("lb-02") is None  # another box is not affected
    assert guard.admit("lb-02")
    clock.t += 1.0  # two tokens back
    assert guard.admit("lb-01") and guard.admit("lb-01") and not guard.admit("lb-01")
    clock.t += 4.9
    assert guard.flooding_clusters() == ["lb-01"]
    clock.t += 0.2  # calm for calm_s since the last message past the limit
    assert guard.flooding("lb-01") is None
    assert guard.flooding_clusters() == []


def test_past_the_limit_only_what_cannot_be_lost_is_routed() -> None:
    clock = FakeClock()
    guard = FloodGuard(RateLimit(rate_per_s=1.0, burst=3.0), clock=clock)
    router = InboundRouter(SITE, clock=lambda: T0, flood=guard)
    router.awaits = lambda cluster, command: command == "a" * 12
    acks: list[AckIn] = []
    statuses: list[StatusIn] = []
    router.on_ack(acks.append)
    router.on_status(statuses.append)

    def ack(command: str) -> bytes:
        return encode(Ack(cluster="lb-01", command=command, state=AckState.PLAYED, ts=T0))

    for _ in range(3):
        router.on_message(topic(SITE, "lb-01", Kind.ACK), ack("u" * 12))
    assert len(acks) == 3 and router.drops.total() == 0
    # Over the limit now.
    router.on_message(topic(SITE, "lb-01", Kind.ACK), ack("u" * 12))
    router.on_message(topic(SITE, "lb-01", Kind.ACK), ack("a" * 12))
    for state in ("offline", "online", "offline"):
        status = encode(Status(cluster="lb-01", state=state, agent="sim"))
        router.on_message(topic(SITE, "lb-01", Kind.STATUS), status)
    assert router.drops.by_reason() == {("ack", "rate-limited"): 1}
    assert [a.ack.command for a in acks[3:]] == ["a" * 12]
    assert acks[3].awaited
    assert guard.flooding_clusters() == ["lb-01"]
    # Statuses past the limit are held back undecoded, the latest of each state only
    # (the newest last, so it wins), never dropped: a worker's iteration flushes them.
    assert statuses == []
    router.flush_stash()
    assert [e.status.state for e in statuses] == ["online", "offline"]
    router.flush_stash()
    assert len(statuses) == 2
    # Or the box's next message within the limit does, before itself.
    router.on_message(topic(SITE, "lb-01", Kind.STATUS), status)
    clock.t += 1.0
    online = encode(Status(cluster="lb-01", state="online", agent="sim"))
    router.on_message(topic(SITE, "lb-01", Kind.STATUS), online)
    assert [e.status.state for e in statuses] == ["online", "offline", "offline", "online"]


def test_a_flooding_box_raises_the_flooding_alarm_and_it_clears_when_calm(
    engine: Engine, link: RecordingLink, tmp_path: Path
) -> None:
    clock = FakeClock()
    guard = FloodGuard(RateLimit(rate_per_s=1.0, burst=5.0, calm_s=3.0), clock=clock)
    monitor = HealthMonitor(engine, link, site=SITE, keystore=Keystore(tmp_path / "keys"))
    monitor.load()
    monitor.flood = guard
    for _ in range(50):
        guard.admit("lb-02")
    monitor.step()

    def flooding() -> list[AlarmRecord]:
        with Session(engine) as s:
            return list(s.exec(select(AlarmRecord).where(AlarmRecord.kind == "flooding")).all())

    [alarm] = flooding()
    assert alarm.cluster_id == "lb-02" and alarm.cleared_at is None
    assert "over the limit" in alarm.message and alarm.severity == "major"
    clock.t += 3.0
    monitor.step()
    [alarm] = flooding()
    assert alarm.cleared_at is not None


# -- deep and huge JSON -------------------------------------------------------------------


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    inside = "[" * (MAX_JSON_DEPTH * 2)
    assert json_depth('{"a":"' + inside + '\\"' + inside + '","b":[[1]]}') == 3
    assert json_depth("[" * 100_000 + "]" * 100_000) == 100_000
    # Told where to stop, a flood of deep messages costs a few tokens each.
    assert json_depth("[" * 100_000 + "]" * 100_000, stop_past=MAX_JSON_DEPTH) == (
        MAX_JSON_DEPTH + 1
    )
    # Within the size limit, far past the depth limit (json.loads recursed into it before).
    with pytest.raises(PayloadTooDeep):
        decode_ack(DEEP)
    with pytest.raises(PayloadTooDeep):
        decode_ack(b"[" * 60_000)
    # 100,000 nested arrays do not even fit in a message.
    with pytest.raises(PayloadTooLarge):
        decode_ack(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(PayloadTooLarge):
        decode_ack(b" " * (MAX_PAYLOAD_BYTES + 1))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (DEEP, DropReason.TOO_DEEP),
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, DropReason.TOO_DEEP),
        (b"[" * 100_000 + b"]" * 100_000, DropReason.TOO_LARGE),
        (b'{"v":1,"pad":"' + b"x" * MAX_PAYLOAD_BYTES + b'"}', DropReason.TOO_LARGE),
    ],
)
@pytest.mark.parametrize("kind", [Kind.ACK, Kind.STATUS, Kind.HEALTH, Kind.RESULT])
def test_deep_and_huge_json_is_dropped_counted_and_logged_once_without_traceback(
    caplog: pytest.LogCaptureFixture, kind: Kind, payload: bytes, reason: DropReason
) -> None:
    drops = Drops()
    router = InboundRouter(SITE, drops=drops, clock=lambda: T0)
    got: list[object] = []
    router.on_ack(got.append)
    router.on_status(got.append)
    router.on_heartbeat(got.append)
    router.on_result(got.append)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            router.on_message(topic(SITE, "lb-01", kind), payload)
    assert got == []
    assert drops.by_reason() == {(kind.value, reason.value): 3}
    records = [r for r in caplog.records if r.name == "loudspeaker.inbound"]
    assert len(records) == 1  # a flood of them is not a flood of log lines
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None


def test_awaited_acks_are_marked_by_the_senders_record(
    engine: Engine, link: RecordingLink, dispatcher: Dispatcher
) -> None:
    bid = _broadcast(engine, "lb-01", priority="emergency")
    d = _deliveries(engine, bid)["lb-01"]
    assert not dispatcher.sender.awaits("lb-01", d.command_id)
    dispatcher.step()
    assert dispatcher.sender.awaits("lb-01", d.command_id)
    assert not dispatcher.sender.awaits("lb-02", d.command_id)
