"""Secrets at rest: another OS account reads no key, and everyone entitled still signs.

Issue 13, item 4: the database, its WAL/SHM and the plain-text signing keys were readable
by every local account. The reading account here is the real user ``nobody`` (``setpriv``,
so we need root), with or without the operators' group (``users``, gid 100, present on
Debian), on a data directory whose parent anyone may traverse: the only barrier is ours.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from firmware_bridge.agent import AgentConfig, ClusterAgent
from firmware_bridge.sinks import SimulatedSink
from loudspeaker.auth import Actor
from loudspeaker.broadcasts import create_broadcast, register_media
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.config import Settings
from loudspeaker.controller import Controller
from loudspeaker.db import init_db, make_engine, migration_config
from loudspeaker.exceptions import KeystoreError
from loudspeaker.keys import issue, secret_of
from loudspeaker.keystore import Keystore
from loudspeaker.media import MediaStore
from loudspeaker.models import ClusterKey, ClusterRecord, Delivery
from loudspeaker.site import load_site_file, store_site
from tests.helpers import make_tone_mp3, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE_FILE = ROOT / "sites" / "luc-binh.toml"
LOUDSPEAKER = str(Path(sys.executable).with_name("loudspeaker"))
NOBODY = 65534
OPERATORS = "users"
OPERATORS_GID = 100
ADMIN = Actor("admin1", "admin")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="reading as another OS account needs root and setpriv (util-linux)",
)

# Runs as the other account: tries each path and reports what the kernel said.
PROBE = r"""
import errno, json, os, sys
out = {}
for path in json.loads(sys.argv[1]):
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        out[path] = "read"
    except OSError as exc:
        out[path] = errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps(out))
"""


def _as_nobody(groups: list[int]) -> list[str]:
    group_opt = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", group_opt]


def _probe(paths: list[Path], groups: list[int]) -> dict[str, str]:
    r = subprocess.run(
        [*_as_nobody(groups), "/usr/bin/python3", "-c", PROBE, json.dumps(list(map(str, paths)))],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return {Path(k).name if k else k: v for k, v in json.loads(r.stdout).items()}


def _others_may_run_the_cli() -> bool:
    """Whether ``nobody`` can start this checkout's Python and import the package (not so
    when the checkout or the interpreter sits under a private home)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    try:
        r = subprocess.run(
            [*_as_nobody([]), sys.executable, "-c", "import loudspeaker"],
            capture_output=True,
            timeout=60,
            check=False,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


needs_reachable_venv = pytest.mark.skipif(
    not _others_may_run_the_cli(),
    reason=f"{LOUDSPEAKER} is not reachable by other accounts (the checkout is private)",
)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account may traverse (pytest's own tmp root is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="ls-secrets-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cli(data: Path, *args: str, group: str | None = None, **env: str) -> str:
    full_env = {
        **os.environ,
        "LOUDSPEAKER_HOME": str(data),
        "XDG_CONFIG_HOME": str(data.parent / "config"),
        "LOUDSPEAKER_TOKEN": "",
        "LOUDSPEAKER_TOKEN_FILE": "",
        **env,
    }
    full_env.pop("LOUDSPEAKER_GROUP", None)
    if group:
        full_env["LOUDSPEAKER_GROUP"] = group
    r = subprocess.run(
        [LOUDSPEAKER, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stderr


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_root
@pytest.mark.parametrize("group", [None, OPERATORS])
def test_another_account_reads_no_secret(open_dir: Path, group: str | None) -> None:
    data = open_dir / "data"
    _cli(data, "site", "load", str(SITE_FILE), group=group)
    # The first admin's token goes to XDG_CONFIG_HOME; the next user's to DATA_DIR/tokens.
    _cli(data, "users", "add", "admin1", "--role", "admin", group=group)
    _cli(data, "users", "add", "officer1", "--role", "officer", group=group)
    token = data / "tokens" / "officer1.token"
    _cli(data, "keys", "issue", "lb-01", group=group)
    db = data / "loudspeaker.db"
    keystore = data / "secrets" / "keystore.key"
    # An open WAL-mode connection keeps -wal and -shm on disk, as a running controller does.
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert con.execute("SELECT count(*) FROM cluster_key").fetchone() == (1,)
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
        assert wal.exists() and shm.exists()
        control = open_dir / "public.txt"
        control.write_text("anyone may read this")
        control.chmod(0o644)
        secrets = [db, wal, shm, keystore, token, data, data / "secrets", data / "tokens"]

        seen = _probe([control, *secrets], groups=[])
        assert seen.pop("public.txt") == "read"  # the probe can read what it may
        assert seen == {p.name: "EACCES" for p in secrets}

        want_dir, want_file = (0o2770, 0o660) if group else (0o700, 0o600)
        assert _mode(data) == _mode(data / "secrets") == want_dir
        # Operators' CLI spools an emergency the busy database could not take: the
        # controller must read it, nobody else.
        assert _mode(data / "spool" / "emergencies") == want_dir
        for f in (db, wal, shm, keystore):
            assert _mode(f) == want_file, f
            assert not group or f.stat().st_gid == OPERATORS_GID, f
        assert _mode(token) == 0o600
        if group:
            # An operator (in the group) reads the database and the key store, never
            # another person's token.
            seen = _probe([db, keystore, token, data], groups=[OPERATORS_GID])
            assert seen == {
                "loudspeaker.db": "read",
                "keystore.key": "read",
                "officer1.token": "EACCES",
                "data": "read",
            }
    finally:
        con.close()


def test_database_holds_no_key_in_clear(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    keystore = Keystore.of(settings)
    engine = make_engine(settings.database_url)
    init_db(engine, keystore)
    with Session(engine) as s:
        store_site(s, load_site_file(SITE_FILE))
        key = issue(s, "lb-01", ADMIN, keystore=keystore)
        s.commit()
        secret = secret_of(keystore, key)
    engine.dispose()
    assert len(secret) == 32
    raw = b"".join(
        p.read_bytes() for p in (tmp_path / "data").glob("loudspeaker.db*") if p.is_file()
    )
    assert secret not in raw and secret.hex().encode() not in raw

    # A copy of the database with any other key store opens nothing.
    other = Keystore(tmp_path / "elsewhere" / "keystore.key")
    other.seal(b"x" * 32, "make the file")
    with pytest.raises(KeystoreError, match="sealed under key store"):
        secret_of(other, key)
    with pytest.raises(KeystoreError, match="missing"):
        secret_of(Keystore(tmp_path / "lost" / "keystore.key"), key)
    # A sealed value moved to another cluster's row is refused.
    moved = ClusterKey(
        cluster_id="lb-02",
        kid=key.kid,
        secret_sealed=key.secret_sealed,
        state=key.state,
        created_at=key.created_at,
    )
    with pytest.raises(KeystoreError, match="altered or belongs to another row"):
        secret_of(keystore, moved)


def test_migration_seals_keys_stored_in_clear(tmp_path: Path, db_url: str) -> None:
    from alembic import command

    engine = make_engine(db_url)
    cfg = migration_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    secret = bytes(range(32))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO cluster_key (cluster_id, kid, secret_hex, state, created_at) "
                "VALUES ('lb-01', 'kold', :h, 'active', CURRENT_TIMESTAMP)"
            ),
            {"h": secret.hex()},
        )
    with pytest.raises(KeystoreError, match="must be sealed"):
        init_db(engine)  # refused, not half-done, without the key store
    keystore = Keystore(tmp_path / "secrets" / "keystore.key")
    init_db(engine, keystore)
    with Session(engine) as s:
        row = s.exec(select(ClusterKey)).one()
        assert row.secret_sealed.startswith("v1.")
        assert secret_of(keystore, row) == secret
    if db_url.startswith("sqlite"):
        db = Path(db_url.split("///", 1)[1])
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())
        assert secret.hex().encode() not in raw, "the clear key survived in the file"
    engine.dispose()


@needs_root
def test_loose_modes_are_tightened_at_start(open_dir: Path) -> None:
    data = open_dir / "data"
    _cli(data, "site", "load", str(SITE_FILE))
    _cli(data, "keys", "issue", "lb-01")
    db = data / "loudspeaker.db"
    con = sqlite3.connect(db)  # keep -wal/-shm present
    try:
        con.execute("SELECT 1 FROM cluster_key").fetchall()
        token = data / "tokens" / "old.token"
        token.write_text("lst_x")
        loose = [
            data,
            data / "secrets",
            data / "tokens",
            db,
            Path(f"{db}-wal"),
            Path(f"{db}-shm"),
            data / "secrets" / "keystore.key",
            token,
            data / "keys" / "lb-01.json",
        ]
        for p in loose:
            p.chmod(0o755 if p.is_dir() else 0o644)
        err = _cli(data, "clusters")
        for p in loose:
            assert f"tightened file permissions: {p}: mode " in err, (p, err)
        for p in loose[:3]:
            assert _mode(p) == 0o700, p
        for p in loose[3:]:
            assert _mode(p) == 0o600, p
        assert _probe([db, data], groups=[]) == {"loudspeaker.db": "EACCES", "data": "EACCES"}
        # Nothing left to fix: the next start says nothing.
        assert "tightened" not in _cli(data, "clusters")
    finally:
        con.close()


@pytest.fixture
def keyed_boxes(open_dir: Path, mosquitto: EmbeddedBroker) -> Iterator[dict[str, SimulatedSink]]:
    """lb-01 and lb-02 (hamlet Bản Cáu) with keys from the CLI, in operators' group mode."""
    data = open_dir / "data"
    _cli(data, "site", "load", str(SITE_FILE), group=OPERATORS)
    sinks: dict[str, SimulatedSink] = {}
    agents: list[ClusterAgent] = []
    for cluster in ("lb-01", "lb-02"):
        box = open_dir / "boxes" / cluster
        _cli(data, "keys", "issue", cluster, "-o", str(box / "keys.json"), group=OPERATORS)
        sinks[cluster] = SimulatedSink(time_scale=0.1)
        agent = ClusterAgent(
            AgentConfig(
                site="luc-binh", cluster=cluster, endpoint=mosquitto.endpoint, state_dir=box
            ),
            sinks[cluster],
        )
        agent.start()
        agents.append(agent)
    assert all(a.link.connected.wait(10) for a in agents)
    yield sinks
    for a in agents:
        a.stop()


@needs_root
@needs_reachable_venv
def test_controller_and_operator_cli_still_sign(
    open_dir: Path, mosquitto: EmbeddedBroker, keyed_boxes: dict[str, SimulatedSink]
) -> None:
    data = open_dir / "data"
    # The controller (root here, the service account in production) signs: a keyed box
    # plays only signed commands.
    ctl = Controller(Settings(data_dir=data, broker_url=mosquitto.endpoint.url, group=OPERATORS))
    ctl.start()
    try:
        assert ctl.dispatcher is not None
        engine = ctl.dispatcher.engine
        audio = make_tone_mp3(open_dir / "tone.mp3", 0.3)
        with Session(engine) as s:
            media = register_media(s, MediaStore(ctl.settings.media_dir), audio)
            lb01 = s.get(ClusterRecord, "lb-01")
            assert lb01 is not None
            bid = create_broadcast(
                s, media=media, title="bulletin", target="cluster:lb-01", clusters=[lb01]
            ).id
        ctl.dispatcher.poke()

        def state() -> str:
            with Session(engine) as s:
                return s.exec(select(Delivery.state).where(Delivery.broadcast_id == bid)).one()

        assert wait_until(lambda: state() in ("played", "failed", "unreachable"), 20)
        assert state() == "played"
    finally:
        ctl.stop()
    assert len(keyed_boxes["lb-01"].plays) == 1

    # The controller is down: an operator (nobody, in the operators' group) sends an
    # emergency straight over the broker, signed with keys it opens from the key store.
    home = open_dir / "home"
    home.mkdir()
    os.chown(home, NOBODY, NOBODY)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "LOUDSPEAKER_HOME": str(data),
        "LOUDSPEAKER_GROUP": OPERATORS,
        "LOUDSPEAKER_BROKER": mosquitto.endpoint.url,
        "LOUDSPEAKER_TOKEN": "",
        "LOUDSPEAKER_TOKEN_FILE": "",
    }
    r = subprocess.run(
        [
            *_as_nobody([OPERATORS_GID]),
            LOUDSPEAKER,
            "emergency",
            "Vỡ đê",
            "--siren",
            "--hamlet",
            "ban-cau",
            "--json",
            "--wait",
            "20",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "controller not running" in r.stderr
    assert wait_until(lambda: all(len(s.plays) >= 1 for s in keyed_boxes.values()), 20)
    assert len(keyed_boxes["lb-02"].plays) == 1 and len(keyed_boxes["lb-01"].plays) == 2


@needs_root
@needs_reachable_venv
def test_cli_of_another_account_says_what_to_do(open_dir: Path) -> None:
    data = open_dir / "data"
    _cli(data, "site", "load", str(SITE_FILE))
    r = subprocess.run(
        [*_as_nobody([]), LOUDSPEAKER, "clusters"],
        capture_output=True,
        text=True,
        env={**os.environ, "LOUDSPEAKER_HOME": str(data), "HOME": str(open_dir)},
        cwd=open_dir,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"cannot use data directory {data}: Permission denied" in r.stderr
    assert "LOUDSPEAKER_GROUP" in r.stderr and "Traceback" not in r.stderr


def _run(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "LOUDSPEAKER_HOME": str(data),
        "XDG_CONFIG_HOME": str(data.parent / "config"),
        "LOUDSPEAKER_TOKEN": "",
        "LOUDSPEAKER_TOKEN_FILE": "",
        **env,
    }
    full_env.pop("LOUDSPEAKER_GROUP", None)
    return subprocess.run(
        [LOUDSPEAKER, *args], capture_output=True, text=True, env=full_env, timeout=120, check=False
    )


def _one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return " ".join(r.stderr.split())


def test_lost_key_store_is_never_replaced_and_reset_recovers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keystore = data / "secrets" / "keystore.key"
    _cli(data, "site", "load", str(SITE_FILE))
    _cli(data, "keys", "issue", "lb-01")
    keystore.unlink()

    # No command quietly makes a new key store the sealed keys can never open.
    for args in (("keys", "rotate", "lb-01"), ("keys", "issue", "lb-02")):
        err = _one_line_error(_run(data, *args))
        assert f"key store {keystore} is missing" in err, err
        assert "restore the file from your backup" in err
        assert "loudspeaker keys reset --all --yes" in err
        assert "keys rotate|activate" not in err
        assert not keystore.exists(), args

    # serve refuses to start: one line naming the key store (before any broker is started).
    err = _one_line_error(_run(data, "serve", "--broker", "mqtt://127.0.0.1:9"))
    assert "serve cannot sign commands, not starting" in err and "is missing" in err, err
    assert len(_run(data, "serve", "--broker", "mqtt://127.0.0.1:9").stderr.splitlines()) == 1

    # The recovery needs both flags, then drops the unopenable key (audited).
    err = _one_line_error(_run(data, "keys", "reset", "--all"))
    assert "keys reset --all --yes" in err
    r = _run(data, "keys", "reset", "--all", "--yes")
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = " ".join(r.stdout.split())
    assert "Dropped 1 keys of 1 clusters: lb-01" in out, out
    assert "needs its new key file" in out and "keys issue" in out
    audit = json.loads(_run(data, "audit", "--json").stdout)
    reset = [e for e in audit if e["action"] == "keys.reset"]
    assert len(reset) == 1 and reset[0]["detail"]["dropped"][0].startswith("lb-01/"), reset

    # `keys issue` works again, under a new key store.
    _cli(data, "keys", "issue", "lb-01")
    assert keystore.exists()
    listed = json.loads(_run(data, "keys", "list", "--json").stdout)
    assert [(k["cluster"], k["state"]) for k in listed] == [("lb-01", "active")]


def test_replaced_key_store_says_so_and_reset_drops_only_unopenable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    keystore = data / "secrets" / "keystore.key"
    _cli(data, "site", "load", str(SITE_FILE))
    _cli(data, "keys", "issue", "lb-01")
    keystore.unlink()
    keystore.write_bytes(os.urandom(32))  # another key store (0600 from the umask below)
    keystore.chmod(0o600)
    err = _one_line_error(_run(data, "keys", "rotate", "lb-01"))
    assert "sealed under key store" in err and "is another key store" in err, err
    assert "put back the key store this database was sealed under" in err
    assert "loudspeaker keys reset --all --yes" in err
    # A key sealed under the present key store opens, and survives the reset.
    _cli(data, "keys", "issue", "lb-02")
    r = _run(data, "keys", "reset", "--all", "--yes")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Dropped 1 keys of 1 clusters: lb-01" in " ".join(r.stdout.split())
    _cli(data, "keys", "issue", "lb-01")
    _cli(data, "keys", "export", "lb-02")
    assert {k["cluster"] for k in json.loads(_run(data, "keys", "list", "--json").stdout)} == {
        "lb-01",
        "lb-02",
    }


def test_key_store_mode_is_checked_against_the_deployment(tmp_path: Path) -> None:
    from loudspeaker.filemodes import FileModes

    path = tmp_path / "keystore.key"
    path.write_bytes(os.urandom(32))
    mine = os.stat(path).st_gid
    other_gid = mine + 4242  # a group this deployment does not use

    def opens(mode: int, modes: FileModes) -> str:
        path.chmod(mode)
        try:
            Keystore(path, modes).check()
        except KeystoreError as exc:
            return str(exc)
        return "ok"

    private = FileModes()
    assert opens(0o600, private) == "ok"
    for loose in (0o640, 0o660, 0o604):
        assert f"run `chmod 600 {path}`" in opens(loose, private), oct(loose)
    # Group mode: the configured group may read, nobody else.
    assert opens(0o660, FileModes(mine)) == "ok"
    assert opens(0o600, FileModes(mine)) == "ok"
    wrong = opens(0o640, FileModes(other_gid))
    assert f"chgrp {other_gid} {path} && chmod 660 {path}" in wrong, wrong
    assert "chmod 600" not in wrong
    assert "chmod 660" in opens(0o664, FileModes(mine))


def test_sqlite_path_reads_the_url(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert Settings(data_dir=data, db_url="sqlite://").sqlite_path is None
    assert Settings(data_dir=data, db_url="sqlite:///:memory:").sqlite_path is None
    assert Settings(data_dir=data, db_url="postgresql://u@h/db").sqlite_path is None
    url = f"sqlite:///{tmp_path}/db/x.db?timeout=5"
    settings = Settings(data_dir=data, db_url=url)
    assert settings.sqlite_path == tmp_path / "db" / "x.db"
    # The data directory set-up creates that file with the private mode, and no other.
    from loudspeaker.filemodes import secure_data_dir

    secure_data_dir(settings)
    assert _mode(tmp_path / "db" / "x.db") == 0o600
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == ["x.db"]
    assert not (data / "sqlite:").exists()
    assert Settings(data_dir=data, db_url="sqlite://").sqlite_path is None


def test_direct_emergency_names_the_clusters_it_could_not_sign(
    tmp_path: Path, mosquitto: EmbeddedBroker
) -> None:
    import threading

    from firmware_bridge.mqtt import MqttLink, MqttLoop

    data = tmp_path / "data"
    _cli(data, "site", "load", str(SITE_FILE))
    _cli(data, "keys", "issue", "lb-01")  # lb-02 never had a key: unsigned, as documented
    (data / "secrets" / "keystore.key").unlink()

    seen: dict[str, list[bytes]] = {"lb-01": [], "lb-02": []}
    got_lb02, got_marker = threading.Event(), threading.Event()
    marker = b"end-of-test-marker"

    def on_message(topic_name: str, payload: bytes) -> None:
        cluster = topic_name.split("/")[2]
        seen[cluster].append(payload)
        if cluster == "lb-02":
            got_lb02.set()
        if payload == marker:
            got_marker.set()

    loop = MqttLoop(name="spy")
    loop.start()
    link = MqttLink(
        "spy",
        mosquitto.endpoint,
        on_message=on_message,
        subscriptions=tuple(f"loudspeaker/luc-binh/{c}/cmd" for c in seen),
    )
    loop.add(link)
    try:
        assert link.connected.wait(10)
        r = _run(
            data,
            "emergency",
            "Vỡ đê",
            "--siren",
            "--hamlet",
            "ban-cau",
            "--wait",
            "1",
            LOUDSPEAKER_BROKER=mosquitto.endpoint.url,
        )
        assert r.returncode == 1, (r.stdout, r.stderr)
        err = " ".join(r.stderr.split())
        assert "Traceback" not in err
        assert "sent directly over the broker to 1 clusters" in err, err
        assert "NOT SENT to lb-01: its key could not be opened" in err
        assert "is missing" in err and "keys reset --all --yes" in err
        assert "1 clusters got nothing: lb-01" in err
        assert got_lb02.wait(10)
        # The CLI had its PUBACKs before it exited, so anything it published on lb-01's
        # topic reached the spy before this marker does.
        link.publish("loudspeaker/luc-binh/lb-01/cmd", marker)
        assert got_marker.wait(10)
        assert seen["lb-01"] == [marker]
    finally:
        loop.close_link(link)
        loop.stop()
    engine = make_engine(Settings(data_dir=data).database_url)
    with Session(engine) as s:
        states = {d.cluster_id: (d.state, d.reason) for d in s.exec(select(Delivery)).all()}
    engine.dispose()
    assert states["lb-02"][0] == "sent"
    assert states["lb-01"][0] == "failed" and "is missing" in states["lb-01"][1], states
