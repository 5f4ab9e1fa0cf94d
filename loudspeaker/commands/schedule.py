"""``loudspeaker schedule``: plan programmes; the running controller stages them."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from firmware_bridge.protocol import Priority
from loudspeaker.commands import common as c
from loudspeaker.commands.common import GapOpt, JsonOpt, State, command, console, print_json
from loudspeaker.services import schedules
from loudspeaker.targets import TARGET_HELP

schedule_app = typer.Typer(help="Programmes that play on time: add, list, pause, resume, remove.")
Text = str | None
IdArgument = Annotated[int, typer.Argument(metavar="ID")]


def _notes(notes: tuple[str, ...], limit: int = 12) -> None:
    for n in notes[:limit]:
        console.print(f"  note: {escape(n)}", highlight=False)
    if len(notes) > limit:
        console.print(f"  ... and {len(notes) - limit} more notes", highlight=False)


@command(schedule_app, "add")
def add(
    state: State,
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
    gap: GapOpt = 0.0,
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
    as_json: JsonOpt = False,
) -> None:
    """Plan a programme: one or more announcements, on a schedule, on some clusters."""
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
    added = schedules.add(state, state.actor(), request)
    c.warn_not_running(added.controller_notified, "its items are staged")
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
    for off in listing.clock_warnings:
        c.err_console.print(
            f"[yellow]warning:[/] cluster {off.cluster_id}'s clock is {off.offset_s:+.1f} s off; "
            "its scheduled items play that much early or late",
            highlight=False,
        )


@command(schedule_app, "list")
def list_(
    state: State,
    day: Annotated[Text, typer.Option(help="The day to show (YYYY-MM-DD; default today)")] = None,
    week: Annotated[bool, typer.Option("--week", help="Seven days from --day")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The schedules, and the timeline: what plays where and when (site time)."""
    period = schedules.Period(day, 7 if week else 1)
    listing = schedules.listing(state, state.actor(), period)
    if as_json:
        print_json(listing.to_json())
    else:
        _render_listing(listing, week)


def _render_change(done: schedules.ScheduleChanged, as_json: bool) -> None:
    staged = "its items are staged" if done.change == "resume" else "staged items are withdrawn"
    c.warn_not_running(done.controller_notified, staged)
    if as_json:
        print_json(done.to_json())
        return
    what = {"remove": "removed", "pause": "paused", "resume": "resumed"}[done.change]
    extra = "; its staged items are withdrawn from the clusters" if done.change != "resume" else ""
    console.print(f"Schedule {done.schedule.id} {what}{extra}.", highlight=False)
    _notes(done.notes)


@command(schedule_app, "remove")
def remove(state: State, schedule_id: IdArgument, as_json: JsonOpt = False) -> None:
    """Remove a schedule (what already played stays in the log)."""
    _render_change(schedules.remove(state, state.actor(), schedule_id), as_json)


@command(schedule_app, "pause")
def pause(state: State, schedule_id: IdArgument, as_json: JsonOpt = False) -> None:
    """Stop playing a schedule until it is resumed."""
    _render_change(schedules.pause(state, state.actor(), schedule_id), as_json)


@command(schedule_app, "resume")
def resume(state: State, schedule_id: IdArgument, as_json: JsonOpt = False) -> None:
    """Play a paused schedule again (conflicts and quiet hours are checked again)."""
    _render_change(schedules.resume(state, state.actor(), schedule_id), as_json)
