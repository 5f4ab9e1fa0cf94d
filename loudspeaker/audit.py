"""The audit log: who did what, to what, when, and how it ended; append-only, hash-chained.

Every row carries ``hash = sha256(prev_hash || canonical(row))`` (hex), where
``canonical(row)`` is the RFC 8785 JSON of ``{seq, at, actor, role, action, target,
outcome, detail}``; the first row's ``prev_hash`` is :data:`GENESIS`. Rows are numbered
without gaps, and ``audit_head`` holds the last number and hash. Editing a row breaks its
hash; deleting one leaves a gap or breaks the next row's link; deleting the newest rows
disagrees with the head (and with any head written down elsewhere: ``audit verify --head``).

Appends are serialized by updating the head row first: that takes SQLite's write lock or
PostgreSQL's row lock, so two writers can never fork the chain.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from firmware_bridge.protocol import canonical_json
from loudspeaker.db import as_utc
from loudspeaker.models import AuditEntry, AuditHead, now

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
_HEAD_ID = 1


class Outcome:
    """The usual outcomes (free text is allowed, these keep reports consistent)."""

    OK = "ok"
    DENIED = "denied"
    FAILED = "failed"


def _at_text(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def row_hash(
    prev_hash: str,
    *,
    seq: int,
    at: datetime,
    actor: str,
    role: str,
    action: str,
    target: str,
    outcome: str,
    detail: str,
) -> str:
    """The hash of one audit row chained to ``prev_hash``."""
    body = {
        "seq": seq,
        "at": _at_text(at),
        "actor": actor,
        "role": role,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": detail,
    }
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def _ensure_head(session: Session) -> None:
    dialect = session.get_bind().dialect.name
    values = {"id": _HEAD_ID, "seq": 0, "hash": GENESIS}
    if dialect == "postgresql":
        session.execute(postgresql.insert(AuditHead).values(**values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        session.execute(sqlite.insert(AuditHead).values(**values).on_conflict_do_nothing())
    elif session.get(AuditHead, _HEAD_ID) is None:
        try:
            with session.begin_nested():
                session.execute(insert(AuditHead).values(**values))
        except IntegrityError:
            pass


def record(
    session: Session,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = Outcome.OK,
    detail: Mapping[str, Any] | None = None,
    *,
    role: str = "",
    commit: bool = False,
) -> AuditEntry:
    """Append one row in ``session``'s transaction (it commits with the action it records).

    ``action`` is a dotted name (``broadcast.create``, ``users.add``, ``keys.rotate``);
    ``detail`` must never hold a secret (tokens, keys, passwords).
    """
    # Through json first so times and ids of any type become plain strings.
    plain = json.loads(json.dumps(dict(detail or {}), default=str))
    detail_text = canonical_json(plain).decode("utf-8")
    _ensure_head(session)
    # Write first: this takes the lock that serializes appenders (see module docstring).
    session.execute(
        update(AuditHead).where(col(AuditHead.id) == _HEAD_ID).values(seq=col(AuditHead.seq) + 1)
    )
    seq, prev = session.execute(
        select(col(AuditHead.seq), col(AuditHead.hash)).where(col(AuditHead.id) == _HEAD_ID)
    ).one()
    at = now()
    h = row_hash(
        prev,
        seq=seq,
        at=at,
        actor=actor,
        role=role,
        action=action,
        target=target,
        outcome=outcome,
        detail=detail_text,
    )
    entry = AuditEntry(
        seq=seq,
        at=at,
        actor=actor,
        role=role,
        action=action,
        target=target,
        outcome=outcome,
        detail=detail_text,
        prev_hash=prev,
        hash=h,
    )
    session.add(entry)
    session.execute(update(AuditHead).where(col(AuditHead.id) == _HEAD_ID).values(hash=h))
    if commit:
        session.commit()
    logger.info("audit %d: %s %s %s -> %s", seq, actor, action, target, outcome)
    return entry


def entries(
    session: Session,
    *,
    limit: int | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> list[AuditEntry]:
    """Audit rows, newest first, optionally filtered (``action`` matches a prefix)."""
    q = select(AuditEntry).order_by(col(AuditEntry.seq).desc())
    if actor:
        q = q.where(col(AuditEntry.actor) == actor)
    if action:
        q = q.where(col(AuditEntry.action).startswith(action))
    if limit:
        q = q.limit(limit)
    return list(session.execute(q).scalars().all())


@dataclass(frozen=True)
class Verification:
    """The result of checking the chain: ``problems`` empty means intact."""

    rows: int
    head_seq: int
    head_hash: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def head(self) -> str:
        """``SEQ:HASH`` of the newest row, to write down elsewhere (``audit verify --head``)."""
        return f"{self.head_seq}:{self.head_hash}"

    def to_json(self) -> dict[str, object]:
        """What ``audit verify --json`` prints."""
        return {"ok": self.ok, "rows": self.rows, "head": self.head, "problems": self.problems}


def verify(session: Session, *, expect_head: tuple[int, str] | None = None) -> Verification:
    """Recompute the chain; report every edited, deleted or inserted row by number."""
    problems: list[str] = []
    prev = GENESIS
    expected_seq = 1
    n = 0
    hashes: dict[int, str] = {}
    for e in session.execute(select(AuditEntry).order_by(col(AuditEntry.seq))).scalars():
        n += 1
        if e.seq != expected_seq:
            problems.append(
                f"rows {expected_seq}-{e.seq - 1} are missing (deleted)"
                if e.seq > expected_seq
                else f"row {e.seq} is out of order"
            )
        if e.prev_hash != prev:
            problems.append(f"row {e.seq} does not link to the row before it")
        at = as_utc(e.at)
        assert at is not None
        recomputed = row_hash(
            e.prev_hash,
            seq=e.seq,
            at=at,
            actor=e.actor,
            role=e.role,
            action=e.action,
            target=e.target,
            outcome=e.outcome,
            detail=e.detail,
        )
        if recomputed != e.hash:
            problems.append(f"row {e.seq} was altered (its content does not match its hash)")
        hashes[e.seq] = e.hash
        prev = e.hash
        expected_seq = e.seq + 1
    head = session.get(AuditHead, _HEAD_ID)
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    if head_seq != expected_seq - 1 or head_hash != prev:
        problems.append(
            f"the newest rows are missing or the head was altered: the head says row "
            f"{head_seq}, the table ends at row {expected_seq - 1}"
        )
    if expect_head is not None:
        seq, h = expect_head
        if hashes.get(seq) != h:
            problems.append(f"row {seq} does not have the hash you recorded ({h[:12]}...)")
    return Verification(rows=n, head_seq=head_seq, head_hash=head_hash, problems=problems)


def to_json(e: AuditEntry) -> dict[str, Any]:
    """JSON-ready form of a row."""
    at = as_utc(e.at)
    return {
        "seq": e.seq,
        "at": at.isoformat() if at else None,
        "actor": e.actor,
        "role": e.role,
        "action": e.action,
        "target": e.target,
        "outcome": e.outcome,
        "detail": json.loads(e.detail or "{}"),
        "hash": e.hash,
    }
