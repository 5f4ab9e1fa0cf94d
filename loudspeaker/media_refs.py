"""Which stored audio the controller's media server may hand out right now.

Only what a box could be asked to fetch: the audio of a broadcast with a delivery still
under way or not yet expired, and the announcements a live (not removed, not paused)
schedule will stage. Anything else in the store (old bulletins, drafts, whatever was
uploaded and never sent) answers 404 (docs/security.md, "Media server").
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, or_
from sqlmodel import Session, col, select

from loudspeaker.models import (
    FINAL_STATES,
    Announcement,
    Broadcast,
    Delivery,
    ScheduleRecord,
    now,
)

_FINAL = [s.value for s in FINAL_STATES]


def is_referenced(session: Session, sha256: str) -> bool:
    """True when a current delivery or a live schedule uses the audio ``sha256``."""
    live = (
        select(Delivery.id)
        .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
        .where(
            col(Broadcast.media_sha256) == sha256,
            or_(col(Delivery.state).not_in(_FINAL), col(Delivery.expires_at) > now()),
        )
        .limit(1)
    )
    if session.exec(live).first() is not None:
        return True
    announcements = set(
        session.exec(
            select(Announcement.id).where(
                col(Announcement.media_sha256) == sha256, col(Announcement.removed_at).is_(None)
            )
        ).all()
    )
    if not announcements:
        return False
    schedules = session.exec(
        select(ScheduleRecord).where(
            col(ScheduleRecord.removed_at).is_(None), col(ScheduleRecord.paused).is_(False)
        )
    ).all()
    return any(
        item.get("announcement") in announcements for sched in schedules for item in sched.items
    )


class ReferencedMedia:
    """``is_referenced`` for the media server, with a short memory of positive answers.

    When a broadcast goes to a thousand boxes they all ask for the same file within
    seconds: one query answers them all. Refusals are never remembered, so a file becomes
    servable the moment its broadcast is committed.
    """

    def __init__(self, engine: Engine, remember_s: float = 5.0) -> None:
        self.engine = engine
        self.remember_s = remember_s
        self._lock = threading.Lock()
        self._yes: dict[str, float] = {}

    def __call__(self, sha256: str) -> bool:
        t = time.monotonic()
        with self._lock:
            until = self._yes.get(sha256)
            if until is not None and until > t:
                return True
        with Session(self.engine) as s:
            ok = is_referenced(s, sha256)
        if ok:
            with self._lock:
                if len(self._yes) > 1024:
                    self._yes = {k: v for k, v in self._yes.items() if v > t}
                self._yes[sha256] = t + self.remember_s
        return ok
