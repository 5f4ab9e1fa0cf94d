"""What an attacker does to the deployed shape (the field suite and ``bench/field.py``).

Two attackers:

- :class:`BoxPasswordAttack`: someone who read one box's credentials file (``lb-01``)
  tries other client ids (the controller's, another box's), other boxes' topics, a 100 MB
  publish and a 10 MB retained one, in a loop on a background thread.
- :func:`forged_commands`: the commands a stolen operators' credential (``_operator``)
  would inject (forged signature, unsigned, stale), of every command type.
"""

from __future__ import annotations

import functools
import http.server
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from firmware_bridge.credentials import read_credentials
from firmware_bridge.keys import read_key_file
from firmware_bridge.protocol import (
    AnyCommand,
    DiagnoseCommand,
    MediaRef,
    PlayCommand,
    PowerCommand,
    Priority,
    RebootCommand,
    StopCommand,
    VolumeCommand,
    WithdrawCommand,
    encode,
    new_id,
    sign_command,
    utcnow,
)
from tests.field.deployment import SITE, Deployment

T = f"loudspeaker/{SITE}"
FORGED_VOLUME = 13  # a volume nobody sets legitimately: seeing it means a forgery worked


@dataclass
class MqttClient:
    """A plain paho MQTT 5 client that records what happens to it."""

    c: paho.Client
    connect_rc: ReasonCode | None = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    connected: threading.Event = field(default_factory=threading.Event)
    puback: dict[int, ReasonCode] = field(default_factory=dict)
    got: list[tuple[str, bytes, bool]] = field(default_factory=list)

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        user: str,
        password: str,
        *,
        client_id: str,
        tls_ca: str | None = None,
        subs: tuple[str, ...] = (),
    ) -> MqttClient:
        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        me = cls(c)
        c.username_pw_set(user, password)
        if tls_ca:
            c.tls_set(ca_certs=tls_ca)

        def on_connect(_c: paho.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
            me.connect_rc = rc
            for s in subs:
                c.subscribe(s, qos=1)
            me.connected.set()

        c.on_connect = on_connect
        c.on_disconnect = lambda *_a: me.disconnected.set()
        c.on_message = lambda _c, _u, m: me.got.append((m.topic, bytes(m.payload), m.retain))
        c.on_publish = lambda _c, _u, mid, rc, _p: me.puback.__setitem__(mid, rc)
        props = Properties(PacketTypes.CONNECT)
        # A clean session of our own, gone when we disconnect: nobody else's is resumed.
        props.SessionExpiryInterval = 0
        c.connect(host, port, keepalive=30, clean_start=True, properties=props)
        c.loop_start()
        return me

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, timeout: float = 10
    ) -> ReasonCode | None:
        """Publish QoS 1; the PUBACK's reason code, or None if the broker cut us off."""
        try:
            info = self.c.publish(topic, payload, qos=1, retain=retain)
        except (ValueError, RuntimeError):
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if info.mid in self.puback:
                return self.puback[info.mid]
            if self.disconnected.is_set():
                return None
            time.sleep(0.01)
        return None

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@dataclass
class AttackLog:
    """What the box-password attacker saw (reason codes by attempt)."""

    rounds: int = 0
    connect_as: dict[str, list[str]] = field(default_factory=dict)
    other_topics: dict[str, set[str]] = field(default_factory=dict)
    big: dict[str, str] = field(default_factory=dict)


class BoxPasswordAttack:
    """lb-01's password, used for everything it must not be able to do, in a loop."""

    def __init__(self, d: Deployment, box: str = "lb-01") -> None:
        self.d = d
        self.box = box
        self.endpoint = read_credentials(d.credentials(box))
        self.log = AttackLog()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def _client(self, client_id: str) -> MqttClient:
        e = self.endpoint
        assert e.username is not None and e.password is not None
        return MqttClient.connect(
            e.host, e.port, e.username, e.password, client_id=client_id, tls_ca=e.tls_ca
        )

    def big_publishes(self) -> None:
        """100 MB on its own ack topic, 10 MB retained on its own status topic."""
        for name, topic, size, retain in (
            ("100MB", f"{T}/{self.box}/ack", 100 * 1024 * 1024, False),
            ("10MB-retained", f"{T}/{self.box}/status", 10 * 1024 * 1024, True),
        ):
            cl = self._client(f"big-{name}")
            try:
                if not cl.connected.wait(10):
                    self.log.big[name] = "no connection"
                    continue
                rc = cl.publish(topic, b"x" * size, retain=retain, timeout=60)
                self.log.big[name] = "cut off" if rc is None else rc.getName()
            finally:
                cl.close()

    def one_round(self) -> None:
        """Every client-id and topic attempt once."""
        victims = ["controller-luc-binh", "_controller", "cluster-luc-binh-lb-02", "lb-02"]
        for cid in victims:
            cl = self._client(cid)
            try:
                cl.connected.wait(5)
                rc = cl.connect_rc.getName() if cl.connect_rc is not None else "no answer"
                self.log.connect_as.setdefault(cid, []).append(rc)
            finally:
                cl.close()
        cl = self._client("topics")
        try:
            if not cl.connected.wait(5):
                return
            for other in ("lb-02", "lb-05", "lb-11"):
                for kind, payload, retain in (
                    ("cmd", b'{"v":1,"type":"stop"}', False),
                    ("ack", b'{"v":1}', False),
                    ("status", _offline(other), True),
                    ("health", b'{"v":1}', False),
                    ("result", b'{"v":1}', False),
                ):
                    rc = cl.publish(f"{T}/{other}/{kind}", payload, retain=retain)
                    name = "cut off" if rc is None else rc.getName()
                    self.log.other_topics.setdefault(f"{other}/{kind}", set()).add(name)
            rc = cl.publish(f"{T}/{self.box}/cmd", b'{"v":1}')
            self.log.other_topics.setdefault(f"{self.box}/cmd", set()).add(
                "cut off" if rc is None else rc.getName()
            )
        finally:
            cl.close()
        self.log.rounds += 1

    def start(self) -> None:
        """Attack in a loop until :meth:`stop` (the big publishes once, first)."""

        def run() -> None:
            try:
                self.big_publishes()
                while not self._stop.is_set():
                    self.one_round()
            except BaseException as exc:  # reported by stop(), not lost in a thread
                self.error = exc

        self._thread = threading.Thread(target=run, name="box-password-attack", daemon=True)
        self._thread.start()

    def wait_rounds(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.log.rounds < n and self.error is None:
            time.sleep(0.05)
        return self.log.rounds >= n

    def stop(self) -> AttackLog:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(120)
        if self.error is not None:
            raise self.error
        return self.log


def _offline(cluster: str) -> bytes:
    return json.dumps(
        {"v": 1, "cluster": cluster, "state": "offline", "ts": utcnow().isoformat()}
    ).encode()


# -- commands a compromised path injects ------------------------------------------------------


class MediaHost:
    """A tiny HTTP server holding the attacker's audio (a forged play would fetch it)."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> MediaHost:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def every_type(
    cluster: str, media: MediaRef, issued: datetime, expires: datetime, broadcast: str | None
) -> list[AnyCommand]:
    """One command of every type for ``cluster``, unsigned, with these times."""
    common: dict[str, Any] = {"cluster": cluster, "issued_at": issued, "expires_at": expires}
    return [
        PlayCommand(id=new_id(), broadcast=new_id(), media=media, **common),
        PlayCommand(
            id=new_id(), broadcast=new_id(), media=media, priority=Priority.EMERGENCY, **common
        ),
        StopCommand(id=new_id(), broadcast=None, **common),
        StopCommand(id=new_id(), broadcast=broadcast, **common),
        WithdrawCommand(id=new_id(), command=new_id(), **common),
        VolumeCommand(id=new_id(), volume=FORGED_VOLUME, **common),
        PowerCommand(id=new_id(), on=False, **common),
        RebootCommand(id=new_id(), **common),
        DiagnoseCommand(id=new_id(), tests=["self_test"], **common),
    ]


def forged_commands(
    d: Deployment, cluster: str, media: MediaRef, *, broadcast: str | None, stale: str
) -> dict[str, list[AnyCommand]]:
    """Commands of every type for ``cluster``, by variant.

    ``forged``: signed with a key that is not the box's (under the box's key id);
    ``unsigned``; and the ``stale`` variant, signed with the box's real key (a replay or a
    compromised signer): ``expired`` (issued 2 h ago, expired 1 h ago), ``future`` (issued
    1 h ahead) or ``long`` (a 30-day lifetime).
    """
    real = read_key_file(d.keys / f"{cluster}.json", SITE, cluster)[0]
    t = utcnow()
    fresh = every_type(cluster, media, t, t + timedelta(minutes=10), broadcast)
    forged = [sign_command(c, secrets.token_bytes(32), real.kid) for c in fresh]
    unsigned = every_type(cluster, media, t, t + timedelta(minutes=10), broadcast)
    times = {
        "expired": (t - timedelta(hours=2), t - timedelta(hours=1)),
        "future": (t + timedelta(hours=1), t + timedelta(hours=1, minutes=10)),
        "long": (t, t + timedelta(days=30)),
    }[stale]
    replayed = [
        sign_command(c, real.secret, real.kid)
        for c in every_type(cluster, media, *times, broadcast)
    ]
    return {"forged": forged, "unsigned": unsigned, stale: replayed}


def inject(d: Deployment, commands: dict[str, list[AnyCommand]]) -> dict[str, str]:
    """Publish the commands with the operators' account; PUBACK reason per command id.

    As a stolen operator credential would: ``_operator`` with a clean session of its own,
    so the running controller (``_controller``) is never displaced and the acks queued in
    its session stay there for it. One connection: nothing else logs in as ``_operator``
    during the attack, so a command without a PUBACK is reported as such, not retried.
    """
    op = read_credentials(d.credentials("_operator"), group_readable=True)
    assert op.username == "_operator" and op.password is not None, op.username
    todo = [c for batch in commands.values() for c in batch]
    out: dict[str, str] = {}
    # The field's _operator.json names the TLS listener and the site's own CA file.
    assert op.tls_ca not in (None, "system"), op.tls_ca
    cl = MqttClient.connect(
        op.host, op.port, op.username, op.password, client_id="compromised", tls_ca=op.tls_ca
    )
    try:
        if not cl.connected.wait(10) or cl.connect_rc is None or cl.connect_rc.is_failure:
            raise AssertionError(f"operators' account refused: {cl.connect_rc}")
        infos = [(c, cl.c.publish(f"{T}/{c.cluster}/cmd", encode(c), qos=1)) for c in todo]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(i.mid in cl.puback for _, i in infos):
            if cl.disconnected.is_set():
                break
            time.sleep(0.01)
        for c, info in infos:
            rc = cl.puback.get(info.mid)
            out[c.id] = "no PUBACK" if rc is None else rc.getName()
    finally:
        cl.close()
    return out
