"""The controller's scheduler: turns the timeline into staged broadcasts on the clusters.

Only ``loudspeaker serve`` runs it (one scheduler per database). The schedule rows in our
database are the source of truth; APScheduler (3.11, a MemoryJobStore) only decides
*when* to look at them again: an interval job every ``sync_interval_s`` and a date job at
the next instant an occurrence enters the staging horizon. Nothing APScheduler holds
needs to survive a crash: on start, and on every poke from the CLI, the runner rebuilds
the timeline from the database and acts on the difference:

- an item whose time enters the horizon is *staged*: a Broadcast (``scheduled_for``) with
  one Delivery per cluster whose PlayCommand carries ``start_at`` and ``expires_at =
  start_at + grace``; the cluster stores it and plays it by its own clock;
- a staged item whose schedule was removed, paused or changed, or that moved on the
  timeline, is *withdrawn* (and staged again where it now belongs);
- an item whose time passed while nothing could stage it plays late if within the grace,
  else it is recorded *missed*.

Idempotency: a ``schedule_slot`` row (unique per schedule, occurrence and position) is
written in the same transaction as the broadcast. A controller killed at any point and
restarted either finds the row (and stages nothing) or finds nothing (and stages once).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from firmware_bridge.protocol import utcnow
from loudspeaker.broadcasts import create_broadcast
from loudspeaker.db import as_utc
from loudspeaker.db_faults import DB_ERRORS, DbFaults
from loudspeaker.inbound import AckIn
from loudspeaker.models import (
    Announcement,
    ClusterClock,
    Delivery,
    DeliveryState,
    MediaRecord,
    ScheduleRecord,
    ScheduleSlot,
)
from loudspeaker.schedule_store import SiteContext, active_records, plan_of, site_context
from loudspeaker.worker import OwnThread
from schedules.clock import ClockWatch
from schedules.timeline import Placed, Plan, build_timeline

logger = logging.getLogger(__name__)

# A staged item this close to its time (or past it) is left alone: it may be starting.
_NO_WITHDRAW = timedelta(seconds=2)
# Staged at least this long before air time, on top of the horizon: time to fetch audio.
LEAD = timedelta(seconds=5)
# An item that starts this much later than planned was pushed (an overrun): say so.
_LATE_START = timedelta(seconds=5)


class Withdrawer:
    """What the runner needs from the dispatcher (the only writer of delivery states)."""

    def withdraw(self, delivery_ids: list[int], reason: str) -> None:  # pragma: no cover
        """Take back deliveries that have not started."""
        raise NotImplementedError

    def poke(self) -> None:  # pragma: no cover
        """Look for queued deliveries now."""
        raise NotImplementedError


@dataclass
class SyncResult:
    """What one pass did (for logs and tests)."""

    staged: list[tuple[int, datetime, int]] = field(default_factory=list)
    late: list[tuple[int, datetime, int]] = field(default_factory=list)
    missed: list[tuple[int, datetime, int]] = field(default_factory=list)
    refused: list[tuple[int, datetime, int]] = field(default_factory=list)
    withdrawn: list[tuple[int, datetime, int]] = field(default_factory=list)
    next_wake: datetime | None = None


class ScheduleRunner(OwnThread):
    """Keeps the clusters' staged items in step with the schedules. ``start()``/``stop()``."""

    def __init__(
        self,
        engine: Engine,
        dispatcher: Withdrawer | Any,
        *,
        horizon_s: float,
        grace_s: float,
        clock_warn_s: float = 2.0,
        sync_interval_s: float = 30.0,
        lookback: timedelta = timedelta(days=2),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.name = "schedule-runner"
        self.engine = engine
        self.dispatcher = dispatcher
        self.horizon = timedelta(seconds=horizon_s)
        self.grace = timedelta(seconds=grace_s)
        self.sync_interval_s = sync_interval_s
        self.lookback = max(lookback, self.grace)
        self.clock = clock
        self.clocks = ClockWatch(clock_warn_s)
        self.syncs = 0
        self.last_result: SyncResult | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._zone = ZoneInfo("UTC")
        self._late_logged: set[int] = set()
        self._clock_dirty = False
        self.faults = DbFaults("schedule runner")

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start APScheduler (memory job store) and the runner thread; sync at once."""
        with Session(self.engine) as s:
            self._zone = site_context(s).zone
        self._scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(1)},
            # A late wake-up is still worth having; several missed ones are one wake-up.
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone=self._zone,
        )
        self._scheduler.add_listener(self._on_job_event, EVENT_JOB_MISSED | EVENT_JOB_ERROR)
        self._scheduler.add_job(
            self.poke,
            IntervalTrigger(seconds=self.sync_interval_s, timezone=self._zone),
            id="sync",
            name="rebuild the timeline",
            replace_existing=True,
        )
        self._scheduler.start()
        self._start_thread()
        self.poke()

    def stop(self) -> None:
        """Stop the thread and APScheduler (staged items stay on the clusters)."""
        self._stop.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self._thread is not None:
            self._thread.join(10)

    def poke(self) -> None:
        """Rebuild now (the CLI changed a schedule)."""
        self._wake.set()

    def accept(self, event: AckIn) -> None:
        """An acknowledgement from the inbound router: note the cluster's clock by it."""
        self.clocks.observe(event.ack.cluster, event.ack.ts, event.at)
        self._clock_dirty = True

    def _on_job_event(self, event: JobExecutionEvent) -> None:
        if event.code == EVENT_JOB_MISSED:
            logger.warning("scheduler job %s missed its time %s; syncing now", event.job_id,
                           event.scheduled_run_time)  # fmt: skip
            self.poke()
        elif event.exception is not None:
            logger.error("scheduler job %s failed: %s", event.job_id, event.exception)

    # -- runner thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.sync_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                result = self.sync()
            except DB_ERRORS as exc:
                # Any database error (locked, connection lost, a poisoned session): the
                # session is gone with its `with`; the next pass starts a new one.
                self._stop.wait(self.faults.failed(exc, 0, "changes (sync retried)"))
                self._wake.set()
                continue
            except Exception:
                # Keep scheduling: one bad row must not silence the commune's programmes.
                logger.exception("schedule sync failed")
                self._stop.wait(1.0)
                continue
            self.faults.ok()
            self._arm(result.next_wake)

    def _arm(self, when: datetime | None) -> None:
        sched = self._scheduler
        if sched is None or when is None or self._stop.is_set():
            return
        sched.add_job(
            self.poke,
            DateTrigger(run_date=when, timezone=self._zone),
            id="next-staging",
            name="an occurrence enters the horizon",
            replace_existing=True,
        )

    # -- the pass ------------------------------------------------------------------------------

    def sync(self) -> SyncResult:
        """One pass: stage, withdraw, record missed; returns what it did."""
        t = self.clock()
        result = SyncResult()
        with Session(self.engine, expire_on_commit=False) as s:
            ctx = site_context(s)
            self._zone = ctx.zone
            records = {r.id: r for r in active_records(s)}
            plans = _plans_of(s, records.values())
            lo, hi = t - self.lookback, t + self.horizon + LEAD
            timeline = build_timeline(list(plans.values()), lo, hi + timedelta(seconds=1), ctx.zone)
            # A programme is staged whole, so its later items are on the box in time too.
            desired = {
                p.key: p for b in timeline.blocks if b.start <= hi and b.end >= lo for p in b.items
            }
            slots = {
                (r.schedule_id, as_utc(r.slot_at), r.position): r
                for r in s.exec(
                    select(ScheduleSlot).where(col(ScheduleSlot.slot_at) >= lo - timedelta(days=1))
                ).all()
            }
            withdraw = _withdraw_stale(s, t, records, desired, slots, result)
            # Items on the timeline without a live slot.
            for key, p in desired.items():
                have = slots.get(key)
                if have is not None and have.state != "withdrawn":
                    continue
                owner = records[p.schedule_id]
                since = as_utc(owner.active_since)
                assert since is not None
                if p.start < t and (p.slot_at < since or have is not None):
                    continue  # before the schedule existed, or withdrawn and now past
                self._act(s, t, ctx, owner, plans[p.schedule_id], p, have, result)
            self._note_late_starts(s, t, lo)
            self._save_clock_offsets(s)
            s.commit()
        if withdraw:
            self.dispatcher.withdraw(withdraw, "schedule changed")
        if result.staged or result.late or withdraw:
            self.dispatcher.poke()
        result.next_wake = self._next_wake(list(plans.values()), t, ctx.zone, set(desired))
        self.syncs += 1
        self.last_result = result
        if result.staged or result.missed or result.withdrawn or result.late:
            logger.info(
                "schedule sync: %d staged, %d late, %d missed, %d withdrawn, %d refused",
                len(result.staged),
                len(result.late),
                len(result.missed),
                len(result.withdrawn),
                len(result.refused),
            )
        return result

    def _save_clock_offsets(self, s: Session) -> None:
        """Store the boxes' measured clock offsets, when new ones came in."""
        if not self._clock_dirty:
            return
        self._clock_dirty = False
        for off in self.clocks.offsets():
            row = s.get(ClusterClock, off.cluster) or ClusterClock(
                cluster_id=off.cluster, offset_s=off.offset_s, measured_at=off.measured_at
            )
            row.offset_s = off.offset_s
            row.measured_at = off.measured_at
            s.add(row)

    def _act(
        self,
        s: Session,
        t: datetime,
        ctx: SiteContext,
        rec: ScheduleRecord,
        plan: Plan,
        p: Placed,
        slot: ScheduleSlot | None,
        result: SyncResult,
    ) -> None:
        key = p.key
        local = p.start.astimezone(ctx.zone).strftime("%Y-%m-%d %H:%M:%S")
        if ctx.quiet is not None and ctx.quiet.overlaps(p.start, p.end, ctx.zone):
            reason = f"inside the quiet hours {ctx.quiet}: not played"
            logger.warning("schedule %s item at %s refused: %s", rec.id, local, reason)
            self._slot(s, slot, p, rec, t, state="refused", reason=reason)
            result.refused.append(key)
            return
        if p.start >= t:
            self._stage(s, t, rec, plan, p, slot, start_at=p.start, reason="")
            result.staged.append(key)
            return
        late = t - p.start
        if late <= self.grace:
            reason = (
                f"sent {late.total_seconds():.0f} s late (controller was not running at {local})"
            )
            logger.warning("schedule %s item %s: %s", rec.id, p.announcement_id, reason)
            self._stage(s, t, rec, plan, p, slot, start_at=t, reason=reason)
            result.late.append(key)
            return
        reason = (
            f"missed: not sent by {local} (controller not running) and the "
            f"{_duration(self.grace)} grace passed"
        )
        logger.warning("schedule %s item %s %s", rec.id, p.announcement_id, reason)
        b = self._broadcast(s, t, rec, plan, p, start_at=p.start, state=DeliveryState.MISSED,
                            reason=reason)  # fmt: skip
        self._slot(s, slot, p, rec, t, state="missed", reason=reason, broadcast=b)
        result.missed.append(key)

    def _stage(
        self,
        s: Session,
        t: datetime,
        rec: ScheduleRecord,
        plan: Plan,
        p: Placed,
        slot: ScheduleSlot | None,
        *,
        start_at: datetime,
        reason: str,
    ) -> None:
        b = self._broadcast(s, t, rec, plan, p, start_at=start_at, state=DeliveryState.QUEUED,
                            reason="")  # fmt: skip
        if b is None:
            self._slot(s, slot, p, rec, t, state="refused", reason="announcement audio missing")
            return
        self._slot(s, slot, p, rec, t, state="staged", reason=reason, broadcast=b)

    def _broadcast(
        self,
        s: Session,
        t: datetime,
        rec: ScheduleRecord,
        plan: Plan,
        p: Placed,
        *,
        start_at: datetime,
        state: DeliveryState,
        reason: str,
    ) -> str | None:
        ann = s.get(Announcement, p.announcement_id)
        media = s.get(MediaRecord, ann.media_sha256) if ann else None
        if ann is None or media is None:
            logger.error("schedule %s: announcement %s or its audio is gone", rec.id,
                         p.announcement_id)  # fmt: skip
            return None
        # In the caller's transaction, with the slot that makes staging idempotent.
        b = create_broadcast(
            s,
            media=media,
            title=ann.title,
            target=rec.target,
            clusters=sorted(plan.clusters),
            priority=p.priority,
            source_kind=ann.kind,
            source=ann.source,
            engine=ann.engine,
            repeat=rec.repeat,
            gap_s=rec.gap_s,
            created_by=f"schedule {rec.id}",
            announcement_id=ann.id,
            created_at=t,
            scheduled_for=p.start,
            state=state,
            reason=reason,
            start_at=start_at,
            expires_at=max(p.start + self.grace, start_at + timedelta(seconds=1)),
            commit=False,
        )
        return b.id

    def _slot(
        self,
        s: Session,
        slot: ScheduleSlot | None,
        p: Placed,
        rec: ScheduleRecord,
        t: datetime,
        *,
        state: str,
        reason: str,
        broadcast: str | None = None,
    ) -> None:
        if slot is None:
            slot = ScheduleSlot(
                schedule_id=p.schedule_id,
                slot_at=p.slot_at,
                position=p.position,
                announcement_id=p.announcement_id,
                planned_start=p.start,
                updated_at=t,
            )
        slot.announcement_id = p.announcement_id
        slot.planned_start = p.start
        slot.state = state
        slot.reason = reason
        slot.broadcast_id = broadcast
        slot.schedule_version = rec.version
        slot.updated_at = t
        s.add(slot)

    def _note_late_starts(self, s: Session, t: datetime, lo: datetime) -> None:
        """Log items that started well after their planned time (an overrun pushed them)."""
        rows = s.exec(
            select(ScheduleSlot, Delivery)
            .join(Delivery, col(Delivery.broadcast_id) == col(ScheduleSlot.broadcast_id))
            .where(
                ScheduleSlot.state == "staged",
                col(ScheduleSlot.planned_start) >= lo,
                col(ScheduleSlot.planned_start) <= t,
                col(Delivery.playing_at).is_not(None),
            )
        ).all()
        late: dict[int, list[tuple[str, float]]] = {}
        slots: dict[int, ScheduleSlot] = {}
        for slot, d in rows:
            if slot.id is None or slot.id in self._late_logged or slot.reason:
                continue
            start = as_utc(d.start_at)
            playing = as_utc(d.playing_at)
            if start is None or playing is None or playing - start <= _LATE_START:
                continue
            late.setdefault(slot.id, []).append((d.cluster_id, (playing - start).total_seconds()))
            slots[slot.id] = slot
        for slot_id, where in late.items():
            self._late_logged.add(slot_id)
            worst = max(sec for _, sec in where)
            names = ", ".join(c for c, _ in sorted(where))
            reason = f"started up to {worst:.0f} s late on {names} (the item before overran)"
            logger.warning("schedule %s item %s %s", slots[slot_id].schedule_id,
                           slots[slot_id].announcement_id, reason)  # fmt: skip
            slots[slot_id].reason = reason
            s.add(slots[slot_id])

    def _next_wake(
        self, plans: list[Plan], t: datetime, zone: ZoneInfo, known: set[Any]
    ) -> datetime | None:
        """When the next occurrence enters the horizon (placement only ever delays it)."""
        edge = t + self.horizon + LEAD
        best: datetime | None = None
        for plan in plans:
            nxt = plan.recurrence.next_after(edge, zone, timedelta(days=400))
            if nxt is not None and (best is None or nxt < best):
                best = nxt
        if best is None:
            return None
        return max(best - self.horizon - LEAD, t + timedelta(milliseconds=50))


def _duration(d: timedelta) -> str:
    secs = d.total_seconds()
    return f"{secs / 60:.0f} min" if secs >= 120 else f"{secs:.0f} s"


def _plans_of(s: Session, records: Iterable[ScheduleRecord]) -> dict[int, Plan]:
    """The plan of every schedule that is not paused, by schedule id."""
    plans: dict[int, Plan] = {}
    for rec in records:
        if rec.paused:
            continue
        plan = plan_of(s, rec)
        if plan is not None and rec.id is not None:
            plans[rec.id] = plan
    return plans


def _why_withdraw(
    slot: ScheduleSlot, planned: datetime, want: Placed | None, current: ScheduleRecord | None
) -> str:
    """Why a staged item no longer belongs where it is, or "" when it still does."""
    if current is None:
        return "schedule removed"
    if current.paused:
        return "schedule paused"
    if want is None:
        return "no longer on the timeline"
    if want.start != planned or current.version != slot.schedule_version:
        return "schedule changed"
    return ""


def _withdraw_stale(
    s: Session,
    t: datetime,
    records: dict[int | None, ScheduleRecord],
    desired: dict[Any, Placed],
    slots: dict[Any, ScheduleSlot],
    result: SyncResult,
) -> list[int]:
    """Mark staged items that no longer belong where they are withdrawn; their deliveries."""
    withdraw: list[int] = []
    for key, slot in slots.items():
        if slot.state != "staged":
            continue
        planned = as_utc(slot.planned_start)
        assert planned is not None
        if planned <= t + _NO_WITHDRAW:
            continue
        why = _why_withdraw(slot, planned, desired.get(key), records.get(slot.schedule_id))
        if not why:
            continue
        if slot.broadcast_id:
            withdraw.extend(
                d.id
                for d in s.exec(
                    select(Delivery).where(Delivery.broadcast_id == slot.broadcast_id)
                ).all()
                if d.id is not None
            )
        slot.state = "withdrawn"
        slot.reason = why
        slot.updated_at = t
        s.add(slot)
        result.withdrawn.append(key)
    return withdraw
