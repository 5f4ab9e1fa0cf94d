"""The protocol's answers (docs/protocol.md, issue 13), each on a real agent and a real mosquitto.

The test plays the controller with its own MQTT link and reads what the box says on
``ack`` and ``result``; the agent's simulated amplifier records every play (and the volume
it played at), so "never acted on" and "played at the volume it had" are checked directly.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.keys import KeyEntry, new_secret, write_key_file
from firmware_bridge.mqtt import MqttLink, MqttLoop
from firmware_bridge.protocol import (
    DUPLICATE_DONE,
    DUPLICATE_IN_PROGRESS,
    RESUMED_AFTER_RESTART,
    Ack,
    AckState,
    AnyCommand,
    ControlResult,
    DiagnoseCommand,
    Kind,
    MediaRef,
    PlayCommand,
    PowerCommand,
    Priority,
    RebootCommand,
    StopCommand,
    VolumeCommand,
    WithdrawCommand,
    decode_ack,
    decode_diagnose_detail,
    decode_result,
    encode,
    new_id,
    sign_command,
    topic,
    utcnow,
)
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.broadcasts import create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from loudspeaker.media import MediaServer, MediaStore
from loudspeaker.models import Delivery, DeliveryEvent
from loudspeaker.targets import resolve_targets
from tests.conftest import load_site, make_settings
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

SITE, CLUSTER = "luc-binh", "lb-01"
KEY = KeyEntry("k1", new_secret(), "2026-11-30T00:00:00Z")


def _config(state: Path, broker: EmbeddedBroker, *, keyless: bool = False) -> AgentConfig:
    kw: dict[str, Any] = {}
    if keyless and "insecure_unsigned" in {f.name for f in fields(AgentConfig)}:
        # A box without keys must be asked for explicitly once agents fail closed.
        kw["insecure_unsigned"] = True
    return AgentConfig(site=SITE, cluster=CLUSTER, endpoint=broker.endpoint, state_dir=state, **kw)


@dataclass
class Box:
    """A running agent, the test's controller link, and everything the box answered."""

    broker: EmbeddedBroker
    state: Path
    media: MediaRef
    keyless: bool
    sink: SimulatedSink
    agent: ClusterAgent
    link: MqttLink
    acks: list[Ack] = field(default_factory=list)
    results: list[ControlResult] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def play(self, seconds: float = 0.4, **kw: object) -> PlayCommand:
        t = utcnow()
        base: dict[str, object] = {
            "id": new_id(),
            "cluster": CLUSTER,
            "broadcast": new_id()[:12],
            "issued_at": t,
            "expires_at": t + timedelta(minutes=5),
            "media": self.media.model_copy(update={"duration_s": seconds}),
        }
        base.update(kw)
        return self.sign(PlayCommand.model_validate(base))

    def control(self, kind: type[AnyCommand], **kw: object) -> AnyCommand:
        t = utcnow()
        base: dict[str, object] = {
            "id": new_id(),
            "cluster": CLUSTER,
            "issued_at": t,
            "expires_at": t + timedelta(minutes=1),
        }
        base.update(kw)
        return self.sign(kind.model_validate(base))

    def sign(self, cmd: Any) -> Any:
        return cmd if self.keyless else sign_command(cmd, KEY.secret, KEY.kid)

    def send(self, cmd: AnyCommand) -> None:
        self.send_raw(encode(cmd))

    def send_raw(self, payload: bytes) -> None:
        self.link.publish(topic(SITE, CLUSTER, Kind.CMD), payload)

    def answers(self, command_id: str) -> list[Ack]:
        with self.lock:
            return [a for a in self.acks if a.command == command_id]

    def states(self, command_id: str) -> list[str]:
        return [a.state.value for a in self.answers(command_id)]

    def wait_ack(self, command_id: str, pred: Callable[[Ack], bool], timeout: float = 15) -> Ack:
        def found() -> Ack | None:
            return next((a for a in self.answers(command_id) if pred(a)), None)

        assert wait_until(lambda: found() is not None, timeout), self.answers(command_id)
        ack = found()
        assert ack is not None
        return ack

    def final(self, command_id: str, timeout: float = 15) -> Ack:
        return self.wait_ack(command_id, lambda a: a.state in ("played", "failed"), timeout)

    def result(self, command_id: str, timeout: float = 15) -> ControlResult:
        def found() -> ControlResult | None:
            with self.lock:
                return next((r for r in self.results if r.command == command_id), None)

        assert wait_until(lambda: found() is not None, timeout), f"no result for {command_id}"
        res = found()
        assert res is not None
        return res

    def start_agent(self) -> None:
        self.agent = ClusterAgent(_config(self.state, self.broker, keyless=self.keyless), self.sink)
        self.agent.start()
        assert self.agent.link.connected.wait(10)

    def restart(self) -> None:
        self.agent.stop()
        self.start_agent()
        self.sync()

    def sync(self) -> None:
        """Wait until the box's subscription is in place: a volume query it answers."""
        for _ in range(40):
            probe = self.control(VolumeCommand, volume=self.volume())
            self.send(probe)
            if wait_until(lambda p=probe: any(r.command == p.id for r in self.results), 0.5):
                return
        raise AssertionError("the agent never answered")

    def volume(self) -> int:
        v = self.agent.hardware.read_sensors().volume
        assert v is not None
        return v


def _box(tmp_path: Path, broker: EmbeddedBroker, *, keyless: bool) -> Iterator[Box]:
    store = MediaStore(tmp_path / "media")
    audio = make_tone_mp3(tmp_path / "tone.mp3", 0.4)
    sha, size = store.add_file(audio.path, "mp3")
    server = MediaServer(store, "127.0.0.1", 0, on_poke=lambda: None)
    server.start()
    media = MediaRef(
        url=f"http://127.0.0.1:{server.port}/media/{sha}.mp3", sha256=sha, size=size, duration_s=0.4
    )
    state = tmp_path / "box"
    if not keyless:
        write_key_file(state / "keys.json", SITE, CLUSTER, [KEY])
    loop = MqttLoop(name="test-controller")
    loop.start()
    acks: list[Ack] = []
    results: list[ControlResult] = []
    lock = threading.Lock()

    def on_message(topic_name: str, payload: bytes) -> None:
        with lock:
            if topic_name.endswith("/ack"):
                acks.append(decode_ack(payload))
            else:
                results.append(decode_result(payload))

    link = MqttLink(
        "test-controller",
        broker.endpoint,
        on_message=on_message,
        subscriptions=(topic(SITE, CLUSTER, Kind.ACK), topic(SITE, CLUSTER, Kind.RESULT)),
    )
    loop.add(link)
    assert link.connected.wait(10)
    sink = SimulatedSink(time_scale=0.1)
    box = Box(broker, state, media, keyless, sink, None, link, acks, results, lock)  # type: ignore[arg-type]
    box.start_agent()
    box.sync()
    yield box
    box.agent.stop()
    loop.close_link(link)
    loop.stop()
    server.stop()


@pytest.fixture
def box(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Box]:
    """A box with its signing key installed (production)."""
    yield from _box(tmp_path, mosquitto, keyless=False)


@pytest.fixture
def keyless_box(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Box]:
    """A box without keys (``--insecure-unsigned``, a bench)."""
    yield from _box(tmp_path, mosquitto, keyless=True)


# -- one signature and freshness check for every command type ------------------------------

_FUTURE = {"issued_at_s": 3600, "lifetime_s": 60}
_LONG = {"issued_at_s": 0, "lifetime_s": 30 * 24 * 3600}
_EXPIRED = {"issued_at_s": -600, "lifetime_s": 60}


def _timed(box: Box, kind: type[AnyCommand], when: dict[str, int], **kw: object) -> AnyCommand:
    t = utcnow() + timedelta(seconds=when["issued_at_s"])
    times = {"issued_at": t, "expires_at": t + timedelta(seconds=when["lifetime_s"])}
    if kind is PlayCommand:
        return box.play(**times, **kw)
    return box.control(kind, **times, **kw)


@pytest.mark.parametrize(
    ("when", "says"),
    [(_FUTURE, "refused: issued 3600 s in the future"), (_LONG, "refused: lifetime longer")],
    ids=["issued-an-hour-ahead", "30-day-lifetime"],
)
def test_a_stale_signed_volume_command_is_refused_and_not_executed(
    box: Box, when: dict[str, int], says: str
) -> None:
    before = box.volume()
    cmd = _timed(box, VolumeCommand, when, volume=13)
    box.send(cmd)
    res = box.result(cmd.id)
    assert not res.ok
    assert res.reason is not None and res.reason.startswith(says), res.reason
    assert box.volume() == before != 13
    # The refusal is journaled: a redelivery gets the same (failed) answer, still not run.
    box.send(cmd)
    assert wait_until(lambda: len([r for r in box.results if r.command == cmd.id]) == 2, 10)
    assert box.volume() == before


@pytest.mark.parametrize(
    ("kind", "extra", "topic_kind"),
    [
        (StopCommand, {}, "ack"),
        (WithdrawCommand, {"command": "c0ffee0000000001", "broadcast": "b0000001"}, "ack"),
        (VolumeCommand, {"volume": 12}, "result"),
        (PowerCommand, {"on": True}, "result"),
        (RebootCommand, {}, "result"),
        (DiagnoseCommand, {"tests": ["clock"]}, "result"),
    ],
    ids=["stop", "withdraw", "volume", "power", "reboot", "diagnose"],
)
def test_every_command_type_is_refused_from_the_future_on_its_own_topic(
    box: Box, kind: type[AnyCommand], extra: dict[str, object], topic_kind: str
) -> None:
    cmd = _timed(box, kind, _FUTURE, **extra)
    box.send(cmd)
    if topic_kind == "ack":
        ack = box.final(cmd.id)
        assert ack.state == "failed" and ack.command == cmd.id
        assert ack.reason is not None and ack.reason.startswith("refused: issued")
        assert ack.broadcast == getattr(cmd, "broadcast", None)
    else:
        res = box.result(cmd.id)
        assert not res.ok and res.type == cmd.type
        assert res.reason is not None and res.reason.startswith("refused: issued")


def test_unsigned_stop_and_withdraw_are_refused_and_nothing_stops(box: Box) -> None:
    playing = box.play(60.0)  # 6 s simulated: long enough to be cut off if a stop worked
    box.send(playing)
    box.wait_ack(playing.id, lambda a: a.state == "playing")
    t = utcnow()
    stop = StopCommand(
        id=new_id(),
        cluster=CLUSTER,
        broadcast=playing.broadcast,
        issued_at=t,
        expires_at=t + timedelta(minutes=1),
    )
    waiting = box.play(start_at=t + timedelta(minutes=2))
    box.send(waiting)
    box.wait_ack(waiting.id, lambda a: a.state == "staged")
    withdraw = WithdrawCommand(
        id=new_id(),
        cluster=CLUSTER,
        broadcast=waiting.broadcast,
        command=waiting.id,
        issued_at=t,
        expires_at=t + timedelta(minutes=1),
    )
    box.send(stop)  # unsigned: forged
    box.send(withdraw)
    for cmd in (stop, withdraw):
        ack = box.final(cmd.id)
        assert ack.state == "failed" and ack.reason == "refused: command is not signed"
        assert ack.broadcast == cmd.broadcast
    assert box.final(playing.id, timeout=30).state == "played"
    assert box.states(waiting.id) == ["received", "staged"]  # still waiting, not withdrawn


def test_an_expired_command_is_refused_quoting_its_expiry_as_sent(keyless_box: Box) -> None:
    box = keyless_box
    t = utcnow()
    cmd = box.play(issued_at=t - timedelta(minutes=10), expires_at=t - timedelta(minutes=1))
    data = json.loads(encode(cmd))
    # Written the way another controller might: a +07:00 offset, milliseconds.
    local = (t - timedelta(minutes=1)).astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Ho_Chi_Minh")
    )
    data["expires_at"] = local.isoformat(timespec="milliseconds")
    box.send_raw(json.dumps(data).encode())
    ack = box.final(cmd.id)
    assert ack.state == "failed"
    assert ack.reason == f"refused: expired at {data['expires_at']}"
    # A control command gets the same wording on its own topic.
    vol = box.control(
        VolumeCommand,
        volume=5,
        issued_at=t - timedelta(minutes=10),
        expires_at=t - timedelta(minutes=1),
    )
    box.send(vol)
    res = box.result(vol.id)
    assert not res.ok
    sent = json.loads(encode(vol))["expires_at"]
    assert res.reason == f"refused: expired at {sent}"
    assert box.sink.plays == []


# -- duplicates ----------------------------------------------------------------------------


def test_duplicates_say_in_progress_or_already_handled_and_never_play_twice(box: Box) -> None:
    long = box.play(60.0)
    box.send(long)
    box.wait_ack(long.id, lambda a: a.state == "playing")
    box.send(long)
    dup = box.wait_ack(long.id, lambda a: a.reason == DUPLICATE_IN_PROGRESS)
    assert dup.state == "playing" and dup.broadcast == long.broadcast
    assert box.final(long.id, timeout=30).state == "played"
    box.send(long)
    done = box.wait_ack(long.id, lambda a: a.reason == DUPLICATE_DONE)
    assert done.state == "played"
    assert len(box.sink.plays) == 1
    # A control command's duplicate gets its result again, marked; it does not run twice.
    vol = box.control(VolumeCommand, volume=33)
    box.send(vol)
    assert box.result(vol.id).ok
    box.send(vol)
    assert wait_until(
        lambda: any(r.command == vol.id and r.reason == DUPLICATE_DONE for r in box.results), 10
    )


def test_an_id_reused_by_another_command_type_is_never_acted_on(box: Box) -> None:
    stop = box.control(StopCommand, broadcast=None)
    box.send(stop)
    reused = box.play(id=stop.id)
    box.send(reused)
    ack = box.final(reused.id)
    assert (ack.state, ack.reason) == ("failed", DUPLICATE_DONE)
    vol = box.control(VolumeCommand, id=stop.id, volume=9)
    box.send(vol)
    assert not box.result(vol.id).ok
    assert box.sink.plays == [] and box.volume() != 9


# -- restart -------------------------------------------------------------------------------


def _reboot_command(box: Box) -> None:
    # HostHardware cannot cut the power: the agent reboots in place (restart_in_place).
    boot = box.agent.reporter.boot_id if box.agent.reporter is not None else None
    cmd = box.control(RebootCommand)
    box.send(cmd)
    assert box.result(cmd.id).ok
    assert wait_until(
        lambda: box.agent.reporter is not None and box.agent.reporter.boot_id != boot, 15
    )
    assert box.agent.link.connected.wait(10)
    box.sync()


@pytest.mark.parametrize(
    "go_down",
    [Box.restart, _reboot_command],
    ids=["process-restart", "reboot-in-place"],
)
def test_an_item_cut_off_by_a_restart_resumes_from_the_start_without_received(
    box: Box, go_down: Callable[[Box], None]
) -> None:
    cut = box.play(60.0)
    waiting = box.play(0.4, start_at=utcnow() + timedelta(seconds=3))
    box.send(cut)
    box.wait_ack(cut.id, lambda a: a.state == "playing")
    box.send(waiting)
    box.wait_ack(waiting.id, lambda a: a.state == "staged")
    with box.lock:
        mark = len(box.acks)
    go_down(box)
    assert box.final(cut.id, timeout=40).state == "played"
    assert box.final(waiting.id, timeout=40).state == "played"
    with box.lock:
        after = box.acks[mark:]
    for cmd in (cut, waiting):
        mine = [(a.state.value, a.reason) for a in after if a.command == cmd.id]
        assert "received" not in [s for s, _ in mine], mine
        # Its current state once, after connecting; then it plays from the start.
        assert mine[0] == ("staged", RESUMED_AFTER_RESTART), mine
        assert [s for s, _ in mine].count("staged") == 1, mine
        assert mine[-2:] == [("playing", None), ("played", None)], mine
    # Cut off, then played in full after the restart (the later item too): nothing twice.
    assert [p.result for p in box.sink.plays] == ["stopped", "completed", "completed"]


# -- volume after an emergency -------------------------------------------------------------


def test_the_volume_returns_to_the_boxs_own_after_an_emergency(box: Box) -> None:
    vol = box.control(VolumeCommand, volume=40)
    box.send(vol)
    assert box.result(vol.id).ok
    bulletin = box.play(60.0)
    box.send(bulletin)
    box.wait_ack(bulletin.id, lambda a: a.state == "playing")
    alarm = box.play(0.4, priority=Priority.EMERGENCY, volume=100)
    box.send(alarm)
    assert box.final(alarm.id).state == "played"
    after = box.play(0.4)
    box.send(after)
    assert box.final(bulletin.id, timeout=30).state == "played"
    assert box.final(after.id, timeout=30).state == "played"
    volumes = [(p.result, p.volume) for p in box.sink.plays]
    assert volumes == [("stopped", 40), ("completed", 100), ("completed", 40), ("completed", 40)]
    assert box.volume() == 40


# -- a box without keys ---------------------------------------------------------------------


def test_a_box_without_keys_ignores_sig(keyless_box: Box) -> None:
    box = keyless_box
    forged = sign_command(box.play(), new_secret(), "k-nobody")
    box.send(forged)
    assert box.final(forged.id).state == "played"
    vol = sign_command(box.control(VolumeCommand, volume=21), new_secret(), "k-nobody")
    box.send(vol)
    assert box.result(vol.id).ok and box.volume() == 21


# -- typed diagnose --------------------------------------------------------------------------


def test_diagnose_on_a_box_without_mcu_is_typed(keyless_box: Box) -> None:
    box = keyless_box
    cmd = box.control(DiagnoseCommand, tests=["self_test", "tone", "link", "clock"], tone_s=0.5)
    box.send(cmd)
    res = box.result(cmd.id, timeout=20)
    assert res.ok, res.reason
    detail = decode_diagnose_detail(res.detail)
    tests = detail.tests
    assert tests.self_test is not None and tests.self_test.status == "not_present"
    assert tests.self_test.reason
    assert tests.link is not None and tests.link.status == "passed"
    assert tests.link.rssi_dbm is None  # unknown: null, not a made-up number
    assert tests.clock is not None and tests.clock.box_time is not None
    assert tests.tone is not None and tests.tone.status == "passed"
    assert tests.tone.tone_a is None  # no current sensor on this box
    assert "None" not in json.dumps(res.detail)


# -- the controller: an ack must name its command's broadcast -------------------------------


def test_the_controller_drops_an_ack_naming_another_broadcast(
    tmp_path: Path, mosquitto: EmbeddedBroker, sqlite_url: str
) -> None:
    load_site(sqlite_url)
    # No box runs: the delivery waits at "sent" (a long ack timeout keeps it there).
    ctl = Controller(make_settings(tmp_path, sqlite_url, mosquitto, ack_timeout_s=300.0))
    ctl.start()
    loop = MqttLoop("forger")
    loop.start()
    forger = MqttLink("forger", mosquitto.endpoint, on_message=lambda t, p: None)
    loop.add(forger)
    try:
        dispatcher = ctl.dispatcher
        assert dispatcher is not None and forger.connected.wait(10)
        audio = make_tone_mp3(tmp_path / "tone.mp3", 0.4)
        with Session(dispatcher.engine) as s:
            media = register_media(s, MediaStore(ctl.settings.media_dir), audio)
            bid = create_broadcast(
                s,
                media=media,
                title="t",
                target="cluster:lb-01",
                clusters=resolve_targets(s, "cluster:lb-01"),
            ).id
        dispatcher.poke()

        def delivery() -> Delivery:
            with Session(dispatcher.engine) as s:
                return s.exec(select(Delivery).where(Delivery.broadcast_id == bid)).one()

        assert wait_until(lambda: delivery().state == "sent", 15)
        command_id = delivery().command_id

        def ack(state: str, broadcast: str | None) -> None:
            forged = Ack(
                cluster="lb-01",
                command=command_id,
                broadcast=broadcast,
                state=AckState(state),
                ts=utcnow(),
            )
            forger.publish(topic(SITE, "lb-01", Kind.ACK), encode(forged))

        before = dispatcher.dropped_messages
        ack("played", "b-someone-else")
        ack("played", None)
        assert wait_until(lambda: dispatcher.dropped_messages == before + 2, 10)
        ack("received", bid)  # the right broadcast is applied, so the path itself works
        assert wait_until(lambda: delivery().state == "received", 10)
        assert dispatcher.dropped_messages == before + 2
        with Session(dispatcher.engine) as s:
            trail = s.exec(
                select(DeliveryEvent).where(DeliveryEvent.delivery_id == delivery().id)
            ).all()
        assert "played" not in [e.state for e in trail]
    finally:
        loop.close_link(forger)
        loop.stop()
        ctl.stop()


# -- stop of an item the player does not hold yet --------------------------------------------


def test_a_stopped_item_still_downloading_ends_at_once_and_never_resumes(box: Box) -> None:
    # A media server that accepts the connection and never answers: the box's download of
    # the item hangs (for its 30 s download timeout) while the stop arrives.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        media = box.media.model_copy(update={"url": f"http://127.0.0.1:{port}/media/x.mp3"})
        item = box.play(media=media)
        box.send(item)
        box.wait_ack(item.id, lambda a: a.state == "received")
        box.send(box.control(StopCommand, broadcast=item.broadcast))
        # Answered now, not when the download gives up, and gone from the persistent store.
        ack = box.final(item.id, timeout=15)
        assert (ack.state, ack.reason) == ("failed", "stopped by operator before playback")
        with box.lock:
            mark = len(box.acks)
        box.restart()
        # The restarted box plays a new item; the stopped one was not resumed.
        later = box.play()
        box.send(later)
        assert box.final(later.id).state == "played"
    with box.lock:
        assert [a for a in box.acks[mark:] if a.command == item.id] == []
    assert len(box.sink.plays) == 1


def test_an_item_stopped_while_waiting_to_retry_is_answered_once(box: Box) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # Nothing listens there: the download fails and the box waits to retry it.
    media = box.media.model_copy(update={"url": f"http://127.0.0.1:{port}/media/x.mp3"})
    item = box.play(media=media)
    box.send(item)
    box.wait_ack(item.id, lambda a: a.state == "received")
    assert wait_until(lambda: item.id in box.agent._fetch_attempts, 15)
    box.send(box.control(StopCommand, broadcast=item.broadcast))
    assert box.final(item.id).reason == "stopped by operator before playback"
    # The retry timer fires later and stages the item again: what the timer runs, now.
    box.agent._stage(item, box.agent._generation)
    box.sync()
    with box.lock:
        finals = [a for a in box.acks if a.command == item.id and a.state == "failed"]
    assert len(finals) == 1, finals
    assert box.sink.plays == []
