"""Emergency latency: from the command to "playing" on every online target cluster.

For 10 and 200 simulated clusters (real mosquitto, `loudspeaker serve` as a separate
process, real agents with simulated amplifiers), over repeated runs, three kinds of audio:
the siren and a pre-rendered announcement (audio already on the controller; clusters may
hold it from an earlier run, as boxes do), and new text through the offline TTS. Two
clocks: the whole CLI command as a user types it (`loudspeaker emergency ...`, a new
Python process), and in-process (trigger + poke, without interpreter start-up).

    .venv/bin/python bench/emergency.py --clusters 10,200 --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import Session, col, func, select  # noqa: E402

from bench.fanout import site_text  # noqa: E402
from firmware_bridge.simulator import Fleet  # noqa: E402
from loudspeaker import emergency as em  # noqa: E402
from loudspeaker.announcements import create_from_text  # noqa: E402
from loudspeaker.broker import EmbeddedBroker  # noqa: E402
from loudspeaker.db import init_db, make_engine  # noqa: E402
from loudspeaker.models import ClusterStatus, Delivery  # noqa: E402
from loudspeaker.runtime import ControllerCard  # noqa: E402
from loudspeaker.site import parse_site, store_site  # noqa: E402
from tests.helpers import wait_until  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[k], 3)


class Rig:
    """Broker, controller process and fleet for one cluster count."""

    def __init__(self, n: int, work: Path) -> None:
        self.n = n
        self.work = work
        self.data = work / "data"
        self.broker = EmbeddedBroker(work / "mosquitto", supervise=False)
        self.db = f"sqlite:///{self.data / 'loudspeaker.db'}"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.ctl: subprocess.Popen[bytes] | None = None
        self.fleet: Fleet | None = None

    def __enter__(self) -> Rig:
        self.broker.start()
        self.engine = make_engine(self.db)
        init_db(self.engine)
        with Session(self.engine) as s:
            store_site(s, parse_site(site_text(self.n)))
        with (self.work / "serve.log").open("w") as log:
            self.ctl = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "--data-dir",
                    str(self.data),
                    "serve",
                    "--broker",
                    self.broker.endpoint.url,
                ],
                cwd=ROOT,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        assert wait_until(lambda: ControllerCard.read(self.data / "run") is not None, 30)
        self.fleet = Fleet(
            "bench",
            [f"c{i:05d}" for i in range(self.n)],
            self.broker.endpoint,
            self.work / "fleet",
            time_scale=0.02,
            keepalive=30,
        )
        self.fleet.start()
        assert self.fleet.wait_connected(120)
        assert wait_until(lambda: self.online() == self.n, 120)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.ctl is not None:
            self.ctl.terminate()
            self.ctl.wait(20)
        self.broker.stop()
        self.engine.dispose()

    def online(self) -> int:
        with Session(self.engine) as s:
            q = select(func.count()).select_from(ClusterStatus).where(col(ClusterStatus.online))
            return int(s.exec(q).one())

    def all_playing_at(self, bid: str, timeout: float = 60) -> datetime | None:
        """When the last cluster reported playing (controller's clock), or None."""

        def done() -> bool:
            with Session(self.engine) as s:
                n = s.exec(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.broadcast_id == bid, col(Delivery.playing_at).is_not(None))
                ).one()
                return int(n) == self.n

        if not wait_until(done, timeout, interval=0.01):
            return None
        with Session(self.engine) as s:
            times = s.exec(select(Delivery.playing_at).where(Delivery.broadcast_id == bid)).all()
        return max(t for t in times if t is not None)

    def settle(self, bid: str) -> None:
        """Wait until the emergency finished everywhere, so runs do not overlap."""

        def finished() -> bool:
            with Session(self.engine) as s:
                n = s.exec(
                    select(func.count())
                    .select_from(Delivery)
                    .where(
                        Delivery.broadcast_id == bid,
                        col(Delivery.state).in_(["played", "failed", "unreachable"]),
                    )
                ).one()
                return int(n) == self.n

        wait_until(finished, 120, interval=0.05)


def run_cli(rig: Rig, args: list[str]) -> tuple[str, float]:
    t0 = time.time()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "--data-dir",
            str(rig.data),
            "emergency",
            *args,
            "--all",
            "--json",
            "--wait",
            "0",
        ],
        cwd=ROOT,
        env=rig.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(res.stdout)["id"], t0


def run_inprocess(rig: Rig, req: em.EmergencyRequest) -> tuple[str, float]:
    card = ControllerCard.read(rig.data / "run")
    assert card is not None
    t0 = time.time()
    with Session(rig.engine) as s:
        bid = em.trigger(s, rig.data, req).id
    card.poke()
    return bid, t0


def measure(n: int, runs: int) -> dict[str, object]:
    out: dict[str, object] = {"clusters": n, "runs": runs}
    with tempfile.TemporaryDirectory(prefix="ls-emergency-") as tmp, Rig(n, Path(tmp)) as rig:
        with Session(rig.engine) as s:
            ann = create_from_text(
                s, rig.data, "Cảnh báo lũ quét, sơ tán ngay.", title="lũ quét", engine="offline"
            )
        cases = {
            "siren_cli": lambda i: run_cli(rig, ["Còi báo động", "--siren"]),
            "prerendered_cli": lambda i: run_cli(rig, ["Lũ quét", "--announcement", ann.id]),
            "tts_offline_cli": lambda i: run_cli(
                rig, [f"Nước sông dâng cao lần {i}, di dời ngay."]
            ),
            "siren_inprocess": lambda i: run_inprocess(
                rig, em.EmergencyRequest(text="Còi", everywhere=True, siren=True)
            ),
            "tts_offline_inprocess": lambda i: run_inprocess(
                rig,
                em.EmergencyRequest(
                    text=f"Sạt lở đất lần {i}, tránh xa sườn đồi.", everywhere=True
                ),
            ),
        }
        for name, fire in cases.items():
            latencies = []
            errors: list[str] = []
            for i in range(runs):
                try:
                    bid, t0 = fire(i)
                except RuntimeError as exc:
                    errors.append(str(exc))
                    continue
                at = rig.all_playing_at(bid)
                if at is not None:
                    latencies.append(at.timestamp() - t0)
                rig.settle(bid)
            out[name] = {
                "ok_runs": len(latencies),
                "p50_s": pct(latencies, 50) if latencies else None,
                "p95_s": pct(latencies, 95) if latencies else None,
                "max_s": round(max(latencies), 3) if latencies else None,
                "mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
                "errors": errors[:3],
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clusters", default="10,200")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    results = [measure(int(n), args.runs) for n in args.clusters.split(",")]
    print(
        json.dumps(
            {
                "bench": "emergency",
                "command": " ".join(["python bench/emergency.py", *sys.argv[1:]]),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "measures": "command start to 'playing' recorded from every cluster",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
