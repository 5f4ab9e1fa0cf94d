"""A fixture month (November 2026, Lục Bình) whose totals are worked out by hand.

Times are written in local time (UTC+7) on purpose: the edge cases are about the
site's zone. The expected figures are in ``EXPECTED``; the arithmetic is in comments.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine
from sqlmodel import Session

from loudspeaker.models import Broadcast, ClusterAvailability, Delivery, MediaRecord

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
# "Now" for the report: well after the month, so all of November has elapsed.
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
MONTH_S = 30 * 86400


def local(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A local wall-clock time as an aware datetime."""
    return datetime(y, mo, d, h, mi, tzinfo=ZONE)


MEDIA = {"a": 120.0, "b": 30.0, "c": 45.0}
ALL = [f"lb-{i:02d}" for i in range(1, 11)]


def _sha(key: str) -> str:
    return (key * 64)[:64]


# (id, title, priority, media, repeat, created local, scheduled local or None, target,
#  {cluster: (state, reason, started)})
BROADCASTS: list[tuple[str, str, str, str, int, datetime, datetime | None, str, dict]] = [  # type: ignore[type-arg]
    (
        "b-all-1",
        "Bản tin sáng 02/11",
        "normal",
        "a",
        1,
        local(2026, 11, 2, 5, 30),
        None,
        "all",
        {
            **{c: ("played", "", True) for c in ALL[:8]},
            "lb-09": ("failed", "download failed: sha256 mismatch", False),
            "lb-10": ("unreachable", "no answer within 10 s", False),
        },
    ),
    (
        "b-bc",
        "Thông báo họp thôn",
        "priority",
        "b",
        2,
        local(2026, 11, 15, 17, 0),
        None,
        "hamlet:ban-cau",
        {"lb-01": ("played", "", True), "lb-02": ("failed", "stopped by operator", True)},
    ),
    (
        # 23:30 local on the last day = 16:30 UTC: November.
        "b-emerg",
        "Cảnh báo lũ",
        "emergency",
        "c",
        3,
        local(2026, 11, 30, 23, 30),
        None,
        "hamlet:coc-xa",
        {"lb-09": ("played", "", True), "lb-10": ("played", "", True)},
    ),
    (
        # 00:10 local on the 1st = 17:10 UTC on 31 October: November.
        "b-early",
        "Tin đầu tháng",
        "normal",
        "b",
        1,
        local(2026, 11, 1, 0, 10),
        None,
        "cluster:lb-04",
        {"lb-04": ("played", "", True)},
    ),
    (
        # 23:50 local on 31 October: October, not counted.
        "b-oct",
        "Tin cuối tháng 10",
        "normal",
        "a",
        1,
        local(2026, 10, 31, 23, 50),
        None,
        "cluster:lb-04",
        {"lb-04": ("played", "", True)},
    ),
    (
        # 00:05 local on 1 December = 17:05 UTC on 30 November: December, not counted.
        "b-dec",
        "Tin đầu tháng 12",
        "normal",
        "a",
        1,
        local(2026, 12, 1, 0, 5),
        None,
        "cluster:lb-05",
        {"lb-05": ("played", "", True)},
    ),
    (
        # Created in October, scheduled for November: counted by its scheduled time.
        "b-sched",
        "Lịch phát 20/11",
        "normal",
        "b",
        1,
        local(2026, 10, 25, 9, 0),
        local(2026, 11, 20, 6, 0),
        "cluster:lb-06",
        {"lb-06": ("missed", "controller was down at air time", False)},
    ),
    (
        "b-pending",
        "Đang phát",
        "normal",
        "b",
        1,
        local(2026, 11, 29, 10, 0),
        None,
        "cluster:lb-07",
        {"lb-07": ("playing", "", True)},
    ),
]

# (cluster, online, start local, end local or None)
AVAILABILITY = [
    ("lb-01", True, local(2026, 10, 20), None),
    ("lb-02", True, local(2026, 10, 20), local(2026, 11, 10)),
    ("lb-02", False, local(2026, 11, 10), local(2026, 11, 11)),
    ("lb-02", True, local(2026, 11, 11), None),
    ("lb-03", True, local(2026, 11, 16), None),
    ("lb-05", False, local(2026, 10, 1), local(2026, 11, 1, 6, 0)),
    ("lb-05", True, local(2026, 11, 1, 6, 0), None),
]

EXPECTED = {
    "bulletins": {"normal": 4, "priority": 1, "emergency": 1},  # all-1, early, sched, pending
    "outcomes": {"played": 12, "failed": 2, "unreachable": 1, "missed": 1, "pending": 1},
    "interrupted": 1,  # lb-02 stopped after it started
    # played: b-all-1 8 x 120 + b-bc 1 x 30x2 + b-emerg 2 x 45x3 + b-early 30
    "cluster_air_s": 960 + 60 + 270 + 30,
    # distinct played broadcasts: 120 + 60 + 135 + 30
    "air_s": 345,
    "hamlets": {
        # id: (air_s, cluster_air_s, played, failed, unreachable, bulletins normal/prio/emerg)
        "ban-cau": (180, 300, 3, 1, 0, (1, 1, 0)),
        "coc-xa": (135, 270, 2, 1, 1, (1, 0, 1)),
        "khuoi-chu": (150, 150, 2, 0, 0, (2, 0, 0)),
        "pac-cap": (120, 120, 1, 0, 0, (1, 0, 0)),
        "na-cang": (120, 120, 1, 0, 0, (2, 0, 0)),
    },
    "availability": {
        # cluster: (online_s, offline_s, unknown_s)
        "lb-01": (MONTH_S, 0, 0),
        "lb-02": (MONTH_S - 86400, 86400, 0),
        "lb-03": (15 * 86400, 0, 15 * 86400),
        "lb-04": (0, 0, MONTH_S),
        "lb-05": (MONTH_S - 6 * 3600, 6 * 3600, 0),
    },
}


def populate(engine: Engine) -> None:
    """Insert the fixture month's records (the site must already be loaded)."""
    with Session(engine) as s:
        for key, dur in MEDIA.items():
            s.add(
                MediaRecord(
                    sha256=_sha(key),
                    size=1000,
                    duration_s=dur,
                    engine="espeak-ng",
                    created_at=local(2026, 10, 1),
                )
            )
        for bid, title, prio, media, repeat, created, sched, target, outcome in BROADCASTS:
            s.add(
                Broadcast(
                    id=bid,
                    title=title,
                    priority=prio,
                    target=target,
                    media_sha256=_sha(media),
                    source_kind="text" if media != "c" else "tone",
                    source=title if media != "c" else "siren",
                    engine="espeak-ng" if media != "c" else "tone",
                    repeat=repeat,
                    created_by="can-bo-vh",
                    created_at=created,
                    scheduled_for=sched,
                )
            )
            air_time = sched or created
            for cluster, (state, reason, started) in outcome.items():
                start = air_time + timedelta(seconds=4)
                times: dict[str, datetime | None] = {
                    "sent_at": air_time + timedelta(seconds=1),
                    "playing_at": start if started else None,
                }
                done = start + timedelta(seconds=MEDIA[media] * repeat)
                if state in ("played", "failed", "unreachable"):
                    times[f"{state}_at"] = done
                s.add(
                    Delivery(
                        broadcast_id=bid,
                        cluster_id=cluster,
                        command_id=f"{bid}-{cluster}",
                        state=state,
                        reason=reason,
                        queued_at=created,
                        updated_at=done,
                        **times,
                    )
                )
        for cluster, online, began, ended in AVAILABILITY:
            s.add(
                ClusterAvailability(
                    cluster_id=cluster, online=online, started_at=began, ended_at=ended
                )
            )
        s.commit()
