"""Fault injectors of issue 14, for ``bench/chaos.py`` (and anything else that attacks).

Each injector is ``def <fault>(ctx: FaultContext) -> AbstractContextManager[None]``: on
entry the fault is in effect (the flood is flowing, the sockets are open, the lock is
held), on exit it is gone and everything it opened is closed. They only attack: none needs
the controller's defences, and none imports the controller's internals (only the wire
format, to send valid messages from a stolen box's identity).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import resource
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


def _client(ctx: FaultContext, name: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chaos-{name}-{new_id()[:8]}")
    client.max_queued_messages_set(0)
    client.connect(ctx.broker_host, ctx.broker_port, keepalive=30)
    client.loop_start()
    return client


@contextlib.contextmanager
def _flood(
    ctx: FaultContext,
    name: str,
    payloads: Callable[[int], tuple[str, bytes]],
    total: int | None,
    per_s: float | None = None,
) -> Iterator[None]:
    """Publish ``payloads(i)`` as fast as the broker takes them (or ``per_s``), in a thread.

    ``total``: stop after that many (the issue's burst); None: until the context exits.
    Entry returns once the first message is out, so the fault is in effect.
    """
    client = _client(ctx, name)
    stop = threading.Event()
    first = threading.Event()

    def run() -> None:
        i = 0
        last: mqtt.MQTTMessageInfo | None = None
        while not stop.is_set() and (total is None or i < total):
            t, payload = payloads(i)
            last = client.publish(t, payload, qos=0)
            i += 1
            ctx.count(f"{name}_sent")
            first.set()
            if i % 200 == 0 and last is not None:
                # QoS 0 queues in paho's memory: let the socket catch up now and then.
                with contextlib.suppress(RuntimeError, ValueError):
                    last.wait_for_publish(5)
            if per_s is not None:
                stop.wait(1 / per_s)
        first.set()

    th = threading.Thread(target=run, name=f"fault-{name}", daemon=True)
    th.start()
    first.wait(10)
    try:
        yield
    finally:
        stop.set()
        th.join(30)
        client.loop_stop()
        client.disconnect()


def status_flood(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """The stolen box toggles online/offline 20,000 times, as fast as it can (ends online)."""
    t = topic(ctx.site, ctx.attacker, Kind.STATUS)
    on = encode(Status(cluster=ctx.attacker, state="online", agent="chaos"))
    off = encode(Status(cluster=ctx.attacker, state="offline", agent="chaos", reason="flood"))
    # An even count ending "online": afterwards the box is what it really is, online.
    return _flood(ctx, "status", lambda i: (t, off if i % 2 == 0 else on), STATUS_TOGGLES)


def ack_flood(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """The stolen box sends 20,000 valid acks for commands that do not exist."""
    t = topic(ctx.site, ctx.attacker, Kind.ACK)

    def ack(i: int) -> tuple[str, bytes]:
        state = (AckState.RECEIVED, AckState.PLAYING, AckState.PLAYED)[i % 3]
        msg = Ack(cluster=ctx.attacker, command=new_id(), state=state, ts=datetime.now(UTC))
        return t, encode(msg)

    return _flood(ctx, "ack", ack, ACK_FLOOD)


def deep_json(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """Nested arrays 30,000 deep on the stolen box's ack topic, 50 a second."""
    t = topic(ctx.site, ctx.attacker, Kind.ACK)
    payload = b"[" * DEEP_JSON_DEPTH + b"]" * DEEP_JSON_DEPTH
    return _flood(ctx, "deep_json", lambda i: (t, payload), None, per_s=50)


def huge_json(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """4 MB well-formed JSON acks on the stolen box's ack topic, 5 a second."""
    t = topic(ctx.site, ctx.attacker, Kind.ACK)
    filler = "x" * HUGE_JSON_BYTES
    ack = {
        "cluster": ctx.attacker,
        "command": "c0000000000000000000",
        "state": "played",
        "ts": "2026-12-02T00:00:00Z",
        "reason": filler,
    }
    payload = json.dumps(ack).encode()
    return _flood(ctx, "huge_json", lambda i: (t, payload), None, per_s=5)


# -- media port ----------------------------------------------------------------------------


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise FaultUnavailable(f"this process may open {hard} descriptors; {need} are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


_HALF_REQUEST = b"GET /media/"  # a request line never finished


@contextlib.contextmanager
def _connections(ctx: FaultContext, name: str, trickle: bool) -> Iterator[None]:
    """1,100 connections to the media port, kept open (and reopened when closed).

    ``trickle``: each sends its request one byte a second and never finishes it (slow);
    else each sends half a request line once and then nothing (idle).
    """
    _raise_nofile(MEDIA_CONNECTIONS + 256)
    socks: dict[socket.socket, int] = {}
    stop = threading.Event()

    def open_one() -> None:
        try:
            sock = socket.create_connection((ctx.media_host, ctx.media_port), timeout=2)
            sock.settimeout(0.5)
            if not trickle:
                sock.sendall(_HALF_REQUEST)
            socks[sock] = 0
            ctx.count(f"{name}_opened")
        except OSError:
            ctx.count(f"{name}_refused")

    def request_byte(i: int) -> bytes:
        text = b"GET /media/" + b"a" * 64 + b".mp3 HTTP/1.1\r\nHost: x\r\n"
        return text[i % len(text) : i % len(text) + 1]

    def keep() -> None:
        while not stop.is_set():
            for sock in list(socks):
                try:
                    if trickle:
                        sock.sendall(request_byte(socks[sock]))
                        socks[sock] += 1
                except OSError:
                    ctx.count(f"{name}_closed_by_server")
                    sock.close()
                    del socks[sock]
            missing = MEDIA_CONNECTIONS - len(socks)
            for _ in range(missing):
                if stop.is_set():
                    break
                open_one()
            stop.wait(1.0)

    for _ in range(MEDIA_CONNECTIONS):
        open_one()
    ctx.stats[f"{name}_open_at_start"] = len(socks)
    th = threading.Thread(target=keep, name=f"fault-{name}", daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join(30)
        for sock in list(socks):
            sock.close()


def idle_media_connections(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """1,100 connections to the media port, each half a request line and then silence."""
    return _connections(ctx, "idle", trickle=False)


def slow_media_connections(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """1,100 connections to the media port, each sending its request a byte a second."""
    return _connections(ctx, "slow", trickle=True)


# -- database ------------------------------------------------------------------------------


@contextlib.contextmanager
def database_locked(ctx: FaultContext) -> Iterator[None]:
    """Another process's write transaction holds the SQLite database for 10 s."""
    conn = sqlite3.connect(ctx.db_path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")  # the write lock (readers go on, under WAL)
    held_at = time.monotonic()

    def release() -> None:
        # Held its 10 s whatever the caller does meanwhile, as a stuck process would.
        time.sleep(DB_LOCK_S)
        conn.execute("ROLLBACK")
        ctx.count("db_held_ms", round((time.monotonic() - held_at) * 1000))

    th = threading.Thread(target=release, name="fault-db-lock", daemon=True)
    th.start()
    try:
        yield
    finally:
        th.join(DB_LOCK_S + 5)
        conn.close()


# -- workers -------------------------------------------------------------------------------


def _faulty_serve_missing() -> str | None:
    if importlib.util.find_spec("bench.faulty_serve") is None:
        return (
            "needs bench/faulty_serve.py, the serve wrapper whose workers die on demand "
            "(issue 14, helper P2's part): not on this branch"
        )
    return None


# Faults this build cannot inject, and why (bench/chaos.py reports them as skipped).
UNAVAILABLE = {
    name: why for name, why in (("worker_raises", _faulty_serve_missing()),) if why is not None
}
# Faults whose controller must run under ``python -m bench.faulty_serve``.
NEEDS_FAULTY_SERVE = {"worker_raises"}


def worker_raises(ctx: FaultContext) -> contextlib.AbstractContextManager[None]:
    """The dispatcher, health monitor and schedule runner threads die at once.

    Uses bench/faulty_serve.py (the controller runs under it, ``ctx.fault_dir`` is its
    ``LOUDSPEAKER_TEST_FAULT_DIR``); the controller's supervisor must restart them.
    """
    why = _faulty_serve_missing()
    if why is not None:
        raise FaultUnavailable(why)
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
