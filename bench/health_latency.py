"""How fast faults become alarms, with production heartbeat intervals (15 s).

Real mosquitto, in-process controller on SQLite, ten simulated clusters. For each fault:
inject, then time until the alarm row exists. Run: ``python bench/health_latency.py``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlmodel import Session, col, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_bridge.simulator import Fleet  # noqa: E402
from loudspeaker.broker import EmbeddedBroker  # noqa: E402
from loudspeaker.config import Settings  # noqa: E402
from loudspeaker.controller import Controller  # noqa: E402
from loudspeaker.db import init_db, make_engine  # noqa: E402
from loudspeaker.models import AlarmRecord  # noqa: E402
from loudspeaker.site import load_site_file, store_site  # noqa: E402

FAULTS = [
    ("lb-01", "line_open", "line_open"),
    ("lb-02", "overheat", "overheat"),
    ("lb-03", "power_sag", "undervoltage"),
    ("lb-04", "line_short", "line_short"),
    ("lb-05", "power_cut", "offline"),
]


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    broker = EmbeddedBroker(tmp / "mosquitto", supervise=False)
    broker.start()
    db = f"sqlite:///{tmp / 'data' / 'loudspeaker.db'}"
    engine = make_engine(db)
    init_db(engine)
    with Session(engine) as s:
        store_site(s, load_site_file(ROOT / "sites" / "luc-binh.toml"))
    ctl = Controller(Settings(data_dir=tmp / "data", db_url=db, broker_url=broker.endpoint.url))
    ctl.start()
    ids = [f"lb-{i:02d}" for i in range(1, 11)]
    fleet = Fleet("luc-binh", ids, broker.endpoint, tmp / "fleet", heartbeat_s=15.0)
    fleet.start()
    fleet.wait_connected(20)
    time.sleep(2)
    results: dict[str, list[float]] = {}
    for rnd in range(5):
        for cluster, fault, alarm in FAULTS:
            t0 = time.monotonic()
            if fault == "power_cut":
                fleet.stop_agent(cluster)
            else:
                fleet.inject(cluster, fault)
            while True:
                with Session(engine) as s:
                    hit = s.exec(
                        select(AlarmRecord).where(
                            AlarmRecord.cluster_id == cluster,
                            AlarmRecord.kind == alarm,
                            col(AlarmRecord.cleared_at).is_(None),
                        )
                    ).first()
                if hit is not None or time.monotonic() - t0 > 60:
                    break
                time.sleep(0.01)
            results.setdefault(alarm, []).append(time.monotonic() - t0)
            if fault == "power_cut":
                fleet.start_agent(cluster)
            else:
                fleet.clear(cluster, fault)
        time.sleep(3 + rnd % 2)
    for alarm, values in results.items():
        print(
            f"{alarm:14s} raise latency: median {statistics.median(values) * 1000:6.0f} ms, "
            f"max {max(values) * 1000:6.0f} ms (n={len(values)})"
        )
    fleet.stop()
    ctl.stop()
    broker.stop()


if __name__ == "__main__":
    main()
