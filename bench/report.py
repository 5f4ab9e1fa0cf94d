"""Benchmark: a province-sized month (1,000 clusters, ~60,000 deliveries) into a report.

Builds the month in a SQLite file with bulk inserts, then times each step of
``loudspeaker report monthly`` and of a whole-month ``loudspeaker log --csv``.
Prints JSON. Run from the repository root::

    python bench/report.py                     # 1,000 clusters, 60,000 deliveries
    python bench/report.py --clusters 200 --per-hamlet-broadcasts 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Column, Integer, MetaData, String, Table

from loudspeaker.db import init_db, make_engine
from loudspeaker.logbook import make_filter, read_log, write_log_csv
from loudspeaker.models import (
    Broadcast,
    ClusterAvailability,
    ClusterRecord,
    Delivery,
    HamletRecord,
    MediaRecord,
    SiteRecord,
    UTCDateTime,
)
from loudspeaker.report_png import write_pngs
from loudspeaker.report_xlsx import write_csv, write_xlsx
from loudspeaker.reports import Month, monthly_report

ZONE = ZoneInfo("Asia/Ho_Chi_Minh")
MONTH = Month(2026, 11)
STATES = [("played", 0.95), ("unreachable", 0.03), ("failed", 0.015), ("missed", 0.005)]
REASONS = {
    "unreachable": ["no answer within 10 s", "cluster went offline while staged"],
    "failed": ["download failed: HTTP 404", "playback failed: amplifier fault"],
    "missed": ["controller was down at air time"],
}


def build(url: str, clusters: int, per_hamlet: int, province_wide: int, seed: int) -> dict:
    """Fill the database; returns counts."""
    rng = random.Random(seed)
    engine = make_engine(url)
    init_db(engine)
    start, end = MONTH.bounds(ZONE)
    month_s = (end - start).total_seconds()
    n_hamlets = max(1, clusters // 4)
    hamlets = [f"h-{i:04d}" for i in range(n_hamlets)]
    cluster_ids = [f"c-{i:05d}" for i in range(clusters)]
    hamlet_of = {c: hamlets[i % n_hamlets] for i, c in enumerate(cluster_ids)}
    members: dict[str, list[str]] = {h: [] for h in hamlets}
    for c, h in hamlet_of.items():
        members[h].append(c)
    media = [(f"{i:064x}", rng.choice([45.0, 90.0, 180.0, 300.0, 600.0])) for i in range(50)]
    t0 = datetime(2026, 10, 1, tzinfo=UTC)

    broadcasts: list[dict] = []
    deliveries: list[dict] = []

    def add(bid: str, prio: str, targets: list[str]) -> None:
        sha, dur = rng.choice(media)
        when = start + timedelta(seconds=rng.uniform(0, month_s))
        broadcasts.append(
            {
                "id": bid,
                "title": f"Bản tin {bid}",
                "priority": prio,
                "target": "all",
                "media_sha256": sha,
                "source_kind": "text",
                "source": "…",
                "engine": "espeak-ng",
                "repeat": rng.choice([1, 1, 1, 2, 3]),
                "gap_s": 0.0,
                "created_by": "bench",
                "created_at": when,
                "scheduled_for": None,
            }
        )
        for c in targets:
            r = rng.random()
            acc = 0.0
            state = "played"
            for s, p in STATES:
                acc += p
                if r < acc:
                    state = s
                    break
            playing = when + timedelta(seconds=rng.uniform(1, 8))
            done = playing + timedelta(seconds=dur)
            deliveries.append(
                {
                    "broadcast_id": bid,
                    "cluster_id": c,
                    "command_id": f"{bid}-{c}",
                    "state": state,
                    "reason": rng.choice(REASONS[state]) if state in REASONS else "",
                    "queued_at": when,
                    "sent_at": when + timedelta(seconds=0.5),
                    "received_at": when + timedelta(seconds=0.7),
                    "staged_at": playing if state != "missed" else None,
                    "playing_at": playing if state in ("played", "failed") else None,
                    "played_at": done if state == "played" else None,
                    "failed_at": done if state == "failed" else None,
                    "unreachable_at": done if state == "unreachable" else None,
                    "expires_at": when + timedelta(minutes=10),
                    "updated_at": done,
                }
            )

    for i in range(province_wide):
        add(f"p{i:05d}", rng.choice(["normal", "priority", "emergency"]), cluster_ids)
    for h in hamlets:
        for i in range(per_hamlet):
            prio = "emergency" if rng.random() < 0.02 else rng.choice(["normal", "priority"])
            add(f"{h}-{i:03d}", prio, members[h])

    availability: list[dict] = []
    for c in cluster_ids:
        t = t0 + timedelta(hours=rng.uniform(0, 24 * 40))  # some start mid-month: unknown
        online = True
        while t < end:
            length = timedelta(hours=rng.uniform(12, 72) if online else rng.uniform(0.2, 6))
            ended = t + length if t + length < end else None
            availability.append(
                {"cluster_id": c, "online": online, "started_at": t, "ended_at": ended}
            )
            t += length
            online = not online

    md = MetaData()
    alarm = Table(
        "alarm",
        md,
        Column("id", Integer, primary_key=True),
        Column("cluster_id", String(64)),
        Column("raised_at", UTCDateTime()),
    )
    md.create_all(engine)
    alarms = [
        {"cluster_id": rng.choice(cluster_ids), "raised_at": start + timedelta(hours=i % 700)}
        for i in range(3000)
    ]

    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            SiteRecord.__table__.insert(),  # type: ignore[attr-defined]
            [{"id": "bench", "name": "Tỉnh thử", "timezone": ZONE.key, "loaded_at": now}],
        )
        conn.execute(
            HamletRecord.__table__.insert(),  # type: ignore[attr-defined]
            [{"id": h, "site_id": "bench", "name": f"Thôn {h}"} for h in hamlets],
        )
        conn.execute(
            ClusterRecord.__table__.insert(),  # type: ignore[attr-defined]
            [
                {"id": c, "site_id": "bench", "hamlet_id": hamlet_of[c], "name": f"Cụm {c}"}
                for c in cluster_ids
            ],
        )
        conn.execute(
            MediaRecord.__table__.insert(),  # type: ignore[attr-defined]
            [{"sha256": s, "size": 1000, "duration_s": d, "created_at": t0} for s, d in media],
        )
        conn.execute(Broadcast.__table__.insert(), broadcasts)  # type: ignore[attr-defined]
        conn.execute(Delivery.__table__.insert(), deliveries)  # type: ignore[attr-defined]
        conn.execute(ClusterAvailability.__table__.insert(), availability)  # type: ignore[attr-defined]
        conn.execute(alarm.insert(), alarms)
    engine.dispose()
    return {
        "clusters": clusters,
        "hamlets": n_hamlets,
        "broadcasts": len(broadcasts),
        "deliveries": len(deliveries),
        "availability_intervals": len(availability),
        "alarms": len(alarms),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--province-wide", type=int, default=20, help="broadcasts to every cluster")
    ap.add_argument(
        "--per-hamlet-broadcasts", type=int, default=40, help="broadcasts per hamlet (4 clusters)"
    )
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--dir", type=Path, default=None, help="keep files here (default: temp)")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "province.db"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    result: dict[str, object] = {
        "bench": "report",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "database": "sqlite (WAL, file)",
        "month": str(MONTH),
    }
    t = time.perf_counter()
    result["data"] = build(
        url, args.clusters, args.per_hamlet_broadcasts, args.province_wide, args.seed
    )
    result["build_s"] = round(time.perf_counter() - t, 2)

    timings: dict[str, float] = {}
    engine = make_engine(url)
    now = datetime(2026, 12, 5, tzinfo=UTC)
    t = time.perf_counter()
    with engine.connect() as conn:
        report = monthly_report(conn, MONTH, ZONE, now=now)
    timings["aggregate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_xlsx(report, work / "report.xlsx")
    timings["xlsx_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_csv(report, work / "report.csv")
    timings["csv_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_pngs(report, work / "png")
    timings["png_s"] = time.perf_counter() - t
    timings["report_total_s"] = sum(timings.values())
    t = time.perf_counter()
    with engine.connect() as conn:
        flt = make_filter(conn, ZONE, date_from="2026-11-01", date_to="2026-11-30")
        entries = read_log(conn, flt)
    buf = io.StringIO()
    rows = write_log_csv(entries, ZONE, buf)
    timings["log_month_csv_s"] = time.perf_counter() - t
    engine.dispose()

    result["timings"] = {k: round(v, 3) for k, v in timings.items()}
    result["report"] = {
        "bulletins": report.total.total_bulletins,
        "deliveries": report.total.deliveries,
        "played": report.total.outcomes["played"],
        "minutes_on_air": round(report.total.minutes_on_air, 1),
        "cluster_minutes": round(report.total.cluster_minutes, 1),
        "online_pct": round(report.availability.online_pct or 0, 2),
        "unknown_pct": round(report.availability.unknown_pct or 0, 2),
        "alarms": report.alarms,
        "xlsx_bytes": (work / "report.xlsx").stat().st_size,
        "log_rows": rows,
    }
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["files"] = str(work)
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
