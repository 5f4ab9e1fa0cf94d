"""Monthly figures computed from stored records, on a fixture month with known totals."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from loudspeaker.exceptions import ReportError
from loudspeaker.reports import Availability, Month, clip_intervals, monthly_report
from tests.reports.month_fixture import EXPECTED, MONTH_S, NOW, ZONE, local


def test_fixture_month_totals(month_engine: Engine) -> None:
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    assert r.site_name == "Xã Lục Bình"
    assert r.total.bulletins == EXPECTED["bulletins"]
    assert r.total.outcomes == EXPECTED["outcomes"]
    assert r.total.interrupted == EXPECTED["interrupted"]
    assert r.total.cluster_air_s == pytest.approx(EXPECTED["cluster_air_s"])
    assert r.total.air_s == pytest.approx(EXPECTED["air_s"])
    assert r.total.minutes_on_air == pytest.approx(345 / 60)
    assert not r.empty
    assert r.elapsed_s == MONTH_S
    assert len(r.hamlets) == 8
    assert len(r.clusters) == 10


def test_fixture_month_per_hamlet(month_engine: Engine) -> None:
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    by_id = {h.id: h for h in r.hamlets}
    for hid, (air, cluster_air, played, failed, unreachable, prio) in EXPECTED["hamlets"].items():
        h = by_id[hid]
        assert h.counts.air_s == pytest.approx(air), hid
        assert h.counts.cluster_air_s == pytest.approx(cluster_air), hid
        assert h.counts.outcomes["played"] == played, hid
        assert h.counts.outcomes["failed"] == failed, hid
        assert h.counts.outcomes["unreachable"] == unreachable, hid
        bulletins = h.counts.bulletins
        assert (bulletins["normal"], bulletins["priority"], bulletins["emergency"]) == prio, hid
    assert sorted(by_id["coc-xa"].clusters) == ["lb-09", "lb-10"]


def test_fixture_month_availability(month_engine: Engine) -> None:
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    by_id = {c.id: c for c in r.clusters}
    for cid, (online, offline, unknown) in EXPECTED["availability"].items():
        a = by_id[cid].availability
        assert (a.online_s, a.offline_s, a.unknown_s) == (online, offline, unknown), cid
    assert by_id["lb-03"].availability.online_pct == pytest.approx(50.0)
    assert by_id["lb-03"].availability.unknown_pct == pytest.approx(50.0)
    # A hamlet's availability is its share of cluster-time: Bản Cầu = lb-01 + lb-02.
    ban_cau = next(h for h in r.hamlets if h.id == "ban-cau")
    assert ban_cau.availability.offline_s == 86400
    assert ban_cau.availability.window_s == 2 * MONTH_S


def test_fixture_month_reasons(month_engine: Engine) -> None:
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    got = {(x.cluster, x.outcome, x.reason, x.count) for x in r.reasons}
    assert got == {
        ("lb-02", "failed", "stopped by operator", 1),
        ("lb-09", "failed", "download failed: sha256 mismatch", 1),
        ("lb-10", "unreachable", "no answer within 10 s", 1),
        ("lb-06", "missed", "controller was down at air time", 1),
    }


def test_month_boundaries_are_local_not_utc(month_engine: Engine) -> None:
    """23:30 on 30 Nov local is 16:30 UTC: November. 00:05 on 1 Dec local is December."""
    with month_engine.connect() as conn:
        nov = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
        dec = monthly_report(conn, Month(2026, 12), ZONE, now=NOW)
        oct_ = monthly_report(conn, Month(2026, 10), ZONE, now=NOW)
        # Counted in UTC months, 1 Dec 00:05 local (30 Nov 17:05 UTC) would join
        # November and 1 Nov 00:10 local (31 Oct 17:10 UTC) would leave it.
        nov_utc = monthly_report(conn, Month(2026, 11), ZoneInfo("UTC"), now=NOW)
    assert nov.total.bulletins["emergency"] == 1
    assert dec.total.outcomes == {**dict.fromkeys(EXPECTED["outcomes"], 0), "played": 1}
    assert {c.id for c in dec.clusters if c.counts.deliveries} == {"lb-05"}
    assert oct_.total.outcomes["played"] == 1  # only the 31 Oct 23:50 bulletin
    assert {c.id for c in oct_.clusters if c.counts.deliveries} == {"lb-04"}
    played = {c.id: c.counts.outcomes["played"] for c in nov.clusters}
    played_utc = {c.id: c.counts.outcomes["played"] for c in nov_utc.clusters}
    assert (played["lb-04"], played["lb-05"]) == (2, 1)
    assert (played_utc["lb-04"], played_utc["lb-05"]) == (1, 2)


def test_scheduled_time_wins_over_creation_time(month_engine: Engine) -> None:
    """b-sched was created in October for 20 November: it is November's (and missed)."""
    with month_engine.connect() as conn:
        oct_ = monthly_report(conn, Month(2026, 10), ZONE, now=NOW)
        nov = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    assert oct_.total.outcomes["missed"] == 0
    assert nov.total.outcomes["missed"] == 1


def test_empty_month_is_a_valid_report(month_engine: Engine) -> None:
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 6), ZONE, now=NOW)
    assert r.empty
    assert r.total.deliveries == 0
    assert r.total.air_s == 0
    assert r.reasons == []
    assert len(r.clusters) == 10  # every cluster listed, with zeros
    # June is before any availability record: all of it is unknown, not offline.
    assert all(c.availability.unknown_pct == pytest.approx(100.0) for c in r.clusters)


def test_future_month_has_no_elapsed_time(month_engine: Engine) -> None:
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2027, 2), ZONE, now=NOW)
    assert r.empty
    assert r.elapsed_s == 0
    assert r.availability.online_pct is None


def test_current_month_counts_only_elapsed_time(month_engine: Engine) -> None:
    now = local(2026, 11, 16)  # half of November has passed
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=now.astimezone(UTC))
    by_id = {c.id: c for c in r.clusters}
    assert r.elapsed_s == 15 * 86400
    assert by_id["lb-01"].availability.online_pct == pytest.approx(100.0)
    assert by_id["lb-03"].availability.unknown_pct == pytest.approx(100.0)


def test_alarm_counts(month_engine: Engine) -> None:
    from sqlmodel import Session

    from loudspeaker.models import AlarmRecord

    with month_engine.connect() as conn:
        before = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    # The health monitor's alarm table exists: no alarms is a recorded zero, not "unknown".
    assert before.alarms_recorded
    assert before.alarms == 0
    with Session(month_engine) as s:
        for cluster, kind, at in [
            ("lb-04", "overheat", local(2026, 11, 3, 9)),
            ("lb-04", "undervoltage", local(2026, 11, 30, 23)),
            ("lb-04", "undervoltage", local(2026, 12, 1, 1)),
            ("lb-09", "line_open", local(2026, 11, 1, 0, 30)),
        ]:
            s.add(AlarmRecord(cluster_id=cluster, kind=kind, raised_at=at, updated_at=at))
        s.commit()
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    assert r.alarms_recorded
    assert r.alarms == 3
    by_id = {c.id: c for c in r.clusters}
    assert (by_id["lb-04"].alarms, by_id["lb-09"].alarms, by_id["lb-01"].alarms) == (2, 1, 0)
    assert next(h for h in r.hamlets if h.id == "coc-xa").alarms == 1


def test_removed_cluster_keeps_its_history(month_engine: Engine) -> None:
    from sqlmodel import Session, delete

    from loudspeaker.models import ClusterRecord

    with Session(month_engine) as s:
        s.exec(delete(ClusterRecord).where(ClusterRecord.id == "lb-10"))  # type: ignore[arg-type]
        s.commit()
    with month_engine.connect() as conn:
        r = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    assert r.total.outcomes == EXPECTED["outcomes"]
    gone = next(c for c in r.clusters if c.id == "lb-10")
    assert gone.hamlet == ""
    assert "đã gỡ" in r.hamlet_name(gone.hamlet)


def test_clip_intervals_unknown_before_first_record() -> None:
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 11, tzinfo=UTC)
    a = clip_intervals(
        [
            (True, datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 5, tzinfo=UTC)),
            (False, datetime(2026, 11, 5, tzinfo=UTC), None),
        ],
        start,
        end,
        now=datetime(2026, 11, 9, tzinfo=UTC),
    )
    day = 86400
    assert (a.online_s, a.offline_s, a.unknown_s) == (2 * day, 4 * day, 2 * day)
    assert a.window_s == 8 * day


def test_clip_intervals_overlap_counted_once() -> None:
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    a = clip_intervals(
        [
            (True, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, 12, tzinfo=UTC)),
            (False, datetime(2026, 11, 1, 6, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)),
        ],
        start,
        end,
        now=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert (a.online_s, a.offline_s, a.unknown_s) == (12 * 3600, 12 * 3600, 0)
    assert Availability().online_pct is None


@pytest.mark.parametrize("bad", ["2026-13", "2026-1", "26-11", "november", "2026-00", ""])
def test_bad_month_is_refused(bad: str) -> None:
    with pytest.raises(ReportError, match="YYYY-MM"):
        Month.parse(bad)


def test_month_bounds_in_site_zone() -> None:
    start, end = Month(2026, 12).bounds(ZONE)
    assert start == datetime(2026, 11, 30, 17, tzinfo=UTC)
    assert end == datetime(2026, 12, 31, 17, tzinfo=UTC)
    assert Month.parse("2026-12").next == Month(2027, 1)
