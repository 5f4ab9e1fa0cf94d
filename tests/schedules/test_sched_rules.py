"""Pure scheduling logic: time rules, quiet hours, programmes, conflicts, clocks.

No database, no scheduler, no broker: these run in milliseconds.
"""

from __future__ import annotations

import os
import time as systime
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from firmware_bridge.protocol import Priority
from schedules.clock import ClockWatch
from schedules.exceptions import ConflictError, QuietHoursError, SpecError
from schedules.quiet import QuietHours
from schedules.spec import Recurrence
from schedules.timeline import CHANGEOVER, Item, Plan, build_timeline, check_addition

VN = ZoneInfo("Asia/Ho_Chi_Minh")
BERLIN = ZoneInfo("Europe/Berlin")
ALL = frozenset(f"lb-{i:02d}" for i in range(1, 11))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture
def utc_system_clock() -> Iterator[None]:
    """The controller's host runs in UTC (as servers usually do)."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    systime.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    systime.tzset()


# -- rules ---------------------------------------------------------------------------------


def test_daily_plays_at_local_time_on_a_utc_host(utc_system_clock: None) -> None:
    rule = Recurrence.parse(
        zone=VN, daily="05:30", valid_from="2026-06-01", valid_until="2026-06-03"
    )
    got = rule.occurrences(utc(2026, 5, 1), utc(2026, 7, 1), VN)
    # 05:30 in Viet Nam (UTC+7, no DST) is 22:30 UTC the day before, every day.
    assert got == [utc(2026, 5, 31, 22, 30), utc(2026, 6, 1, 22, 30), utc(2026, 6, 2, 22, 30)]
    assert all(t.astimezone(VN).time() == time(5, 30) for t in got)


def test_weekly_and_at_and_cron_agree_with_the_wall_clock() -> None:
    weekly = Recurrence.parse(zone=VN, weekly="mon,wed,fri@17:00")
    got = weekly.occurrences(utc(2026, 6, 1), utc(2026, 6, 8), VN)  # Mon 1 .. Sun 7 June (UTC)
    assert [t.astimezone(VN).strftime("%a %H:%M") for t in got] == [
        "Mon 17:00",
        "Wed 17:00",
        "Fri 17:00",
    ]
    once = Recurrence.parse(zone=VN, at="2026-06-02 05:30")
    assert once.occurrences(utc(2026, 6, 1), utc(2026, 6, 3), VN) == [utc(2026, 6, 1, 22, 30)]
    assert once.occurrences(utc(2026, 6, 2), utc(2026, 6, 3), VN) == []
    cron = Recurrence.parse(zone=VN, cron="30 5 * * 1-6", valid_from="2026-06-01")
    got = cron.occurrences(utc(2026, 5, 25), utc(2026, 6, 8), VN)
    assert len(got) == 6  # Monday to Saturday of the first week; nothing before --from
    assert {t.astimezone(VN).time() for t in got} == {time(5, 30)}


def test_stored_form_round_trips() -> None:
    for rule in (
        Recurrence.parse(zone=VN, at="2026-06-02 05:30"),
        Recurrence.parse(zone=VN, daily="05:30", valid_from="2026-06-01"),
        Recurrence.parse(zone=VN, weekly="fri,mon@17:00", valid_until="2026-12-31"),
        Recurrence.parse(zone=VN, cron="0 6 * * *"),
    ):
        again = Recurrence.from_json(rule.to_json())
        assert again == rule
        assert again.describe(VN) == rule.describe(VN)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({}, "exactly one of --at, --daily, --weekly or --cron"),
        ({"daily": "5:30", "weekly": "mon@05:30"}, "got --daily, --weekly"),
        ({"daily": "25:00"}, "not HH:MM"),
        ({"weekly": "mon,funday@05:30"}, "'funday' is not a day"),
        ({"weekly": "mon"}, "DAYS@HH:MM"),
        ({"cron": "61 5 * * *"}, "not a crontab expression"),
        ({"at": "tomorrow morning"}, "'YYYY-MM-DD HH:MM'"),
        ({"daily": "05:30", "valid_from": "2026-06-10", "valid_until": "2026-06-01"}, "before"),
        ({"daily": "05:30", "valid_from": "01/06/2026"}, "use YYYY-MM-DD"),
        ({"at": "2026-06-01 05:30", "valid_from": "2026-06-01"}, "not --at"),
    ],
)
def test_bad_rules_are_refused_with_a_clear_message(kwargs: dict[str, str], says: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        Recurrence.parse(zone=VN, **kwargs)  # type: ignore[arg-type]
    assert says in str(info.value)


def test_berlin_daily_across_both_dst_changes() -> None:
    rule = Recurrence.parse(zone=BERLIN, daily="06:00")
    spring = rule.occurrences(utc(2026, 3, 28), utc(2026, 3, 31), BERLIN)
    # 06:00 local every day: UTC 05:00 before the change (CET), 04:00 after (CEST).
    assert spring == [utc(2026, 3, 28, 5), utc(2026, 3, 29, 4), utc(2026, 3, 30, 4)]
    autumn = rule.occurrences(utc(2026, 10, 24), utc(2026, 10, 27), BERLIN)
    assert autumn == [utc(2026, 10, 24, 4), utc(2026, 10, 25, 5), utc(2026, 10, 26, 5)]


def test_berlin_wall_times_that_do_not_exist_or_happen_twice() -> None:
    for rule in (
        Recurrence.parse(zone=BERLIN, daily="02:30"),
        Recurrence.parse(zone=BERLIN, cron="30 2 * * *"),
    ):
        # 29 March 2026: 02:30 does not exist; it plays once, one hour later by the wall.
        spring = rule.occurrences(utc(2026, 3, 29), utc(2026, 3, 30), BERLIN)
        assert len(spring) == 1, rule
        assert spring[0].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"
        # 25 October 2026: 02:30 happens twice; it plays once, at the first.
        autumn = rule.occurrences(utc(2026, 10, 24, 12), utc(2026, 10, 25, 12), BERLIN)
        assert autumn == [utc(2026, 10, 25, 0, 30)], rule


# -- quiet hours ----------------------------------------------------------------------------


def test_quiet_hours_over_midnight() -> None:
    q = QuietHours.parse("21:00-05:00")
    day = date(2026, 6, 1)

    def local(h: int, m: int = 0, d: date = day) -> datetime:
        return datetime.combine(d, time(h, m), tzinfo=VN)

    assert q.overlaps(local(22), local(22, 10), VN)
    assert q.overlaps(local(4, 50), local(5, 10), VN)  # ends inside
    assert q.overlaps(local(20, 55), local(21, 5), VN)  # runs into it
    assert not q.overlaps(local(5), local(5, 30), VN)
    assert not q.overlaps(local(17), local(20, 59), VN)
    assert QuietHours.parse("12:00-13:30").overlaps(local(13), local(13, 1), VN)
    for bad in ("21:00", "21:00-21:00", "9pm-5am"):
        with pytest.raises(SpecError):
            QuietHours.parse(bad)


# -- programmes, conflicts, placement ----------------------------------------------------------


def plan(
    pid: int,
    rule: Recurrence,
    *items: tuple[str, float, Priority],
    clusters: frozenset[str] = ALL,
    on_conflict: str = "",
) -> Plan:
    return Plan(
        id=pid,
        title=f"s{pid}",
        recurrence=rule,
        items=tuple(Item(a, a.upper(), d, p) for a, d, p in items),
        clusters=clusters,
        on_conflict=on_conflict,  # type: ignore[arg-type]
    )


N, P = Priority.NORMAL, Priority.PRIORITY
START = utc(2026, 5, 31)  # a Sunday, before every rule below


def daily(hhmm: str) -> Recurrence:
    return Recurrence.parse(zone=VN, daily=hhmm, valid_from="2026-06-01", valid_until="2026-06-07")


def test_programme_plays_in_order_priority_items_first() -> None:
    p = plan(1, daily("05:30"), ("relay", 600, N), ("district", 300, P), ("commune", 120, N))
    tl = build_timeline([p], START, START + timedelta(days=2), VN)
    first = tl.blocks[0]
    assert [i.announcement_id for i in first.items] == ["district", "relay", "commune"]
    slot = first.slot_at
    assert first.items[0].start == slot
    assert first.items[1].start == slot + timedelta(seconds=300) + CHANGEOVER
    assert first.items[2].start == first.items[1].end + CHANGEOVER
    assert first.end == first.items[2].end


def test_normal_item_is_placed_after_the_other_and_the_officer_is_told() -> None:
    morning = plan(1, daily("05:30"), ("news", 900, N))
    late = plan(2, daily("05:40"), ("weather", 60, N), clusters=frozenset({"lb-03"}))
    result = check_addition([morning], late, START, VN, None)
    block = next(b for b in result.timeline.blocks if b.plan.id == 2)
    assert block.start == block.slot_at + timedelta(minutes=5) + CHANGEOVER  # after 05:45
    assert block.after == (1,)
    assert any("placed after schedule 1" in n and "05:45:02" in n for n in result.notes)
    # Other clusters are not held up by it.
    elsewhere = plan(3, daily("05:40"), ("other", 60, N), clusters=frozenset({"zz-99"}))
    assert check_addition([morning], elsewhere, START, VN, None).notes == []


def test_a_new_priority_item_moves_a_normal_one_and_says_so() -> None:
    normal = plan(1, daily("05:30"), ("news", 300, N))
    prio = plan(2, daily("05:32"), ("flood", 120, P))
    result = check_addition([normal], prio, START, VN, None)
    moved = next(b for b in result.timeline.blocks if b.plan.id == 1)
    assert moved.start > moved.slot_at and moved.after == (2,)
    assert any("schedule 1 's1' (normal) now plays at" in n for n in result.notes)


def test_priority_against_priority_needs_a_person() -> None:
    first = plan(1, daily("05:30"), ("district", 300, P))
    second = plan(2, daily("05:32"), ("province", 120, P))
    with pytest.raises(ConflictError) as info:
        check_addition([first], second, START, VN, None)
    text = str(info.value)
    assert "Circular 39" in text and "--after" in text and "--replace" in text
    assert "schedule 1 's1'" in text
    # --after: plays after the other, every day.
    after = check_addition([first], plan(2, daily("05:32"), ("province", 120, P),
                                         on_conflict="after"), START, VN, None)  # fmt: skip
    mine = [b for b in after.timeline.blocks if b.plan.id == 2]
    assert len(mine) == 7 and all(b.after == (1,) for b in mine)
    # --replace: plays instead of the other where they collide; the other is dropped there.
    rep = check_addition([first], plan(2, daily("05:32"), ("province", 120, P),
                                       on_conflict="replace"), START, VN, None)  # fmt: skip
    assert rep.plan.replaces == frozenset({1})
    assert not [b for b in rep.timeline.blocks if b.plan.id == 1]
    assert len([b for b in rep.timeline.dropped if b.replaced_by == 2]) == 7
    assert any("is replaced on" in n for n in rep.notes)


def test_quiet_hours_refuse_items_and_items_pushed_into_them() -> None:
    quiet = QuietHours.parse("21:00-05:00")
    with pytest.raises(QuietHoursError, match="inside the site's quiet hours 21:00-05:00"):
        check_addition([], plan(1, daily("04:50"), ("news", 300, N)), START, VN, quiet)
    # A normal item at 20:50 fits; a priority item before it would push it past 21:00.
    evening = plan(1, daily("20:50"), ("news", 300, N))
    check_addition([], evening, START, VN, quiet)
    with pytest.raises(QuietHoursError, match=r"schedule 1 's1' \(pushed by this one\)"):
        check_addition([evening], plan(2, daily("20:49"), ("flood", 420, P)), START, VN, quiet)


def test_berlin_programme_stays_at_local_time_across_dst() -> None:
    rule = Recurrence.parse(zone=BERLIN, daily="07:00")
    p = plan(1, rule, ("a", 60, N), ("b", 60, N))
    tl = build_timeline([p], utc(2026, 3, 28), utc(2026, 3, 31), BERLIN)
    assert [b.start.astimezone(BERLIN).strftime("%d %H:%M") for b in tl.blocks] == [
        "28 07:00",
        "29 07:00",
        "30 07:00",
    ]
    assert all(b.items[1].start - b.items[0].start == timedelta(seconds=62) for b in tl.blocks)


# -- clocks ------------------------------------------------------------------------------------


def test_clock_watch_estimates_offset_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    watch = ClockWatch(warn_s=2.0)
    t0 = utc(2026, 6, 1, 5)
    # Acks sent by a cluster 5 s ahead, received 0.1-0.4 s later.
    for i, delay in enumerate((0.4, 0.1, 0.3)):
        at = t0 + timedelta(seconds=i * 10)
        watch.observe("lb-04", at - timedelta(seconds=delay) + timedelta(seconds=5), at)
    watch.observe("lb-01", t0 - timedelta(seconds=0.05), t0)
    offsets = {o.cluster: o.offset_s for o in watch.offsets()}
    assert offsets["lb-04"] == pytest.approx(4.9)
    assert abs(offsets["lb-01"]) < 0.1
    assert [o.cluster for o in watch.warnings()] == ["lb-04"]
    warned = [r for r in caplog.records if "lb-04" in r.getMessage()]
    assert len(warned) == 1  # once per crossing, not once per ack
    assert "+4.6 s off" in warned[0].getMessage()  # the first sample


def test_clock_watch_is_not_fooled_by_acks_queued_during_an_outage() -> None:
    watch = ClockWatch(warn_s=2.0)
    t0 = utc(2026, 6, 1, 5)
    # Five acks written 12 s before the controller could receive them, in one burst...
    for i in range(5):
        at = t0 + timedelta(milliseconds=i)
        watch.observe("lb-01", at - timedelta(seconds=12), at)
    assert watch.warnings() == []
    # ...then live ones: the box's clock is right.
    for i in range(1, 4):
        at = t0 + timedelta(seconds=20 * i)
        watch.observe("lb-01", at - timedelta(seconds=0.05), at)
    assert watch.warnings() == []
    assert abs(watch.offsets()[0].offset_s) < 0.1
    # A box really 10 s behind is reported once the samples span long enough.
    for i in range(4):
        at = t0 + timedelta(seconds=100 + 15 * i)
        watch.observe("lb-02", at - timedelta(seconds=10), at)
    assert [o.cluster for o in watch.warnings()] == ["lb-02"]
