"""Schedules: plan programmes that play on time; list, pause, resume and remove them.

A service only writes schedule rows and tells the controller; the controller's schedule
runner is the only thing that stages broadcasts from them. Besides the controller's
errors, these raise :class:`~schedules.exceptions.ScheduleError` subclasses from the
calendar (a bad time rule, a priority collision a person must decide, quiet hours),
whose messages say what to fix just the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from firmware_bridge.protocol import Priority
from loudspeaker import audit
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.exceptions import InvalidRequest
from loudspeaker.models import ScheduleRecord
from loudspeaker.repeats import check_repeats
from loudspeaker.schedule_store import (
    active_records,
    add_schedule,
    parse_items,
    remove_schedule,
    set_paused,
    site_context,
)
from loudspeaker.schedule_timeline import TimelineRow, clock_warnings, timeline_rows
from loudspeaker.services.context import ServiceContext
from schedules.spec import Recurrence, parse_date
from schedules.timeline import OnConflict

Change = Literal["pause", "resume", "remove"]


@dataclass(frozen=True)
class ScheduleView:
    """One stored schedule as a face shows it (times in the site's zone)."""

    id: int
    title: str
    when: str
    rule: dict[str, Any]
    items: tuple[dict[str, Any], ...]
    target: str
    priority: str
    repeat: int
    gap_s: float
    on_conflict: str
    replaces: tuple[int, ...]
    paused: bool
    created_by: str
    created_at: datetime

    @classmethod
    def of(cls, rec: ScheduleRecord, zone: ZoneInfo) -> ScheduleView:
        """The view of a stored row."""
        assert rec.id is not None
        return cls(
            id=rec.id,
            title=rec.title,
            when=Recurrence.from_json(rec.rule).describe(zone),
            rule=dict(rec.rule),
            items=tuple(dict(i) for i in rec.items),
            target=rec.target,
            priority=rec.priority,
            repeat=rec.repeat,
            gap_s=rec.gap_s,
            on_conflict=rec.on_conflict,
            replaces=tuple(rec.replaces or ()),
            paused=rec.paused,
            created_by=rec.created_by,
            created_at=rec.created_at,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "title": self.title,
            "when": self.when,
            "rule": self.rule,
            "items": list(self.items),
            "target": self.target,
            "priority": self.priority,
            "repeat": self.repeat,
            "gap_s": self.gap_s,
            "on_conflict": self.on_conflict or None,
            "replaces": list(self.replaces),
            "paused": self.paused,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class When:
    """When a schedule plays: exactly one of the rules, as text in the site's zone.

    The same options the officer types (``--at``, ``--daily``, ``--weekly``, ``--cron``,
    ``--from``, ``--until``); the service parses them.
    """

    at: str | None = None
    daily: str | None = None
    weekly: str | None = None
    cron: str | None = None
    valid_from: str | None = None
    valid_until: str | None = None


@dataclass(frozen=True)
class NewSchedule:
    """A programme to plan: announcements, when, where, how.

    ``announcements`` are ids, each optionally ``ID:priority`` or ``ID:normal`` (else
    ``priority`` applies), played in this order (priority items first).
    """

    announcements: tuple[str, ...]
    target: str
    when: When
    repeat: int = 1
    gap_s: float = 0.0
    priority: Priority = Priority.NORMAL
    title: str = ""
    after: bool = False  # on a priority collision: play after the other
    replace: bool = False  # on a priority collision: play instead of it


@dataclass(frozen=True)
class ScheduleAdded:
    """What :func:`add` stored."""

    schedule: ScheduleView
    zone: ZoneInfo
    first: datetime  # the first time it plays (site zone)
    notes: tuple[str, ...]  # what moved on the timeline, and why
    controller_notified: bool

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: the schedule, when it first plays, the notes."""
        return {
            **self.schedule.to_json(),
            "first": self.first.isoformat(),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ScheduleChanged:
    """What :func:`pause`, :func:`resume` or :func:`remove` did."""

    schedule: ScheduleView
    change: Change
    notes: tuple[str, ...]
    controller_notified: bool

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form: the schedule as it now is, the notes, whether it was removed."""
        removed = self.change == "remove"
        return {**self.schedule.to_json(), "notes": list(self.notes), "removed": removed}


@dataclass(frozen=True)
class ClockWarning:
    """A cluster whose clock is off by more than the warning threshold."""

    cluster_id: str
    offset_s: float


@dataclass(frozen=True)
class Period:
    """Which days to show: ``day`` (``YYYY-MM-DD``, ``today`` or None: today), ``days`` long."""

    day: str | None = None
    days: int = 1


@dataclass(frozen=True)
class ScheduleListing:
    """The schedules and the timeline of a period (times in the site's zone)."""

    zone: ZoneInfo
    start: datetime
    end: datetime
    schedules: tuple[ScheduleView, ...]
    timeline: tuple[TimelineRow, ...]
    clock_warnings: tuple[ClockWarning, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601 with the site's offset)."""
        return {
            "zone": self.zone.key,
            "from": self.start.isoformat(),
            "until": self.end.isoformat(),
            "schedules": [v.to_json() for v in self.schedules],
            "timeline": [r.to_json() for r in self.timeline],
            "clock_warnings": [
                {"cluster": c.cluster_id, "offset_s": round(c.offset_s, 3)}
                for c in self.clock_warnings
            ],
        }


def _on_conflict(request: NewSchedule) -> OnConflict:
    if request.after and request.replace:
        raise InvalidRequest("choose one of --after and --replace")
    return "after" if request.after else "replace" if request.replace else ""


def add(ctx: ServiceContext, actor: Actor, request: NewSchedule) -> ScheduleAdded:
    """Plan a programme; conflicts and quiet hours are checked against the timeline."""
    authorize(ctx, actor, Permission.SCHEDULE, action="schedule.add", target=request.target)
    on_conflict = _on_conflict(request)
    if request.priority is Priority.EMERGENCY:
        raise InvalidRequest("emergencies are not scheduled: use `loudspeaker emergency`")
    check_repeats(request.repeat, request.gap_s)
    items = parse_items(request.announcements, request.priority)
    with ctx.session() as s:
        zone = site_context(s).zone
        when = request.when
        rule = Recurrence.parse(
            zone=zone,
            at=when.at,
            daily=when.daily,
            weekly=when.weekly,
            cron=when.cron,
            valid_from=when.valid_from,
            valid_until=when.valid_until,
        )
        added = add_schedule(
            s,
            items=items,
            target=request.target,
            recurrence=rule,
            title=request.title,
            priority=request.priority,
            repeat=request.repeat,
            gap_s=request.gap_s,
            on_conflict=on_conflict,
            created_by=actor.name,
        )
        view = ScheduleView.of(added.record, zone)
        audit.record(
            s,
            actor.name,
            "schedule.add",
            request.target,
            detail={"schedule": view.id, "when": view.when, "items": len(items)},
            role=actor.role,
        )
        s.commit()
    return ScheduleAdded(
        schedule=view,
        zone=zone,
        first=added.first.astimezone(zone),
        notes=added.notes,
        controller_notified=ctx.notify_controller(),
    )


def _change(ctx: ServiceContext, actor: Actor, schedule_id: int, change: Change) -> ScheduleChanged:
    action = f"schedule.{change}"
    authorize(ctx, actor, Permission.SCHEDULE, action=action, target=str(schedule_id))
    notes: list[str] = []
    with ctx.session() as s:
        zone = site_context(s).zone
        if change == "remove":
            rec = remove_schedule(s, schedule_id)
        else:
            rec, notes = set_paused(s, schedule_id, change == "pause")
        view = ScheduleView.of(rec, zone)
        audit.record(s, actor.name, action, str(schedule_id), role=actor.role)
        s.commit()
    return ScheduleChanged(view, change, tuple(notes), ctx.notify_controller())


def pause(ctx: ServiceContext, actor: Actor, schedule_id: int) -> ScheduleChanged:
    """Stop playing a schedule until it is resumed; its staged items are withdrawn."""
    return _change(ctx, actor, schedule_id, "pause")


def resume(ctx: ServiceContext, actor: Actor, schedule_id: int) -> ScheduleChanged:
    """Play a paused schedule again (conflicts and quiet hours are checked again)."""
    return _change(ctx, actor, schedule_id, "resume")


def remove(ctx: ServiceContext, actor: Actor, schedule_id: int) -> ScheduleChanged:
    """Remove a schedule (what already played stays in the log); staged items are withdrawn."""
    return _change(ctx, actor, schedule_id, "remove")


def _span(period: Period, zone: ZoneInfo) -> tuple[datetime, datetime]:
    if period.days < 1:
        raise InvalidRequest("show at least one day")
    today = datetime.now(zone).date()
    first: date = today if period.day in (None, "today") else parse_date(str(period.day), "--day")
    start = datetime.combine(first, time.min, tzinfo=zone)
    end = datetime.combine(first + timedelta(days=period.days), time.min, tzinfo=zone)
    return start, end


def listing(ctx: ServiceContext, actor: Actor, period: Period | None = None) -> ScheduleListing:
    """The schedules, and the timeline of ``period``: what plays where and when."""
    authorize(ctx, actor, Permission.VIEW, action="schedule.list")
    with ctx.session() as s:
        zone = site_context(s).zone
        start, end = _span(period or Period(), zone)
        clocks = clock_warnings(s, ctx.settings.clock_warn_s)
        return ScheduleListing(
            zone=zone,
            start=start,
            end=end,
            schedules=tuple(ScheduleView.of(r, zone) for r in active_records(s)),
            timeline=tuple(timeline_rows(s, start, end)),
            clock_warnings=tuple(ClockWarning(c.cluster_id, c.offset_s) for c in clocks),
        )
