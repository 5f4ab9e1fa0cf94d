"""Announcements: bulletins rendered once, referred to by id from broadcasts and schedules."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, col, select

import audio
from loudspeaker.audio_source import audio_settings
from loudspeaker.broadcasts import register_media
from loudspeaker.exceptions import LoudspeakerError, NotFoundError
from loudspeaker.media import MediaStore
from loudspeaker.models import (
    Announcement,
    Broadcast,
    Delivery,
    DeliveryState,
    now,
)

logger = logging.getLogger(__name__)

ProgressFn = Callable[[float], None]
# The media directory is bounded; what announcements and unfinished broadcasts use stays.
DEFAULT_MEDIA_BUDGET = 2 * 1024**3


def _new_id(session: Session) -> str:
    while True:
        candidate = secrets.token_hex(4)
        if session.get(Announcement, candidate) is None:
            return candidate


def _store(
    session: Session,
    data_dir: Path,
    rendered: audio.RenderedAudio,
    *,
    title: str,
    kind: str,
    source: str,
    created_by: str,
) -> Announcement:
    if not title.strip():
        raise LoudspeakerError("give the announcement a --title")
    media = register_media(session, MediaStore(data_dir / "media"), rendered)
    ann = Announcement(
        id=_new_id(session),
        title=title.strip()[:200],
        kind=kind,
        source=source,
        spoken_text=rendered.spoken_text or "",
        engine=rendered.engine,
        media_sha256=media.sha256,
        duration_s=rendered.duration_s,
        size=rendered.size,
        created_by=created_by,
        created_at=now(),
    )
    session.add(ann)
    session.commit()
    session.refresh(ann)
    return ann


def create_from_text(
    session: Session,
    data_dir: Path,
    text: str,
    *,
    title: str,
    engine: str = "auto",
    speed: float = 1.0,
    created_by: str = "",
    progress: ProgressFn | None = None,
) -> Announcement:
    """Render ``text`` with TTS and record it."""
    rendered = audio.render_text(
        text,
        cache_dir=data_dir / "media",
        engine=engine,
        speed=speed,
        settings=audio_settings(data_dir),
        progress=progress,
    )
    return _store(
        session, data_dir, rendered, title=title, kind="text", source=text, created_by=created_by
    )


def create_from_file(
    session: Session,
    data_dir: Path,
    path: Path,
    *,
    title: str,
    created_by: str = "",
    progress: ProgressFn | None = None,
) -> Announcement:
    """Process a recording (trim, loudness, chime, encode) and record it."""
    rendered = audio.render_recording(
        path, cache_dir=data_dir / "media", settings=audio_settings(data_dir), progress=progress
    )
    return _store(
        session,
        data_dir,
        rendered,
        title=title,
        kind="file",
        source=path.name,
        created_by=created_by,
    )


def get(session: Session, announcement_id: str) -> Announcement:
    """An announcement by id; ``NotFoundError`` naming the command that lists them."""
    ann = session.get(Announcement, announcement_id)
    if ann is None or ann.removed_at is not None:
        raise NotFoundError(
            f"no announcement {announcement_id!r} (see `loudspeaker announce list`)"
        )
    return ann


def list_all(session: Session) -> list[Announcement]:
    """Current announcements, newest first."""
    return list(
        session.exec(
            select(Announcement)
            .where(col(Announcement.removed_at).is_(None))
            .order_by(col(Announcement.created_at).desc())
        ).all()
    )


def in_use(session: Session, announcement_id: str) -> list[str]:
    """What still needs this announcement (unfinished broadcasts; schedules add theirs)."""
    active = [s.value for s in DeliveryState if not s.final]
    rows = session.exec(
        select(Broadcast.id)
        .join(Delivery, col(Delivery.broadcast_id) == col(Broadcast.id))
        .where(Broadcast.announcement_id == announcement_id, col(Delivery.state).in_(active))
        .distinct()
    ).all()
    users = [f"broadcast {r}" for r in rows]
    from loudspeaker.models import ScheduleRecord

    for rec in session.exec(
        select(ScheduleRecord).where(col(ScheduleRecord.removed_at).is_(None))
    ).all():
        if any(item.get("announcement") == announcement_id for item in rec.items):
            users.append(f"schedule {rec.id}")
    return users


def remove(session: Session, announcement_id: str) -> Announcement:
    """Mark an announcement removed (its history stays); refused while it is in use.

    The caller commits (with its audit row).
    """
    ann = get(session, announcement_id)
    users = in_use(session, announcement_id)
    if users:
        raise LoudspeakerError(
            f"announcement {announcement_id} is still needed by {', '.join(users)}"
        )
    ann.removed_at = now()
    session.add(ann)
    return ann


def needed_media(session: Session) -> set[str]:
    """SHA-256 of every file that must stay in the media directory."""
    keep = {
        a.media_sha256
        for a in session.exec(
            select(Announcement).where(col(Announcement.removed_at).is_(None))
        ).all()
    }
    active = [s.value for s in DeliveryState if not s.final]
    keep.update(
        session.exec(
            select(Broadcast.media_sha256)
            .join(Delivery, col(Delivery.broadcast_id) == col(Broadcast.id))
            .where(col(Delivery.state).in_(active))
            .distinct()
        ).all()
    )
    return keep


def prune_media(session: Session, data_dir: Path, budget: int = DEFAULT_MEDIA_BUDGET) -> int:
    """Evict least recently used media nobody needs, down to ``budget`` bytes."""
    from audio.cache import MediaCache
    from loudspeaker.emergency_spool import EmergencySpool

    needed = needed_media(session) | EmergencySpool(data_dir).media_held()
    result = MediaCache(data_dir / "media", budget).prune(needed)
    if result.evicted:
        logger.info(
            "media cache: evicted %d files (%d bytes)", len(result.evicted), result.freed_bytes
        )
    return len(result.evicted)


@dataclass(frozen=True)
class AnnouncementView:
    """An announcement as faces show it."""

    id: str
    title: str
    kind: str  # text | file
    source: str  # the text, or the original file name
    spoken_text: str
    engine: str
    duration_s: float
    sha256: str
    size: int
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, ann: Announcement) -> AnnouncementView:
        """The view of a stored announcement."""
        return cls(
            id=ann.id,
            title=ann.title,
            kind=ann.kind,
            source=ann.source,
            spoken_text=ann.spoken_text,
            engine=ann.engine,
            duration_s=ann.duration_s,
            sha256=ann.media_sha256,
            size=ann.size,
            created_by=ann.created_by,
            created_at=ann.created_at,
        )

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "source": self.source,
            "spoken_text": self.spoken_text or None,
            "engine": self.engine,
            "duration_s": round(self.duration_s, 3),
            "sha256": self.sha256,
            "size": self.size,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }
