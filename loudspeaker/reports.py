"""Monthly figures: what the commune reports upward, computed from the stored records.

Pure reads: a handful of GROUP BY queries (so a province-sized month is aggregated by
the database, not row by row in Python) and the availability intervals. Rendering is
in :mod:`loudspeaker.report_xlsx` and :mod:`loudspeaker.report_png`.

How things are counted (also printed on the report's notes sheet):

- A broadcast belongs to the month of its scheduled time (``scheduled_for``, else
  ``created_at``), in the site's zone: 2026-11-30 23:30 local is November.
- Minutes on air of a cluster = sum over its *played* deliveries of media duration x
  repeat. Gaps between repeats are silence and not counted. A delivery that started and
  was then stopped, failed or lost ("interrupted") counts no minutes: nothing records
  how much of it was heard, and a report sent upward must not overstate.
- Minutes on air of a hamlet (or the commune) = airtime of the *distinct* broadcasts
  that played on at least one of its clusters: what residents heard, not speaker-minutes
  (those are the "cluster-minutes" column).
- Availability: online and offline time from the cluster's availability intervals,
  clipped to the month and to "now". Time not covered by any interval (before a
  cluster's first report, or while nothing was recorded) is *unknown*, shown as such.
- Alarms: raised in the month, per cluster (:func:`count_alarms`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from sqlalchemy import (
    Connection,
    and_,
    distinct,
    func,
    or_,
    select,
)
from sqlmodel import col

from firmware_bridge.protocol import Priority
from loudspeaker.exceptions import ReportError
from loudspeaker.logbook import FAILED, MISSED, OUTCOMES, PENDING, PLAYED, UNREACHABLE, outcome_of
from loudspeaker.logbook import scheduled_time as _scheduled
from loudspeaker.models import (
    AlarmRecord,
    Broadcast,
    ClusterAvailability,
    ClusterRecord,
    Delivery,
    HamletRecord,
    MediaRecord,
    SiteRecord,
)

logger = logging.getLogger(__name__)

PRIORITIES = tuple(p.value for p in Priority)
UNKNOWN_HAMLET = ""  # deliveries to clusters no longer in the site file

_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, order=True)
class Month:
    """A calendar month, e.g. ``Month.parse("2026-11")``."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        """Parse ``YYYY-MM``; ``ReportError`` says what is expected."""
        m = _MONTH.match(text.strip())
        if not m or not 1 <= int(m.group(2)) <= 12 or not 1970 <= int(m.group(1)) <= 9999:
            raise ReportError(f"month {text!r} is not YYYY-MM, e.g. 2026-11")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def label(self) -> str:
        """Vietnamese style, e.g. ``11/2026``."""
        return f"{self.month:02d}/{self.year:04d}"

    @property
    def first_day(self) -> date:
        """The first day of the month."""
        return date(self.year, self.month, 1)

    @property
    def next(self) -> Month:
        """The following month."""
        return Month(self.year + 1, 1) if self.month == 12 else Month(self.year, self.month + 1)

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """UTC [start, end) of the month in ``zone``."""
        start = datetime.combine(self.first_day, time.min, tzinfo=zone)
        end = datetime.combine(self.next.first_day, time.min, tzinfo=zone)
        return start.astimezone(UTC), end.astimezone(UTC)


@dataclass
class Counts:
    """Broadcast figures of a cluster, a hamlet or the whole site."""

    bulletins: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    interrupted: int = 0  # started playing, then failed or lost
    air_s: float = 0.0  # distinct broadcasts heard (see module docstring)
    cluster_air_s: float = 0.0  # summed over clusters

    @property
    def deliveries(self) -> int:
        """Broadcast x cluster pairs."""
        return sum(self.outcomes.values())

    @property
    def total_bulletins(self) -> int:
        """Bulletins of every priority."""
        return sum(self.bulletins.values())

    @property
    def minutes_on_air(self) -> float:
        """``air_s`` in minutes."""
        return self.air_s / 60

    @property
    def cluster_minutes(self) -> float:
        """``cluster_air_s`` in minutes."""
        return self.cluster_air_s / 60

    def add(self, other: Counts) -> None:
        """Add another's deliveries (not bulletins or airtime, which are distinct counts)."""
        for k, v in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + v
        self.interrupted += other.interrupted
        self.cluster_air_s += other.cluster_air_s


@dataclass
class Availability:
    """Seconds online, offline and unknown within the elapsed part of the month."""

    online_s: float = 0.0
    offline_s: float = 0.0
    unknown_s: float = 0.0

    @property
    def window_s(self) -> float:
        """The elapsed time these seconds are shares of."""
        return self.online_s + self.offline_s + self.unknown_s

    def pct(self, part: float) -> float | None:
        """``part`` as a percentage of the window (None when nothing has elapsed)."""
        return None if self.window_s <= 0 else 100.0 * part / self.window_s

    @property
    def online_pct(self) -> float | None:
        """Percentage of the elapsed month the cluster was known to be online."""
        return self.pct(self.online_s)

    @property
    def offline_pct(self) -> float | None:
        """Percentage known offline."""
        return self.pct(self.offline_s)

    @property
    def unknown_pct(self) -> float | None:
        """Percentage with no record either way."""
        return self.pct(self.unknown_s)

    def add(self, other: Availability) -> None:
        """Sum cluster-seconds (a hamlet's availability is the share of cluster-time)."""
        self.online_s += other.online_s
        self.offline_s += other.offline_s
        self.unknown_s += other.unknown_s


@dataclass
class ClusterFigures:
    """One cluster's month."""

    id: str
    name: str
    hamlet: str
    counts: Counts = field(default_factory=Counts)
    availability: Availability = field(default_factory=Availability)
    alarms: int = 0


@dataclass
class HamletFigures:
    """One hamlet's month (its clusters summed; airtime counted per distinct broadcast)."""

    id: str
    name: str
    clusters: list[str] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    availability: Availability = field(default_factory=Availability)
    alarms: int = 0


@dataclass(frozen=True)
class ReasonLine:
    """How often one cluster ended a delivery failed/unreachable/missed for one reason."""

    hamlet: str
    cluster: str
    outcome: str
    reason: str
    count: int


@dataclass
class MonthlyReport:
    """Everything the monthly report shows."""

    site_id: str
    site_name: str
    zone: str
    month: Month
    start: datetime
    end: datetime
    generated_at: datetime
    elapsed_s: float
    hamlets: list[HamletFigures]
    clusters: list[ClusterFigures]
    total: Counts
    availability: Availability
    reasons: list[ReasonLine]
    alarms: int
    # Always True since the migrations create the alarm table; the "not recorded" rendering
    # it guards (report_xlsx) is left from before health landed (see the closing note).
    alarms_recorded: bool

    @property
    def empty(self) -> bool:
        """No broadcast in the month."""
        return self.total.deliveries == 0

    def hamlet_name(self, hamlet_id: str) -> str:
        """The hamlet's name, or a label for clusters no longer in the site."""
        for h in self.hamlets:
            if h.id == hamlet_id:
                return h.name
        return hamlet_id or "(cụm đã gỡ khỏi sơ đồ)"

    def to_json(self) -> dict[str, object]:
        """JSON-ready summary (used by ``--json``)."""

        def counts(c: Counts) -> dict[str, object]:
            return {
                "minutes_on_air": round(c.minutes_on_air, 2),
                "cluster_minutes": round(c.cluster_minutes, 2),
                "bulletins": dict(c.bulletins),
                "outcomes": dict(c.outcomes),
                "interrupted": c.interrupted,
            }

        def avail(a: Availability) -> dict[str, object]:
            return {
                "online_pct": _r(a.online_pct),
                "offline_pct": _r(a.offline_pct),
                "unknown_pct": _r(a.unknown_pct),
            }

        return {
            "site": self.site_id,
            "month": str(self.month),
            "zone": self.zone,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "total": counts(self.total),
            "availability": avail(self.availability),
            "alarms": self.alarms if self.alarms_recorded else None,
            "hamlets": [
                {"hamlet": h.id, "name": h.name, **counts(h.counts), **avail(h.availability)}
                | {"alarms": h.alarms if self.alarms_recorded else None}
                for h in self.hamlets
            ],
            "clusters": [
                {"cluster": c.id, "hamlet": c.hamlet, **counts(c.counts), **avail(c.availability)}
                | {"alarms": c.alarms if self.alarms_recorded else None}
                for c in self.clusters
            ],
            "reasons": [r.__dict__ for r in self.reasons],
        }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- availability ----------------------------------------------------------------------------


def clip_intervals(
    intervals: Iterable[tuple[bool, datetime, datetime | None]],
    start: datetime,
    end: datetime,
    now: datetime,
) -> Availability:
    """Online/offline/unknown seconds of one cluster within [start, min(end, now)).

    ``intervals`` are (online, started_at, ended_at or None while open). An open
    interval lasts until ``now``. Overlaps (which the dispatcher never writes) are
    resolved in favour of the interval that started first.
    """
    stop = min(end, now)
    window = max(0.0, (stop - start).total_seconds())
    out = Availability()
    cursor = start
    for online, began, ended in sorted(intervals, key=lambda i: i[1]):
        lo = max(began, cursor)
        hi = min(ended or now, stop)
        if hi <= lo:
            continue
        secs = (hi - lo).total_seconds()
        if online:
            out.online_s += secs
        else:
            out.offline_s += secs
        cursor = hi
    out.unknown_s = max(0.0, window - out.online_s - out.offline_s)
    return out


def _availability(
    conn: Connection, start: datetime, end: datetime, now: datetime
) -> dict[str, Availability]:
    av = ClusterAvailability
    rows = conn.execute(
        select(col(av.cluster_id), col(av.online), col(av.started_at), col(av.ended_at)).where(
            col(av.started_at) < min(end, now),
            or_(col(av.ended_at).is_(None), col(av.ended_at) > start),
        )
    ).all()
    by_cluster: dict[str, list[tuple[bool, datetime, datetime | None]]] = defaultdict(list)
    for cluster, online, began, ended in rows:
        by_cluster[cluster].append((bool(online), began, ended))
    return {c: clip_intervals(iv, start, end, now) for c, iv in by_cluster.items()}


# -- alarms -----------------------------------------------------------------------------------


def count_alarms(conn: Connection, start: datetime, end: datetime) -> dict[str, int]:
    """Alarms raised per cluster in [start, end) (the health monitor's ``alarm`` table)."""
    rows = conn.execute(
        select(col(AlarmRecord.cluster_id), func.count())
        .where(col(AlarmRecord.raised_at) >= start, col(AlarmRecord.raised_at) < end)
        .group_by(col(AlarmRecord.cluster_id))
    ).all()
    return {str(c): int(n) for c, n in rows}


# -- the month -------------------------------------------------------------------------------


def monthly_report(
    conn: Connection, month: Month, zone: ZoneInfo, *, now: datetime | None = None
) -> MonthlyReport:
    """Compute a month's figures from the stored records (empty month: zero figures)."""
    t_now = now or datetime.now(UTC)
    start, end = month.bounds(zone)
    site = conn.execute(select(col(SiteRecord.id), col(SiteRecord.name))).first()
    hamlets = {
        h: HamletFigures(h, n)
        for h, n in conn.execute(
            select(col(HamletRecord.id), col(HamletRecord.name)).order_by(col(HamletRecord.id))
        )
    }
    clusters: dict[str, ClusterFigures] = {}
    for cid, name, hamlet in conn.execute(
        select(col(ClusterRecord.id), col(ClusterRecord.name), col(ClusterRecord.hamlet_id))
    ):
        clusters[cid] = ClusterFigures(cid, name, hamlet)

    def cluster(cid: str) -> ClusterFigures:
        if cid not in clusters:
            clusters[cid] = ClusterFigures(cid, "", UNKNOWN_HAMLET)
        return clusters[cid]

    in_month = and_(_scheduled() >= start, _scheduled() < end)
    airtime = func.coalesce(col(MediaRecord.duration_s), 0.0) * col(Broadcast.repeat)
    base = (
        select()
        .select_from(Delivery)
        .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
        .outerjoin(MediaRecord, col(MediaRecord.sha256) == col(Broadcast.media_sha256))
        .where(in_month)
    )

    # 1. per cluster x priority x state: deliveries, interrupted, cluster airtime.
    q1 = base.add_columns(
        col(Delivery.cluster_id),
        col(Broadcast.priority),
        col(Delivery.state),
        func.count(),
        func.sum(airtime),
        func.count(col(Delivery.playing_at)),
    ).group_by(col(Delivery.cluster_id), col(Broadcast.priority), col(Delivery.state))
    total = Counts()
    for cid, priority, state, n, air, n_started in conn.execute(q1):
        c = cluster(cid).counts
        outcome = outcome_of(state)
        c.outcomes[outcome] += n
        c.bulletins[priority] = c.bulletins.get(priority, 0) + n
        if outcome == PLAYED:
            # For one cluster, what it played is what it aired.
            c.air_s += float(air or 0.0)
            c.cluster_air_s += float(air or 0.0)
        elif outcome in (FAILED, UNREACHABLE):
            c.interrupted += int(n_started)

    # 2. distinct bulletins and airtime per hamlet, and for the whole site.
    hamlet_col = func.coalesce(col(ClusterRecord.hamlet_id), UNKNOWN_HAMLET)
    with_hamlet = base.outerjoin(ClusterRecord, col(ClusterRecord.id) == col(Delivery.cluster_id))
    q2 = with_hamlet.add_columns(
        hamlet_col, col(Broadcast.priority), func.count(distinct(col(Broadcast.id)))
    ).group_by(hamlet_col, col(Broadcast.priority))
    for hid, priority, n in conn.execute(q2):
        h = _hamlet(hamlets, hid)
        h.counts.bulletins[priority] = h.counts.bulletins.get(priority, 0) + n
    played_pairs = (
        with_hamlet.add_columns(
            hamlet_col.label("hamlet"), col(Broadcast.id).label("bid"), airtime.label("air")
        )
        .where(col(Delivery.state) == PLAYED)
        .distinct()
        .subquery()
    )
    for hid, air in conn.execute(
        select(played_pairs.c.hamlet, func.sum(played_pairs.c.air)).group_by(played_pairs.c.hamlet)
    ):
        _hamlet(hamlets, hid).counts.air_s = float(air or 0.0)
    q3 = base.add_columns(
        col(Broadcast.priority), func.count(distinct(col(Broadcast.id)))
    ).group_by(col(Broadcast.priority))
    for priority, n in conn.execute(q3):
        total.bulletins[priority] = total.bulletins.get(priority, 0) + n
    played_site = (
        base.add_columns(col(Broadcast.id).label("bid"), airtime.label("air"))
        .where(col(Delivery.state) == PLAYED)
        .distinct()
        .subquery()
    )
    total.air_s = float(conn.execute(select(func.sum(played_site.c.air))).scalar() or 0.0)

    # 3. reasons for everything that did not play.
    q4 = (
        base.add_columns(
            col(Delivery.cluster_id), col(Delivery.state), col(Delivery.reason), func.count()
        )
        .where(col(Delivery.state).in_([FAILED, UNREACHABLE, MISSED]))
        .group_by(col(Delivery.cluster_id), col(Delivery.state), col(Delivery.reason))
    )
    reasons = [
        ReasonLine(cluster(cid).hamlet, cid, state, reason or "(không rõ lý do)", n)
        for cid, state, reason, n in conn.execute(q4)
    ]
    reasons.sort(key=lambda r: (r.hamlet, r.cluster, r.outcome, -r.count, r.reason))

    # 4. availability and alarms.
    avail = _availability(conn, start, end, t_now)
    window = max(0.0, (min(end, t_now) - start).total_seconds())
    alarms = count_alarms(conn, start, end)
    for cid, cf in clusters.items():
        cf.availability = avail.get(cid) or Availability(unknown_s=window)
        cf.alarms = alarms.get(cid, 0)
    for cid in alarms.keys() - clusters.keys():
        cluster(cid).alarms = alarms[cid]

    site_av = Availability()
    for cf in sorted(clusters.values(), key=lambda c: c.id):
        h = _hamlet(hamlets, cf.hamlet)
        h.clusters.append(cf.id)
        h.counts.add(cf.counts)
        h.availability.add(cf.availability)
        h.alarms += cf.alarms
        total.add(cf.counts)
        site_av.add(cf.availability)
    # A removed cluster with no history in this month need not appear.
    shown = [
        c
        for c in clusters.values()
        if c.hamlet != UNKNOWN_HAMLET or c.counts.deliveries or c.alarms
    ]
    hamlet_list = [
        h for h in hamlets.values() if h.id != UNKNOWN_HAMLET or h.counts.deliveries or h.alarms
    ]
    return MonthlyReport(
        site_id=site[0] if site else "",
        site_name=site[1] if site else "",
        zone=zone.key,
        month=month,
        start=start,
        end=end,
        generated_at=t_now,
        elapsed_s=window,
        hamlets=sorted(hamlet_list, key=lambda h: (h.id == UNKNOWN_HAMLET, h.id)),
        clusters=sorted(shown, key=lambda c: (c.hamlet == UNKNOWN_HAMLET, c.hamlet, c.id)),
        total=total,
        availability=site_av,
        reasons=reasons,
        alarms=sum((alarms or {}).values()),
        alarms_recorded=True,
    )


def _hamlet(hamlets: dict[str, HamletFigures], hid: str) -> HamletFigures:
    if hid not in hamlets:
        hamlets[hid] = HamletFigures(hid, hid or "(cụm đã gỡ khỏi sơ đồ)")
    return hamlets[hid]


__all__ = [
    "FAILED",
    "MISSED",
    "PENDING",
    "PLAYED",
    "UNREACHABLE",
    "Availability",
    "ClusterFigures",
    "Counts",
    "HamletFigures",
    "Month",
    "MonthlyReport",
    "ReasonLine",
    "clip_intervals",
    "count_alarms",
    "monthly_report",
]
