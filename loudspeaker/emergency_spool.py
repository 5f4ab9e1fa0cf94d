"""Emergencies the database could not take in time, kept on disk until it can.

When the database stays locked past the emergency budget (another program holds its write
lock), the emergency service writes the request here instead of losing it and tells the
user so. The controller's dispatcher records every spooled emergency at the head of its
emergency lane as soon as the database takes writes again, then sends it like any other
(loudspeaker/dispatcher.py); the file goes only once the emergency is committed.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from firmware_bridge.protocol import new_id
from loudspeaker import audit
from loudspeaker import emergency as em
from loudspeaker.db_faults import DB_ERRORS
from loudspeaker.emergency import EmergencyRequest
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.models import Broadcast, now

logger = logging.getLogger(__name__)

_SUFFIX = ".json"


@dataclass(frozen=True)
class SpooledEmergency:
    """One request as the hamlet head gave it, with who gave it and when."""

    text: str
    hamlets: tuple[str, ...]
    recording: str | None
    siren: bool
    announcement: str | None
    repeat: int
    gap_s: float
    validity_s: float
    engine: str
    actor: str
    role: str
    spooled_at: str

    def request(self) -> EmergencyRequest:
        """The request to record."""
        return EmergencyRequest(
            text=self.text,
            hamlets=tuple(self.hamlets),
            recording=Path(self.recording) if self.recording else None,
            siren=self.siren,
            announcement=self.announcement,
            repeat=self.repeat,
            gap_s=self.gap_s,
            validity_s=self.validity_s,
            engine=self.engine,
        )


def record(
    session: Session,
    data_dir: Path,
    request: EmergencyRequest,
    *,
    actor: str,
    role: str,
    via: str = "",
) -> Broadcast:
    """Record an emergency and its audit row in ``session`` (the caller commits)."""
    b = em.trigger(session, data_dir, request, created_by=actor, commit=False)
    detail: dict[str, object] = {
        "broadcast": b.id,
        "text": request.text[:200],
        "siren": request.siren,
    }
    if via:
        detail["spooled_at"] = via
    audit.record(session, actor, "emergency.trigger", request.target, detail=detail, role=role)
    return b


class EmergencySpool:
    """The spool directory (``<data>/spool/emergencies``) and what reads and writes it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "spool" / "emergencies"
        self.recorded: list[str] = []  # broadcast ids recorded from the spool, oldest first

    def put(self, request: EmergencyRequest, *, actor: str, role: str) -> Path:
        """Write one request durably (written whole, then renamed); its file."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        item = SpooledEmergency(
            text=request.text,
            hamlets=request.hamlets,
            recording=str(request.recording.resolve()) if request.recording else None,
            siren=request.siren,
            announcement=request.announcement,
            repeat=request.repeat,
            gap_s=request.gap_s,
            validity_s=request.validity_s,
            engine=request.engine,
            actor=actor,
            role=role,
            spooled_at=now().isoformat(),
        )
        # Sorted by name = given order: a time prefix, then a unique tail.
        name = f"{now().strftime('%Y%m%dT%H%M%S%f')}-{new_id()[:8]}"
        tmp = self.dir / f".{name}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(asdict(item), f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        final = self.dir / f"{name}{_SUFFIX}"
        tmp.rename(final)
        logger.warning("EMERGENCY by %s spooled in %s (database busy)", actor or "?", final)
        return final

    def pending(self) -> list[Path]:
        """Spooled requests not yet recorded, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob(f"*{_SUFFIX}"))

    def record_all(self, engine: Engine) -> list[str]:
        """Record every spooled emergency (one short transaction each); their broadcast ids.

        A database error propagates (the file stays for the next try); a request that can
        no longer be carried out (a hamlet removed meanwhile) is logged and set aside as
        ``.refused`` so it does not block the others; one older than its validity is set
        aside as ``.expired``, never played.
        """
        ids: list[str] = []
        for path in self.pending():
            try:
                item = SpooledEmergency(**json.loads(path.read_text(encoding="utf-8")))
                item = SpooledEmergency(**{**asdict(item), "hamlets": tuple(item.hamlets)})
            except (OSError, ValueError, TypeError) as exc:
                logger.error("spooled emergency %s unreadable (%s); set aside", path, exc)
                path.rename(path.with_suffix(".refused"))
                continue
            age = now() - datetime.fromisoformat(item.spooled_at)
            if age > timedelta(seconds=item.validity_s):
                # Past its validity it would warn of something long over: never play it.
                logger.error("spooled emergency %s expired unrecorded (%s old)", path, age)
                path.rename(path.with_suffix(".expired"))
                continue
            try:
                with Session(engine) as s:
                    b = record(
                        s,
                        self.data_dir,
                        item.request(),
                        actor=item.actor,
                        role=item.role,
                        via=item.spooled_at,
                    )
                    s.commit()
                    ids.append(b.id)
            except DB_ERRORS:
                raise  # the database, not the request: the file stays for the next try
            except LoudspeakerError as exc:
                logger.error("spooled emergency %s cannot be recorded: %s; set aside", path, exc)
                path.rename(path.with_suffix(".refused"))
                continue
            except Exception:
                # A bug must not block the emergency lane for every later emergency.
                logger.exception("spooled emergency %s could not be recorded; set aside", path)
                path.rename(path.with_suffix(".refused"))
                continue
            path.unlink()
            logger.warning("spooled emergency %s recorded as %s", path.name, ids[-1])
        self.recorded += ids
        return ids
