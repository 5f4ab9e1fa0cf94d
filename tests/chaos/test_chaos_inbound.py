"""One box floods the controller (status toggles, acks, deep and huge JSON) on a real
mosquitto while a real ``loudspeaker serve`` runs ten simulated clusters.

In each case an emergency given during the fault gets on air on every cluster, the
controller counts what it refused, and it keeps working afterwards. The deadlines are
scaled and generous: the 3 s budget is measured by bench/, not asserted here.

The test broker has no ACL, so the flooder simply publishes on lb-01's topics; with the
production broker (docs/security.md) only lb-01's own credentials could.

The fault injectors (:class:`Flood` and the payload makers) are plain functions so that
bench/chaos.py can reuse them.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from firmware_bridge.mqtt import BrokerEndpoint
from firmware_bridge.protocol import (
    Ack,
    AckState,
    Kind,
    Priority,
    Status,
    encode,
    new_id,
    topic,
    utcnow,
)
from firmware_bridge.simulator import Fleet
from loudspeaker.broadcasts import create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.db import make_engine
from loudspeaker.media import MediaStore
from loudspeaker.models import AlarmRecord, MediaRecord
from loudspeaker.runtime import ControllerCard
from loudspeaker.targets import resolve_targets
from tests.chaos.chaos_support import (
    CLUSTERS,
    SITE,
    ServeProcess,
    count_in,
)
from tests.conftest import load_site
from tests.helpers import make_tone_mp3, wait_event, wait_until

pytestmark = pytest.mark.integration

FLOODER = "lb-01"
ON_AIR = ["playing", "played"]
ANSWERED = ["received", "staged", *ON_AIR]


# -- fault injectors (reusable by bench/chaos.py) -------------------------------------------


class Flood:
    """Publishes ``count`` payloads from ``make(i)`` on ``topic_name`` as fast as it can.

    A context manager: the flood starts on entry and runs on its own thread, ``rate_per_s``
    messages a second; ``done`` is set when every message was handed to the client; exit
    stops it and disconnects. QoS 0: nothing the broker does slows it down.
    """

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        topic_name: str,
        make: Callable[[int], bytes],
        count: int,
        *,
        rate_per_s: float = 4_000.0,
        client_id: str = "flood",
    ) -> None:
        self.endpoint = endpoint
        self.topic_name = topic_name
        self.make = make
        self.count = count
        self.rate_per_s = rate_per_s
        self.sent = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if endpoint.username:
            self._client.username_pw_set(endpoint.username, endpoint.password)
        self._thread = threading.Thread(target=self._run, name="flood", daemon=True)

    def __enter__(self) -> Flood:
        self._client.connect(self.endpoint.host, self.endpoint.port, keepalive=30)
        self._client.loop_start()
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        for i in range(self.count):
            if i % 100 == 0:
                # Paced, as the box was (20,000 in 6 s), not as fast as Python can.
                ahead = start + i / self.rate_per_s - time.monotonic()
                if ahead > 0 and self._stop.wait(ahead):
                    return
            if self._stop.is_set():
                return
            self._client.publish(self.topic_name, self.make(i), qos=0)
            self.sent += 1
        self.done.set()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.disconnect()
        self._client.loop_stop()


def status_toggles(cluster: str) -> Callable[[int], bytes]:
    """Valid online/offline toggles of ``cluster``, ending online (an even count)."""
    payloads = [
        encode(Status(cluster=cluster, state="offline", agent="flood", reason="flood")),
        encode(Status(cluster=cluster, state="online", agent="flood")),
    ]
    return lambda i: payloads[i % 2]


def bogus_acks(cluster: str) -> Callable[[int], bytes]:
    """Valid acks of commands nobody sent, one new command id each."""
    return lambda _i: encode(
        Ack(cluster=cluster, command=new_id(), state=AckState.RECEIVED, ts=utcnow())
    )


def deep_json(depth: int = 30_000) -> bytes:
    """Arrays nested ``depth`` deep: under the 64 KiB payload limit at 30,000."""
    return b"[" * depth + b"]" * depth


def huge_json(size: int = 200_000) -> bytes:
    """A JSON document of about ``size`` bytes, past the payload limit."""
    return b'{"pad":"' + b"x" * size + b'"}'


# -- helpers ------------------------------------------------------------------------------


def _tone(engine: Engine, media_dir: Path, work: Path, freq: int) -> str:
    """Register a fresh one-second tone (before the fault: rendering is not the point)."""
    af = make_tone_mp3(work / f"tone-{freq}.mp3", 1.0, freq=freq)
    with Session(engine) as s:
        sha = register_media(s, MediaStore(media_dir), af).sha256
        s.commit()
        return sha


def _emergency(engine: Engine, sha256: str, freq: int) -> str:
    """An emergency to every cluster, as the CLI queues it."""
    with Session(engine) as s:
        media = s.get(MediaRecord, sha256)
        assert media is not None
        b = create_broadcast(
            s,
            media=media,
            title=f"chaos emergency {freq}",
            target="all",
            clusters=resolve_targets(s, "all"),
            priority=Priority.EMERGENCY,
            validity_s=600.0,
        )
        return b.id


def _metrics(card: ControllerCard) -> str:
    with urllib.request.urlopen(f"{card.http_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _dropped(card: ControllerCard, kind: str, reason: str) -> int:
    prefix = f'loudspeaker_dropped_messages_by_reason_total{{kind="{kind}",reason="{reason}"}} '
    for line in _metrics(card).splitlines():
        if line.startswith(prefix):
            return int(float(line[len(prefix) :]))
    return 0


def _flooding_alarms(engine: Engine) -> list[str]:
    with Session(engine) as s:
        rows = s.exec(
            select(AlarmRecord.cluster_id).where(
                AlarmRecord.kind == "flooding", col(AlarmRecord.cleared_at).is_(None)
            )
        ).all()
    return sorted(rows)


def _still_works(engine: Engine, card: ControllerCard, sha256: str, freq: int) -> None:
    """After the fault, another emergency reaches every box: the dispatcher still works.

    Received is enough: the boxes play it only after the first one, repeats included.
    """
    bid = _emergency(engine, sha256, freq)
    card.poke()
    assert wait_until(lambda: count_in(engine, bid, ANSWERED) == len(CLUSTERS), 30)


def _serve(tmp_path: Path, url: str, broker: EmbeddedBroker) -> tuple[ServeProcess, Engine]:
    load_site(url)
    return ServeProcess(tmp_path / "data", url, broker.endpoint.url), make_engine(url)


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "make"),
    [("status", status_toggles(FLOODER)), ("ack", bogus_acks(FLOODER))],
)
def test_a_flooding_box_cannot_delay_an_emergency(
    tmp_path: Path,
    sqlite_url: str,
    mosquitto: EmbeddedBroker,
    fleet: Fleet,
    fault: str,
    make: Callable[[int], bytes],
) -> None:
    serve, engine = _serve(tmp_path, sqlite_url, mosquitto)
    try:
        card = serve.start()
        sha = _tone(engine, tmp_path / "data" / "media", tmp_path, 700)
        kind = Kind.STATUS if fault == "status" else Kind.ACK
        flood = Flood(mosquitto.endpoint, topic(SITE, FLOODER, kind), make, 20_000)
        with flood:
            # The emergency is given while the box is still flooding.
            assert wait_until(lambda: flood.sent >= 2_000, 10)
            bid = _emergency(engine, sha, 700)
            assert not flood.done.is_set(), "the flood ended before the emergency was given"
            card.poke()
            assert wait_until(lambda: count_in(engine, bid, ON_AIR) == len(CLUSTERS), 30), (
                serve.log_tail()
            )
            assert wait_until(lambda: _flooding_alarms(engine) == [FLOODER], 15), _flooding_alarms(
                engine
            )
            assert wait_event(flood.done, 30)
        if fault == "ack":
            # Acks of commands nobody sent, past the rate limit: refused at the door.
            assert _dropped(card, "ack", "rate-limited") > 0
        # On air on lb-01 too: the flooding box's own answers to the emergency came through.
        _still_works(engine, card, sha, 710)
    finally:
        serve.stop()
        engine.dispose()


def test_deep_and_huge_json_on_an_ack_topic_are_counted_drops(
    tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker, fleet: Fleet
) -> None:
    serve, engine = _serve(tmp_path, sqlite_url, mosquitto)
    try:
        card = serve.start()
        deep, huge = deep_json(), huge_json()
        ack_topic = topic(SITE, FLOODER, Kind.ACK)
        with Flood(mosquitto.endpoint, ack_topic, lambda i: deep if i % 2 else huge, 20) as flood:
            assert wait_event(flood.done, 10)
        assert wait_until(lambda: _dropped(card, "ack", "too-deep") == 10, 15), _metrics(card)
        assert wait_until(lambda: _dropped(card, "ack", "too-large") == 10, 15), _metrics(card)
        sha = _tone(engine, tmp_path / "data" / "media", tmp_path, 730)
        bid = _emergency(engine, sha, 730)
        card.poke()
        assert wait_until(lambda: count_in(engine, bid, ON_AIR) == len(CLUSTERS), 30)
        _still_works(engine, card, sha, 731)
        serve.stop()
        log = serve.log_tail()
        full_log = (tmp_path / f"serve-{serve.starts}.log").read_text(errors="replace")
        assert "Traceback" not in full_log and "RecursionError" not in full_log, log
        # Logged once per kind of drop, not once per message.
        assert full_log.count("nested 30000 deep") == 1, log
    finally:
        serve.stop()
        engine.dispose()
