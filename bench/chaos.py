"""Emergency on air during each fault of issue 14 (overload and fault isolation).

For each fault (bench/faults.py: status flood, ack flood, 1,100 idle and 1,100 slow media
connections, deep and huge JSON, the database held locked 10 s, a worker that raises), a
fresh rig: real mosquitto, ``loudspeaker serve`` and ``loudspeaker simulate`` as separate
processes (N simulated clusters). Each run injects the fault, then gives
``loudspeaker emergency --siren --all`` (a new CLI process, as a user types it) and times
from the CLI's start to the last target's "playing" ack as the controller received it
(``delivery.playing_at``; same machine, same clock). Faults that speak as a box (floods,
bad JSON) use the first cluster's identity; that box is not counted as a target. A run
whose targets do not all play within ``--timeout`` counts as not played (no figure).

    .venv/bin/python bench/chaos.py --runs 3
    .venv/bin/python bench/chaos.py --faults status_flood,database_locked --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import Session, col, func, select  # noqa: E402

from bench.fanout import site_text  # noqa: E402
from bench.faults import (  # noqa: E402
    FAULTS,
    IMPERSONATES,
    NEEDS_FAULTY_SERVE,
    FaultContext,
    FaultUnavailable,
)
from loudspeaker.broker import EmbeddedBroker, free_port  # noqa: E402
from loudspeaker.db import init_db, make_engine  # noqa: E402
from loudspeaker.models import ClusterStatus, Delivery  # noqa: E402
from loudspeaker.runtime import ControllerCard  # noqa: E402
from loudspeaker.site import parse_site, store_site  # noqa: E402
from tests.helpers import wait_until  # noqa: E402

_EMERGENCY_ARGS = ["--siren", "--all", "--json", "--wait", "0"]
FINAL = ["played", "failed", "unreachable", "missed"]


class Rig:
    """Broker, controller process and simulated fleet process for one fault."""

    def __init__(self, n: int, work: Path, nofile: int, *, faulty: bool = False) -> None:
        self.n = n
        self.nofile = nofile
        # Run the controller under bench/faulty_serve.py (its workers die on demand).
        self.fault_dir = work / "faults" if faulty else None
        self.work = work
        self.data = work / "data"
        self.broker = EmbeddedBroker(work / "mosquitto", supervise=False)
        self.db_file = self.data / "loudspeaker.db"
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        if self.fault_dir is not None:
            self.fault_dir.mkdir(parents=True, exist_ok=True)
            self.env["LOUDSPEAKER_TEST_FAULT_DIR"] = str(self.fault_dir)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.clusters = [f"c{i:05d}" for i in range(n)]
        self.cli = [sys.executable, "-m", "cli", "--data-dir", str(self.data)]

    def _spawn(self, name: str, *args: str, nofile: int | None = None) -> subprocess.Popen[bytes]:
        cmd = [*self.cli, *args]
        if name == "serve" and self.fault_dir is not None:
            cmd = [sys.executable, "-m", "bench.faulty_serve", *cmd[3:]]
        if nofile is not None:
            # The soft descriptor limit a controller usually starts with (a login shell or
            # a unit without LimitNOFILE): 1,024 on Debian, whatever the hard limit.
            cmd = ["sh", "-c", 'ulimit -Sn "$0" && exec "$@"', str(nofile), *cmd]
        with (self.work / f"{name}.log").open("w") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Rig:
        self.broker.start()
        self.data.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(f"sqlite:///{self.db_file}")
        init_db(self.engine)
        with Session(self.engine) as s:
            store_site(s, parse_site(site_text(self.n)))
        url = self.broker.endpoint.url
        self.http_port = free_port()
        ctl = self._spawn(
            "serve",
            "serve",
            "--broker",
            url,
            "--http-port",
            str(self.http_port),
            nofile=self.nofile,
        )

        def card_up() -> bool:
            card = ControllerCard.read(self.data / "run")
            return card is not None and card.pid == ctl.pid

        if not wait_until(card_up, 60):
            raise RuntimeError("the controller did not start: see serve.log")
        self._spawn(
            "simulate", "simulate", "--broker", url, "--time-scale", "0.02", "--heartbeat", "5"
        )
        if not wait_until(lambda: self.online() == self.n, 120):
            raise RuntimeError(f"only {self.online()} of {self.n} clusters came online")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.broker.stop()
        self.engine.dispose()

    def context(self) -> FaultContext:
        """Where the faults aim."""
        card = ControllerCard.read(self.data / "run")
        assert card is not None
        http = urlsplit(card.http_url)
        return FaultContext(
            site="bench",
            broker_host=self.broker.endpoint.host,
            broker_port=self.broker.endpoint.port,
            media_host=http.hostname or "127.0.0.1",
            media_port=http.port or self.http_port,
            db_path=self.db_file,
            attacker=self.clusters[0],
            fault_dir=self.fault_dir,
            poke=card.poke,
        )

    def online(self) -> int:
        with Session(self.engine) as s:
            q = select(func.count()).select_from(ClusterStatus).where(col(ClusterStatus.online))
            return int(s.exec(q).one())

    def emergency(self, n: int, timeout: float) -> tuple[str | None, float, str]:
        """Run the CLI; (broadcast id or None, its start time, its error if any)."""
        t0 = time.time()
        try:
            res = subprocess.run(
                [*self.cli, "emergency", f"Đo thử {n}", *_EMERGENCY_ARGS],
                check=False,
                cwd=ROOT,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None, t0, f"the CLI did not return within {timeout:g} s"
        if res.returncode != 0:
            said = (res.stderr or res.stdout).strip()
            # Spooled (the database was locked): the CLI names the file, whose name ends
            # with the broadcast id the controller records it under; keep timing it.
            spooled = re.search(r"spool/emergencies/\S+-([0-9a-f]+)\.json", said)
            if spooled:
                return spooled.group(1), t0, ""
            return None, t0, said[-300:]
        return json.loads(res.stdout)["id"], t0, ""

    def last_playing(self, bid: str, targets: set[str], timeout: float) -> float | None:
        """When the last target's "playing" arrived (epoch s), or None after ``timeout``."""
        times: dict[str, float] = {}

        def done() -> bool:
            with Session(self.engine) as s:
                rows = s.exec(
                    select(Delivery.cluster_id, Delivery.playing_at).where(
                        Delivery.broadcast_id == bid, col(Delivery.playing_at).is_not(None)
                    )
                ).all()
            times.update({c: at.timestamp() for c, at in rows if at is not None})
            return targets <= times.keys()

        if not wait_until(done, timeout, interval=0.02):
            return None
        return max(times[c] for c in targets)

    def settle(self, bid: str, timeout: float) -> None:
        """Wait until the emergency is over everywhere, so runs do not overlap."""

        def finished() -> bool:
            with Session(self.engine) as s:
                n = s.exec(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.broadcast_id == bid, col(Delivery.state).in_(FINAL))
                ).one()
            return int(n) == self.n

        wait_until(finished, timeout, interval=0.1)


def measure(fault: str, clusters: int, runs: int, timeout: float, nofile: int) -> dict[str, Any]:
    """Every run of one fault on a fresh rig."""
    inject = FAULTS[fault]
    values: list[float] = []
    errors: list[str] = []
    all_played = True
    out: dict[str, Any] = {"fault": fault, "runs": runs}
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-chaos-{fault}-") as tmp,
        Rig(clusters, Path(tmp), nofile, faulty=fault in NEEDS_FAULTY_SERVE) as rig,
    ):
        ctx = rig.context()
        targets = set(rig.clusters)
        if fault in IMPERSONATES:
            targets.discard(ctx.attacker)
        out["targets"] = len(targets)
        for i in range(runs):
            try:
                with inject(ctx):
                    bid, t0, err = rig.emergency(i, timeout)
                    last = rig.last_playing(bid, targets, timeout) if bid else None
            except FaultUnavailable as exc:
                return {"fault": fault, "skipped": str(exc)}
            if last is None:
                all_played = False
                errors.append(err or f"run {i}: not every target played within {timeout:g} s")
            else:
                values.append(round(last - t0, 3))
            if bid:
                rig.settle(bid, timeout)
        out["injected_total"] = ctx.stats  # over all the runs
    out.update(
        {
            "ok_runs": len(values),
            "median_s": round(statistics.median(values), 3) if values else None,
            "max_s": max(values) if values else None,
            "values_s": values,
            "every_target_played": all_played,
            "errors": errors[:3],
        }
    )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated; default all")
    p.add_argument("--clusters", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a run may take")
    p.add_argument(
        "--controller-nofile",
        type=int,
        default=1024,
        help="soft descriptor limit the controller starts with (default 1024, Debian's)",
    )
    args = p.parse_args()
    names = [f for f in args.faults.split(",") if f]
    unknown = [f for f in names if f not in FAULTS]
    if unknown:
        p.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    results = [
        measure(f, args.clusters, args.runs, args.timeout, args.controller_nofile) for f in names
    ]
    print(
        json.dumps(
            {
                "bench": "chaos",
                "command": " ".join(["python bench/chaos.py", *sys.argv[1:]]),
                "clusters": args.clusters,
                "controller_soft_nofile": args.controller_nofile,
                "measures": "emergency CLI start -> last target's 'playing' received, "
                "during the fault",
                "results": results,
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
            },
            indent=2,
            ensure_ascii=False,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
