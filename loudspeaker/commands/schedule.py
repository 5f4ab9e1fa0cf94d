"""``loudspeaker schedule``: plan programmes; the running controller stages them."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from firmware_bridge.protocol import Priority
from loudspeaker.auth import current_actor
from loudspeaker.commands.common import (
    console,
    err_console,
    handle_errors,
    print_json,
    state_of,
    warn_not_running,
)
from loudspeaker.services import schedules
from loudspeaker.targets import TARGET_HELP

schedule_app = typer.Typer(help="Programmes that play on time: add, list, pause, resume, remove.")
Text = str | None
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON")]
IdArgument = Annotated[int, typer.Argument(metavar="ID")]


def _notes(notes: tuple[str, ...], limit: int = 12) -> None:
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
    at: Annotated[Text, typer.Option(help="Once, at 'YYYY-MM-DD HH:MM' (site time)")] = None,
    daily: Annotated[Text, typer.Option(help="Every day at HH:MM")] = None,
    weekly: Annotated[Text, typer.Option(help="DAYS@HH:MM, e.g. mon,wed,fri@05:30")] = None,
    cron: Annotated[Text, typer.Option(help="Crontab expression, e.g. '30 5 * * 1-6'")] = None,
    valid_from: Annotated[Text, typer.Option("--from", help="First day (YYYY-MM-DD)")] = None,
    valid_until: Annotated[
        Text, typer.Option("--until", help="Last day (YYYY-MM-DD), inclusive")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, max=10, help="Times each item plays")] = 1,
    gap: Annotated[float, typer.Option(min=0, max=7200, help="Seconds between repeats")] = 0.0,
    priority: Annotated[
        Priority, typer.Option(help="normal or priority (Circular 39/2020)")
    ] = Priority.NORMAL,
    title: Annotated[Text, typer.Option(help="Name shown in the timeline")] = None,
    after: Annotated[
        bool, typer.Option("--after", help="On a priority collision: play after the other")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="On a priority collision: play instead of it")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Plan a programme: one or more announcements, on a schedule, on some clusters."""
    state = state_of(ctx)
    when = schedules.When(at, daily, weekly, cron, valid_from, valid_until)
    request = schedules.NewSchedule(
        tuple(announcements),
        to,
        when,
        repeat=repeat,
        gap_s=gap,
        priority=priority,
        title=title or "",
        after=after,
        replace=replace,
    )
    added = schedules.add(state, current_actor(state), request)
    warn_not_running(added.controller_notified, "its items are staged")
    if as_json:
        print_json(added.to_json())
        return
    v = added.schedule
    console.print(
        f"Schedule [bold]{v.id}[/] added: {escape(v.title)}, {v.when}, to {escape(to)}; "
        f"first at {added.first:%a %Y-%m-%d %H:%M} ({added.zone.key}).",
        highlight=False,
    )
    _notes(added.notes)


def _render_listing(listing: schedules.ScheduleListing, week: bool) -> None:
    table = Table(title="Schedules", title_justify="left")
    for name in ("id", "title", "when", "to", "priority", "state"):
        table.add_column(name)
    for v in listing.schedules:
        state = "paused" if v.paused else "active"
        table.add_row(str(v.id), *map(escape, (v.title, v.when, v.target)), v.priority, state)
    console.print(table)
    start, end = listing.start, listing.end
    span = f"{start:%Y-%m-%d}" + (f" .. {end - timedelta(days=1):%Y-%m-%d}" if week else "")
    tl = Table(title=f"Timeline {span} ({listing.zone.key})", title_justify="left")
    for name in ("start", "end", "sched", "item", "priority", "to", "state", "note"):
        tl.add_column(name)
    colours = {"played": "green", "missed": "red", "failed": "red", "refused": "red"}
    for r in listing.timeline:
        colour = colours.get(r.state, "yellow" if r.state != "planned" else "white")
        start_at = r.start.strftime("%a %H:%M:%S" if week else "%H:%M:%S")
        state = f"[{colour}]{escape(r.state)}[/]"
        item = (escape(r.title), r.priority, escape(r.target), state, escape(r.note))
        tl.add_row(start_at, f"{r.end:%H:%M:%S}", str(r.schedule_id), *item)
    console.print(tl)
    for c in listing.clock_warnings:
        err_console.print(
            f"[yellow]warning:[/] cluster {c.cluster_id}'s clock is {c.offset_s:+.1f} s off; "
            "its scheduled items play that much early or late",
            highlight=False,
        )


@schedule_app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    day: Annotated[Text, typer.Option(help="The day to show (YYYY-MM-DD; default today)")] = None,
    week: Annotated[bool, typer.Option("--week", help="Seven days from --day")] = False,
    as_json: JsonOption = False,
) -> None:
    """The schedules, and the timeline: what plays where and when (site time)."""
    state = state_of(ctx)
    period = schedules.Period(day, 7 if week else 1)
    listing = schedules.listing(state, current_actor(state), period)
    if as_json:
        print_json(listing.to_json())
    else:
        _render_listing(listing, week)


def _render_change(done: schedules.ScheduleChanged, as_json: bool) -> None:
    staged = "its items are staged" if done.change == "resume" else "staged items are withdrawn"
    warn_not_running(done.controller_notified, staged)
    if as_json:
        print_json(done.to_json())
        return
    what = {"remove": "removed", "pause": "paused", "resume": "resumed"}[done.change]
    extra = "; its staged items are withdrawn from the clusters" if done.change != "resume" else ""
    console.print(f"Schedule {done.schedule.id} {what}{extra}.", highlight=False)
    _notes(done.notes)


@schedule_app.command("remove")
@handle_errors
def remove(ctx: typer.Context, schedule_id: IdArgument, as_json: JsonOption = False) -> None:
    """Remove a schedule (what already played stays in the log)."""
    state = state_of(ctx)
    _render_change(schedules.remove(state, current_actor(state), schedule_id), as_json)


@schedule_app.command("pause")
@handle_errors
def pause(ctx: typer.Context, schedule_id: IdArgument, as_json: JsonOption = False) -> None:
    """Stop playing a schedule until it is resumed."""
    state = state_of(ctx)
    _render_change(schedules.pause(state, current_actor(state), schedule_id), as_json)


@schedule_app.command("resume")
@handle_errors
def resume(ctx: typer.Context, schedule_id: IdArgument, as_json: JsonOption = False) -> None:
    """Play a paused schedule again (conflicts and quiet hours are checked again)."""
    state = state_of(ctx)
    _render_change(schedules.resume(state, current_actor(state), schedule_id), as_json)
