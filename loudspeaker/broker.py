"""A private mosquitto on loopback, for when no broker is configured.

mosquitto rather than a pure-Python broker: measured here, amqtt leaks retained messages
to clients that never subscribed and never enforces keep-alive, so a cluster that loses
power would never be marked offline. The controller supervises the process and restarts
it (same port, same persistence file) if it dies.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from firmware_bridge.backoff import Backoff, Retrier
from firmware_bridge.mqtt import BrokerEndpoint
from loudspeaker.exceptions import BrokerStartError

logger = logging.getLogger(__name__)

_CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def running_broker(work_dir: Path) -> BrokerEndpoint | None:
    """The embedded broker left running in ``work_dir`` (even if its controller died)."""
    try:
        card = json.loads((work_dir / "broker.json").read_text())
        endpoint = BrokerEndpoint(host=str(card["host"]), port=int(card["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return endpoint if wait_listening(endpoint.host, endpoint.port, 0.5) else None


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or ``BrokerStartError`` saying how to get one."""
    for cand in _CANDIDATES:
        path = shutil.which(cand) or (cand if os.access(cand, os.X_OK) else None)
        if path:
            return path
    raise BrokerStartError(
        "mosquitto is not installed: run `make demo` (it installs Debian's mosquitto) "
        "or `apt-get install mosquitto`, or configure an external broker with "
        "--broker mqtt://HOST:PORT"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float) -> bool:
    """Wait until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class EmbeddedBroker:
    """A mosquitto process with a config this class writes. ``start()`` spawns it."""

    def __init__(
        self,
        work_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_queued_messages: int = 100_000,
        extra_config: str = "",
        supervise: bool = True,
    ) -> None:
        self.work_dir = work_dir
        self.host = host
        self.port = port
        self.max_queued_messages = max_queued_messages
        self.extra_config = extra_config
        self.supervise = supervise
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None

    @property
    def endpoint(self) -> BrokerEndpoint:
        """Where clients connect."""
        return BrokerEndpoint(host=self.host, port=self.port)

    @property
    def pid(self) -> int | None:
        """The running mosquitto's pid."""
        return self._proc.pid if self._proc is not None else None

    @property
    def config_path(self) -> Path:
        """The config file this broker runs with."""
        return self.work_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        """mosquitto's own log."""
        return self.work_dir / "mosquitto.log"

    def write_config(self) -> None:
        """Write ``mosquitto.conf`` for loopback use."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        persist = self.work_dir / "persist"
        persist.mkdir(exist_ok=True)
        user = getpass.getuser()
        # Started as root, mosquitto drops to user "mosquitto", which cannot write here.
        self.config_path.write_text(
            "\n".join(
                [
                    "# Written by loudspeaker; private broker on loopback.",
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    f"user {user}",
                    "persistence true",
                    f"persistence_location {persist}/",
                    "autosave_interval 10",
                    # Default 1000 drops messages silently under fan-out; say it explicitly.
                    f"max_queued_messages {self.max_queued_messages}",
                    "max_inflight_messages 1000",
                    "set_tcp_nodelay true",
                    f"log_dest file {self.log_path}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_timestamp_format %Y-%m-%dT%H:%M:%S",
                    self.extra_config,
                    "",
                ]
            ),
            encoding="utf-8",
        )

    @property
    def card_path(self) -> Path:
        """Where the running broker's pid and address are written."""
        return self.work_dir / "broker.json"

    def _reclaim_orphan(self) -> None:
        # A controller killed with SIGKILL leaves its mosquitto running (it kept serving the
        # clusters and the CLI's direct emergency path meanwhile). Stop it and take over its
        # port, so boxes configured with that port find the new one.
        try:
            card = json.loads(self.card_path.read_text())
            pid, port = int(card["pid"]), int(card["port"])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError, KeyError, TypeError):
            return
        if str(self.config_path).encode() not in cmdline:
            return
        logger.warning("stopping mosquitto pid %s left by a previous controller", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if self.port == 0:
            self.port = port

    def start(self, timeout: float = 10.0) -> None:
        """Spawn mosquitto and wait until it listens; supervise it if asked."""
        binary = find_mosquitto()
        self._reclaim_orphan()
        if self.port == 0:
            self.port = free_port(self.host)
        elif wait_listening(self.host, self.port, 0.05):
            # Someone else's server there would pass our "is it listening?" check.
            raise BrokerStartError(
                f"port {self.host}:{self.port} is already in use by another program; "
                "choose another --broker-port"
            )
        self.write_config()
        self._spawn(binary, timeout)
        if self.supervise:
            self._watch = threading.Thread(
                target=self._supervise, args=(binary,), name="broker-watch", daemon=True
            )
            self._watch.start()

    def _spawn(self, binary: str, timeout: float) -> None:
        # stderr to a file, not a pipe: nobody reads a pipe of a long-running daemon.
        with (self.work_dir / "mosquitto.stderr").open("ab") as err:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if not wait_listening(self.host, self.port, timeout):
            tail = self._tail()
            self._kill()
            raise BrokerStartError(
                f"mosquitto did not start listening on {self.host}:{self.port} "
                f"within {timeout:.0f} s: {tail}"
            )
        logger.info("embedded mosquitto pid %s on %s:%s", self._proc.pid, self.host, self.port)
        tmp = self.card_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self._proc.pid, "host": self.host, "port": self.port}))
        os.replace(tmp, self.card_path)

    def _tail(self) -> str:
        text = ""
        err = self.work_dir / "mosquitto.stderr"
        if err.exists():
            text = err.read_text(errors="replace")[-800:]
        if self.log_path.exists():
            text += self.log_path.read_text(errors="replace")[-800:]
        return text.strip()[-800:] or "no output"

    def _supervise(self, binary: str) -> None:
        backoff = Retrier(Backoff(initial=0.2, cap=10.0))
        while not self._stop.wait(0.2):
            proc = self._proc
            if proc is None or proc.poll() is None:
                continue
            logger.error("embedded mosquitto exited with %s; restarting", proc.returncode)
            while not self._stop.is_set():
                try:
                    self._spawn(binary, 10.0)
                    self.restarts += 1
                    backoff.reset()
                    break
                except BrokerStartError as exc:
                    delay = backoff.next_delay()
                    logger.error("restart failed (%s); retrying in %.1f s", exc, delay)
                    self._stop.wait(delay)

    def kill(self) -> None:
        """SIGKILL the broker (the supervisor, if on, restarts it): for chaos tests."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def stop(self) -> None:
        """Stop supervising and terminate mosquitto."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join(5)
        self._kill()
        self.card_path.unlink(missing_ok=True)
