"""`loudspeaker broker config` on a real mosquitto: the sockets asked for, each cluster
only its own topics, client ids bound to passwords, and the protocol's size limit.

The broker runs the generated file on free ports while this module holds 127.0.0.1:1883
(or something else already does): a configuration that opened mosquitto's implicit
default listener would not start at all, and the socket check would name it.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from typer.testing import CliRunner

from cli import app
from firmware_bridge.credentials import read_credentials
from firmware_bridge.protocol import MAX_PAYLOAD_BYTES, Kind
from loudspeaker.broker import find_mosquitto, free_port, wait_listening
from loudspeaker.brokerconf import write_broker_config
from tests.conftest import SITE_FILE
from tests.helpers import wait_until
from tests.security.cli_env import CliEnv, mode, ok

pytestmark = pytest.mark.integration

SITE = "luc-binh"
T = f"loudspeaker/{SITE}"
BOXES = [f"lb-{n:02d}" for n in range(1, 11)]  # the ten MQTT clusters of sites/luc-binh.toml
# Written out here, not taken from brokerconf: every kind but cmd is the box's to write.
BOX_WRITES = [k for k in Kind if k is not Kind.CMD]
# Built once for the module: the oversize publishes reuse them.
HUGE = bytes(100 * 1024 * 1024)
BIG = bytes(10 * 1024 * 1024)


@dataclass
class Broker:
    dir: Path
    port: int
    tls_port: int
    proc: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def port_1883_held() -> Iterator[socket.socket | None]:
    """Listen on 127.0.0.1:1883 for the whole module, unless another program already does."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 1883))
        s.listen(1)
    except OSError as exc:
        s.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        yield None  # held by someone else: just as good for this test
        return
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, port_1883_held: socket.socket | None
) -> Iterator[Broker]:
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
    log = (root / "mosquitto.log").open("wb")  # a file: a full pipe would stall mosquitto
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(out / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        up = wait_listening("127.0.0.1", port, 10) and wait_listening("127.0.0.1", tls_port, 10)
        assert up, (root / "mosquitto.log").read_text()
        yield Broker(out, port, tls_port, proc)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@dataclass
class Client:
    c: paho.Client
    connect_rc: ReasonCode | None = None
    session_present: bool = False
    disconnect_rc: ReasonCode | None = None
    got: list[paho.MQTTMessage] = field(default_factory=list)
    puback: dict[int, ReasonCode] = field(default_factory=dict)
    subacked: set[int] = field(default_factory=set)
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def publish_many(
        self, messages: list[tuple[str, bytes]], *, retain: bool = False
    ) -> list[ReasonCode]:
        """Publish QoS 1, then wait for every PUBACK (one bounded wait for all)."""
        infos = [self.c.publish(t, p, qos=1, retain=retain) for t, p in messages]
        assert wait_until(lambda: all(i.mid in self.puback for i in infos), 10), "no PUBACK"
        return [self.puback[i.mid] for i in infos]

    def publish(self, topic: str, payload: bytes = b"{}", *, retain: bool = False) -> ReasonCode:
        return self.publish_many([(topic, payload)], retain=retain)[0]

    def subscribe(self, *filters: str) -> None:
        mid = self.c.subscribe([(f, 1) for f in filters])[1]
        assert wait_until(lambda: mid in self.subacked, 5), "no SUBACK"

    def received(self, topic: str) -> list[bytes]:
        return [bytes(m.payload) for m in list(self.got) if m.topic == topic]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def connect(
    b: Broker,
    user: str | None,
    *,
    password: str | None = None,
    client_id: str | None = None,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    tls: bool = False,
    ca: str | None = None,
    subs: tuple[str, ...] = (),
    wait: bool = True,
) -> Client:
    """A paho MQTT 5 client that never reconnects by itself (a reconnect hides a kick)."""
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"t-{user}",
        protocol=paho.MQTTv5,
        reconnect_on_failure=False,
    )
    cl = Client(c)
    if user:
        cred = json.loads((b.dir / "credentials" / f"{user}.json").read_text())
        c.username_pw_set(user, password if password is not None else cred["password"])
    if tls:
        c.tls_set(ca_certs=ca)

    def on_connect(_c: paho.Client, _u: object, flags: object, rc: ReasonCode, _p: object) -> None:
        cl.connect_rc = rc
        cl.session_present = bool(getattr(flags, "session_present", False))
        cl.connected.set()

    def on_disconnect(_c: paho.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        cl.disconnect_rc = rc
        cl.disconnected.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = lambda _c, _u, m: cl.got.append(m)
    c.on_publish = lambda _c, _u, mid, rc, _p: cl.puback.__setitem__(mid, rc)
    c.on_subscribe = lambda _c, _u, mid, _rc, _p: cl.subacked.add(mid)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry_s
    c.connect(
        "localhost" if tls else "127.0.0.1",
        b.tls_port if tls else b.port,
        clean_start=clean_start,
        properties=props,
    )
    c.loop_start()
    if wait:
        assert cl.connected.wait(5) and cl.connect_rc == 0, (user, cl.connect_rc)
        if subs:
            cl.subscribe(*subs)
    return cl


def _proc_addr(hex_addr: str) -> tuple[str, int]:
    # /proc/net/tcp*: address as 32-bit words in host (little-endian) order, port big-endian.
    addr, port = hex_addr.split(":")
    raw = bytes.fromhex(addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    host = socket.inet_ntoa(words) if len(words) == 4 else str(IPv6Address(words))
    return host, int(port, 16)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """Every TCP socket process ``pid`` listens on (what `ss -ltnp` shows for it)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                found.add(_proc_addr(cols[1]))
    return found


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_files_are_private(broker: Broker) -> None:
    assert mode(broker.dir / "passwd") == 0o600
    assert mode(broker.dir / "credentials" / "lb-01.json") == 0o600
    assert mode(broker.dir / "tls" / "server.key") == 0o600
    assert mode(broker.dir / "tls" / "ca.key") == 0o600
    acl = (broker.dir / "acl").read_text()
    assert f"pattern read {T}/%u/cmd" in acl and "password" not in acl


def test_only_the_listeners_asked_for_are_open(
    broker: Broker, port_1883_held: socket.socket | None
) -> None:
    sockets = listening_sockets(broker.proc.pid)
    assert sockets == {("127.0.0.1", broker.port), ("127.0.0.1", broker.tls_port)}, sockets
    assert not any(p == 1883 or h in ("0.0.0.0", "::") for h, p in sockets)
    if port_1883_held is not None:  # ours, and still ours: mosquitto never tried to take it
        assert port_1883_held.getsockname() == ("127.0.0.1", 1883)


def test_each_cluster_writes_only_its_own_topics(broker: Broker) -> None:
    ctl = connect(broker, "_controller", subs=(f"{T}/#",))
    boxes = {b: connect(broker, b) for b in BOXES}
    try:
        for box, cl in boxes.items():
            # Every kind a box reports, on its own topics: accepted, and the controller hears it.
            own = [(f"{T}/{box}/{k.value}", f"own {box} {k.value}".encode()) for k in BOX_WRITES]
            assert cl.publish_many(own) == [0] * len(own), box
            # Commands, even its own, and every kind of every other box: refused.
            forged = [(f"{T}/{box}/cmd", b"forged")] + [
                (f"{T}/{other}/{k.value}", b"forged")
                for other in BOXES
                if other != box
                for k in Kind
            ]
            rcs = cl.publish_many(forged)
            refused = [
                t
                for (t, _), rc in zip(forged, rcs, strict=True)
                if rc.getName() == "Not authorized"
            ]
            assert refused == [t for t, _ in forged], box
        for box in BOXES:
            for k in BOX_WRITES:
                t = f"{T}/{box}/{k.value}"
                assert wait_until(lambda t=t: bool(ctl.received(t)), 5), t
        assert all(bytes(m.payload) != b"forged" for m in ctl.got)
    finally:
        ctl.close()
        for cl in boxes.values():
            cl.close()


def test_cluster_cannot_read_another_clusters_commands(broker: Broker) -> None:
    ctl = connect(broker, "_controller")
    spy = connect(broker, "lb-01", subs=(f"{T}/lb-02/cmd", "loudspeaker/#"))
    lb02 = connect(broker, "lb-02", subs=(f"{T}/lb-02/cmd",))
    try:
        assert ctl.publish(f"{T}/lb-02/cmd", b"for-lb-02") == 0
        assert ctl.publish(f"{T}/lb-01/cmd", b"for-lb-01") == 0
        assert wait_until(lambda: lb02.received(f"{T}/lb-02/cmd") == [b"for-lb-02"], 5)
        # Both went out in order on one broker: once lb-01's own command has arrived, a
        # leaked copy of lb-02's would have arrived before it.
        assert wait_until(lambda: spy.received(f"{T}/lb-01/cmd") == [b"for-lb-01"], 5)
        assert [m.topic for m in spy.got] == [f"{T}/lb-01/cmd"]
    finally:
        for cl in (ctl, spy, lb02):
            cl.close()


def test_a_box_password_cannot_kick_the_controller(broker: Broker) -> None:
    ctl = connect(broker, "_controller", client_id=f"controller-{SITE}")
    try:
        for _ in range(6):  # a few seconds of attempts, as a box kicking every second did
            intruder = connect(broker, "lb-01", client_id=f"controller-{SITE}")
            assert not intruder.publish(f"{T}/lb-01/health", b"{}").is_failure  # it is in
            assert not ctl.disconnected.wait(0.5), ctl.disconnect_rc
            intruder.close()
            assert intruder.disconnected.wait(5)
        assert not ctl.disconnected.wait(1), ctl.disconnect_rc
        assert not ctl.publish(f"{T}/lb-01/cmd", b"still here").is_failure
        # The check can fail: the controller's own account does take the session over.
        twin = connect(broker, "_controller", client_id="anything")
        try:
            assert ctl.disconnected.wait(5), "a takeover would not have been seen"
        finally:
            twin.close()
    finally:
        ctl.close()


def test_a_box_password_cannot_take_over_another_boxs_session(broker: Broker) -> None:
    lb02_id = f"cluster-{SITE}-lb-02"  # what the agent uses
    lb02 = connect(
        broker,
        "lb-02",
        client_id=lb02_id,
        clean_start=False,
        session_expiry_s=3600,
        subs=(f"{T}/lb-02/cmd",),
    )
    lb02.close()
    ctl = connect(broker, "_controller")
    try:
        assert ctl.publish(f"{T}/lb-02/cmd", b"queued for lb-02") == 0
        # lb-01's password with lb-02's client id, starting clean: were the id not bound
        # to the user, this would wipe lb-02's session and the message queued in it.
        intruder = connect(broker, "lb-01", client_id=lb02_id, clean_start=True)
        assert not intruder.publish(f"{T}/lb-01/status", b"{}").is_failure
        intruder.close()
        back = connect(broker, "lb-02", client_id=lb02_id, clean_start=False, session_expiry_s=3600)
        try:
            assert back.session_present
            assert wait_until(lambda: back.received(f"{T}/lb-02/cmd") == [b"queued for lb-02"], 5)
            assert intruder.received(f"{T}/lb-02/cmd") == []
        finally:
            back.close()
    finally:
        ctl.close()


REPORTS = [k for k in Kind if k is not Kind.CMD]  # what the operators may read


def test_the_operators_account_sends_commands_and_reads_reports_only(broker: Broker) -> None:
    ctl = connect(broker, "_controller")
    boxes = {b: connect(broker, b, subs=(f"{T}/{b}/cmd",)) for b in ("lb-01", "lb-02")}
    # Wildcards too: whatever the broker grants, only the operators' topics may arrive.
    op = connect(
        broker,
        "_operator",
        subs=(
            *(f"{T}/{b}/{k.value}" for b in BOXES for k in REPORTS),
            f"{T}/#",
            "loudspeaker/#",
            "#",
        ),
    )
    try:
        # Every cluster's commands: accepted and delivered to that box.
        cmds = [(f"{T}/{b}/cmd", f"cmd for {b}".encode()) for b in BOXES]
        assert not any(rc.is_failure for rc in op.publish_many(cmds))
        for b, cl in boxes.items():
            assert wait_until(
                lambda b=b, cl=cl: cl.received(f"{T}/{b}/cmd") == [f"cmd for {b}".encode()], 5
            ), b
        # Nothing else: no box's reports, no other site, no topic outside the clusters'.
        forged = [(f"{T}/{b}/{k.value}", b"forged") for b in BOXES for k in REPORTS]
        forged += [
            ("loudspeaker/other-site/lb-01/cmd", b"forged"),
            (f"{T}/_controller/cmd", b"forged"),
            (f"{T}/lb-99/cmd", b"forged"),
            (f"{T}/lb-01", b"forged"),
            ("elsewhere", b"forged"),
        ]
        rcs = op.publish_many(forged)
        allowed = [t for (t, _), rc in zip(forged, rcs, strict=True) if not rc.is_failure]
        assert allowed == []
        assert all(bytes(m.payload) != b"forged" for m in ctl.got)
        # Reading: every report of every box arrives; commands (the controller's or its own)
        # do not. Each box's report goes out after the command below, so once the last one
        # is in, a copy of that would have arrived before it.
        assert ctl.publish(f"{T}/lb-01/cmd", b"the controller's") == 0
        reports = [
            (f"{T}/{b}/{k.value}", f"{b} {k.value}".encode()) for b in BOXES for k in REPORTS
        ]
        for t, payload in reports:
            box = t.split("/")[2]
            cl = boxes.get(box) or connect(broker, box)
            try:
                assert cl.publish(t, payload) == 0
            finally:
                if box not in boxes:
                    cl.close()
        assert wait_until(lambda: all(op.received(t) for t, _ in reports), 10)
        # (Overlapping filters each deliver a copy: the topics are what counts.)
        assert {m.topic for m in op.got} == {t for t, _ in reports}
    finally:
        for cl in (ctl, op, *boxes.values()):
            cl.close()


def test_the_operators_login_leaves_the_controller_and_its_session_alone(
    broker: Broker,
) -> None:
    ctl_id = f"controller-{SITE}"  # what the controller sends (the broker uses _controller)
    ack = f"{T}/lb-03/ack"
    ctl = connect(broker, "_controller", client_id=ctl_id, clean_start=False, session_expiry_s=3600)
    ctl.subscribe(f"{T}/+/ack")
    ctl.close()  # the controller is down; its session keeps its subscription
    box = connect(broker, "lb-03")
    try:
        assert box.publish(ack, b"queued for the controller") == 0
        # The operators' tool: even asking for the controller's client id and to resume a
        # session, it gets its own, empty one (and none stays behind: expiry 0).
        op = connect(broker, "_operator", client_id="_controller", clean_start=False)
        try:
            assert not op.session_present
            op.subscribe(ack)
            assert box.publish(ack, b"after") == 0
            # A resumed controller session would have delivered the queued ack first.
            assert wait_until(lambda: op.received(ack) == [b"after"], 5), op.received(ack)
        finally:
            op.close()
        # The controller comes back: its session, with the ack queued while it was down.
        ctl = connect(
            broker, "_controller", client_id=ctl_id, clean_start=False, session_expiry_s=3600
        )
        assert ctl.session_present
        assert wait_until(
            lambda: ctl.received(ack) == [b"queued for the controller", b"after"], 5
        ), ctl.received(ack)
        # An operator logging in while the controller runs does not disconnect it.
        for _ in range(3):
            op = connect(broker, "_operator", client_id=ctl_id)
            assert not op.publish(f"{T}/lb-03/cmd", b"from an operator").is_failure
            assert not ctl.disconnected.wait(0.5), ctl.disconnect_rc
            op.close()
            assert op.disconnected.wait(5)
        assert not ctl.disconnected.is_set(), ctl.disconnect_rc
        assert not ctl.publish(f"{T}/lb-03/cmd", b"still here").is_failure
    finally:
        box.close()
        ctl.close()
        # Leave no controller session behind for the other tests of the module.
        connect(broker, "_controller", client_id=ctl_id, clean_start=True).close()


def push_oversize(b: Broker, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish as lb-01; the broker must refuse it (failure PUBACK) or hang up, never take it.

    mosquitto 2.0.11 answers a message over message_size_limit with a PUBACK reason code
    paho cannot parse for a PUBACK, so paho then closes the connection itself.
    """
    cl = connect(b, "lb-01")
    try:
        info = cl.c.publish(topic, payload, qos=1, retain=retain)
        gone = wait_until(lambda: info.mid in cl.puback or cl.disconnected.is_set(), 60)
        assert gone, "neither an answer nor a hang-up"
        rc = cl.puback.get(info.mid)
        assert rc is None or rc.is_failure, f"the broker took {len(payload)} bytes: {rc}"
    finally:
        cl.close()


def test_oversize_publishes_are_refused_and_never_delivered(broker: Broker) -> None:
    ctl = connect(broker, "_controller", subs=(f"{T}/#",))
    bystander = connect(broker, "lb-02", subs=(f"{T}/lb-02/cmd",))
    peak_before = peak_rss_kib(broker.proc.pid)
    status, ack = f"{T}/lb-01/status", f"{T}/lb-01/ack"
    try:
        box = connect(broker, "lb-01")
        # The protocol's maximum passes; the broker keeps the last good retained status.
        assert box.publish(status, b"s" * MAX_PAYLOAD_BYTES, retain=True) == 0
        assert box.publish(status, b"small", retain=True) == 0
        box.close()
        # One byte more (message_size_limit), 10 MB retained and 100 MB (max_packet_size,
        # checked on the length header): refused or cut off, never taken.
        push_oversize(broker, status, b"x" * (MAX_PAYLOAD_BYTES + 1), retain=True)
        push_oversize(broker, ack, b"x" * (MAX_PAYLOAD_BYTES + 1))
        push_oversize(broker, status, BIG, retain=True)
        push_oversize(broker, ack, HUGE)
        assert broker.alive
        # The broker never held the 100 MB (it reads the length first and hangs up).
        assert peak_rss_kib(broker.proc.pid) - peak_before < 32 * 1024
        # Everyone else stayed connected and still talks.
        assert not ctl.disconnected.wait(1) and not bystander.disconnected.is_set()
        assert ctl.publish(f"{T}/lb-02/cmd", b"after") == 0
        assert wait_until(lambda: bystander.received(f"{T}/lb-02/cmd") == [b"after"], 5)
        assert [len(p) for p in ctl.received(status)] == [MAX_PAYLOAD_BYTES, len(b"small")]
        assert all(len(m.payload) <= MAX_PAYLOAD_BYTES for m in ctl.got)
        ctl.close()  # the fresh subscriber below logs in as the controller too
        # A fresh subscriber gets the last good retained status, not an oversize one.
        fresh = connect(broker, "_controller", client_id="fresh", subs=(status,))
        try:
            assert wait_until(lambda: bool(fresh.received(status)), 5)
            assert fresh.received(status) == [b"small"]
        finally:
            fresh.close()
    finally:
        for cl in (ctl, bystander):
            cl.close()


def test_max_connections_holds_per_listener(
    tmp_path: Path, port_1883_held: socket.socket | None
) -> None:
    port = free_port()
    files = write_broker_config(
        tmp_path / "conf",
        site=SITE,
        clusters=BOXES,
        host="127.0.0.1",
        port=port,
        no_tls=True,
        max_connections=2,
        run_as="root",
    )
    with (tmp_path / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([find_mosquitto(), "-c", str(files.conf)], stdout=log, stderr=log)
        b = Broker(files.conf.parent, port, 0, proc)
        clients: list[Client] = []
        try:
            # No wait_listening probe here: mosquitto 2.0.11 counts a socket that closes
            # before CONNECT down twice (eclipse-mosquitto/mosquitto#1460), which would
            # raise the limit by one. The first real client is the readiness check.
            assert wait_until(lambda: _connects(b, "lb-01", clients), 10)
            clients.append(connect(b, "lb-02"))
            third = connect(b, "lb-03", wait=False)
            clients.append(third)
            assert third.disconnected.wait(5) and not third.connected.is_set()
            clients[0].close()
            assert clients[0].disconnected.wait(5)
            clients.append(connect(b, "lb-04"))  # a freed slot is usable again
            assert listening_sockets(proc.pid) == {("127.0.0.1", port)}
        finally:
            for cl in clients:
                cl.close()
            proc.terminate()
            proc.wait(10)


def _connects(b: Broker, user: str, into: list[Client]) -> bool:
    try:
        cl = connect(b, user, wait=False)
    except ConnectionRefusedError:
        return False  # not listening yet
    if cl.connected.wait(5) and cl.connect_rc == 0:
        into.append(cl)
        return True
    cl.close()
    return False


def test_anonymous_and_wrong_password_get_nothing(broker: Broker) -> None:
    anon = connect(broker, None, wait=False)
    wrong = connect(broker, "lb-01", password="guess", wait=False)
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


def test_run_as_gives_mosquitto_what_it_reads_and_nothing_else(
    port_1883_held: socket.socket | None,
) -> None:
    """`--run-as nobody`: mosquitto, started as root, drops to nobody and still starts."""
    # Not under pytest's 0700 tmp dirs: the dropped broker must be able to walk its path.
    root = Path(tempfile.mkdtemp(prefix="ls-runas-"))
    root.chmod(0o755)
    proc: subprocess.Popen[bytes] | None = None
    try:
        out, port, tls_port = root / "conf", free_port(), free_port()
        write_broker_config(
            out,
            site="luc-binh",
            clusters=["lb-01"],
            host="localhost",
            port=port,
            tls_self_signed=True,
            tls_port=tls_port,
            tls_bind="127.0.0.1",
            run_as="nobody",
        )
        nobody = pwd.getpwnam("nobody").pw_uid
        for mine in ("passwd", "acl", "persist", "tls/server.key", "tls/server.crt"):
            assert (out / mine).stat().st_uid == nobody, mine
        for theirs in ("tls/ca.key", "credentials/_controller.json", "credentials/lb-01.json"):
            assert (out / theirs).stat().st_uid == 0, theirs
        log = root / "mosquitto.log"
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                [find_mosquitto(), "-c", str(out / "mosquitto.conf")], stdout=sink, stderr=sink
            )
        assert wait_listening("127.0.0.1", tls_port, 10), log.read_text()
        assert Path(f"/proc/{proc.pid}/status").read_text().count(f"\t{nobody}\t") >= 1
        box = connect(
            Broker(out, port, tls_port, proc),
            "lb-01",
            tls=True,
            ca=str(out / "credentials" / "ca.crt"),
        )
        box.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


def test_a_cluster_without_an_acl_line_is_recorded_failed_by_the_cli(
    broker: Broker, tmp_path: Path
) -> None:
    # A cluster added to the site after `broker config`: the generated ACL gives the
    # operators' account no line for it, so the broker refuses the controller-down path's
    # command to it. It must be recorded failed with the broker's reason, never "sent".
    site = tmp_path / "site.toml"
    site.write_text(
        SITE_FILE.read_text(encoding="utf-8")
        + '\n[[clusters]]\nid = "lb-99"\nhamlet = "coc-xa"\nname = "Cụm mới"\n'
        'transport = "mqtt"\n',
        encoding="utf-8",
    )
    e = CliEnv(tmp_path, CliRunner())
    e.setup_users(site)
    res = e.runner.invoke(
        app,
        ["emergency", "Vỡ đê", "--siren", "--hamlet", "coc-xa", "--json", "--wait", "0"],
        env={
            "LOUDSPEAKER_HOME": str(e.data),
            "LOUDSPEAKER_TOKEN": "",
            "LOUDSPEAKER_TOKEN_FILE": str(e.token_file("officer")),
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "LOUDSPEAKER_BROKER": "",
            "LOUDSPEAKER_OPERATOR_CREDENTIALS": str(broker.dir / "credentials" / "_operator.json"),
        },
    )
    assert res.exit_code == 1, res.output  # one cluster got nothing: an operator must know
    assert "controller not running" in res.stderr
    assert "lb-99: NOT sent" in res.stderr and "Not authorized" in res.stderr
    assert "1 clusters got nothing: lb-99" in " ".join(res.stderr.split())
    data = json.loads(res.stdout)
    assert sorted(data["direct"]["sent"]) == ["lb-09", "lb-10"]
    assert list(data["direct"]["failed"]) == ["lb-99"]
    status = json.loads(
        ok(e.run("officer", "emergency", "status", str(data["id"]), "--json")).stdout
    )
    missing = {m["cluster"]: m for m in status["not_played"]}
    assert missing["lb-99"]["state"] == "failed"
    assert (
        "broker refused" in missing["lb-99"]["why"] and "Not authorized" in missing["lb-99"]["why"]
    )
    assert missing["lb-09"]["state"] == "sent"
