"""The broadcast log (nhật ký phát thanh): every broadcast, where it went, how it ended.

Read-only queries over the stored records, one SQL statement per log. A broadcast
belongs to the period of its *scheduled* time: ``Broadcast.scheduled_for`` once the
scheduler sets it, else ``Broadcast.created_at`` (a broadcast sent now is scheduled
for now). Periods are whole days in the site's zone, never UTC days.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, and_, func, select
from sqlmodel import col

from firmware_bridge.protocol import Priority
from loudspeaker.exceptions import ReportError
from loudspeaker.models import Broadcast, ClusterRecord, Delivery, HamletRecord, MediaRecord

# Outcome of one delivery as the log and the reports name it. "missed" is written by
# the scheduler (an item whose air time passed without being sent); "pending" covers
# every state that is not final yet (queued .. playing).
PLAYED = "played"
FAILED = "failed"
UNREACHABLE = "unreachable"
MISSED = "missed"
PENDING = "pending"
OUTCOMES = (PLAYED, FAILED, UNREACHABLE, MISSED, PENDING)


def outcome_of(state: str) -> str:
    """The outcome a delivery state counts as (anything not final is ``pending``)."""
    return state if state in (PLAYED, FAILED, UNREACHABLE, MISSED) else PENDING


def scheduled_time() -> ColumnElement[datetime]:
    """SQL expression: when a broadcast was meant to air (scheduled, else created)."""
    return func.coalesce(col(Broadcast.scheduled_for), col(Broadcast.created_at))


# -- periods ---------------------------------------------------------------------------------

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(text: str, zone: ZoneInfo, *, today: date | None = None) -> date:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (in the site's zone)."""
    value = text.strip().lower()
    now_day = today or datetime.now(zone).date()
    if value == "today":
        return now_day
    if value == "yesterday":
        return now_day - timedelta(days=1)
    if _DAY.match(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise ReportError(f"date {text!r} is not a calendar day: use YYYY-MM-DD, e.g. 2026-11-30")


def day_bounds(first: date, last: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC bounds [start, end) of the local days ``first`` .. ``last`` inclusive."""
    if last < first:
        raise ReportError(f"--to {last} is before --from {first}")
    start = datetime.combine(first, time.min, tzinfo=zone)
    end = datetime.combine(last + timedelta(days=1), time.min, tzinfo=zone)
    return start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


# -- the query -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFilter:
    """Which deliveries a log shows; build it with :func:`make_filter` (validated)."""

    start: datetime
    end: datetime
    hamlet: str | None = None
    cluster: str | None = None
    priority: str | None = None


def make_filter(
    conn: Connection,
    zone: ZoneInfo,
    *,
    date_from: str | None = None,
    date_to: str | None = None,
    hamlet: str | None = None,
    cluster: str | None = None,
    priority: str | None = None,
    today: date | None = None,
) -> LogFilter:
    """Validate the command-line filters against the site; ``ReportError`` says what to fix.

    Without dates the log covers yesterday and today (what the officer checks in the
    morning); with only ``--from`` it runs to today; with only ``--to``, that one day.
    """
    day_today = today or datetime.now(zone).date()
    last = parse_day(date_to, zone, today=day_today) if date_to else day_today
    if date_from:
        first = parse_day(date_from, zone, today=day_today)
    else:
        first = last if date_to else day_today - timedelta(days=1)
    start, end = day_bounds(first, last, zone)
    hamlet_id = None
    if hamlet is not None:
        rows = conn.execute(select(col(HamletRecord.id), col(HamletRecord.name))).all()
        match = [h for h, n in rows if hamlet == h or hamlet.casefold() == n.casefold()]
        if not match:
            known = ", ".join(f"{h} ({n})" for h, n in rows) or "none: load a site file first"
            raise ReportError(f"no hamlet {hamlet!r}; known: {known}")
        hamlet_id = match[0]
    if cluster is not None:
        known_ids = [c for (c,) in conn.execute(select(col(ClusterRecord.id))).all()]
        # A cluster removed from the site file still has history: accept it too.
        seen = conn.execute(
            select(col(Delivery.id)).where(col(Delivery.cluster_id) == cluster).limit(1)
        ).first()
        if cluster not in known_ids and seen is None:
            known = ", ".join(sorted(known_ids)) or "none: load a site file first"
            raise ReportError(f"no cluster {cluster!r}; known: {known}")
    if priority is not None and priority not in {p.value for p in Priority}:
        levels = ", ".join(p.value for p in Priority)
        raise ReportError(f"priority {priority!r} is not one of: {levels}")
    return LogFilter(start, end, hamlet_id, cluster, priority)


@dataclass(frozen=True)
class LogDelivery:
    """One broadcast on one cluster, as the log shows it."""

    cluster: str
    hamlet: str
    state: str
    outcome: str
    reason: str
    started_at: datetime | None  # first "playing" report: the actual start
    finished_at: datetime | None  # played, failed or unreachable time

    def delay_s(self, scheduled: datetime) -> float | None:
        """Seconds from the scheduled time to the actual start (None: never started)."""
        if self.started_at is None:
            return None
        return (self.started_at - scheduled).total_seconds()


@dataclass
class LogEntry:
    """One broadcast with its per-cluster deliveries."""

    id: str
    title: str
    priority: str
    target: str
    source_kind: str
    source: str
    engine: str
    duration_s: float | None
    repeat: int
    created_by: str
    created_at: datetime
    scheduled_at: datetime
    deliveries: list[LogDelivery] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """How many clusters ended in each outcome."""
        out: dict[str, int] = {}
        for d in self.deliveries:
            out[d.outcome] = out.get(d.outcome, 0) + 1
        return out

    @property
    def what(self) -> str:
        """The TTS engine for text, the file name for recordings, the tone name."""
        if self.source_kind == "text":
            return f"TTS {self.engine}" if self.engine else "TTS"
        return self.source or self.source_kind

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times in ISO 8601 UTC)."""
        return {
            "id": self.id,
            "title": self.title,
            "priority": self.priority,
            "target": self.target,
            "source_kind": self.source_kind,
            "source": self.source,
            "engine": self.engine,
            "duration_s": self.duration_s,
            "repeat": self.repeat,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "scheduled_at": self.scheduled_at.isoformat(),
            "counts": self.counts,
            "clusters": [
                {
                    "cluster": d.cluster,
                    "hamlet": d.hamlet,
                    "state": d.state,
                    "outcome": d.outcome,
                    "reason": d.reason or None,
                    "started_at": d.started_at.isoformat() if d.started_at else None,
                    "finished_at": d.finished_at.isoformat() if d.finished_at else None,
                    "delay_s": _round(d.delay_s(self.scheduled_at)),
                }
                for d in self.deliveries
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def read_log(conn: Connection, flt: LogFilter) -> list[LogEntry]:
    """Every broadcast scheduled in the filter's period, oldest first, with its deliveries."""
    when = scheduled_time().label("when")
    hamlet = col(ClusterRecord.hamlet_id)
    stmt = (
        select(
            col(Broadcast.id),
            col(Broadcast.title),
            col(Broadcast.priority),
            col(Broadcast.target),
            col(Broadcast.source_kind),
            col(Broadcast.source),
            col(Broadcast.engine),
            col(MediaRecord.duration_s),
            col(Broadcast.repeat),
            col(Broadcast.created_by),
            col(Broadcast.created_at),
            when,
            col(Delivery.cluster_id),
            hamlet,
            col(Delivery.state),
            col(Delivery.reason),
            col(Delivery.playing_at),
            col(Delivery.played_at),
            col(Delivery.failed_at),
            col(Delivery.unreachable_at),
            col(Delivery.updated_at),
        )
        .select_from(Delivery)
        .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
        .outerjoin(MediaRecord, col(MediaRecord.sha256) == col(Broadcast.media_sha256))
        .outerjoin(ClusterRecord, col(ClusterRecord.id) == col(Delivery.cluster_id))
        .where(and_(scheduled_time() >= flt.start, scheduled_time() < flt.end))
        .order_by(when, col(Broadcast.id), col(Delivery.cluster_id))
    )
    if flt.hamlet is not None:
        stmt = stmt.where(hamlet == flt.hamlet)
    if flt.cluster is not None:
        stmt = stmt.where(col(Delivery.cluster_id) == flt.cluster)
    if flt.priority is not None:
        stmt = stmt.where(col(Broadcast.priority) == flt.priority)
    entries: list[LogEntry] = []
    by_id: dict[str, LogEntry] = {}
    for r in conn.execute(stmt):
        entry = by_id.get(r[0])
        if entry is None:
            entry = LogEntry(
                id=r[0],
                title=r[1],
                priority=r[2],
                target=r[3],
                source_kind=r[4],
                source=r[5],
                engine=r[6],
                duration_s=r[7],
                repeat=r[8],
                created_by=r[9],
                created_at=r[10],
                scheduled_at=r[11],
            )
            by_id[r[0]] = entry
            entries.append(entry)
        state = r[14]
        outcome = outcome_of(state)
        finished = {PLAYED: r[17], FAILED: r[18], UNREACHABLE: r[19], MISSED: r[20]}.get(outcome)
        entry.deliveries.append(
            LogDelivery(
                cluster=r[12],
                hamlet=r[13] or "",
                state=state,
                outcome=outcome,
                reason=r[15],
                started_at=r[16],
                finished_at=finished,
            )
        )
    return entries


# -- output ----------------------------------------------------------------------------------

CSV_COLUMNS = (
    "broadcast",
    "title",
    "priority",
    "what",
    "source_kind",
    "duration_s",
    "repeat",
    "created_by",
    "target",
    "scheduled",
    "cluster",
    "hamlet",
    "actual_start",
    "delay_s",
    "finished",
    "outcome",
    "reason",
)


def _local(ts: datetime | None, zone: ZoneInfo) -> str:
    return ts.astimezone(zone).isoformat(timespec="seconds") if ts else ""


def write_log_csv(entries: Sequence[LogEntry], zone: ZoneInfo, out: TextIO) -> int:
    """One CSV row per broadcast x cluster, times in the site's zone; returns the rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for e in entries:
        for d in e.deliveries:
            delay = d.delay_s(e.scheduled_at)
            writer.writerow(
                (
                    e.id,
                    e.title,
                    e.priority,
                    e.what,
                    e.source_kind,
                    "" if e.duration_s is None else f"{e.duration_s:.1f}",
                    e.repeat,
                    e.created_by,
                    e.target,
                    _local(e.scheduled_at, zone),
                    d.cluster,
                    d.hamlet,
                    _local(d.started_at, zone),
                    "" if delay is None else f"{delay:.1f}",
                    _local(d.finished_at, zone),
                    d.outcome,
                    d.reason,
                )
            )
            n += 1
    return n
