"""The broadcast log and the monthly report sent upward."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.exceptions import ReportError
from loudspeaker.logbook import LogEntry, LogFilter, make_filter, read_log
from loudspeaker.reports import Month, MonthlyReport, monthly_report
from loudspeaker.services.context import ServiceContext


@dataclass(frozen=True)
class LogQuery:
    """Which part of the broadcast log (days are the site's local days)."""

    date_from: str | None = None
    date_to: str | None = None
    hamlet: str | None = None
    cluster: str | None = None
    priority: str | None = None


@dataclass(frozen=True)
class BroadcastLog:
    """The log entries that match, with the validated filter and the site's zone."""

    filter: LogFilter
    zone: ZoneInfo
    entries: list[LogEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "from": self.filter.start.isoformat(),
            "to": self.filter.end.isoformat(),
            "zone": self.zone.key,
            "broadcasts": [e.to_json() for e in self.entries],
        }


@dataclass(frozen=True)
class MonthlyWritten:
    """The monthly report and the files written (the report, then any PNG charts)."""

    month: Month
    report: MonthlyReport
    files: list[Path]


def broadcast_log(ctx: ServiceContext, actor: Actor, query: LogQuery) -> BroadcastLog:
    """What played where, scheduled vs actual start; ``ReportError`` for a bad filter."""
    authorize(ctx, actor, Permission.VIEW, action="log")
    zone = ctx.zone()
    with ctx.engine.connect() as conn:
        flt = make_filter(
            conn,
            zone,
            date_from=query.date_from,
            date_to=query.date_to,
            hamlet=query.hamlet,
            cluster=query.cluster,
            priority=query.priority,
        )
        return BroadcastLog(flt, zone, read_log(conn, flt))


def monthly(
    ctx: ServiceContext, actor: Actor, month: str, output: Path, png: Path | None = None
) -> MonthlyWritten:
    """Write the month's report to ``output`` (.xlsx with charts, or .csv) and, with
    ``png``, the charts as PNG files into that folder."""
    from loudspeaker.report_xlsx import check_output, write_csv, write_xlsx

    authorize(ctx, actor, Permission.REPORT, action="report.monthly", target=month)
    m = Month.parse(month)
    check_output(output, (".xlsx", ".csv"))
    if png is not None and png.exists() and not png.is_dir():
        raise ReportError(f"--png {png} is a file; give a folder")
    zone = ctx.zone()
    with ctx.engine.connect() as conn:
        report = monthly_report(conn, m, zone)
    if output.suffix.lower() == ".csv":
        write_csv(report, output)
    else:
        write_xlsx(report, output)
    written = [output]
    if png is not None:
        from loudspeaker.report_png import write_pngs

        written += write_pngs(report, png)
    return MonthlyWritten(m, report, written)
