"""Fault injectors of issue 14, for ``bench/chaos.py`` (and anything else that attacks).

Each injector is ``def <fault>(ctx: FaultContext) -> AbstractContextManager[None]``: on
entry the fault is in effect (the flood is flowing, the sockets are open, the lock is
held), on exit it is gone and everything it opened is closed. They only attack: none needs
the controller's defences, and none imports the controller's internals (only the wire
format, to send valid messages from a stolen box's identity).

The parts they are built from (:class:`Flood` and the payload makers, :func:`media_flood`,
:func:`hold_database`) are the chaos tests' injectors too (tests/chaos/): one set of
attacks, measured by bench/ and asserted by the tests. Importing this module starts
nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import resource
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware_bridge.protocol import Ack, AckState, Kind, Status, encode, new_id, topic

logger = logging.getLogger(__name__)

# The counts of the issue: 20,000 toggles (lb-01 sent them in 6 s), 1,100 connections
# (more than the usual 1,024-descriptor limit), the database held for 10 s.
STATUS_TOGGLES = 20_000
ACK_FLOOD = 20_000
MEDIA_CONNECTIONS = 1_100
DB_LOCK_S = 10.0
DEEP_JSON_DEPTH = 30_000  # 60 kB: under the protocol's 64 kB limit, far past recursion
HUGE_JSON_BYTES = 4 * 1024 * 1024


class FaultUnavailable(RuntimeError):
    """The fault cannot be injected on this build (say why)."""


@dataclass
class FaultContext:
    """Where the fault is aimed: the broker, the controller's media port and database."""

    site: str
    broker_host: str
    broker_port: int
    media_host: str
    media_port: int
    db_path: Path
    attacker: str  # the box whose identity the MQTT faults use (a stolen box)
    # For worker_raises: bench/faulty_serve.py's flag directory, and how to wake the workers.
    fault_dir: Path | None = None
    poke: Callable[[], None] | None = None
    # What the injector did, for the report (messages sent, sockets open, refusals...).
    stats: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``key``."""
        self.stats[key] = self.stats.get(key, 0) + n


# -- MQTT floods ---------------------------------------------------------------------------


class Flood:
    """Publishes ``make(i)`` on ``topic_name``, ``count`` times (None: until exit).

    A context manager: the flood starts on entry and runs on its own thread,
    ``rate_per_s`` messages a second (None: as fast as the broker takes them); ``first``
    is set once the first message is out, ``done`` once all ``count`` were handed to the
    client; exit stops it and disconnects. QoS 0: nothing the broker does slows it down.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_name: str,
        make: Callable[[int], bytes],
        count: int | None,
        *,
        rate_per_s: float | None = None,
        name: str = "flood",
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_name = topic_name
        self.make = make
        self.count = count
        self.rate_per_s = rate_per_s
        self.sent = 0
        self.first = threading.Event()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"chaos-{name}-{new_id()[:8]}"
        )
        if username:
            self._client.username_pw_set(username, password)
        self._thread = threading.Thread(target=self._run, name=f"fault-{name}", daemon=True)

    def __enter__(self) -> Flood:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        i = 0
        try:
            while self.count is None or i < self.count:
                if self.rate_per_s is not None:
                    # Paced, as the box was (20,000 in 6 s), not as fast as Python can.
                    ahead = start + i / self.rate_per_s - time.monotonic()
                    if ahead > 0 and self._stop.wait(ahead):
                        return
                if self._stop.is_set():
                    return
                info = self._client.publish(self.topic_name, self.make(i), qos=0)
                i += 1
                self.sent = i
                self.first.set()
                if i % 200 == 0:
                    # QoS 0 queues in paho's memory: let the socket catch up now and then.
                    with contextlib.suppress(RuntimeError, ValueError):
                        info.wait_for_publish(5)
            self.done.set()
        finally:
            self.first.set()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.disconnect()
        self._client.loop_stop()


def status_toggles(cluster: str) -> Callable[[int], bytes]:
    """Valid offline/online toggles of ``cluster``; an even count ends online."""
    off = encode(Status(cluster=cluster, state="offline", agent="chaos", reason="flood"))
    on = encode(Status(cluster=cluster, state="online", agent="chaos"))
    return lambda i: off if i % 2 == 0 else on


def bogus_acks(cluster: str) -> Callable[[int], bytes]:
    """Valid acks of ``cluster`` for commands nobody sent, a new command id each."""

    def ack(i: int) -> bytes:
        state = (AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED)[i % 3]
        return encode(Ack(cluster=cluster, command=new_id(), state=state, ts=datetime.now(UTC)))

    return ack


def deep_json_payload(depth: int = DEEP_JSON_DEPTH) -> bytes:
    """Arrays nested ``depth`` deep: under the 64 KiB payload limit at 30,000."""
    return b"[" * depth + b"]" * depth


def huge_json_payload(cluster: str, size: int = HUGE_JSON_BYTES) -> bytes:
    """A well-formed ack of ``cluster`` about ``size`` bytes long (a huge ``reason``)."""
    ack = {
        "cluster": cluster,
        "command": "c0000000000000000000",
        "state": "played",
        "ts": "2026-12-02T00:00:00Z",
        "reason": "x" * size,
    }
    return json.dumps(ack).encode()


@contextlib.contextmanager
def _flood(
    ctx: FaultContext,
    name: str,
    kind: Kind,
    make: Callable[[int], bytes],
    total: int | None,
    per_s: float | None = None,
) -> Iterator[None]:
    """A :class:`Flood` from the attacker's identity, in effect on entry (first message out)."""
    t = topic(ctx.site, ctx.attacker, kind)
    flood = Flood(ctx.broker_host, ctx.broker_port, t, make, total, rate_per_s=per_s, name=name)
    with flood:
        flood.first.wait(10)
        try:
            yield
        finally:
            ctx.count(f"{name}_sent", flood.sent)


def status_flood(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """The stolen box toggles online/offline 20,000 times, as fast as it can (ends online)."""
    # An even count ending "online": afterwards the box is what it really is, online.
    return _flood(ctx, "status", Kind.STATUS, status_toggles(ctx.attacker), STATUS_TOGGLES)


def ack_flood(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """The stolen box sends 20,000 valid acks for commands that do not exist."""
    return _flood(ctx, "ack", Kind.ACK, bogus_acks(ctx.attacker), ACK_FLOOD)


def deep_json(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """Nested arrays 30,000 deep on the stolen box's ack topic, 50 a second."""
    payload = deep_json_payload()
    return _flood(ctx, "deep_json", Kind.ACK, lambda i: payload, None, per_s=50)


def huge_json(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """4 MB well-formed JSON acks on the stolen box's ack topic, 5 a second."""
    payload = huge_json_payload(ctx.attacker)
    return _flood(ctx, "huge_json", Kind.ACK, lambda i: payload, None, per_s=5)


# -- media port ----------------------------------------------------------------------------


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise FaultUnavailable(f"this process may open {hard} descriptors; {need} are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@dataclass
class FloodStats:
    """What a :func:`media_flood` did, and the server's answers to it."""

    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0
    held: int = 0  # connections open after the latest refill
    filled: threading.Event = field(default_factory=threading.Event, repr=False)


@contextlib.contextmanager
def media_flood(
    host: str, port: int, *, connections: int = MEDIA_CONNECTIONS, trickle: bool = False
) -> Iterator[FloodStats]:
    """Hold ``connections`` half-sent requests open on the media port until the block ends.

    ``trickle``: also send one more byte of the request head on every connection once a
    second (a slow-loris client). Every second, the connections the server closed are
    opened again, so the pressure never lets up. The connections are opened on the
    flood's thread: ``filled`` is set once the first round is open. Needs ``connections``
    + a few descriptors of its own.
    """
    stats = FloodStats()
    stop = threading.Event()
    socks: list[socket.socket] = []

    def open_one() -> socket.socket | None:
        try:
            s = socket.create_connection((host, port), 2)
            s.sendall(b"GET /media/")
        except OSError:
            stats.refused += 1
            return None
        stats.opened += 1
        return s

    poller = select.poll()  # select() stops at descriptor 1024

    def drop(s: socket.socket) -> None:
        poller.unregister(s)
        socks.remove(s)
        s.close()
        stats.closed_by_server += 1

    def fill() -> None:
        while not stop.is_set() and len(socks) < connections:
            if (s := open_one()) is not None:
                socks.append(s)
                poller.register(s, select.POLLIN)
        stats.held = len(socks)

    def run() -> None:
        fill()
        stats.filled.set()
        by_fd = {s.fileno(): s for s in socks}
        while not stop.wait(1.0):
            # An idle client's socket is readable only when the server closed it.
            for fd, _ev in poller.poll(0):
                if (s := by_fd.pop(fd, None)) is not None:
                    drop(s)
            fill()
            if trickle:
                for s in list(socks):
                    try:
                        s.send(b"0")
                    except OSError:
                        drop(s)
            by_fd = {s.fileno(): s for s in socks}

    t = threading.Thread(target=run, name="fault-media-flood", daemon=True)
    t.start()
    try:
        yield stats
    finally:
        stop.set()
        t.join(30)
        for s in socks:
            s.close()


@contextlib.contextmanager
def _media_fault(ctx: FaultContext, name: str, trickle: bool) -> Iterator[None]:
    _raise_nofile(MEDIA_CONNECTIONS + 256)
    with media_flood(ctx.media_host, ctx.media_port, trickle=trickle) as stats:
        stats.filled.wait(60)
        ctx.stats[f"{name}_open_at_start"] = stats.held
        try:
            yield
        finally:
            ctx.count(f"{name}_opened", stats.opened)
            ctx.count(f"{name}_closed_by_server", stats.closed_by_server)
            ctx.count(f"{name}_refused", stats.refused)


def idle_media_connections(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """1,100 connections to the media port, each half a request line and then silence."""
    return _media_fault(ctx, "idle", trickle=False)


def slow_media_connections(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """1,100 connections to the media port, each sending its request a byte a second."""
    return _media_fault(ctx, "slow", trickle=True)


# -- database ------------------------------------------------------------------------------


@contextlib.contextmanager
def hold_database(
    db_path: Path, seconds: float, count: Callable[[str, int], None] | None = None
) -> Iterator[None]:
    """Another connection's write transaction holds the SQLite database ``seconds``.

    Entered once the write lock is held; leaving releases it once ``seconds`` have passed
    since it was taken (not before, however quickly the body ran). ``count``, if given,
    receives ``("db_held_ms", n)``.
    """
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")  # the write lock (readers go on, under WAL)
    held_at = time.monotonic()

    def release() -> None:
        # Held its full time whatever the caller does meanwhile, as a stuck process would.
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        if count is not None:
            count("db_held_ms", round((time.monotonic() - held_at) * 1000))

    th = threading.Thread(target=release, name="fault-db-lock", daemon=True)
    th.start()
    try:
        yield
    finally:
        th.join(seconds + 5)
        conn.close()


def database_locked(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """Another process's write transaction holds the SQLite database for 10 s."""
    return hold_database(ctx.db_path, DB_LOCK_S, ctx.count)


# -- workers -------------------------------------------------------------------------------


# Faults whose controller must run under ``python -m bench.faulty_serve``.
NEEDS_FAULTY_SERVE = {"worker_raises"}


def worker_raises(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """The dispatcher, health monitor and schedule runner threads die at once.

    Uses bench/faulty_serve.py (the controller runs under it, ``ctx.fault_dir`` is its
    ``LOUDSPEAKER_TEST_FAULT_DIR``); the controller's supervisor must restart them.
    """
    if ctx.fault_dir is None or ctx.poke is None:
        raise FaultUnavailable("the controller was not started under bench.faulty_serve")
    faulty = importlib.import_module("bench.faulty_serve")
    cm: contextlib.AbstractContextManager[None] = faulty.workers_killed(ctx.fault_dir, ctx.poke)
    return cm


def no_fault(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """Nothing injected: the baseline on the same rig."""
    return contextlib.nullcontext()


FAULTS: dict[str, Callable[[FaultContext], contextlib.AbstractContextManager[None]]] = {
    "no_fault": no_fault,
    "status_flood": status_flood,
    "ack_flood": ack_flood,
    "idle_media_connections": idle_media_connections,
    "slow_media_connections": slow_media_connections,
    "deep_json": deep_json,
    "huge_json": huge_json,
    "database_locked": database_locked,
    "worker_raises": worker_raises,
}
# The faults that speak as a box: its own emergency delivery is not a fair measure.
IMPERSONATES = {"status_flood", "ack_flood", "deep_json", "huge_json"}
