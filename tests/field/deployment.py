"""The documented production shape, deployed on this machine (docs/security.md, README).

Used by the field suite (``tests/field/``) and by ``bench/field.py``. Everything is a real
program in its own process, started the way the docs say:

- ``loudspeaker broker config --tls-self-signed`` on free ports, while another socket holds
  127.0.0.1:1883 (so a config that opens an unrequested default listener fails here);
- Debian's mosquitto with exactly that config;
- ``loudspeaker serve --broker mqtt://127.0.0.1:PORT --broker-credentials
  credentials/_controller.json``;
- ``loudspeaker simulate --broker-credentials-dir CONF --keys-dir KEYS``: ten boxes, each logging
  in over TLS with its own password and verifying commands with its own key file
  (``keys issue CLUSTER -o KEYS/CLUSTER.json``);
- ``loudspeaker-gateway`` with one serial cluster (``lb-11``) on a pty bus answered by the
  MCU emulator, with its own credentials and key file too.

Set-up commands (site load, keys, broker config) run in-process through Typer's runner to
save interpreter start-ups; everything an operator does afterwards goes through
:meth:`Deployment.cli`, a new ``loudspeaker`` process each time.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from cli import app
from firmware_bridge.mcu_emulator import McuEmulator
from loudspeaker.broker import find_mosquitto, free_port, wait_listening
from loudspeaker.db import make_engine
from loudspeaker.models import ClusterStatus

ROOT = Path(__file__).resolve().parents[2]
SITE = "luc-binh"
BOXES = [f"lb-{i:02d}" for i in range(1, 11)]  # simulated IP boxes
SERIAL = "lb-11"  # behind the gateway, on the pty bus
CLUSTERS = [*BOXES, SERIAL]
HEARTBEAT_S = 1.0
TIME_SCALE = 0.25  # simulated amplifiers play 4x faster than real time

# The Lục Bình site plus one old FM receiver in the commune hall's RS-485 bus, and a fast
# heartbeat so a refused health topic shows as an alarm within seconds.
_EXTRA = f"""

[[clusters]]
id = "{SERIAL}"
hamlet = "coc-xa"
name = "Cụm loa FM Cốc Xả"
transport = "serial"
gateway = "hall"
port = "/dev/ttyUSB0"
address = 1

[health]
heartbeat_s = {HEARTBEAT_S}
missed_heartbeats = 5
control_timeout_s = 15
"""


def _read_lines(stream: Any, sink: list[str], ready: threading.Event) -> None:
    for raw in iter(stream.readline, ""):
        sink.append(raw.rstrip("\n"))
        if raw.startswith("endpoints "):
            ready.set()
    ready.set()


@dataclass
class Deployment:
    """One production-shaped deployment under ``root``; ``start()`` brings it all up."""

    root: Path
    broker_port: int = 0
    tls_port: int = 0
    media_port: int = 0
    procs: dict[str, subprocess.Popen[str]] = field(default_factory=dict)
    serve_out: list[str] = field(default_factory=list)
    emulator: McuEmulator | None = None
    _holder: socket.socket | None = None
    _serve_reader: threading.Thread | None = None
    _engine: Engine | None = None

    # -- paths ----------------------------------------------------------------------------

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def conf(self) -> Path:
        """``broker config -o`` output: mosquitto.conf, passwd, acl, credentials/, tls/."""
        return self.root / "broker"

    @property
    def keys(self) -> Path:
        """One key file per cluster, ``CLUSTER.json``."""
        return self.root / "keys"

    @property
    def site_file(self) -> Path:
        return self.root / "site.toml"

    def credentials(self, user: str) -> Path:
        return self.conf / "credentials" / f"{user}.json"

    def password(self, user: str) -> str:
        return str(json.loads(self.credentials(user).read_text(encoding="utf-8"))["password"])

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data / 'loudspeaker.db'}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LOUDSPEAKER_HOME": str(self.data),
            "LOUDSPEAKER_TOKEN": "",
            "LOUDSPEAKER_TOKEN_FILE": "",
            "LOUDSPEAKER_BROKER": "",
            "LOUDSPEAKER_BROKER_CREDENTIALS": "",
            "LOUDSPEAKER_OPERATOR_CREDENTIALS": "",
            "XDG_CONFIG_HOME": str(self.root / "config"),  # never the real ~/.config
        }

    # -- bring-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Deploy everything and wait until all eleven clusters are online."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.prepare()
        self.start_broker()
        self.start_serve()
        self.start_gateway()
        self.start_simulate()
        if not self.wait_online(CLUSTERS, 60):
            raise RuntimeError(
                f"clusters not online: {sorted(set(CLUSTERS) - self.online())}; "
                f"simulate: {self.log('simulate')}; gateway: {self.log('gateway')}"
            )

    def prepare(self) -> None:
        """Site, one key file per cluster, and ``broker config`` (the admin's set-up)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._hold_1883()
        base = (ROOT / "sites" / "luc-binh.toml").read_text(encoding="utf-8")
        self.site_file.write_text(base + _EXTRA, encoding="utf-8")
        self.setup("site", "load", str(self.site_file))
        for cluster in CLUSTERS:
            self.setup("keys", "issue", cluster, "-o", str(self.keys / f"{cluster}.json"))
        self.broker_port, self.tls_port = free_port(), free_port()
        self.media_port = free_port()
        as_root = ["--run-as", "root"] if os.geteuid() == 0 else []
        self.setup(
            "broker",
            "config",
            "-o",
            str(self.conf),
            "--host",
            "localhost",
            "--port",
            str(self.broker_port),
            "--tls-port",
            str(self.tls_port),
            "--tls-bind",
            "127.0.0.1",
            "--tls-self-signed",
            *as_root,
        )

    def start_broker(self) -> None:
        """mosquitto with the generated configuration, as ``broker config`` says to run it."""
        self._spawn("mosquitto", [find_mosquitto(), "-c", str(self.conf / "mosquitto.conf")])
        for port in (self.broker_port, self.tls_port):
            if not wait_listening("127.0.0.1", port, 15):
                raise RuntimeError(f"mosquitto is not listening on {port}: {self.log('mosquitto')}")

    def start_gateway(self) -> None:
        """The MCU emulator on a pty, and ``loudspeaker-gateway`` driving it."""
        self.emulator = McuEmulator(addresses=(1,), seed=11)
        self.emulator.start()
        self._spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "firmware_bridge.gateway",
                "--site-file",
                str(self.site_file),
                "--gateway",
                "hall",
                "--port",
                self.emulator.port,
                "--broker-credentials-dir",
                str(self.conf / "credentials"),
                "--keys-dir",
                str(self.keys),
                "--state-dir",
                str(self.root / "gateway"),
                "--sink",
                "simulated",
                "--time-scale",
                str(TIME_SCALE),
                "--heartbeat",
                str(HEARTBEAT_S),
                "--log-level",
                "WARNING",
            ],
        )

    def start_simulate(self, processes: int | None = None) -> subprocess.Popen[str]:
        """``loudspeaker simulate --broker-credentials-dir CONF --keys-dir KEYS``: the ten boxes."""
        more = ["--processes", str(processes)] if processes is not None else []
        return self._spawn(
            "simulate",
            [
                *self._loudspeaker(),
                "--log-level",
                "WARNING",
                "simulate",
                "--broker-credentials-dir",
                str(self.conf),
                "--keys-dir",
                str(self.keys),
                "--time-scale",
                str(TIME_SCALE),
                "--heartbeat",
                str(HEARTBEAT_S),
                *more,
            ],
        )

    def _hold_1883(self) -> None:
        # The generated config must not need port 1883: hold it like another program would.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 1883))
            sock.listen(1)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            return  # someone else already holds it: just as good
        self._holder = sock

    def _loudspeaker(self) -> list[str]:
        return [sys.executable, "-c", "from cli import main; main()"]

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[str]:
        log = (self.root / f"{name}.log").open("a", encoding="utf-8")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.root,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        """The last lines a process wrote."""
        try:
            return (self.root / f"{name}.log").read_text(encoding="utf-8")[-3000:]
        except OSError:
            return ""

    def start_serve(self) -> list[str]:
        """Start ``loudspeaker serve`` as documented; returns its start-up lines."""
        argv = [
            *self._loudspeaker(),
            "serve",
            "--broker",
            f"mqtt://127.0.0.1:{self.broker_port}",
            "--broker-credentials",
            str(self.credentials("_controller")),
            "--http-port",
            str(self.media_port),
        ]
        err = (self.root / "serve.log").open("a", encoding="utf-8")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=self.env,
            cwd=self.root,
        )
        err.close()
        self.procs["serve"] = proc
        lines: list[str] = []
        ready = threading.Event()
        assert proc.stdout is not None
        threading.Thread(target=_read_lines, args=(proc.stdout, lines, ready), daemon=True).start()
        if not ready.wait(60) or not any(x.startswith("endpoints ") for x in lines):
            raise RuntimeError(f"serve did not start: {lines} {self.log('serve')}")
        self.serve_out = lines
        return lines

    def kill_serve(self) -> None:
        """SIGKILL the controller, as a power cut or the OOM killer would."""
        proc = self.procs.pop("serve")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self._close_serve_output(proc)

    def _close_serve_output(self, proc: subprocess.Popen[str]) -> None:
        # The reader thread sees end of file once serve is gone; then the pipe can close.
        if self._serve_reader is not None:
            self._serve_reader.join(10)
            self._serve_reader = None
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_serve(self) -> None:
        """Stop the controller cleanly (SIGTERM), as systemd does."""
        proc = self.procs.pop("serve")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._close_serve_output(proc)

    def stop(self) -> None:
        """Stop everything started here (agents first, so they say offline)."""
        for name in ("simulate", "gateway", "serve", "mosquitto"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if name == "serve":
                self._close_serve_output(proc)
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- operating it ---------------------------------------------------------------------

    def setup(self, *args: str) -> str:
        """An administrator's set-up command, in-process; raises with its output on failure."""
        result = CliRunner().invoke(app, list(args), env=self.env)
        if result.exit_code != 0:
            raise RuntimeError(f"loudspeaker {' '.join(args)}: {result.output}")
        return result.output

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``loudspeaker ARGS`` as an operator types it: a new process."""
        return subprocess.run(
            [*self._loudspeaker(), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=self.root,
            check=False,
        )

    def cli_json(self, *args: str, timeout: float = 120) -> Any:
        """``loudspeaker ARGS --json``; raises with stderr when it fails."""
        proc = self.cli(*args, "--json", timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"loudspeaker {' '.join(args)} exit {proc.returncode}: {proc.stdout}{proc.stderr}"
            )
        return json.loads(proc.stdout)

    @property
    def engine(self) -> Engine:
        """Read access to the controller's database (for waits and checks)."""
        if self._engine is None:
            self._engine = make_engine(self.db_url)
        return self._engine

    def online(self) -> set[str]:
        """Clusters the controller sees online."""
        with Session(self.engine) as s:
            return {r.cluster_id for r in s.exec(select(ClusterStatus)).all() if r.online}

    def wait_online(self, clusters: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(clusters) <= self.online():
                return True
            time.sleep(0.2)
        return set(clusters) <= self.online()

    def plays(self, cluster: str) -> list[dict[str, Any]]:
        """A box's own play log (the simulated amplifier's, or the hall output's)."""
        if cluster == SERIAL:
            path = self.root / "gateway" / "hall-plays.jsonl"
        else:
            path = self.data / "simulated" / cluster / "plays.jsonl"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def played_files(self, cluster: str) -> set[str]:
        """sha256 of every audio file the box played (its media cache names them so)."""
        return {p["file"].split(".")[0] for p in self.plays(cluster)}


@contextlib.contextmanager
def deployed(root: Path) -> Iterator[Deployment]:
    """A started :class:`Deployment`, stopped afterwards."""
    d = Deployment(root)
    d.start()
    try:
        yield d
    finally:
        d.stop()
