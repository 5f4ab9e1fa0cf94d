"""The timeline: what plays where and when, with conflicts placed the Circular 39 way.

Pure logic: schedules in, placed blocks out; no database, no scheduler, no clock.

- A schedule fires at each occurrence of its rule. What it plays there is a *programme*:
  its announcements in the order given, priority items first (stable), one after another
  with :data:`CHANGEOVER` between them. The programme of one occurrence is a *block*.
- Blocks are placed in order of precedence: priority blocks before normal ones (a block
  is a priority block if any item in it is), schedules that replace others before the
  rest, then older schedules before newer ones, then earlier occurrences first.
- A block is placed at its own time if all its clusters are free then; otherwise it is
  moved after what is already placed there ("placed after"). A priority block that
  collides with another priority block only gets here when the officer chose ``--after``
  (:func:`check_addition` refuses otherwise), or when the other schedule ``--replace``-d
  it: then this occurrence is dropped ("replaced").
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from firmware_bridge.protocol import Priority
from schedules.exceptions import ConflictError, QuietHoursError, SpecError
from schedules.quiet import QuietHours
from schedules.spec import Recurrence

# Silence between two items of a programme (and between two programmes on one cluster).
CHANGEOVER = timedelta(seconds=2)
# A block is never pushed further than this from its own time; beyond, it is dropped.
MAX_PUSH = timedelta(hours=12)
# How far ahead `schedule add` looks for conflicts and quiet-hour violations.
CHECK_AHEAD = timedelta(days=35)
OnConflict = Literal["", "after", "replace"]


@dataclass(frozen=True)
class Item:
    """One announcement in a programme."""

    announcement_id: str
    title: str
    duration_s: float
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True)
class Plan:
    """A schedule as the planner sees it (built from the stored row)."""

    id: int
    title: str
    recurrence: Recurrence
    items: tuple[Item, ...]
    clusters: frozenset[str]
    repeat: int = 1
    gap_s: float = 0.0
    on_conflict: OnConflict = ""
    replaces: frozenset[int] = frozenset()

    @property
    def level(self) -> Priority:
        """PRIORITY if any item is a priority item, else NORMAL."""
        if any(i.priority is Priority.PRIORITY for i in self.items):
            return Priority.PRIORITY
        return Priority.NORMAL

    def programme(self) -> list[Item]:
        """The items in playing order: priority items first, otherwise as given."""
        return sorted(self.items, key=lambda i: 0 if i.priority is Priority.PRIORITY else 1)

    def air_time(self, item: Item) -> timedelta:
        """How long one item keeps the cluster busy (all its repeats)."""
        return timedelta(seconds=item.duration_s * self.repeat + self.gap_s * (self.repeat - 1))

    @property
    def length(self) -> timedelta:
        """How long a whole programme lasts."""
        items = self.items
        total = sum((self.air_time(i) for i in items), timedelta(0))
        return total + CHANGEOVER * (len(items) - 1)

    def _precedence(self) -> tuple[int, int, int]:
        level = 0 if self.level is Priority.PRIORITY else 1
        if self.on_conflict == "replace":
            return (level, 0, -self.id)  # the newest replacement wins
        return (level, 1, self.id)


@dataclass(frozen=True)
class Placed:
    """One item of one occurrence, at its planned time."""

    schedule_id: int
    slot_at: datetime
    position: int
    announcement_id: str
    title: str
    priority: Priority
    start: datetime
    end: datetime

    @property
    def key(self) -> tuple[int, datetime, int]:
        """What identifies it across rebuilds of the timeline."""
        return (self.schedule_id, self.slot_at, self.position)


@dataclass(frozen=True)
class Block:
    """One occurrence of a schedule: its programme, placed."""

    plan: Plan
    slot_at: datetime
    start: datetime
    items: tuple[Placed, ...]
    after: tuple[int, ...] = ()  # schedules it was moved after
    replaced_by: int | None = None  # dropped: this schedule replaced it here
    dropped: str = ""  # why it is not on the timeline (replaced, pushed too far)

    @property
    def end(self) -> datetime:
        """When its last item ends."""
        return self.start + self.plan.length

    @property
    def shifted(self) -> timedelta:
        """How much later than its own time it plays."""
        return self.start - self.slot_at

    @property
    def clusters(self) -> frozenset[str]:
        """Where it plays."""
        return self.plan.clusters


@dataclass
class Timeline:
    """Placed blocks (``blocks``) and those dropped (``dropped``), by start time."""

    blocks: list[Block] = field(default_factory=list)
    dropped: list[Block] = field(default_factory=list)

    def items(self) -> list[Placed]:
        """Every placed item, by start time."""
        return sorted((p for b in self.blocks for p in b.items), key=lambda p: (p.start, p.key))

    def block_of(self, schedule_id: int, slot_at: datetime) -> Block | None:
        """The block of one occurrence, placed or dropped."""
        for b in (*self.blocks, *self.dropped):
            if b.plan.id == schedule_id and b.slot_at == slot_at:
                return b
        return None


def _place_items(plan: Plan, slot_at: datetime, start: datetime) -> tuple[Placed, ...]:
    out: list[Placed] = []
    t = start
    for pos, item in enumerate(plan.programme()):
        end = t + plan.air_time(item)
        out.append(
            Placed(plan.id, slot_at, pos, item.announcement_id, item.title, item.priority, t, end)
        )
        t = end + CHANGEOVER
    return tuple(out)


class _Busy:
    """Per cluster, the placed blocks sorted by start."""

    def __init__(self) -> None:
        self._by_cluster: dict[str, list[tuple[datetime, datetime, int, Block]]] = defaultdict(list)
        self._n = 0

    def first_clash(self, clusters: Iterable[str], start: datetime, end: datetime) -> Block | None:
        best: tuple[datetime, Block] | None = None
        for c in clusters:
            rows = self._by_cluster.get(c)
            if not rows:
                continue
            # Blocks are at most MAX_PUSH + a programme long; look from well before.
            i = bisect.bisect_left(rows, (start - MAX_PUSH - timedelta(hours=12),))
            for s, e, _, b in rows[i:]:
                if s >= end + CHANGEOVER:
                    break
                if e + CHANGEOVER > start and (best is None or e > best[0]):
                    best = (e, b)
        return best[1] if best else None

    def add(self, block: Block) -> None:
        self._n += 1
        for c in block.clusters:
            bisect.insort(self._by_cluster[c], (block.start, block.end, self._n, block))


def build_timeline(
    plans: Sequence[Plan], start: datetime, end: datetime, zone: ZoneInfo
) -> Timeline:
    """Expand and place every plan's occurrences in ``[start, end)``."""
    # Occurrences a little before the window can push blocks into it.
    margin = max((p.length for p in plans), default=timedelta(0)) + timedelta(hours=1)
    pending: list[tuple[tuple[int, int, int], datetime, Plan]] = []
    for plan in plans:
        if not plan.items or not plan.clusters:
            continue
        for at in plan.recurrence.occurrences(start - margin, end, zone):
            pending.append((plan._precedence(), at, plan))
    pending.sort(key=lambda x: (x[0], x[1]))
    busy = _Busy()
    timeline = Timeline()
    for _, at, plan in pending:
        t = at
        after: list[int] = []
        dropped: Block | None = None
        while True:
            clash = busy.first_clash(plan.clusters, t, t + plan.length)
            if clash is None:
                break
            other = clash.plan
            if (
                plan.level is Priority.PRIORITY
                and other.on_conflict == "replace"
                and plan.id in other.replaces
            ):
                dropped = Block(
                    plan, at, at, _place_items(plan, at, at), replaced_by=other.id,
                    dropped=f"replaced by schedule {other.id}",
                )  # fmt: skip
                break
            if other.id not in after:
                after.append(other.id)
            t = clash.end + CHANGEOVER
            if t - at > MAX_PUSH:
                dropped = Block(
                    plan, at, t, _place_items(plan, at, t), tuple(after),
                    dropped=f"pushed more than {MAX_PUSH} past its time",
                )  # fmt: skip
                break
        if dropped is not None:
            timeline.dropped.append(dropped)
            continue
        block = Block(plan, at, t, _place_items(plan, at, t), tuple(after))
        busy.add(block)
        timeline.blocks.append(block)
    timeline.blocks.sort(key=lambda b: (b.start, b.plan.id))
    timeline.blocks = [b for b in timeline.blocks if b.end > start and b.start < end]
    timeline.dropped.sort(key=lambda b: (b.slot_at, b.plan.id))
    return timeline


# -- checking a change -----------------------------------------------------------------------


@dataclass(frozen=True)
class Collision:
    """A new occurrence that overlaps another schedule's block on some clusters."""

    slot_at: datetime
    other: Block
    clusters: frozenset[str]


@dataclass
class CheckResult:
    """What adding (or resuming) a schedule does to the timeline."""

    plan: Plan
    timeline: Timeline
    notes: list[str] = field(default_factory=list)
    occurrences: int = 0


def _fmt(t: datetime, zone: ZoneInfo, with_day: bool = True) -> str:
    return t.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S" if with_day else "%H:%M:%S")


def priority_collisions(
    existing: Timeline, plan: Plan, start: datetime, end: datetime, zone: ZoneInfo
) -> list[Collision]:
    """Occurrences of ``plan`` overlapping an already placed priority block (same cluster)."""
    if plan.level is not Priority.PRIORITY:
        return []
    out: list[Collision] = []
    for at in plan.recurrence.occurrences(start, end, zone):
        block_end = at + plan.length
        for b in existing.blocks:
            if b.plan.level is not Priority.PRIORITY or b.plan.id == plan.id:
                continue
            shared = b.clusters & plan.clusters
            if shared and b.start < block_end + CHANGEOVER and b.end + CHANGEOVER > at:
                out.append(Collision(at, b, shared))
    return out


def first_occurrence(recurrence: Recurrence, start: datetime, zone: ZoneInfo) -> datetime:
    """The first firing at or after ``start``; ``SpecError`` if it never fires again.

    Looks as far ahead as a year of conflict checks (12 x :data:`CHECK_AHEAD`): a rule
    that fires no sooner than that would never be checked against the timeline.
    """
    first = recurrence.next_after(start - timedelta(microseconds=1), zone, CHECK_AHEAD * 12)
    if first is None:
        raise SpecError(
            f"{recurrence.describe(zone)} never happens after now "
            f"({start.astimezone(zone):%Y-%m-%d %H:%M}): nothing would play"
        )
    return first


def check_addition(
    existing: Sequence[Plan],
    plan: Plan,
    start: datetime,
    zone: ZoneInfo,
    quiet: QuietHours | None,
    *,
    ahead: timedelta = CHECK_AHEAD,
) -> CheckResult:
    """Check ``plan`` against the timeline of ``existing`` over ``[start, start + ahead)``.

    Raises :class:`ConflictError` when a priority item collides with another priority
    item and the plan says neither ``after`` nor ``replace``; raises
    :class:`QuietHoursError` when, after placement, any block would play inside the quiet
    hours. Otherwise returns the new timeline and notes saying what moved.
    """
    end = start + ahead
    others = [p for p in existing if p.id != plan.id]
    before = build_timeline(others, start, end, zone)
    clashes = priority_collisions(before, plan, start, end, zone)
    if clashes and plan.on_conflict == "":
        lines = []
        for c in clashes[:5]:
            lines.append(
                f"  {_fmt(c.slot_at, zone)}: schedule {c.other.plan.id} "
                f"'{c.other.plan.title}' plays {_fmt(c.other.start, zone, False)}-"
                f"{_fmt(c.other.end, zone, False)} on {', '.join(sorted(c.clusters))}"
            )
        more = f"\n  ... and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise ConflictError(
            "this priority item collides with another priority item, and Circular 39/2020 "
            "leaves the order to a person:\n"
            + "\n".join(lines)
            + more
            + "\nadd it again with --after (play after the other) or --replace (play "
            "instead of the other in these slots)"
        )
    if plan.on_conflict == "replace":
        plan = replace(plan, replaces=frozenset(c.other.plan.id for c in clashes))
    after = build_timeline([*others, plan], start, end, zone)
    result = CheckResult(plan, after)
    result.occurrences = sum(1 for b in after.blocks if b.plan.id == plan.id)
    result.occurrences += sum(1 for b in after.dropped if b.plan.id == plan.id)
    if quiet is not None:
        bad = [b for b in after.blocks if quiet.overlaps(b.start, b.end, zone)]
        if bad:
            b = bad[0]
            who = (
                "it"
                if b.plan.id == plan.id
                else f"schedule {b.plan.id} '{b.plan.title}' (pushed by this one)"
            )
            raise QuietHoursError(
                f"{who} would play {_fmt(b.start, zone)}-{_fmt(b.end, zone, False)}, inside "
                f"the site's quiet hours {quiet} ({len(bad)} occurrence(s) in the next "
                f"{ahead.days} days); choose another time (emergencies are not affected)"
            )
    result.notes = _describe_moves(before, after, plan, zone)
    return result


def _describe_moves(before: Timeline, after: Timeline, plan: Plan, zone: ZoneInfo) -> list[str]:
    was = {(b.plan.id, b.slot_at): b for b in before.blocks}
    groups: dict[tuple[int, str, str, tuple[int, ...]], list[Block]] = defaultdict(list)
    for b in after.blocks:
        old = was.get((b.plan.id, b.slot_at))
        if b.plan.id == plan.id:
            if b.after:
                key = (b.plan.id, _fmt(b.slot_at, zone, False), _fmt(b.start, zone, False), b.after)
                groups[key].append(b)
        elif old is not None and old.start != b.start:
            key = (b.plan.id, _fmt(old.start, zone, False), _fmt(b.start, zone, False), b.after)
            groups[key].append(b)
    notes: list[str] = []
    for (sid, frm, to, behind), blocks in groups.items():
        first = blocks[0].slot_at.astimezone(zone).strftime("%a %Y-%m-%d")
        times = f"{len(blocks)} occurrence(s) from {first}"
        names = ", ".join(str(i) for i in behind)
        if sid == plan.id:
            notes.append(f"placed after schedule {names}: plays at {to} instead of {frm} ({times})")
        else:
            notes.append(
                f"schedule {sid} '{blocks[0].plan.title}' (normal) now plays at {to} instead "
                f"of {frm}, after schedule {names} ({times})"
            )
    for b in after.dropped:
        if b.replaced_by == plan.id:
            notes.append(
                f"schedule {b.plan.id} '{b.plan.title}' is replaced on "
                f"{_fmt(b.slot_at, zone)} (--replace)"
            )
        elif b.plan.id == plan.id or b.plan.id in {g[0] for g in groups}:
            notes.append(f"schedule {b.plan.id} on {_fmt(b.slot_at, zone)}: {b.dropped}")
    return notes
