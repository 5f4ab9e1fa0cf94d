"""Emergencies the database could not take in time, kept on disk until it can.

When the database stays locked past the emergency budget (another program holds its write
lock), the emergency service writes the prepared request here instead of losing it and
tells the user so. What is spooled is already complete: its audio is in the media store
(the file names its sha256, never the caller's own file, which the controller may not be
able to read), its broadcast id and its time are fixed. The controller's dispatcher
records every spooled emergency in its emergency lane as soon as the database takes writes
again (rows only, nothing rendered), then sends it like any other
(loudspeaker/dispatcher.py). Recording is idempotent on the broadcast id: a file left
behind by a crash between the commit and the unlink is not recorded twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from loudspeaker import audit
from loudspeaker import emergency as em
from loudspeaker.db_faults import DB_ERRORS
from loudspeaker.emergency import PreparedEmergency
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.models import Broadcast, now

logger = logging.getLogger(__name__)

_SUFFIX = ".json"
# Readable by the controller's group (the directory is 2770 in group mode, filemodes.py).
_FILE_MODE = 0o660


def record(
    session: Session, data_dir: Path, p: PreparedEmergency, *, actor: str, role: str, via: str = ""
) -> Broadcast:
    """Record a prepared emergency and its audit row in ``session`` (the caller commits)."""
    b = em.record(session, data_dir, p, created_by=actor)
    detail: dict[str, object] = {"broadcast": b.id, "text": p.text[:200], "source": p.source_kind}
    if via:
        detail["spooled_at"] = via
    audit.record(session, actor, "emergency.trigger", p.target, detail=detail, role=role)
    return b


class EmergencySpool:
    """The spool directory (``<data>/spool/emergencies``) and what reads and writes it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "spool" / "emergencies"

    def put(self, p: PreparedEmergency, *, actor: str, role: str) -> Path:
        """Write one prepared emergency durably (written whole, then renamed); its file.

        Raises ``OSError`` when the directory cannot be written.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        data = {"emergency": p.to_json(), "actor": actor, "role": role}
        data["spooled_at"] = now().isoformat()
        # Sorted by name = given order: the time it was given, then its id (unique).
        name = f"{p.created_at.strftime('%Y%m%dT%H%M%S%f')}-{p.broadcast_id}"
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
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

    def media_held(self) -> set[str]:
        """The audio (sha256) of spooled emergencies: it has no media row yet, and the
        cache must not evict it before the controller records them."""
        held: set[str] = set()
        for path in self.pending():
            try:
                held.add(str(json.loads(path.read_text(encoding="utf-8"))["emergency"]["sha256"]))
            except (OSError, ValueError, TypeError, KeyError):
                continue  # record_all sets an unreadable file aside
        return held

    def record_all(self, engine: Engine) -> list[str]:
        """Record every spooled emergency (one short transaction each); the broadcast ids
        recorded now.

        A database error propagates (the file stays for the next try); an ``OSError``
        propagates when the directory cannot be read. One already recorded (its broadcast
        exists) is only removed; one that can no longer be carried out (a hamlet removed
        meanwhile) is logged and set aside as ``.refused`` so it does not block the others;
        one past its validity, counted from when it was given, is set aside as
        ``.expired``, never played.
        """
        ids: list[str] = []
        for path in self.pending():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                p = PreparedEmergency.from_json(data["emergency"])
                actor, role = str(data["actor"]), str(data["role"])
                spooled_at = str(data.get("spooled_at", ""))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                logger.error("spooled emergency %s unreadable (%s); set aside", path, exc)
                _set_aside(path, ".refused")
                continue
            if now() > p.expires_at:
                # Past its validity it would warn of something long over: never play it.
                logger.error("spooled emergency %s (%s) expired unrecorded", path, p.broadcast_id)
                _set_aside(path, ".expired")
                continue
            try:
                with Session(engine) as s:
                    if s.get(Broadcast, p.broadcast_id) is not None:
                        # Committed before a crash kept the file from going: never twice.
                        logger.warning(
                            "spooled emergency %s already recorded as %s",
                            path.name,
                            p.broadcast_id,
                        )
                    else:
                        record(s, self.data_dir, p, actor=actor, role=role, via=spooled_at)
                        s.commit()
                        em.log_recorded(p, actor)
                        ids.append(p.broadcast_id)
                        logger.warning(
                            "spooled emergency %s recorded as %s", path.name, p.broadcast_id
                        )
            except DB_ERRORS:
                raise  # the database, not the request: the file stays for the next try
            except LoudspeakerError as exc:
                logger.error("spooled emergency %s cannot be recorded: %s; set aside", path, exc)
                _set_aside(path, ".refused")
                continue
            except Exception:
                # A bug must not block the emergency lane for every later emergency.
                logger.exception("spooled emergency %s could not be recorded; set aside", path)
                _set_aside(path, ".refused")
                continue
            path.unlink()
        return ids


def _set_aside(path: Path, suffix: str) -> None:
    path.rename(path.with_suffix(suffix))
