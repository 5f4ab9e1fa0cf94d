"""Schedules in the database: what ``loudspeaker schedule`` does, and what the runner reads.

The CLI only writes schedule rows here and pokes the controller; the controller's
:class:`~schedules.runner.ScheduleRunner` is the only thing that stages broadcasts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from firmware_bridge.protocol import Priority
from loudspeaker.db import as_utc
from loudspeaker.exceptions import LoudspeakerError, NotFoundError
from loudspeaker.models import (
    Announcement,
    Broadcast,
    ClusterClock,
    Delivery,
    ScheduleRecord,
    ScheduleSlot,
    now,
)
from loudspeaker.site import current_site
from loudspeaker.targets import resolve_targets
from schedules.exceptions import ScheduleError, SpecError
from schedules.quiet import QuietHours
from schedules.spec import Recurrence
from schedules.timeline import (
    CHECK_AHEAD,
    CheckResult,
    Item,
    OnConflict,
    Placed,
    Plan,
    check_addition,
)

logger = logging.getLogger(__name__)

DEFAULT_ZONE = "Asia/Ho_Chi_Minh"


@dataclass(frozen=True)
class SiteContext:
    """The site's zone and quiet hours."""

    zone: ZoneInfo
    quiet: QuietHours | None


def site_context(session: Session) -> SiteContext:
    """Zone and quiet hours of the loaded site (``SiteError`` if none is loaded)."""
    info = current_site(session).site
    quiet = QuietHours.parse(info.quiet_hours) if info.quiet_hours else None
    return SiteContext(ZoneInfo(info.timezone or DEFAULT_ZONE), quiet)


def parse_items(ids: list[str], default: Priority) -> list[dict[str, str]]:
    """``ID`` or ``ID:priority`` / ``ID:normal`` per announcement, in the order given."""
    if not ids:
        raise SpecError("give at least one announcement id (see `loudspeaker announce list`)")
    out = []
    for raw in ids:
        ann, sep, level = raw.partition(":")
        if sep and level not in (Priority.NORMAL.value, Priority.PRIORITY.value):
            raise SpecError(
                f"{raw!r}: an item's level is ':normal' or ':priority' "
                "(emergencies are not scheduled: use `loudspeaker emergency`)"
            )
        out.append({"announcement": ann.strip(), "priority": level or default.value})
    return out


def plan_of(session: Session, rec: ScheduleRecord, *, strict: bool = False) -> Plan | None:
    """The planner's view of a stored schedule; None (logged) if it cannot play any more."""
    try:
        clusters = frozenset(c.id for c in resolve_targets(session, rec.target))
        items = []
        for it in rec.items:
            ann = session.get(Announcement, it["announcement"])
            if ann is None or ann.removed_at is not None:
                raise NotFoundError(
                    f"no announcement {it['announcement']!r} (see `loudspeaker announce list`)"
                )
            items.append(
                Item(ann.id, ann.title, ann.duration_s, Priority(it.get("priority", "normal")))
            )
        recurrence = Recurrence.from_json(rec.rule)
    except LoudspeakerError as exc:
        if strict:
            raise
        logger.warning("schedule %s cannot play: %s", rec.id, exc)
        return None
    on_conflict: OnConflict = "after" if rec.on_conflict == "after" else ""
    if rec.on_conflict == "replace":
        on_conflict = "replace"
    assert rec.id is not None
    return Plan(
        id=rec.id,
        title=rec.title,
        recurrence=recurrence,
        items=tuple(items),
        clusters=clusters,
        repeat=rec.repeat,
        gap_s=rec.gap_s,
        on_conflict=on_conflict,
        replaces=frozenset(rec.replaces or ()),
    )


def active_records(session: Session) -> list[ScheduleRecord]:
    """Schedules not removed (paused ones included), oldest first."""
    return list(
        session.exec(
            select(ScheduleRecord)
            .where(col(ScheduleRecord.removed_at).is_(None))
            .order_by(col(ScheduleRecord.id))
        ).all()
    )


def active_plans(session: Session, *, exclude: int | None = None) -> list[Plan]:
    """Plans of every schedule that is neither removed nor paused."""
    out = []
    for rec in active_records(session):
        if rec.paused or rec.id == exclude:
            continue
        plan = plan_of(session, rec)
        if plan is not None:
            out.append(plan)
    return out


def get_schedule(session: Session, schedule_id: int) -> ScheduleRecord:
    """A schedule by id; ``NotFoundError`` naming the command that lists them."""
    rec = session.get(ScheduleRecord, schedule_id)
    if rec is None or rec.removed_at is not None:
        raise NotFoundError(f"no schedule {schedule_id} (see `loudspeaker schedule list`)")
    return rec


@dataclass
class Added:
    """What ``schedule add`` did."""

    record: ScheduleRecord
    check: CheckResult
    first: datetime | None
    notes: list[str] = field(default_factory=list)


def add_schedule(
    session: Session,
    *,
    items: list[dict[str, str]],
    target: str,
    recurrence: Recurrence,
    title: str = "",
    priority: Priority = Priority.NORMAL,
    repeat: int = 1,
    gap_s: float = 0.0,
    on_conflict: OnConflict = "",
    created_by: str = "",
    at: datetime | None = None,
) -> Added:
    """Validate, check conflicts and quiet hours against the timeline, and store."""
    if priority is Priority.EMERGENCY:
        raise ScheduleError("emergencies are not scheduled: use `loudspeaker emergency`")
    if not 1 <= repeat <= 10:
        raise ScheduleError("--repeat must be between 1 and 10")
    if not 0 <= gap_s <= 7200:
        raise ScheduleError("--gap must be between 0 and 7200 seconds")
    t = at or now()
    ctx = site_context(session)
    rec = ScheduleRecord(
        title="",
        rule=recurrence.to_json(),
        items=items,
        target=target,
        priority=priority.value,
        repeat=repeat,
        gap_s=gap_s,
        on_conflict=on_conflict,
        created_by=created_by,
        created_at=t,
        active_since=t,
        updated_at=t,
    )
    # A provisional id that sorts after every existing schedule (placement order).
    last = session.exec(select(ScheduleRecord.id).order_by(col(ScheduleRecord.id).desc())).first()
    rec.id = (last or 0) + 1
    plan = plan_of(session, rec, strict=True)
    assert plan is not None
    rec.title = (title or " + ".join(i.title for i in plan.programme()))[:200]
    plan = replace(plan, title=rec.title)
    first = recurrence.next_after(t - timedelta(microseconds=1), ctx.zone, CHECK_AHEAD * 12)
    if first is None:
        raise SpecError(
            f"{recurrence.describe(ctx.zone)} never happens after now "
            f"({t.astimezone(ctx.zone):%Y-%m-%d %H:%M}): nothing would play"
        )
    check = check_addition(active_plans(session), plan, t, ctx.zone, ctx.quiet)
    rec.replaces = sorted(check.plan.replaces)
    session.add(rec)
    session.commit()
    session.refresh(rec)
    return Added(rec, check, first, check.notes)


def set_paused(
    session: Session, schedule_id: int, paused: bool
) -> tuple[ScheduleRecord, list[str]]:
    """Pause or resume; resuming checks conflicts and quiet hours again."""
    rec = get_schedule(session, schedule_id)
    notes: list[str] = []
    t = now()
    if rec.paused == paused:
        return rec, [f"schedule {schedule_id} is already {'paused' if paused else 'active'}"]
    if not paused:
        ctx = site_context(session)
        plan = plan_of(session, rec, strict=True)
        assert plan is not None
        check = check_addition(active_plans(session, exclude=rec.id), plan, t, ctx.zone, ctx.quiet)
        notes = check.notes
        rec.replaces = sorted(check.plan.replaces)
        rec.active_since = t
    rec.paused = paused
    rec.version += 1
    rec.updated_at = t
    session.add(rec)
    session.commit()
    session.refresh(rec)
    return rec, notes


def remove_schedule(session: Session, schedule_id: int) -> ScheduleRecord:
    """Remove a schedule; its staged items are withdrawn by the controller."""
    rec = get_schedule(session, schedule_id)
    t = now()
    rec.removed_at = t
    rec.version += 1
    rec.updated_at = t
    session.add(rec)
    session.commit()
    session.refresh(rec)
    return rec


def schedule_json(rec: ScheduleRecord, zone: ZoneInfo) -> dict[str, Any]:
    """JSON-ready form of a schedule."""
    rule = Recurrence.from_json(rec.rule)
    return {
        "id": rec.id,
        "title": rec.title,
        "when": rule.describe(zone),
        "rule": rec.rule,
        "items": rec.items,
        "target": rec.target,
        "priority": rec.priority,
        "repeat": rec.repeat,
        "gap_s": rec.gap_s,
        "on_conflict": rec.on_conflict or None,
        "replaces": rec.replaces,
        "paused": rec.paused,
        "created_by": rec.created_by,
        "created_at": rec.created_at.isoformat(),
    }


# -- the timeline as shown ---------------------------------------------------------------


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


def timeline_rows(
    session: Session, start: datetime, end: datetime, *, at: datetime | None = None
) -> list[TimelineRow]:
    """What plays in ``[start, end)``: recorded slots, and the plan for the rest."""
    from schedules.timeline import build_timeline

    t = at or now()
    ctx = site_context(session)
    records = {r.id: r for r in session.exec(select(ScheduleRecord)).all()}
    slots = session.exec(
        select(ScheduleSlot).where(
            col(ScheduleSlot.planned_start) >= start - timedelta(days=1),
            col(ScheduleSlot.planned_start) < end,
        )
    ).all()
    anns = {a.id: a for a in session.exec(select(Announcement)).all()}
    rows: list[TimelineRow] = []
    seen: set[tuple[int, datetime, int]] = set()
    for slot in slots:
        key = (slot.schedule_id, as_utc(slot.slot_at), slot.position)
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
        state = slot.state if slot.state != "staged" else _delivery_state(states)
        if slot.state == "staged":
            seen.add(key)  # type: ignore[arg-type]
        elif slot.state == "withdrawn":
            continue  # replaced by the plan below (or gone with its schedule)
        else:
            seen.add(key)  # type: ignore[arg-type]
        planned = as_utc(slot.planned_start)
        assert planned is not None
        if not start <= planned < end:
            continue
        ann = anns.get(slot.announcement_id)
        duration = (ann.duration_s if ann else 0.0) * (rec.repeat if rec else 1)
        rows.append(
            TimelineRow(
                start=planned.astimezone(ctx.zone),
                end=(planned + timedelta(seconds=duration)).astimezone(ctx.zone),
                schedule_id=slot.schedule_id,
                schedule_title=rec.title if rec else "",
                announcement_id=slot.announcement_id,
                title=ann.title if ann else slot.announcement_id,
                priority=b.priority if b else (rec.priority if rec else ""),
                target=rec.target if rec else "",
                state=state,
                note=slot.reason,
                broadcast_id=slot.broadcast_id,
            )
        )
    timeline = build_timeline(active_plans(session), start, end, ctx.zone)
    for block in timeline.blocks:
        rec = records.get(block.plan.id)
        note = f"placed after schedule {', '.join(map(str, block.after))}" if block.after else ""
        for p in block.items:
            if p.key in seen or not start <= p.start < end:
                continue
            if rec is not None and p.start < t and p.slot_at < as_utc(rec.active_since):  # type: ignore[operator]
                continue
            state = "planned" if p.start >= t else "not sent yet (controller down?)"
            rows.append(_planned_row(p, block.plan.title, rec, ctx.zone, state, note))
    for block in timeline.dropped:
        if not start <= block.slot_at < end:
            continue
        rec = records.get(block.plan.id)
        for p in block.items:
            if p.key in seen:
                continue
            state = "replaced" if block.replaced_by else "dropped"
            rows.append(_planned_row(p, block.plan.title, rec, ctx.zone, state, block.dropped))
    rows.sort(key=lambda r: (r.start, r.schedule_id, r.announcement_id))
    return rows


def clock_warnings(session: Session, threshold_s: float) -> list[ClusterClock]:
    """Clusters whose last estimated clock offset is over ``threshold_s``."""
    return [
        c
        for c in session.exec(select(ClusterClock).order_by(col(ClusterClock.cluster_id))).all()
        if abs(c.offset_s) > threshold_s
    ]
