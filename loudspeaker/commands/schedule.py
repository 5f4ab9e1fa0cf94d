"""``loudspeaker schedule``: plan programmes; the running controller stages them."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.markup import escape
from rich.table import Table

from firmware_bridge.protocol import Priority
from loudspeaker import audit
from loudspeaker.auth import Permission, require
from loudspeaker.commands.common import (
    State,
    console,
    err_console,
    handle_errors,
    print_json,
    state_of,
)
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.targets import TARGET_HELP

schedule_app = typer.Typer(help="Programmes that play on time: add, list, pause, resume, remove.")


def _poke(state: State, what: str) -> None:
    card = state.controller()
    if card is None or not card.poke():
        err_console.print(
            f"[yellow]warning:[/] the controller is not running; {what} when "
            "`loudspeaker serve` starts"
        )


def _notes(notes: list[str], limit: int = 12) -> None:
    for n in notes[:limit]:
        console.print(f"  note: {escape(n)}", highlight=False)
    if len(notes) > limit:
        console.print(f"  ... and {len(notes) - limit} more notes", highlight=False)


@schedule_app.command("add")
@handle_errors
def add(
    ctx: typer.Context,
    announcements: Annotated[
        list[str],
        typer.Argument(
            help="Announcement ids, played in this order (priority items first); "
            "ID:priority marks one item priority",
            metavar="ANNOUNCEMENT_ID...",
        ),
    ],
    to: Annotated[str, typer.Option("--to", help=TARGET_HELP)],
    at: Annotated[
        str | None, typer.Option("--at", help="Once, at 'YYYY-MM-DD HH:MM' (site time)")
    ] = None,
    daily: Annotated[str | None, typer.Option("--daily", help="Every day at HH:MM")] = None,
    weekly: Annotated[
        str | None, typer.Option("--weekly", help="DAYS@HH:MM, e.g. mon,wed,fri@05:30")
    ] = None,
    cron: Annotated[
        str | None, typer.Option("--cron", help="Crontab expression, e.g. '30 5 * * 1-6'")
    ] = None,
    valid_from: Annotated[str | None, typer.Option("--from", help="First day (YYYY-MM-DD)")] = None,
    valid_until: Annotated[
        str | None, typer.Option("--until", help="Last day (YYYY-MM-DD), inclusive")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, max=10, help="Times each item plays")] = 1,
    gap: Annotated[float, typer.Option(min=0, max=7200, help="Seconds between repeats")] = 0.0,
    priority: Annotated[
        Priority, typer.Option(help="normal or priority (Circular 39/2020)")
    ] = Priority.NORMAL,
    title: Annotated[str | None, typer.Option(help="Name shown in the timeline")] = None,
    after: Annotated[
        bool, typer.Option("--after", help="On a priority collision: play after the other")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="On a priority collision: play instead of it")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Plan a programme: one or more announcements, on a schedule, on some clusters."""
    from schedules.service import add_schedule, parse_items, schedule_json, site_context
    from schedules.spec import Recurrence

    state = state_of(ctx)
    actor = require(state, Permission.SCHEDULE, action="schedule.add", target=to)
    if after and replace:
        raise LoudspeakerError("choose one of --after and --replace")
    if priority is Priority.EMERGENCY:
        raise LoudspeakerError("emergencies are not scheduled: use `loudspeaker emergency`")
    items = parse_items(announcements, priority)
    with state.session() as s:
        zone = site_context(s).zone
        rule = Recurrence.parse(
            zone=zone,
            at=at,
            daily=daily,
            weekly=weekly,
            cron=cron,
            valid_from=valid_from,
            valid_until=valid_until,
        )
        added = add_schedule(
            s,
            items=items,
            target=to,
            recurrence=rule,
            title=title or "",
            priority=priority,
            repeat=repeat,
            gap_s=gap,
            on_conflict="after" if after else "replace" if replace else "",
            created_by=actor.name,
        )
        data = schedule_json(added.record, zone)
        audit.record(
            s,
            actor.name,
            "schedule.add",
            to,
            detail={"schedule": added.record.id, "when": data["when"], "items": len(items)},
            role=actor.role,
            commit=True,
        )
    _poke(state, "its items are staged")
    if as_json:
        data["first"] = added.first.astimezone(zone).isoformat() if added.first else None
        data["notes"] = added.notes
        print_json(data)
        return
    first = added.first.astimezone(zone).strftime("%a %Y-%m-%d %H:%M") if added.first else "-"
    console.print(
        f"Schedule [bold]{added.record.id}[/] added: {escape(data['title'])}, {data['when']}, "
        f"to {escape(to)}; first at {first} ({zone.key}).",
        highlight=False,
    )
    _notes(added.notes)


def _period(day: str | None, week: bool, zone: ZoneInfo) -> tuple[datetime, datetime]:
    from schedules.spec import parse_date

    today = datetime.now(zone).date()
    first: date = today if day in (None, "today") else parse_date(str(day), "--day")
    days = 7 if week else 1
    start = datetime.combine(first, time.min, tzinfo=zone)
    end = datetime.combine(first + timedelta(days=days), time.min, tzinfo=zone)
    return start, end


@schedule_app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    day: Annotated[
        str | None, typer.Option("--day", help="The day to show (YYYY-MM-DD; default today)")
    ] = None,
    week: Annotated[bool, typer.Option("--week", help="Seven days from --day")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """The schedules, and the timeline: what plays where and when (site time)."""
    from schedules.service import (
        active_records,
        clock_warnings,
        schedule_json,
        site_context,
        timeline_rows,
    )

    state = state_of(ctx)
    require(state, Permission.VIEW, action="schedule.list")
    with state.session() as s:
        zone = site_context(s).zone
        start, end = _period(day, week, zone)
        records = active_records(s)
        rows = timeline_rows(s, start, end)
        clocks = clock_warnings(s, state.settings.clock_warn_s)
        schedules_data = [schedule_json(r, zone) for r in records]
    if as_json:
        print_json(
            {
                "zone": zone.key,
                "from": start.isoformat(),
                "until": end.isoformat(),
                "schedules": schedules_data,
                "timeline": [r.to_json() for r in rows],
                "clock_warnings": [
                    {"cluster": c.cluster_id, "offset_s": round(c.offset_s, 3)} for c in clocks
                ],
            }
        )
        return
    table = Table(title="Schedules", title_justify="left")
    for name in ("id", "title", "when", "to", "priority", "state"):
        table.add_column(name)
    for d in schedules_data:
        table.add_row(
            str(d["id"]),
            escape(str(d["title"])),
            escape(str(d["when"])),
            escape(str(d["target"])),
            str(d["priority"]),
            "paused" if d["paused"] else "active",
        )
    console.print(table)
    span = f"{start:%Y-%m-%d}" + (f" .. {end - timedelta(days=1):%Y-%m-%d}" if week else "")
    tl = Table(title=f"Timeline {span} ({zone.key})", title_justify="left")
    for name in ("start", "end", "sched", "item", "priority", "to", "state", "note"):
        tl.add_column(name)
    colours = {"played": "green", "missed": "red", "failed": "red", "refused": "red"}
    for r in rows:
        colour = colours.get(r.state, "yellow" if r.state != "planned" else "white")
        tl.add_row(
            r.start.strftime("%a %H:%M:%S" if week else "%H:%M:%S"),
            r.end.strftime("%H:%M:%S"),
            str(r.schedule_id),
            escape(r.title),
            r.priority,
            escape(r.target),
            f"[{colour}]{escape(r.state)}[/]",
            escape(r.note),
        )
    console.print(tl)
    for c in clocks:
        err_console.print(
            f"[yellow]warning:[/] cluster {c.cluster_id}'s clock is {c.offset_s:+.1f} s off; "
            "its scheduled items play that much early or late",
            highlight=False,
        )


def _change(ctx: typer.Context, schedule_id: int, action: str, as_json: bool) -> None:
    from schedules.service import remove_schedule, schedule_json, set_paused, site_context

    state = state_of(ctx)
    actor = require(
        state, Permission.SCHEDULE, action=f"schedule.{action}", target=str(schedule_id)
    )
    with state.session() as s:
        zone = site_context(s).zone
        notes: list[str] = []
        if action == "remove":
            rec = remove_schedule(s, schedule_id)
        else:
            rec, notes = set_paused(s, schedule_id, action == "pause")
        data = schedule_json(rec, zone)
        audit.record(
            s, actor.name, f"schedule.{action}", str(schedule_id), role=actor.role, commit=True
        )
    _poke(state, "staged items are withdrawn" if action != "resume" else "its items are staged")
    if as_json:
        data["notes"] = notes
        data["removed"] = action == "remove"
        print_json(data)
        return
    done = {"remove": "removed", "pause": "paused", "resume": "resumed"}[action]
    extra = "; its staged items are withdrawn from the clusters" if action != "resume" else ""
    console.print(f"Schedule {schedule_id} {done}{extra}.", highlight=False)
    _notes(notes)


@schedule_app.command("remove")
@handle_errors
def remove(
    ctx: typer.Context,
    schedule_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Remove a schedule (what already played stays in the log)."""
    _change(ctx, schedule_id, "remove", as_json)


@schedule_app.command("pause")
@handle_errors
def pause(
    ctx: typer.Context,
    schedule_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Stop playing a schedule until it is resumed."""
    _change(ctx, schedule_id, "pause", as_json)


@schedule_app.command("resume")
@handle_errors
def resume(
    ctx: typer.Context,
    schedule_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Play a paused schedule again (conflicts and quiet hours are checked again)."""
    _change(ctx, schedule_id, "resume", as_json)
