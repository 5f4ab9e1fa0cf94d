"""What the tests of the controller's workers built alone share (no controller, no broker).

A SQLite database in tmp_path with the site loaded and one media row, a recording
publisher standing in for the MQTT link (our own publish callable, not a broker), a
dispatcher on them, and builders of typed inbound events. Test modules import the
fixtures by name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from firmware_bridge.mqtt import PublishDone
from firmware_bridge.protocol import Ack, AckState, Priority, Status, utcnow
from loudspeaker.broadcasts import create_broadcast
from loudspeaker.db import make_engine
from loudspeaker.dispatcher import Dispatcher
from loudspeaker.inbound import AckIn, StatusIn
from loudspeaker.keystore import Keystore
from loudspeaker.models import ClusterRecord, Delivery, MediaRecord
from tests.conftest import load_site

__all__ = [
    "SHA",
    "SITE",
    "RecordingLink",
    "_ack",
    "_broadcast",
    "_deliveries",
    "_status",
    "dispatcher",
    "engine",
    "link",
    "make_dispatcher",
]

SITE = "luc-binh"
SHA = "ab" * 32


@dataclass
class RecordingLink:
    """Stands in for the MQTT link: records every publish; the test answers for the broker."""

    connected: threading.Event = field(default_factory=threading.Event)
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    waiting: list[PublishDone] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.connected.set()

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: PublishDone | None = None,
    ) -> None:
        self.sent.append((topic, payload))
        if on_done is not None:
            self.waiting.append(on_done)

    def puback(self, ok: bool = True, reason: str = "") -> None:
        """The broker answers every publish so far."""
        waiting, self.waiting = self.waiting, []
        for done in waiting:
            done(ok, reason)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'data' / 'loudspeaker.db'}"
    (tmp_path / "data").mkdir()
    load_site(url)
    eng = make_engine(url)
    with Session(eng) as s:
        s.add(
            MediaRecord(
                sha256=SHA,
                size=1000,
                duration_s=2.0,
                format="mp3",
                mime="audio/mpeg",
                engine="tone",
                created_at=utcnow(),
            )
        )
        s.commit()
    yield eng
    eng.dispose()


@pytest.fixture
def link() -> RecordingLink:
    return RecordingLink()


def make_dispatcher(engine: Engine, link: RecordingLink, tmp_path: Path, **kw: Any) -> Dispatcher:
    """A dispatcher on ``engine`` publishing to ``link``, clusters loaded."""
    d = Dispatcher(
        engine,
        link,
        site=SITE,
        media_base_url="http://controller:8080/",
        ack_timeout_s=300.0,
        command_ttl_s=600.0,
        keystore=Keystore(tmp_path / "keys"),
        **kw,
    )
    d.reload_clusters()
    return d


@pytest.fixture
def dispatcher(engine: Engine, link: RecordingLink, tmp_path: Path) -> Dispatcher:
    return make_dispatcher(engine, link, tmp_path)


def _broadcast(engine: Engine, *clusters: str, priority: str = "normal") -> str:
    with Session(engine) as s:
        media = s.get(MediaRecord, SHA)
        assert media is not None
        rows = [c for c in s.exec(select(ClusterRecord)).all() if c.id in clusters]
        b = create_broadcast(
            s,
            media=media,
            title="Thông báo",
            target=",".join(f"cluster:{c}" for c in clusters),
            clusters=rows,
            priority=Priority(priority),
            validity_s=1800.0 if priority == "emergency" else None,
        )
        return b.id


def _deliveries(engine: Engine, bid: str) -> dict[str, Delivery]:
    with Session(engine) as s:
        rows = s.exec(select(Delivery).where(Delivery.broadcast_id == bid)).all()
        return {d.cluster_id: d for d in rows}


def _ack(d: Delivery, state: AckState, broadcast: str | None = None) -> AckIn:
    ack = Ack(
        cluster=d.cluster_id,
        command=d.command_id,
        broadcast=broadcast if broadcast is not None else d.broadcast_id,
        state=state,
        ts=utcnow(),
    )
    return AckIn(ack, utcnow())


def _status(cluster: str, state: str, reason: str | None = None) -> StatusIn:
    return StatusIn(Status(cluster=cluster, state=state, agent="sim", reason=reason), utcnow())
