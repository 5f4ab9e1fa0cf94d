"""``loudspeaker log`` (the broadcast log) and ``loudspeaker report monthly``."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from loudspeaker.commands import common as c
from loudspeaker.commands.common import JsonOpt, State, command, console, print_json
from loudspeaker.exceptions import ReportError
from loudspeaker.services import reports
from loudspeaker.services.reports import LogQuery

_OUTCOME_STYLE = {
    "played": "green", "failed": "red", "unreachable": "red", "missed": "magenta",
    "pending": "yellow",
}  # fmt: skip
_LOG_COLUMNS = (
    "scheduled", "broadcast", "priority", "what", "by", "cluster", "hamlet", "started",
    "delay", "outcome", "reason",
)  # fmt: skip


@c.face
def log(
    state: State,
    date_from: Annotated[
        str | None,
        typer.Option("--from", help="First day, YYYY-MM-DD (or today, yesterday) [yesterday]"),
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Last day, inclusive, YYYY-MM-DD [today]")
    ] = None,
    hamlet: Annotated[str | None, typer.Option(help="Only this hamlet (id or name)")] = None,
    cluster: Annotated[str | None, typer.Option(help="Only this cluster (id)")] = None,
    priority: Annotated[
        str | None, typer.Option(help="Only this priority: normal, priority, emergency")
    ] = None,
    as_json: JsonOpt = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="Print CSV, one row per broadcast x cluster")
    ] = False,
) -> None:
    """The broadcast log: what played where, scheduled vs actual start, and every outcome.

    Days are the site's local days (Asia/Ho_Chi_Minh); times are shown in that zone.
    """
    from loudspeaker.logbook import write_log_csv

    if as_json and as_csv:
        raise ReportError("choose one of --json and --csv")
    query = LogQuery(date_from, date_to, hamlet, cluster, priority)
    found = reports.broadcast_log(state, state.actor(), query)
    flt, zone, entries = found.filter, found.zone, found.entries
    if as_json:
        print_json(found.to_json())
        return
    if as_csv:
        write_log_csv(entries, zone, sys.stdout)
        return
    first = flt.start.astimezone(zone).strftime("%d/%m/%Y")
    last = (flt.end - timedelta(seconds=1)).astimezone(zone).strftime("%d/%m/%Y")
    title = f"Broadcast log {first} - {last} ({zone.key})"
    table = Table(*_LOG_COLUMNS, title=title, title_justify="left")
    for e in entries:
        length = "-" if e.duration_s is None else f"{e.duration_s:.0f} s"
        if e.repeat > 1:
            length += f" x{e.repeat}"
        head = [
            c.local_time(e.scheduled_at, zone, c.DAY_SECOND),
            escape(f"{e.id} {e.title}"),
            e.priority,
            escape(f"{e.what}, {length}"),
            escape(e.created_by),
        ]
        for i, d in enumerate(e.deliveries):
            delay = d.delay_s(e.scheduled_at)
            style = _OUTCOME_STYLE.get(d.outcome, "white")
            table.add_row(
                *(head if i == 0 else [""] * len(head)),
                d.cluster,
                d.hamlet,
                c.local_time(d.started_at, zone),
                "-" if delay is None else f"{delay:+.0f} s",
                f"[{style}]{d.outcome}[/]",
                escape(d.reason),
            )
    console.print(table)
    if not entries:
        console.print("No broadcasts in this period.")


report_app = typer.Typer(help="Reports sent upward (monthly: XLSX or CSV, with charts).")


@command(report_app, "monthly")
def report_monthly(
    state: State,
    month: Annotated[str, typer.Argument(help="The month, YYYY-MM", metavar="YYYY-MM")],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Report file: .xlsx (with charts) or .csv")
    ],
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write the charts as PNG into this folder")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the figures as JSON")] = False,
) -> None:
    """The monthly report: totals per hamlet and cluster, availability, failures, charts."""
    done = reports.monthly(state, state.actor(), month, output, png)
    report, m, written = done.report, done.month, done.files
    if as_json:
        print_json({"files": [str(p) for p in written], "report": report.to_json()})
        return
    t = report.total
    console.print(
        f"Report {m.label}: {t.total_bulletins} bulletins, {t.minutes_on_air:.1f} min on air, "
        f"{t.outcomes['played']}/{t.deliveries} deliveries played."
    )
    for p in written:
        console.print(f"  wrote {p}")
