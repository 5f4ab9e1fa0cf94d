"""A simulated fleet spread over several processes (one :class:`Fleet` each).

One Python process runs every agent under one GIL: at a few hundred clusters it, not the
controller, becomes the bottleneck of a benchmark (docs/scaling.md). This runs ``N``
child processes, each a :class:`~firmware_bridge.simulator.Fleet` with its share of the
clusters, so a 2-core machine can drive thousands. Same agents, same protocol, same
state directories (``state_root/<cluster>``) as the in-process fleet.

    python -m firmware_bridge.fleetproc --site S --broker mqtt://H:P --state-root DIR \
        --clusters-file FILE [--time-scale X] [--broker-credentials-dir DIR] [--keys-dir DIR]

(``--broker-credentials-dir`` instead of ``--broker``: each cluster logs in with its own file.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from firmware_bridge.exceptions import BridgeError
from firmware_bridge.mqtt import BrokerEndpoint

logger = logging.getLogger(__name__)

READY = "ready"


class ProcessFleet:
    """Simulated clusters in ``processes`` child processes. ``start()`` spawns them."""

    def __init__(
        self,
        site: str,
        clusters: Sequence[str],
        endpoint: BrokerEndpoint | None,
        state_root: Path,
        *,
        processes: int = 2,
        time_scale: float = 1.0,
        keepalive: int = 15,
        heartbeat_s: float = 15.0,
        log_level: str = "WARNING",
        credentials_dir: Path | None = None,
        keys_dir: Path | None = None,
    ) -> None:
        if endpoint is None and credentials_dir is None:
            raise BridgeError("simulated clusters need a broker URL or a credentials directory")
        self.site = site
        self.clusters = list(clusters)
        self.endpoint = endpoint
        self.state_root = state_root
        self.processes = max(1, min(processes, len(self.clusters)))
        self.time_scale = time_scale
        self.keepalive = keepalive
        self.log_level = log_level
        self.heartbeat_s = heartbeat_s
        self.credentials_dir = credentials_dir
        self.keys_dir = keys_dir
        self._procs: list[subprocess.Popen[str]] = []

    def start(self) -> None:
        """Spawn the children (each connects its agents in the background)."""
        self.state_root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH", "")]
        )
        for n in range(self.processes):
            share = self.clusters[n :: self.processes]
            ids = self.state_root / f"fleet-{n}.clusters"
            ids.write_text("\n".join(share) + "\n", encoding="utf-8")
            log = (self.state_root / f"fleet-{n}.log").open("ab")
            # Only paths and the URL go on the command line: never a password.
            login = ["--broker", self.endpoint.url] if self.endpoint is not None else []
            if self.credentials_dir is not None:
                login = ["--broker-credentials-dir", str(self.credentials_dir)]
            if self.keys_dir is not None:
                login += ["--keys-dir", str(self.keys_dir)]
            self._procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "firmware_bridge.fleetproc",
                        "--site",
                        self.site,
                        *login,
                        "--state-root",
                        str(self.state_root),
                        "--clusters-file",
                        str(ids),
                        "--time-scale",
                        str(self.time_scale),
                        "--keepalive",
                        str(self.keepalive),
                        "--heartbeat",
                        str(self.heartbeat_s),
                        "--log-level",
                        self.log_level,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=env,
                )
            )
            log.close()

    @property
    def pids(self) -> list[int]:
        """The children's process ids (for RSS and CPU measurements)."""
        return [p.pid for p in self._procs]

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every child reports all its agents connected."""
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            assert proc.stdout is not None
            line = _readline(proc, max(0.0, deadline - time.monotonic()))
            if line.strip() != READY:
                logger.error("fleet child %s not ready: %r", proc.pid, line)
                return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (each stops its agents cleanly) and wait."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    # A thread, because a pipe read has no timeout of its own.
    out: list[str] = []
    reader = threading.Thread(
        target=lambda: out.append(proc.stdout.readline() if proc.stdout else ""), daemon=True
    )
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


def main(argv: list[str] | None = None) -> int:
    """Run one share of a fleet until SIGTERM; print ``ready`` once all are connected."""
    from firmware_bridge.simulator import Fleet

    p = argparse.ArgumentParser(prog="python -m firmware_bridge.fleetproc")
    p.add_argument("--site", required=True)
    p.add_argument("--broker", default=None)
    p.add_argument("--broker-credentials-dir", type=Path, default=None)
    p.add_argument("--keys-dir", type=Path, default=None)
    p.add_argument("--state-root", type=Path, required=True)
    p.add_argument("--clusters-file", type=Path, required=True)
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--keepalive", type=int, default=15)
    p.add_argument("--heartbeat", type=float, default=15.0)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ids = [x for x in args.clusters_file.read_text(encoding="utf-8").split() if x]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        fleet = Fleet(
            args.site,
            ids,
            BrokerEndpoint.parse(args.broker) if args.broker else None,
            args.state_root,
            time_scale=args.time_scale,
            keepalive=args.keepalive,
            heartbeat_s=args.heartbeat,
            credentials_dir=args.broker_credentials_dir,
            keys_dir=args.keys_dir,
        )
        fleet.start()
    except BridgeError as exc:
        print(f"fleet: {exc}", file=sys.stderr)
        return 2
    while not done.is_set():
        if fleet.wait_connected(1.0):
            print(READY, flush=True)
            break
    done.wait()
    fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
