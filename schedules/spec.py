"""When a schedule fires: ``--at``, ``--daily``, ``--weekly``, ``--cron``, within dates.

Times are wall-clock times in the site's zone. Expansion returns aware UTC instants.
Daylight-saving rules (not needed in Viet Nam, needed for a site configured elsewhere):

- a wall time that does not exist on a spring-forward day (02:30 in Berlin on the last
  Sunday of March) plays one hour later by the wall clock (03:30), the same instant
  Python's ``zoneinfo`` gives for it;
- a wall time that happens twice on a fall-back day plays once, at the first of the two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from schedules.exceptions import SpecError

Kind = Literal["at", "daily", "weekly", "cron"]
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
# A cron expression may fire every minute; a timeline never needs more than this.
MAX_OCCURRENCES = 20_000


def parse_hhmm(text: str, what: str = "time") -> time:
    """``HH:MM`` (24-hour clock) as a time; ``SpecError`` saying the format otherwise."""
    m = _HHMM.match(text.strip())
    if not m:
        raise SpecError(f"{what} {text!r} is not HH:MM on a 24-hour clock, e.g. 05:30 or 17:00")
    return time(int(m.group(1)), int(m.group(2)))


def parse_date(text: str, what: str) -> date:
    """``YYYY-MM-DD``; ``SpecError`` naming the option otherwise."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise SpecError(f"{what} {text!r} is not a date: use YYYY-MM-DD, e.g. 2026-06-01") from None


def parse_datetime(text: str, zone: ZoneInfo) -> datetime:
    """``YYYY-MM-DD HH:MM`` (or ISO 8601) in the site's zone unless it names an offset."""
    value = text.strip().replace("T", " ")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise SpecError(
            f"--at {text!r} is not a date and time: use 'YYYY-MM-DD HH:MM', e.g. '2026-06-01 05:30'"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return dt.astimezone(UTC)


def local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall time ``at`` on ``day`` in ``zone`` (DST rules above)."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True)
class Recurrence:
    """One schedule's firing rule; build it with :meth:`parse`."""

    kind: Kind
    at: datetime | None = None  # kind "at": the instant (UTC)
    time_of_day: time | None = None  # daily / weekly
    weekdays: tuple[int, ...] = ()  # weekly: 0 = Monday
    cron: str = ""
    valid_from: date | None = None
    valid_until: date | None = None
    _trigger_cache: dict[str, CronTrigger] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    @classmethod
    def parse(
        cls,
        *,
        zone: ZoneInfo,
        at: str | None = None,
        daily: str | None = None,
        weekly: str | None = None,
        cron: str | None = None,
        valid_from: str | None = None,
        valid_until: str | None = None,
    ) -> Recurrence:
        """Validate the command-line options of ``schedule add``."""
        options = (("--at", at), ("--daily", daily), ("--weekly", weekly), ("--cron", cron))
        given = [name for name, value in options if value is not None]
        if len(given) != 1:
            raise SpecError(
                "say when with exactly one of --at, --daily, --weekly or --cron"
                + (f" (got {', '.join(given)})" if given else "")
            )
        first = parse_date(valid_from, "--from") if valid_from else None
        last = parse_date(valid_until, "--until") if valid_until else None
        if first and last and last < first:
            raise SpecError(f"--until {last} is before --from {first}")
        if at is not None:
            if first or last:
                raise SpecError("--from/--until go with --daily, --weekly or --cron, not --at")
            return cls(kind="at", at=parse_datetime(at, zone))
        if daily is not None:
            return cls(
                kind="daily",
                time_of_day=parse_hhmm(daily, "--daily"),
                valid_from=first,
                valid_until=last,
            )
        if weekly is not None:
            days_text, sep, hhmm = weekly.partition("@")
            if not sep:
                raise SpecError(f"--weekly {weekly!r}: use DAYS@HH:MM, e.g. mon,wed,fri@05:30")
            days: list[int] = []
            for raw in days_text.split(","):
                d = raw.strip().lower()[:3]
                if d not in WEEKDAYS:
                    raise SpecError(
                        f"--weekly {weekly!r}: {raw.strip()!r} is not a day; "
                        f"use {','.join(WEEKDAYS)}"
                    )
                if WEEKDAYS.index(d) not in days:
                    days.append(WEEKDAYS.index(d))
            return cls(
                kind="weekly",
                time_of_day=parse_hhmm(hhmm, "--weekly time"),
                weekdays=tuple(sorted(days)),
                valid_from=first,
                valid_until=last,
            )
        assert cron is not None
        expr = " ".join(cron.split())
        try:
            CronTrigger.from_crontab(expr, timezone=zone)
        except ValueError as exc:
            raise SpecError(
                f"--cron {cron!r} is not a crontab expression (minute hour day month weekday, "
                f"e.g. '30 5 * * 1-6'): {exc}"
            ) from None
        return cls(kind="cron", cron=expr, valid_from=first, valid_until=last)

    # -- expansion ---------------------------------------------------------------------------

    def occurrences(self, start: datetime, end: datetime, zone: ZoneInfo) -> list[datetime]:
        """Firing instants in ``[start, end)`` (aware UTC), earliest first."""
        lo, hi = self._bounds(start, end, zone)
        if lo >= hi:
            return []
        if self.kind == "at":
            assert self.at is not None
            return [self.at] if lo <= self.at < hi else []
        if self.kind == "cron":
            return self._cron(lo, hi, zone)
        assert self.time_of_day is not None
        out: list[datetime] = []
        day = lo.astimezone(zone).date() - timedelta(days=1)
        last = hi.astimezone(zone).date()
        while day <= last:
            if self.kind == "daily" or day.weekday() in self.weekdays:
                t = local_instant(day, self.time_of_day, zone)
                if lo <= t < hi:
                    out.append(t)
            day += timedelta(days=1)
        return out

    def _bounds(self, start: datetime, end: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
        lo, hi = start.astimezone(UTC), end.astimezone(UTC)
        if self.valid_from is not None:
            lo = max(lo, local_instant(self.valid_from, time.min, zone))
        if self.valid_until is not None:
            hi = min(hi, local_instant(self.valid_until + timedelta(days=1), time.min, zone))
        return lo, hi

    def _cron(self, lo: datetime, hi: datetime, zone: ZoneInfo) -> list[datetime]:
        key = zone.key
        trigger = self._trigger_cache.get(key)
        if trigger is None:
            trigger = CronTrigger.from_crontab(self.cron, timezone=zone)
            self._trigger_cache[key] = trigger
        out: list[datetime] = []
        seen_wall: set[tuple[date, time]] = set()
        prev: datetime | None = None
        now = lo - timedelta(microseconds=1)
        while len(out) < MAX_OCCURRENCES:
            fire = trigger.get_next_fire_time(prev, now)
            if fire is None or fire >= hi:
                break
            prev = now = fire
            if fire < lo:
                continue
            wall = fire.astimezone(zone)
            # APScheduler fires a wall time twice on a fall-back day; a bulletin plays once.
            key_wall = (wall.date(), wall.time().replace(fold=0))
            if key_wall in seen_wall:
                continue
            seen_wall.add(key_wall)
            out.append(fire.astimezone(UTC))
        return out

    def next_after(self, after: datetime, zone: ZoneInfo, within: timedelta) -> datetime | None:
        """The first firing strictly after ``after`` within ``within``, if any."""
        for t in self.occurrences(after + timedelta(microseconds=1), after + within, zone):
            return t
        return None

    # -- text and storage -------------------------------------------------------------------

    def describe(self, zone: ZoneInfo) -> str:
        """How the officer would say it, e.g. ``weekly mon,wed,fri@05:30 from 2026-06-01``."""
        if self.kind == "at":
            assert self.at is not None
            return "once " + self.at.astimezone(zone).strftime("%Y-%m-%d %H:%M")
        if self.kind == "daily":
            assert self.time_of_day is not None
            text = f"daily {self.time_of_day:%H:%M}"
        elif self.kind == "weekly":
            assert self.time_of_day is not None
            days = ",".join(WEEKDAYS[d] for d in self.weekdays)
            text = f"weekly {days}@{self.time_of_day:%H:%M}"
        else:
            text = f"cron '{self.cron}'"
        if self.valid_from:
            text += f" from {self.valid_from}"
        if self.valid_until:
            text += f" until {self.valid_until}"
        return text

    def to_json(self) -> dict[str, Any]:
        """The stored form (a JSON object)."""
        return {
            "kind": self.kind,
            "at": self.at.isoformat() if self.at else None,
            "time": self.time_of_day.strftime("%H:%M") if self.time_of_day else None,
            "weekdays": list(self.weekdays),
            "cron": self.cron,
            "from": self.valid_from.isoformat() if self.valid_from else None,
            "until": self.valid_until.isoformat() if self.valid_until else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recurrence:
        """Read the stored form back; ``SpecError`` if it was tampered with."""
        try:
            kind = data["kind"]
            if kind not in ("at", "daily", "weekly", "cron"):
                raise ValueError(f"unknown kind {kind!r}")
            return cls(
                kind=kind,
                at=datetime.fromisoformat(data["at"]).astimezone(UTC) if data.get("at") else None,
                time_of_day=time.fromisoformat(data["time"]) if data.get("time") else None,
                weekdays=tuple(int(d) for d in data.get("weekdays") or ()),
                cron=str(data.get("cron") or ""),
                valid_from=date.fromisoformat(data["from"]) if data.get("from") else None,
                valid_until=date.fromisoformat(data["until"]) if data.get("until") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"stored schedule rule {data!r} is unreadable: {exc}") from None
