"""Creating broadcasts and reading their status, on the database.

Faces and services only insert ``queued`` deliveries here; the controller's dispatcher
sends them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import Session, col, select

from audio import RenderedAudio
from firmware_bridge.protocol import Priority, new_id
from loudspeaker.db import as_utc
from loudspeaker.exceptions import LoudspeakerError, NotFoundError
from loudspeaker.media import MediaStore
from loudspeaker.models import (
    Broadcast,
    ClusterRecord,
    ClusterStatus,
    Delivery,
    DeliveryState,
    MediaRecord,
    now,
)
from loudspeaker.repeats import check_repeats

STEPS = ("queued", "sent", "received", "staged", "playing", "played", "failed", "unreachable")


def register_media(session: Session, store: MediaStore, audio: RenderedAudio) -> MediaRecord:
    """Store the audio under its sha256 (if not already there) and record it."""
    sha, size = store.add_file(audio.path, audio.format)
    if sha != audio.sha256 or size != audio.size:
        raise LoudspeakerError(f"audio {audio.path} changed while being stored; render it again")
    rec = session.get(MediaRecord, sha)
    if rec is None:
        rec = MediaRecord(
            sha256=sha,
            size=size,
            duration_s=audio.duration_s,
            format=audio.format,
            mime=audio.mime,
            engine=audio.engine,
            created_at=now(),
        )
        session.add(rec)
    return rec


def create_broadcast(
    session: Session,
    *,
    media: MediaRecord,
    title: str,
    target: str,
    clusters: Iterable[ClusterRecord | str],
    priority: Priority = Priority.NORMAL,
    source_kind: str = "text",
    source: str = "",
    repeat: int = 1,
    gap_s: float = 0.0,
    created_by: str = "",
    announcement_id: str | None = None,
    volume: int | None = None,
    validity_s: float | None = None,
    engine: str | None = None,
    created_at: datetime | None = None,
    scheduled_for: datetime | None = None,
    state: DeliveryState = DeliveryState.QUEUED,
    reason: str = "",
    start_at: datetime | None = None,
    expires_at: datetime | None = None,
    broadcast_id: str | None = None,
    commit: bool = True,
) -> Broadcast:
    """Insert a broadcast and one delivery per cluster (records or ids), in one transaction.

    Every path that makes a broadcast comes here: the CLI and the other faces, emergencies
    and the schedule runner. The deliveries start ``queued`` (the runner may record them
    ``missed`` instead, with a ``reason``); they expire at ``expires_at``, else ``validity_s``
    after ``created_at`` (now by default), else never. ``engine`` defaults to the media's.
    ``broadcast_id`` is given when it was fixed earlier (an emergency retried or spooled).
    With ``commit=False`` the caller commits (with its audit row or slot).
    """
    check_repeats(repeat, gap_s)
    t = created_at or now()
    b = Broadcast(
        id=broadcast_id or new_id()[:12],
        title=title[:200],
        priority=priority.value,
        target=target,
        media_sha256=media.sha256,
        announcement_id=announcement_id,
        source_kind=source_kind,
        source=source,
        engine=media.engine if engine is None else engine,
        repeat=repeat,
        gap_s=gap_s,
        volume=volume,
        validity_s=validity_s,
        created_by=created_by,
        created_at=t,
        scheduled_for=scheduled_for,
    )
    # An emergency is valid for its validity from the moment it is triggered.
    if expires_at is None and validity_s:
        expires_at = t + timedelta(seconds=validity_s)
    session.add(b)
    for c in clusters:
        session.add(
            Delivery(
                broadcast_id=b.id,
                cluster_id=c if isinstance(c, str) else c.id,
                command_id=new_id(),
                state=state.value,
                reason=reason,
                queued_at=t,
                updated_at=t,
                start_at=start_at,
                expires_at=expires_at,
            )
        )
    if commit:
        session.commit()
        session.refresh(b)
    return b


@dataclass(frozen=True)
class DeliveryView:
    """One cluster's line in ``broadcast status``."""

    cluster: str
    hamlet: str
    state: str
    reason: str
    online: bool | None
    times: dict[str, datetime | None]

    def to_json(self) -> dict[str, object]:
        """JSON-ready form (times in ISO 8601 UTC)."""
        return {
            "cluster": self.cluster,
            "hamlet": self.hamlet,
            "state": self.state,
            "reason": self.reason or None,
            "online": self.online,
            "times": {k: v.isoformat() if v else None for k, v in self.times.items()},
        }


@dataclass(frozen=True)
class BroadcastView:
    """A broadcast and where it stands on every cluster."""

    broadcast: Broadcast
    media: MediaRecord | None
    deliveries: list[DeliveryView]

    @property
    def finished(self) -> bool:
        """Every delivery is in a final state."""
        return all(DeliveryState(d.state).final for d in self.deliveries)

    @property
    def counts(self) -> dict[str, int]:
        """How many clusters are in each state."""
        out: dict[str, int] = {}
        for d in self.deliveries:
            out[d.state] = out.get(d.state, 0) + 1
        return out

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        b = self.broadcast
        return {
            "id": b.id,
            "title": b.title,
            "priority": b.priority,
            "target": b.target,
            "created_by": b.created_by,
            "created_at": as_utc(b.created_at).isoformat() if b.created_at else None,  # type: ignore[union-attr]
            "media": {
                "sha256": b.media_sha256,
                "duration_s": self.media.duration_s if self.media else None,
                "size": self.media.size if self.media else None,
                "engine": b.engine,
            },
            "finished": self.finished,
            "counts": self.counts,
            "clusters": [d.to_json() for d in self.deliveries],
        }


def broadcast_status(session: Session, broadcast_id: str) -> BroadcastView:
    """The status of one broadcast; ``NotFoundError`` if there is none with that id."""
    b = session.get(Broadcast, broadcast_id)
    if b is None:
        matches = session.exec(
            select(Broadcast).where(col(Broadcast.id).startswith(broadcast_id)).limit(2)
        ).all()
        if len(matches) != 1:
            raise NotFoundError(f"no broadcast {broadcast_id!r} (see `loudspeaker broadcast list`)")
        b = matches[0]
    media = session.get(MediaRecord, b.media_sha256)
    clusters = {c.id: c for c in session.exec(select(ClusterRecord)).all()}
    statuses = {s.cluster_id: s for s in session.exec(select(ClusterStatus)).all()}
    views = []
    for d in session.exec(
        select(Delivery).where(Delivery.broadcast_id == b.id).order_by(col(Delivery.cluster_id))
    ).all():
        st = statuses.get(d.cluster_id)
        c = clusters.get(d.cluster_id)
        views.append(
            DeliveryView(
                cluster=d.cluster_id,
                hamlet=c.hamlet_id if c else "",
                state=d.state,
                reason=d.reason,
                online=st.online if st else None,
                times={step: as_utc(getattr(d, f"{step}_at")) for step in STEPS},
            )
        )
    return BroadcastView(b, media, views)


def recent_broadcasts(session: Session, limit: int = 20) -> list[Broadcast]:
    """The newest broadcasts first."""
    return list(
        session.exec(
            select(Broadcast).order_by(col(Broadcast.created_at).desc()).limit(limit)
        ).all()
    )
