"""Quiet hours (giờ yên tĩnh): when normal and priority bulletins must not play.

Written ``"21:00-05:00"`` in the site file (``[site] quiet_hours``), wall-clock times in
the site's zone; a window whose end is before its start runs over midnight. Emergency
broadcasts ignore quiet hours (Circular 39/2020: they play at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from schedules.exceptions import SpecError
from schedules.spec import local_instant, parse_hhmm


@dataclass(frozen=True)
class QuietHours:
    """A daily quiet window ``[start, end)`` by the wall clock."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """``HH:MM-HH:MM``; ``SpecError`` saying the format otherwise."""
        first, sep, last = text.partition("-")
        if not sep:
            raise SpecError(f"quiet hours {text!r}: use HH:MM-HH:MM, e.g. 21:00-05:00")
        quiet = cls(parse_hhmm(first, "quiet hours start"), parse_hhmm(last, "quiet hours end"))
        if quiet.start == quiet.end:
            raise SpecError(f"quiet hours {text!r} start and end at the same time")
        return quiet

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def windows(
        self, start: datetime, end: datetime, zone: ZoneInfo
    ) -> list[tuple[datetime, datetime]]:
        """The quiet intervals (UTC) that touch ``[start, end)``."""
        out: list[tuple[datetime, datetime]] = []
        day = start.astimezone(zone).date() - timedelta(days=1)
        last = end.astimezone(zone).date()
        while day <= last:
            lo = local_instant(day, self.start, zone)
            end_day = day if self.end > self.start else day + timedelta(days=1)
            hi = local_instant(end_day, self.end, zone)
            if lo < end and hi > start:
                out.append((lo, hi))
            day += timedelta(days=1)
        return out

    def overlaps(self, start: datetime, end: datetime, zone: ZoneInfo) -> bool:
        """True if any part of ``[start, end)`` is inside the quiet hours."""
        return bool(self.windows(start, end, zone))
