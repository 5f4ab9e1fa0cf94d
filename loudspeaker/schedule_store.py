"""Schedules in the database: the rows the officer writes and the plans the runner reads.

The calendar itself (rules, quiet hours, the timeline) is pure and lives in ``schedules``;
this module turns stored rows into its :class:`~schedules.timeline.Plan` values and
writes new or changed rows. Writers here never commit: the service that calls them
audits in the same transaction and commits once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from firmware_bridge.protocol import Priority
from loudspeaker.exceptions import LoudspeakerError, NotFoundError
from loudspeaker.models import Announcement, ScheduleRecord, now
from loudspeaker.site import current_site
from loudspeaker.targets import resolve_targets
from schedules.exceptions import ScheduleError, SpecError
from schedules.quiet import QuietHours
from schedules.spec import Recurrence
from schedules.timeline import (
    CheckResult,
    Item,
    OnConflict,
    Plan,
    check_addition,
    first_occurrence,
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


def parse_items(ids: list[str] | tuple[str, ...], default: Priority) -> list[dict[str, str]]:
    """``ID`` or ``ID:priority`` / ``ID:normal`` per announcement, in the order given.

    Returns the stored form of a schedule's items.
    """
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


def _on_conflict(stored: str) -> OnConflict:
    if stored == "after":
        return "after"
    if stored == "replace":
        return "replace"
    return ""


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
    except (LoudspeakerError, ScheduleError) as exc:
        if strict:
            raise
        logger.warning("schedule %s cannot play: %s", rec.id, exc)
        return None
    assert rec.id is not None
    return Plan(
        id=rec.id,
        title=rec.title,
        recurrence=recurrence,
        items=tuple(items),
        clusters=clusters,
        repeat=rec.repeat,
        gap_s=rec.gap_s,
        on_conflict=_on_conflict(rec.on_conflict),
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


@dataclass(frozen=True)
class Added:
    """What :func:`add_schedule` stored, and what the timeline check said."""

    record: ScheduleRecord
    check: CheckResult
    first: datetime
    notes: tuple[str, ...]


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
    """Check conflicts and quiet hours against the timeline, and add the row (no commit).

    The caller has checked the request itself (priority, repeat and gap).
    """
    t = at or now()
    site = site_context(session)
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
    first = first_occurrence(recurrence, t, site.zone)
    check = check_addition(active_plans(session), plan, t, site.zone, site.quiet)
    rec.replaces = sorted(check.plan.replaces)
    session.add(rec)
    session.flush()
    return Added(rec, check, first, tuple(check.notes))


def set_paused(
    session: Session, schedule_id: int, paused: bool
) -> tuple[ScheduleRecord, list[str]]:
    """Pause or resume (no commit); resuming checks conflicts and quiet hours again."""
    rec = get_schedule(session, schedule_id)
    if rec.paused == paused:
        return rec, [f"schedule {schedule_id} is already {'paused' if paused else 'active'}"]
    notes: list[str] = []
    t = now()
    if not paused:
        site = site_context(session)
        plan = plan_of(session, rec, strict=True)
        assert plan is not None
        existing = active_plans(session, exclude=rec.id)
        check = check_addition(existing, plan, t, site.zone, site.quiet)
        notes = check.notes
        rec.replaces = sorted(check.plan.replaces)
        rec.active_since = t
    rec.paused = paused
    rec.version += 1
    rec.updated_at = t
    session.add(rec)
    session.flush()
    return rec, notes


def remove_schedule(session: Session, schedule_id: int) -> ScheduleRecord:
    """Mark a schedule removed (no commit); the controller withdraws its staged items."""
    rec = get_schedule(session, schedule_id)
    t = now()
    rec.removed_at = t
    rec.version += 1
    rec.updated_at = t
    session.add(rec)
    session.flush()
    return rec
