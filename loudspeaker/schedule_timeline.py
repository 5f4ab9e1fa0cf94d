"""The timeline as shown: what the runner recorded, and the plan for the rest.

``schedule list`` (and any other face) shows one row per item: slots the controller
already staged or played, read from the database with the state of their deliveries,
then what the pure planner (:func:`schedules.timeline.build_timeline`) places in the
rest of the period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from loudspeaker.db import as_utc
from loudspeaker.models import (
    Announcement,
    Broadcast,
    ClusterClock,
    Delivery,
    ScheduleRecord,
    ScheduleSlot,
    now,
)
from loudspeaker.schedule_store import active_plans, site_context
from schedules.timeline import Placed, build_timeline


@dataclass(frozen=True)
class TimelineRow:
    """One line of ``schedule list``: an item on the timeline and how it stands."""

    start: datetime
    end: datetime
    schedule_id: int
    schedule_title: str
    announcement_id: str
    title: str
    priority: str
    target: str
    state: str  # planned | staged | playing | played | partly played | failed | missed ...
    note: str = ""
    broadcast_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601 with the site's offset)."""
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "schedule": self.schedule_id,
            "schedule_title": self.schedule_title,
            "announcement": self.announcement_id,
            "title": self.title,
            "priority": self.priority,
            "target": self.target,
            "state": self.state,
            "note": self.note or None,
            "broadcast": self.broadcast_id,
        }


def _delivery_state(states: list[str]) -> str:
    if not states:
        return "staged"
    counts = {s: states.count(s) for s in set(states)}
    n = len(states)
    if counts.get("played") == n:
        return "played"
    if counts.get("missed") == n:
        return "missed"
    if "playing" in counts:
        return "playing"
    if all(s in ("played", "failed", "unreachable", "missed") for s in states):
        if "played" in counts:
            return f"played {counts['played']}/{n}"
        return "failed"
    return "staged"


def _planned_row(
    p: Placed,
    schedule_title: str,
    rec: ScheduleRecord | None,
    zone: ZoneInfo,
    state: str,
    note: str,
) -> TimelineRow:
    return TimelineRow(
        start=p.start.astimezone(zone),
        end=p.end.astimezone(zone),
        schedule_id=p.schedule_id,
        schedule_title=schedule_title,
        announcement_id=p.announcement_id,
        title=p.title,
        priority=p.priority.value,
        target=rec.target if rec else "",
        state=state,
        note=note,
    )


SlotKey = tuple[int, datetime, int]


def _recorded_rows(
    session: Session,
    start: datetime,
    end: datetime,
    zone: ZoneInfo,
    records: dict[int | None, ScheduleRecord],
) -> tuple[list[TimelineRow], set[SlotKey]]:
    """Rows of the slots the runner recorded, and the keys of those the plan must skip."""
    slots = session.exec(
        select(ScheduleSlot).where(
            col(ScheduleSlot.planned_start) >= start - timedelta(days=1),
            col(ScheduleSlot.planned_start) < end,
        )
    ).all()
    anns = {a.id: a for a in session.exec(select(Announcement)).all()}
    rows: list[TimelineRow] = []
    seen: set[SlotKey] = set()
    for slot in slots:
        if slot.state == "withdrawn":
            continue  # replaced by the plan (or gone with its schedule)
        slot_at = as_utc(slot.slot_at)
        planned = as_utc(slot.planned_start)
        assert slot_at is not None and planned is not None
        seen.add((slot.schedule_id, slot_at, slot.position))
        if not start <= planned < end:
            continue
        rec = records.get(slot.schedule_id)
        b = session.get(Broadcast, slot.broadcast_id) if slot.broadcast_id else None
        states = (
            list(
                session.exec(
                    select(Delivery.state).where(Delivery.broadcast_id == slot.broadcast_id)
                ).all()
            )
            if slot.broadcast_id
            else []
        )
        ann = anns.get(slot.announcement_id)
        duration = (ann.duration_s if ann else 0.0) * (rec.repeat if rec else 1)
        rows.append(
            TimelineRow(
                start=planned.astimezone(zone),
                end=(planned + timedelta(seconds=duration)).astimezone(zone),
                schedule_id=slot.schedule_id,
                schedule_title=rec.title if rec else "",
                announcement_id=slot.announcement_id,
                title=ann.title if ann else slot.announcement_id,
                priority=b.priority if b else (rec.priority if rec else ""),
                target=rec.target if rec else "",
                state=slot.state if slot.state != "staged" else _delivery_state(states),
                note=slot.reason,
                broadcast_id=slot.broadcast_id,
            )
        )
    return rows, seen


def timeline_rows(
    session: Session, start: datetime, end: datetime, *, at: datetime | None = None
) -> list[TimelineRow]:
    """What plays in ``[start, end)``: recorded slots, and the plan for the rest."""
    t = at or now()
    zone = site_context(session).zone
    records = {r.id: r for r in session.exec(select(ScheduleRecord)).all()}
    rows, seen = _recorded_rows(session, start, end, zone, records)
    timeline = build_timeline(active_plans(session), start, end, zone)
    for block in timeline.blocks:
        rec = records.get(block.plan.id)
        since = as_utc(rec.active_since) if rec is not None else None
        note = f"placed after schedule {', '.join(map(str, block.after))}" if block.after else ""
        for p in block.items:
            if p.key in seen or not start <= p.start < end:
                continue
            if since is not None and p.start < t and p.slot_at < since:
                continue
            state = "planned" if p.start >= t else "not sent yet (controller down?)"
            rows.append(_planned_row(p, block.plan.title, rec, zone, state, note))
    for block in timeline.dropped:
        if not start <= block.slot_at < end:
            continue
        rec = records.get(block.plan.id)
        for p in block.items:
            if p.key in seen:
                continue
            state = "replaced" if block.replaced_by else "dropped"
            rows.append(_planned_row(p, block.plan.title, rec, zone, state, block.dropped))
    rows.sort(key=lambda r: (r.start, r.schedule_id, r.announcement_id))
    return rows


def clock_warnings(session: Session, threshold_s: float) -> list[ClusterClock]:
    """Clusters whose last estimated clock offset is over ``threshold_s``."""
    return [
        c
        for c in session.exec(select(ClusterClock).order_by(col(ClusterClock.cluster_id))).all()
        if abs(c.offset_s) > threshold_s
    ]
