"""Scheduler benchmark: firing jitter and start skew across clusters, printed as JSON.

Runs the real thing in one process: a private mosquitto, the controller (dispatcher and
schedule runner), ten simulated clusters. Schedules N one-off items ``--at`` a few seconds
apart on every cluster; the controller stages them ahead; each box plays by its own
clock. Jitter = actual start of playback (the simulated amplifier's record) minus the
scheduled start; skew = latest minus earliest start of one item across the clusters.

    python bench/scheduler.py [--items 12] [--spacing 1.5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlmodel import Session, col, select

from firmware_bridge.protocol import Priority, utcnow
from firmware_bridge.simulator import Fleet
from loudspeaker.broadcasts import register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.config import Settings
from loudspeaker.controller import Controller
from loudspeaker.db import init_db, make_engine
from loudspeaker.media import MediaStore
from loudspeaker.models import Announcement, Delivery, ScheduleSlot
from loudspeaker.schedule_store import add_schedule, parse_items, site_context
from loudspeaker.site import load_site_file, store_site
from schedules.spec import Recurrence
from tests.helpers import make_tone_mp3

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=12, help="items per cluster (x10 firings)")
    ap.add_argument("--spacing", type=float, default=1.5, help="seconds between items")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        broker = EmbeddedBroker(base / "mosquitto", supervise=False)
        broker.start()
        db = f"sqlite:///{base / 'data' / 'loudspeaker.db'}"
        engine = make_engine(db)
        init_db(engine)
        with Session(engine) as s:
            store_site(s, load_site_file(ROOT / "sites" / "luc-binh.toml"))
        ctl = Controller(
            Settings(data_dir=base / "data", db_url=db, broker_url=broker.endpoint.url)
        )
        ctl.start()
        ids = [f"lb-{i:02d}" for i in range(1, 11)]
        fleet = Fleet("luc-binh", ids, broker.endpoint, base / "fleet", time_scale=0.05)
        fleet.start()
        fleet.wait_connected(20)
        af = make_tone_mp3(base / "tone.mp3", 1.0)
        zone = None
        with Session(engine) as s:
            media = register_media(s, MediaStore(base / "data" / "media"), af)
            s.add(Announcement(id="bench", title="bench", kind="tone", media_sha256=media.sha256,
                               duration_s=1.0, size=af.size, created_at=utcnow()))  # fmt: skip
            s.commit()
            zone = site_context(s).zone
            first = utcnow() + timedelta(seconds=5)
            for n in range(args.items):
                at = (first + timedelta(seconds=n * args.spacing)).astimezone(zone)
                rule = Recurrence(kind="at", at=at.astimezone(UTC))
                # Each item alone on the timeline: its 1 s fits before the next one.
                items = parse_items(["bench"], Priority.NORMAL)
                add_schedule(s, items=items, target="all", recurrence=rule, title=f"bench {n}")
            s.commit()
        t_poke = time.monotonic()
        assert ctl.schedules is not None
        ctl.schedules.poke()
        total = args.items * len(ids)

        def played() -> int:
            with Session(engine) as s:
                q = select(Delivery).where(Delivery.state == "played")
                return len(s.exec(q).all())

        deadline = time.monotonic() + 30 + args.items * args.spacing
        staged_after = None
        while time.monotonic() < deadline and played() < total:
            if staged_after is None:
                with Session(engine) as s:
                    if len(s.exec(select(ScheduleSlot)).all()) == args.items:
                        staged_after = time.monotonic() - t_poke
            time.sleep(0.1)
        with Session(engine) as s:
            rows = s.exec(select(Delivery).order_by(col(Delivery.start_at))).all()
            starts: dict[str, list[datetime]] = {}
            for d in rows:
                assert d.start_at is not None
                starts.setdefault(d.cluster_id, []).append(d.start_at)
        jitter: list[float] = []
        per_item: dict[int, list[datetime]] = {}
        for cluster, agent in fleet.agents.items():
            plays = agent.sink.plays  # type: ignore[attr-defined]
            for k, (planned, rec) in enumerate(zip(starts[cluster], plays, strict=False)):
                actual = datetime.fromisoformat(rec.started_at)
                jitter.append((actual - planned).total_seconds() * 1000)
                per_item.setdefault(k, []).append(actual)
        skew = [(max(v) - min(v)).total_seconds() * 1000 for v in per_item.values() if len(v) == 10]
        result = {
            "benchmark": "scheduler",
            "clusters": len(ids),
            "items_per_cluster": args.items,
            "firings": len(jitter),
            "played": played(),
            "expected": total,
            "jitter_ms": {
                "p50": round(statistics.median(jitter), 2),
                "p99": round(pct(jitter, 99), 2),
                "min": round(min(jitter), 2),
                "max": round(max(jitter), 2),
            },
            "skew_across_10_clusters_ms": {
                "p50": round(statistics.median(skew), 2),
                "max": round(max(skew), 2),
            },
            "poke_to_all_slots_staged_s": round(staged_after or -1, 3),
        }
        fleet.stop()
        ctl.stop()
        broker.stop()
        engine.dispose()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
