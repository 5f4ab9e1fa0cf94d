"""Fan-out benchmark: one broadcast to N simulated clusters, against raw mosquitto.

Prints JSON. For each N: time from dispatch (the CLI's poke) to every cluster `played`,
MQTT messages per second through the controller (one command and four acks per cluster),
the controller's peak RSS, and, in the same run on the same broker, the time raw paho
clients need to push the same number of QoS 1 messages through mosquitto.

    .venv/bin/python bench/fanout.py --clusters 10,200,1000 --runs 3
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlmodel import Session, col, func, select  # noqa: E402

from firmware_bridge.fleetproc import ProcessFleet  # noqa: E402
from firmware_bridge.mqtt import MqttLink, MqttLoop  # noqa: E402
from firmware_bridge.simulator import Fleet  # noqa: E402
from loudspeaker.broadcasts import create_broadcast, register_media  # noqa: E402
from loudspeaker.broker import EmbeddedBroker  # noqa: E402
from loudspeaker.db import init_db, make_engine  # noqa: E402
from loudspeaker.media import MediaStore  # noqa: E402
from loudspeaker.models import ClusterStatus, Delivery  # noqa: E402
from loudspeaker.runtime import ControllerCard  # noqa: E402
from loudspeaker.site import parse_site, store_site  # noqa: E402
from loudspeaker.sitegen import cluster_ids, generate_site_text  # noqa: E402
from loudspeaker.targets import resolve_targets  # noqa: E402
from tests.helpers import make_tone_mp3, wait_until  # noqa: E402


def site_text(n: int) -> str:
    return generate_site_text(n, site_id="bench", name="Bench")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_mosquitto(broker: EmbeddedBroker, messages: int, size: int) -> float:
    """Seconds for one paho client to get ``messages`` QoS 1 messages to another."""
    got = 0
    done = threading.Event()
    lock = threading.Lock()

    def on_msg(_t: str, _p: bytes) -> None:
        nonlocal got
        with lock:
            got += 1
            if got >= messages:
                done.set()

    loop = MqttLoop("raw")
    loop.start()
    sub = MqttLink("raw-sub", broker.endpoint, on_message=on_msg, subscriptions=("raw/#",))
    pub = MqttLink("raw-pub", broker.endpoint, on_message=lambda t, p: None)
    loop.add(sub)
    loop.add(pub)
    assert sub.connected.wait(10) and pub.connected.wait(10)
    time.sleep(0.2)
    payload = b"x" * size
    t0 = time.perf_counter()
    for i in range(messages):
        pub.publish(f"raw/{i % 1000}", payload)
    ok = done.wait(120)
    elapsed = time.perf_counter() - t0
    loop.close_link(sub)
    loop.close_link(pub)
    loop.stop()
    return elapsed if ok else float("nan")


def run_once(n: int, work: Path, fleet_processes: int = 1) -> dict[str, float]:
    broker = EmbeddedBroker(work / "mosquitto", supervise=False)
    broker.start()
    db = f"sqlite:///{work / 'data' / 'loudspeaker.db'}"
    engine = make_engine(db)
    init_db(engine)
    with Session(engine) as s:
        store_site(s, parse_site(site_text(n)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    ctl = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "--data-dir",
            str(work / "data"),
            "serve",
            "--broker",
            broker.endpoint.url,
            "--ack-timeout",
            "60",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "serve.log").open("w"),
    )
    ids = cluster_ids(n)
    slack = max(120.0, n / 50)  # seconds allowed to connect; 3x that to play out
    fleet: Fleet | ProcessFleet
    if fleet_processes > 1:
        fleet = ProcessFleet(
            "bench",
            ids,
            broker.endpoint,
            work / "fleet",
            processes=fleet_processes,
            time_scale=0.01,
        )
    else:
        fleet = Fleet("bench", ids, broker.endpoint, work / "fleet", time_scale=0.01)

    def fleet_cpu() -> float:
        if isinstance(fleet, ProcessFleet):
            return sum(cpu_seconds(pid) for pid in fleet.pids)
        return cpu_seconds(os.getpid())

    try:
        assert wait_until(lambda: ControllerCard.read(work / "data" / "run") is not None, 30)
        card = ControllerCard.read(work / "data" / "run")
        assert card is not None
        fleet.start()
        assert fleet.wait_connected(slack), "fleet did not connect"

        def online() -> int:
            with Session(engine) as s:
                return int(
                    s.exec(
                        select(func.count())
                        .select_from(ClusterStatus)
                        .where(col(ClusterStatus.online))
                    ).one()
                )

        assert wait_until(lambda: online() == n, slack), f"only {online()} of {n} online"
        af = make_tone_mp3(work / "tone.mp3", 1.0)
        with Session(engine) as s:
            media = register_media(s, MediaStore(work / "data" / "media"), af)
            bid = create_broadcast(
                s, media=media, title="bench", target="all", clusters=resolve_targets(s, "all")
            ).id
            cmd_size = 700
        cpu0 = {"controller": cpu_seconds(ctl.pid), "fleet": fleet_cpu()}
        t0 = time.perf_counter()
        card.poke()

        def played() -> int:
            with Session(engine) as s:
                return int(
                    s.exec(
                        select(func.count())
                        .select_from(Delivery)
                        .where(Delivery.broadcast_id == bid, Delivery.state == "played")
                    ).one()
                )

        ok = wait_until(lambda: played() == n, 3 * slack, interval=0.01)
        elapsed = time.perf_counter() - t0
        cpu = {
            "controller": cpu_seconds(ctl.pid) - cpu0["controller"],
            "fleet": fleet_cpu() - cpu0["fleet"],
        }
        rss = peak_rss_mb(ctl.pid)
        messages = n * 5
        raw = raw_mosquitto(broker, messages, cmd_size)
        return {
            "clusters": n,
            "all_played": ok,
            "dispatch_to_all_played_s": round(elapsed, 3),
            "messages": messages,
            "messages_per_s": round(messages / elapsed, 1),
            "controller_peak_rss_mb": round(rss, 1),
            "acks_per_s": round(n * 4 / elapsed, 1),
            "controller_cpu_s": round(cpu["controller"], 2),
            "fleet_cpu_s": round(cpu["fleet"], 2),
            "raw_mosquitto_same_messages_s": round(raw, 3),
            "raw_mosquitto_messages_per_s": round(messages / raw, 1),
        }
    finally:
        fleet.stop()
        ctl.terminate()
        ctl.wait(20)
        broker.stop()
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clusters", default="10,200,1000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--fleet-processes",
        type=int,
        default=0,
        help="processes the simulated fleet runs in (0: one per 500 clusters, at least 1)",
    )
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.clusters.split(",")):
        runs = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="ls-fanout-") as tmp:
                procs = args.fleet_processes or max(1, -(-n // 500))
                runs.append(run_once(n, Path(tmp), procs))
        times = [r["dispatch_to_all_played_s"] for r in runs]
        raws = [r["raw_mosquitto_same_messages_s"] for r in runs]
        results.append(
            {
                "clusters": n,
                "runs": len(runs),
                "fleet_processes": args.fleet_processes or max(1, -(-n // 500)),
                "all_played": all(r["all_played"] for r in runs),
                "dispatch_to_all_played_s_median": round(statistics.median(times), 3),
                "dispatch_to_all_played_s_max": round(max(times), 3),
                "messages_per_s_median": round(
                    statistics.median(r["messages_per_s"] for r in runs), 1
                ),
                "controller_peak_rss_mb_max": max(r["controller_peak_rss_mb"] for r in runs),
                "acks_per_s_median": round(statistics.median(r["acks_per_s"] for r in runs), 1),
                "controller_cpu_s_median": round(
                    statistics.median(r["controller_cpu_s"] for r in runs), 2
                ),
                "fleet_cpu_s_median": round(statistics.median(r["fleet_cpu_s"] for r in runs), 2),
                "raw_mosquitto_same_messages_s_median": round(statistics.median(raws), 3),
            }
        )
    print(
        json.dumps(
            {
                "bench": "fanout",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "note": "simulated playback at 1/100 of real time; 5 MQTT messages per cluster",
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
