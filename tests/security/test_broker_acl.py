"""`loudspeaker broker config` against a real mosquitto: each cluster only its own topics."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from firmware_bridge.credentials import read_credentials
from loudspeaker.broker import find_mosquitto, free_port, wait_listening
from tests.conftest import SITE_FILE
from tests.helpers import wait_until
from tests.security.cli_env import CliEnv, mode, ok

T = "loudspeaker/luc-binh"


@dataclass
class Broker:
    dir: Path
    port: int
    tls_port: int


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    root = tmp_path_factory.mktemp("broker")
    e = CliEnv(root, CliRunner())
    e.setup_users(SITE_FILE)
    port, tls_port = free_port(), free_port()
    out = root / "conf"
    ok(
        e.run(
            "admin",
            "broker",
            "config",
            "-o",
            str(out),
            "--port",
            str(port),
            "--tls-port",
            str(tls_port),
            "--tls-bind",
            "127.0.0.1",
            "--host",
            "localhost",
            "--tls-self-signed",
            "--run-as",
            "root",
        )
    )
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(out / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_listening("127.0.0.1", port, 10) and wait_listening("127.0.0.1", tls_port, 10)
        yield Broker(out, port, tls_port)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


@dataclass
class Client:
    c: paho.Client
    connect_rc: ReasonCode | None = None
    got: list[tuple[str, bytes]] = field(default_factory=list)
    puback: dict[int, ReasonCode] = field(default_factory=dict)
    connected: threading.Event = field(default_factory=threading.Event)

    def publish(self, topic: str, payload: bytes = b"{}") -> ReasonCode:
        info = self.c.publish(topic, payload, qos=1)
        assert wait_until(lambda: info.mid in self.puback, 5), "no PUBACK"
        return self.puback[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def connect(
    b: Broker,
    user: str | None,
    *,
    password: str | None = None,
    tls: bool = False,
    ca: str | None = None,
    subs: tuple[str, ...] = (),
) -> Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{user}", protocol=paho.MQTTv5)
    cl = Client(c)
    if user:
        cred = json.loads((b.dir / "credentials" / f"{user}.json").read_text())
        c.username_pw_set(user, password if password is not None else cred["password"])
    if tls:
        c.tls_set(ca_certs=ca)

    def on_connect(_c: paho.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        cl.connect_rc = rc
        for s in subs:
            c.subscribe(s, qos=1)
        cl.connected.set()

    c.on_connect = on_connect
    c.on_message = lambda _c, _u, m: cl.got.append((m.topic, bytes(m.payload)))
    c.on_publish = lambda _c, _u, mid, rc, _p: cl.puback.__setitem__(mid, rc)
    c.connect("localhost" if tls else "127.0.0.1", b.tls_port if tls else b.port)
    c.loop_start()
    return cl


def test_files_are_private(broker: Broker) -> None:
    assert mode(broker.dir / "passwd") == 0o600
    assert mode(broker.dir / "credentials" / "lb-01.json") == 0o600
    assert mode(broker.dir / "tls" / "server.key") == 0o600
    assert mode(broker.dir / "tls" / "ca.key") == 0o600
    acl = (broker.dir / "acl").read_text()
    assert f"pattern read {T}/%u/cmd" in acl and "password" not in acl


def test_cluster_cannot_touch_another_clusters_topics(broker: Broker) -> None:
    ctl = connect(broker, "_controller", subs=(f"{T}/+/ack", f"{T}/+/status"))
    spy = connect(broker, "lb-01", subs=(f"{T}/lb-02/cmd", "loudspeaker/#"))
    lb02 = connect(broker, "lb-02", subs=(f"{T}/lb-02/cmd",))
    try:
        for cl in (ctl, spy, lb02):
            assert cl.connected.wait(5) and cl.connect_rc == 0, cl.connect_rc
        time.sleep(0.3)  # let the SUBSCRIBEs land before publishing
        # Its own topics: allowed, and the controller hears them.
        assert spy.publish(f"{T}/lb-01/ack", b"own-ack") == 0
        assert spy.publish(f"{T}/lb-01/status", b"own-status") == 0
        assert wait_until(lambda: (f"{T}/lb-01/ack", b"own-ack") in ctl.got, 5)
        # Another cluster's acknowledgements and health: refused (MQTT 5 says so).
        assert spy.publish(f"{T}/lb-02/ack", b"forged").getName() == "Not authorized"
        assert spy.publish(f"{T}/lb-02/status", b"forged").getName() == "Not authorized"
        # Commands: a cluster cannot send them, and cannot read another's.
        assert spy.publish(f"{T}/lb-02/cmd", b"forged").getName() == "Not authorized"
        assert ctl.publish(f"{T}/lb-02/cmd", b"for-lb-02") == 0
        assert wait_until(lambda: (f"{T}/lb-02/cmd", b"for-lb-02") in lb02.got, 5)
        time.sleep(0.3)  # lb-02 got it; a leak to lb-01 would have arrived by now
        assert [m for m in spy.got if m[0].startswith(f"{T}/lb-02")] == []
        assert all(m[1] != b"forged" for m in ctl.got + lb02.got)
    finally:
        for cl in (ctl, spy, lb02):
            cl.close()


def test_anonymous_and_wrong_password_get_nothing(broker: Broker) -> None:
    anon = connect(broker, None)
    wrong = connect(broker, "lb-01", password="guess")
    try:
        for cl in (anon, wrong):
            assert cl.connected.wait(5)
            assert cl.connect_rc is not None and cl.connect_rc.is_failure
    finally:
        anon.close()
        wrong.close()


def test_tls_listener_with_the_private_ca(broker: Broker) -> None:
    endpoint = read_credentials(broker.dir / "credentials" / "lb-03.json")
    assert endpoint.url == f"mqtts://localhost:{broker.tls_port}"
    good = connect(broker, "lb-03", tls=True, ca=endpoint.tls_ca)
    try:
        assert good.connected.wait(5) and good.connect_rc == 0
        assert not good.publish(f"{T}/lb-03/status", b"tls").is_failure
    finally:
        good.close()
    # Without the private CA the server certificate is not trusted.
    ctx = ssl.create_default_context()
    with (
        socket.create_connection(("localhost", broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
        ctx.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass
    # With it, the certificate holds for the configured host name.
    assert endpoint.tls_ca is not None
    ctx = ssl.create_default_context(cafile=endpoint.tls_ca)
    with (
        socket.create_connection(("localhost", broker.tls_port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
