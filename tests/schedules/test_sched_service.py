"""The schedule service on its own: permission, validation, audit (SQLite, no broker, no CLI)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from firmware_bridge.protocol import Priority, utcnow
from loudspeaker.auth import Actor
from loudspeaker.config import Settings
from loudspeaker.exceptions import InvalidRequest, NotFoundError, PermissionDenied
from loudspeaker.models import Announcement, AuditEntry, ScheduleRecord
from loudspeaker.services import schedules
from loudspeaker.services.context import ServiceContext
from schedules.exceptions import SpecError
from tests.conftest import load_site

OFFICER = Actor("officer1", "officer")
TECHNICIAN = Actor("tech1", "technician")
DAILY = schedules.NewSchedule(("tin-sang",), "all", schedules.When(daily="05:30"))


@pytest.fixture
def ctx(tmp_path: Path, sqlite_url: str) -> ServiceContext:
    """A loaded site and one 10-minute announcement; no controller runs."""
    load_site(sqlite_url)
    context = ServiceContext(Settings(data_dir=tmp_path / "data", db_url=sqlite_url))
    with context.session() as s:
        # The planner only reads the length: no audio file is needed.
        s.add(Announcement(id="tin-sang", title="Tin sáng", kind="tone", media_sha256="0" * 64,
                           duration_s=600, size=1, created_at=utcnow()))  # fmt: skip
        s.commit()
    return context


def audit_rows(ctx: ServiceContext) -> list[AuditEntry]:
    with ctx.session() as s:
        return list(s.exec(select(AuditEntry).order_by(col(AuditEntry.seq))).all())


def schedule_rows(ctx: ServiceContext) -> list[ScheduleRecord]:
    with ctx.session() as s:
        return list(s.exec(select(ScheduleRecord)).all())


def detail(row: AuditEntry) -> dict[str, Any]:
    return json.loads(row.detail)  # type: ignore[no-any-return]


def test_a_refusal_is_audited_and_nothing_is_written(ctx: ServiceContext) -> None:
    with pytest.raises(PermissionDenied, match=r"tech1 \(technician\) lacks permission 'schedule'"):
        schedules.add(ctx, TECHNICIAN, DAILY)
    with pytest.raises(PermissionDenied, match="lacks permission 'schedule'"):
        schedules.pause(ctx, TECHNICIAN, 1)
    assert schedule_rows(ctx) == []
    rows = audit_rows(ctx)
    assert [(r.actor, r.role, r.action, r.target, r.outcome) for r in rows] == [
        ("tech1", "technician", "schedule.add", "all", "denied"),
        ("tech1", "technician", "schedule.pause", "1", "denied"),
    ]
    assert detail(rows[0]) == {"missing": "schedule", "hamlets": []}


def test_add_pause_resume_remove_are_written_and_audited(ctx: ServiceContext) -> None:
    added = schedules.add(ctx, OFFICER, DAILY)
    sid = added.schedule.id
    assert (added.schedule.when, added.schedule.created_by) == ("daily 05:30", "officer1")
    assert added.first.utcoffset() == added.zone.utcoffset(added.first)  # shown in site time
    assert (added.first.hour, added.first.minute) == (5, 30)
    assert added.controller_notified is False  # no `serve` runs: the face warns
    assert [r.id for r in schedule_rows(ctx)] == [sid]

    paused = schedules.pause(ctx, OFFICER, sid)
    assert (paused.change, paused.schedule.paused) == ("pause", True)
    again = schedules.pause(ctx, OFFICER, sid)
    assert again.notes == (f"schedule {sid} is already paused",)
    resumed = schedules.resume(ctx, OFFICER, sid)
    assert resumed.schedule.paused is False
    removed = schedules.remove(ctx, OFFICER, sid)
    assert removed.to_json()["removed"] is True
    (rec,) = schedule_rows(ctx)
    assert rec.removed_at is not None and rec.version == 4  # pause, resume, remove

    rows = audit_rows(ctx)
    assert [(r.actor, r.role, r.action, r.target, r.outcome) for r in rows] == [
        ("officer1", "officer", "schedule.add", "all", "ok"),
        ("officer1", "officer", "schedule.pause", str(sid), "ok"),
        ("officer1", "officer", "schedule.pause", str(sid), "ok"),
        ("officer1", "officer", "schedule.resume", str(sid), "ok"),
        ("officer1", "officer", "schedule.remove", str(sid), "ok"),
    ]
    assert detail(rows[0]) == {"schedule": sid, "when": "daily 05:30", "items": 1}
    with pytest.raises(NotFoundError, match=f"no schedule {sid} "):
        schedules.remove(ctx, OFFICER, sid)


def test_listing_shows_schedules_and_the_planned_timeline(ctx: ServiceContext) -> None:
    sid = schedules.add(ctx, OFFICER, DAILY).schedule.id
    listing = schedules.listing(ctx, OFFICER, schedules.Period(days=7))
    assert [(v.id, v.paused) for v in listing.schedules] == [(sid, False)]
    planned = [r for r in listing.timeline if r.state == "planned"]
    assert 6 <= len(planned) <= 7  # today's 05:30 may have passed
    assert {(r.start.hour, r.start.minute, r.announcement_id) for r in planned} == {
        (5, 30, "tin-sang")
    }
    assert listing.to_json()["zone"] == "Asia/Ho_Chi_Minh"
    with pytest.raises(SpecError, match="--day 'tomorrow' is not a date"):
        schedules.listing(ctx, OFFICER, schedules.Period(day="tomorrow"))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"repeat": 11}, "--repeat must be between 1 and 10"),
        ({"repeat": 0}, "--repeat must be between 1 and 10"),
        ({"gap_s": 7201.0}, "--gap must be between 0 and 7200 seconds"),
        ({"gap_s": -1.0}, "--gap must be between 0 and 7200 seconds"),
        ({"priority": Priority.EMERGENCY}, "emergencies are not scheduled"),
        ({"after": True, "replace": True}, "choose one of --after and --replace"),
    ],
)
def test_invalid_requests_are_refused_with_the_message(
    ctx: ServiceContext, change: dict[str, Any], says: str
) -> None:
    with pytest.raises(InvalidRequest, match=says):
        schedules.add(ctx, OFFICER, replace(DAILY, **change))
    assert schedule_rows(ctx) == []
    assert audit_rows(ctx) == []  # a refused request is not an action
