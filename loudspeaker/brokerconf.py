"""A production mosquitto configuration: per-cluster passwords, a topic ACL, TLS.

``loudspeaker broker config -o DIR`` writes::

    DIR/mosquitto.conf            global options, then one block per listener asked for
    DIR/passwd          0600      one PBKDF2-SHA512 line per cluster, the controller, the operators
    DIR/acl                       each cluster: read its cmd, write every other kind;
                                  the operators: write every cluster's cmd, read the rest
    DIR/credentials/NAME.json 0600  what each box (and the controller) logs in with
    DIR/credentials/_operator.json  the operators' account (0640 to the operators' group)
    DIR/tls/...                   server cert, its key (0600) and the CA boxes trust

Each cluster's MQTT user name is its cluster id, so the ACL's ``%u`` names its topics;
the controller is ``_controller`` (``_`` cannot start a cluster id) and the operators'
tools (the CLI's controller-down emergency path, the conformance kit) are ``_operator``, so
they never log in as the controller and take over its session. Client ids are forced
to the user name on every listener, so a box cannot knock another client off the broker
or take over its session by reusing its client id.

mosquitto 2.0 treats ``use_username_as_clientid``, ``max_connections``, ``protocol`` and
the TLS options as options *of a listener*: written before the first ``listener`` line
they configure an implicit default listener on 0.0.0.0:1883 (plain text) instead. So the
file is rendered from data: :data:`GLOBAL_OPTIONS` first, then each :class:`Listener`'s own
block, and nothing per-listener can end up in the global part.

Existing credentials in DIR are kept, so re-running after adding a cluster does not
invalidate the boxes already installed; neither does it drop TLS (or the private CA)
unless told to.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from firmware_bridge.credentials import OPERATOR_USER
from firmware_bridge.keys import write_private
from firmware_bridge.protocol import MAX_PAYLOAD_BYTES, TOPIC_ROOT, Kind
from loudspeaker.exceptions import ConfigError

logger = logging.getLogger(__name__)

# Explicit, because OPERATOR_USER is re-exported (mypy --strict exports no imported name).
__all__ = [
    "BOX_READS",
    "BOX_WRITES",
    "CONTROLLER_USER",
    "GLOBAL_OPTIONS",
    "LISTENER_OPTIONS",
    "MAX_PACKET_SIZE",
    "MESSAGE_SIZE_LIMIT",
    "OPERATOR_READS",
    "OPERATOR_USER",
    "OPERATOR_WRITES",
    "PBKDF2_ITERATIONS",
    "TLS_OPTIONS",
    "BrokerFiles",
    "Listener",
    "TlsFiles",
    "check_tls_files",
    "default_max_connections",
    "existing_tls",
    "make_self_signed",
    "password_hash",
    "render_acl",
    "render_conf",
    "write_broker_config",
]

CONTROLLER_USER = "_controller"
# The operators' tools use OPERATOR_USER (from firmware_bridge.credentials, which lets only
# that account's file be group-readable): a separate account, so they neither need the
# controller's password nor (client id = user name) take over its persistent session.
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default; the passwords are 256-bit random

# The one kind the controller sends; a box writes every other kind of its own topics, so a
# kind the protocol adds is granted to the boxes by construction.
BOX_READS: tuple[Kind, ...] = (Kind.CMD,)
BOX_WRITES: tuple[Kind, ...] = tuple(k for k in Kind if k not in BOX_READS)
# The operators stand in for the controller on each cluster's topics: they write what a box
# reads and read what a box writes, nothing else (named per cluster, so no other topic).
OPERATOR_WRITES: tuple[Kind, ...] = BOX_READS
OPERATOR_READS: tuple[Kind, ...] = BOX_WRITES

MESSAGE_SIZE_LIMIT = MAX_PAYLOAD_BYTES
# message_size_limit is checked only once mosquitto holds the whole message in memory;
# max_packet_size is checked on the packet's length header, so a 100 MB publish is cut
# off before it is read. The margin covers the fixed header, topic and properties.
MAX_PACKET_SIZE = MAX_PAYLOAD_BYTES + 4096

# Options mosquitto 2.0 applies to every listener (man mosquitto.conf: "applies globally",
# or per_listener_settings-controlled with per_listener_settings false). Only these may
# stand before the first listener line; the test of the rendered file checks it.
GLOBAL_OPTIONS = frozenset(
    {
        "per_listener_settings",
        "allow_anonymous",
        "password_file",
        "acl_file",
        "message_size_limit",
        "max_packet_size",
        "persistence",
        "persistence_location",
        "max_queued_messages",
        "max_inflight_messages",
        "log_type",
        "user",
    }
)
# What every listener block carries (the test checks each block has all of them).
LISTENER_OPTIONS = ("protocol", "use_username_as_clientid", "max_connections")
TLS_OPTIONS = ("certfile", "keyfile", "tls_version")


def password_hash(password: str, *, salt: bytes | None = None, iterations: int = 0) -> str:
    """A mosquitto 2.0 password-file hash (``$7$``: PBKDF2-HMAC-SHA512, base64 salt/hash)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    rounds = iterations or PBKDF2_ITERATIONS
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, rounds)
    b64 = base64.b64encode
    return f"$7${rounds}${b64(salt).decode()}${b64(digest).decode()}"


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate, its key, and the CA the boxes trust."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class Listener:
    """One ``listener`` block: everything mosquitto 2.0 configures per listener."""

    port: int
    bind: str
    purpose: str
    max_connections: int
    tls: TlsFiles | None = None

    def lines(self) -> list[str]:
        """The block, ``listener`` line first, so its options cannot leak elsewhere."""
        out = [
            f"# {self.purpose}",
            f"listener {self.port} {self.bind}",
            "protocol mqtt",
            # Client id = user name: a box's password cannot kick the controller or
            # another box off, nor resume (and so empty) another account's session.
            "use_username_as_clientid true",
            f"max_connections {self.max_connections}",
        ]
        if self.tls is not None:
            out += [
                f"certfile {self.tls.cert}",
                f"keyfile {self.tls.key}",
                "tls_version tlsv1.2",
            ]
        return out


def default_max_connections(clusters: int) -> int:
    """Per listener: two sockets per account (one may be mid-reconnect) and room for tools."""
    return 2 * (clusters + 1) + 64


@dataclass(frozen=True)
class BrokerFiles:
    """What :func:`write_broker_config` wrote."""

    conf: Path
    passwd: Path
    acl: Path
    credentials: dict[str, Path]
    tls: TlsFiles | None
    cluster_url: str
    tls_source: str  # "self-signed", "files", "kept" (from an earlier run) or "none"
    # The operators' group kept from an earlier run's group-shared _operator.json (no
    # LOUDSPEAKER_GROUP this time), or None.
    operators_gid_kept: int | None = None


def _openssl(args: list[str], cwd: Path) -> str:
    binary = shutil.which("openssl")
    if binary is None:
        raise ConfigError("openssl is not installed (apt-get install openssl); or give --tls-cert")
    proc = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ConfigError(f"openssl {args[0]} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def make_self_signed(tls_dir: Path, host: str, *, days: int = 825) -> TlsFiles:
    """A server certificate for ``host`` (P-256) signed by a private CA, keys 0600.

    An existing private CA in ``tls_dir`` (``ca.key`` + ``ca.crt``) is reused: the boxes
    trust the CA, so re-running keeps every installed box's ``ca.crt`` valid.
    """
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    san = f"IP:{host}" if _is_ip(host) else f"DNS:{host}"
    if host != "127.0.0.1":
        san += ",IP:127.0.0.1"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    reuse_ca = (tls_dir / "ca.key").is_file() and (tls_dir / "ca.crt").is_file()
    with tempfile.TemporaryDirectory(dir=tls_dir) as tmp_name:
        tmp = Path(tmp_name)
        ext = tmp / "san.ext"
        ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
        if reuse_ca:
            for name in ("ca.key", "ca.crt"):
                shutil.copyfile(tls_dir / name, tmp / name)
        else:
            _openssl(
                [
                    "req",
                    "-x509",
                    *ec,
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    str(days),
                    "-subj",
                    "/CN=loudspeaker private CA",
                ],
                tmp,
            )
        _openssl(
            ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}"], tmp
        )
        _openssl(
            [
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                str(days),
                "-extfile",
                str(ext),
            ],
            tmp,
        )
        for name in ("ca.key", "server.key"):
            write_private(tls_dir / name, (tmp / name).read_bytes())
        for name in ("ca.crt", "server.crt"):
            shutil.copyfile(tmp / name, tls_dir / name)
    return TlsFiles(cert=tls_dir / "server.crt", key=tls_dir / "server.key", ca=tls_dir / "ca.crt")


def _read_pem(option: str, path: Path, label: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data or label.encode() not in data:
        raise ConfigError(
            f"{option} {path} is not a PEM {label.lower()} "
            f"(expected a '-----BEGIN ... {label}-----' block)"
        )
    return data


def check_tls_files(tls: TlsFiles) -> None:
    """Refuse certificate files mosquitto could not use, naming the file and the fix."""
    _read_pem("--tls-cert", tls.cert, "CERTIFICATE")
    _read_pem("--tls-key", tls.key, "PRIVATE KEY")
    _read_pem("--tls-ca", tls.ca, "CERTIFICATE")
    if shutil.which("openssl") is None:
        return  # the PEM checks above are all we can do; mosquitto reports the rest
    cwd = Path.cwd()
    cert_pub = _openssl(["x509", "-noout", "-pubkey", "-in", str(tls.cert.resolve())], cwd)
    key_pub = _openssl(["pkey", "-pubout", "-in", str(tls.key.resolve())], cwd)
    if cert_pub.strip() != key_pub.strip():
        raise ConfigError(
            f"--tls-key {tls.key} is not the private key of --tls-cert {tls.cert}; "
            "give the key the certificate was made for"
        )


def _install_tls(tls: TlsFiles, tls_dir: Path) -> TlsFiles:
    # Copied in, so DIR is self-contained (`chown -R mosquitto: DIR` covers the key) and a
    # later run finds TLS here and keeps it.
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    cert, key, ca = tls.cert.read_bytes(), tls.key.read_bytes(), tls.ca.read_bytes()
    old_ca = (tls_dir / "ca.crt").read_bytes() if (tls_dir / "ca.crt").is_file() else None
    write_private(tls_dir / "server.key", key)
    (tls_dir / "server.crt").write_bytes(cert)
    (tls_dir / "ca.crt").write_bytes(ca)
    if old_ca != ca:
        # A private CA key from an earlier --tls-self-signed no longer matches ca.crt.
        (tls_dir / "ca.key").unlink(missing_ok=True)
    return _tls_dir_files(tls_dir.parent) or tls


def _tls_dir_files(out_dir: Path) -> TlsFiles | None:
    tls_dir = out_dir / "tls"
    files = TlsFiles(cert=tls_dir / "server.crt", key=tls_dir / "server.key", ca=tls_dir / "ca.crt")
    if all(p.is_file() for p in (files.cert, files.key, files.ca)):
        return files
    return None


def existing_tls(out_dir: Path) -> TlsFiles | None:
    """The TLS files of the last run in ``out_dir``, if it configured a TLS listener.

    The last ``mosquitto.conf`` decides, not the files alone: after ``--no-tls`` the old
    ``tls/`` stays (its CA may come back) but is not switched on again silently.
    """
    try:
        conf = (out_dir / "mosquitto.conf").read_text(encoding="utf-8")
    except OSError:
        return None
    if not any(line.startswith("certfile ") for line in conf.splitlines()):
        return None
    return _tls_dir_files(out_dir)


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def _password(cred_path: Path) -> str:
    # Keep a box's existing password: re-running must not lock installed boxes out.
    try:
        data = json.loads(cred_path.read_text(encoding="utf-8"))
        existing = data.get("password")
        if isinstance(existing, str) and len(existing) >= 32:
            return existing
    except (OSError, ValueError):
        pass
    return secrets.token_urlsafe(32)


def render_acl(site: str, clusters: list[str] | tuple[str, ...] = ()) -> str:
    """The ACL file: the controller all of ``site``, the operators each cluster's commands
    out and reports in, each cluster only its own topics."""
    base = f"{TOPIC_ROOT}/{site}"
    lines = [
        f"# Written by `loudspeaker broker config` for site {site}; regenerate, do not edit.",
        "# The controller: everything of this site.",
        f"user {CONTROLLER_USER}",
        f"topic readwrite {base}/#",
        "",
        "# The operators' tools (controller-down emergency path, conformance kit): every",
        "# cluster's commands out, its reports in; one line per cluster, no wildcard.",
        f"user {OPERATOR_USER}",
    ]
    for cluster in clusters:
        lines += [f"topic write {base}/{cluster}/{k.value}" for k in OPERATOR_WRITES]
        lines += [f"topic read {base}/{cluster}/{k.value}" for k in OPERATOR_READS]
    lines += [
        "",
        "# Every cluster (user name = cluster id): its own commands in, everything else it",
        "# reports out. Nothing of any other cluster, not even reading its status.",
    ]
    lines += [f"pattern read {base}/%u/{k.value}" for k in BOX_READS]
    lines += [f"pattern write {base}/%u/{k.value}" for k in BOX_WRITES]
    return "\n".join(lines) + "\n"


def render_conf(
    *,
    site: str,
    passwd: Path,
    acl: Path,
    persist: Path,
    listeners: list[Listener],
    run_as: str | None = None,
) -> str:
    """mosquitto.conf: global options only, then one block per listener."""
    if not listeners:
        raise ConfigError("a broker configuration needs at least one listener")
    lines = [
        f"# Written by `loudspeaker broker config` for site {site}; regenerate, do not edit.",
        "# Global options only up to the first listener line: mosquitto 2.0 would turn a",
        "# per-listener option here into an implicit plain listener on port 1883.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        f"message_size_limit {MESSAGE_SIZE_LIMIT}",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "persistence true",
        f"persistence_location {persist}/",
        # Default 1000 drops messages silently under fan-out (docs/PITFALLS).
        "max_queued_messages 100000",
        "max_inflight_messages 1000",
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    if run_as:
        lines.append(f"user {run_as}")
    for listener in listeners:
        lines += ["", *listener.lines()]
    return "\n".join(lines) + "\n"


def _give_to(user: str, paths: list[Path]) -> None:
    """Hand what mosquitto reads after dropping to ``user`` over to that account.

    Only those: the credentials stay the writer's (mosquitto never reads them), and so
    does the private CA's key beside the server certificate.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--run-as {user}: no such user on this machine") from None
    if os.geteuid() != 0:
        if os.geteuid() != entry.pw_uid:
            logger.warning(
                "not root: give %s to user %s yourself (chown), or mosquitto cannot read them",
                ", ".join(str(p) for p in paths),
                user,
            )
        return
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)
        if path.is_dir():
            for child in path.rglob("*"):
                if child.name != "ca.key":
                    os.chown(child, entry.pw_uid, entry.pw_gid)


def _controller_host(bind: str) -> str:
    # The controller runs on the broker's machine: loopback reaches a wildcard bind.
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "localhost", "") else bind


def group_name(gid: int) -> str:
    """The name of OS group ``gid`` (its number when it has none)."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def write_broker_config(
    out_dir: Path,
    *,
    site: str,
    clusters: list[str],
    host: str,
    port: int = 1883,
    bind: str = "127.0.0.1",
    tls: TlsFiles | None = None,
    tls_self_signed: bool = False,
    no_tls: bool = False,
    tls_port: int = 8883,
    tls_bind: str = "0.0.0.0",
    max_connections: int | None = None,
    run_as: str | None = None,
    persistence_dir: Path | None = None,
    rotate: frozenset[str] = frozenset(),
    operators_gid: int | None = None,
) -> BrokerFiles:
    """Write the configuration for ``site``'s broker into ``out_dir`` (see module doc).

    With ``operators_gid`` (the operators' OS group, ``LOUDSPEAKER_GROUP``) the operators'
    credentials file is 0640 in that group and ``credentials/`` 0750 in it, so they can read
    that one file; every other credentials file stays 0600. Without it, an ``_operator.json``
    an earlier run shared with a group (0640) keeps that group and ``credentials/`` keeps its
    group access: a re-run never silently takes the controller-down path from the operators.

    TLS: ``tls`` files are checked and copied into ``out_dir/tls``; ``tls_self_signed``
    makes (or reuses) a private CA there; with neither, TLS an earlier run left in
    ``out_dir`` is kept unless ``no_tls`` drops it. Nothing is left behind when a new
    ``out_dir`` cannot be completed.
    """
    if sum((tls is not None, tls_self_signed, no_tls)) > 1:
        raise ConfigError(
            "choose one of --tls-cert/--tls-key/--tls-ca, --tls-self-signed, --no-tls"
        )
    if tls is not None:
        check_tls_files(tls)  # before anything is written
    out_dir = out_dir.resolve()
    with_tls = tls is not None or tls_self_signed or (not no_tls and existing_tls(out_dir))
    if with_tls and port == tls_port:
        raise ConfigError(f"--port and --tls-port are both {port}: give the TLS listener its own")
    # The topmost directory this call creates: removed again if anything fails.
    created = next((p for p in (*reversed(out_dir.parents), out_dir) if not p.exists()), None)
    try:
        return _write(
            out_dir,
            site=site,
            clusters=clusters,
            host=host,
            port=port,
            bind=bind,
            tls=tls,
            tls_self_signed=tls_self_signed,
            no_tls=no_tls,
            tls_port=tls_port,
            tls_bind=tls_bind,
            max_connections=max_connections or default_max_connections(len(clusters)),
            run_as=run_as,
            persistence_dir=persistence_dir,
            rotate=rotate,
            operators_gid=operators_gid,
        )
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _write(
    out_dir: Path,
    *,
    site: str,
    clusters: list[str],
    host: str,
    port: int,
    bind: str,
    tls: TlsFiles | None,
    tls_self_signed: bool,
    no_tls: bool,
    tls_port: int,
    tls_bind: str,
    max_connections: int,
    run_as: str | None,
    persistence_dir: Path | None,
    rotate: frozenset[str],
    operators_gid: int | None,
) -> BrokerFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    if tls is not None:
        tls, tls_source = _install_tls(tls, out_dir / "tls"), "files"
    elif tls_self_signed:
        tls, tls_source = make_self_signed(out_dir / "tls", host), "self-signed"
    elif not no_tls and (kept := existing_tls(out_dir)) is not None:
        tls, tls_source = kept, "kept"
        logger.info("keeping the TLS listener set up by an earlier run (%s)", kept.cert.parent)
    else:
        tls_source = "none"
    cred_dir = out_dir / "credentials"
    cred_dir.mkdir(exist_ok=True)
    kept_gid: int | None = None
    if operators_gid is None:
        kept_gid = operators_gid = _shared_operator_gid(cred_dir)
    if operators_gid is None:
        cred_dir.chmod(0o700)
    else:
        # The operators may enter to read _operator.json (and ca.crt); the others are 0600.
        os.chown(cred_dir, -1, operators_gid)
        cred_dir.chmod(0o750)
    if tls is not None:
        cluster_url = f"mqtts://{host}:{tls_port}"
        shutil.copyfile(tls.ca, cred_dir / "ca.crt")
    else:
        cluster_url = f"mqtt://{host}:{port}"
        (cred_dir / "ca.crt").unlink(missing_ok=True)
        logger.warning(
            "no TLS: cluster passwords and commands cross the network in clear; "
            "use --tls-self-signed or --tls-cert/--tls-key"
        )
    passwd_lines: list[str] = []
    credentials: dict[str, Path] = {}
    for user in [CONTROLLER_USER, OPERATOR_USER, *clusters]:
        path = cred_dir / f"{user}.json"
        password = secrets.token_urlsafe(32) if user in rotate else _password(path)
        passwd_lines.append(f"{user}:{password_hash(password)}")
        # The controller runs beside the broker (loopback); boxes and operators' tools (the
        # kit may run on a vendor's laptop) use the clusters' address, over TLS if any.
        remote = user != CONTROLLER_USER
        url = cluster_url if remote else f"mqtt://{_controller_host(bind)}:{port}"
        data = {"url": url, "username": user, "password": password, "site": site}
        if remote and tls is not None:
            data["tls_ca"] = "ca.crt"  # relative to this file: install the two together
        write_private(path, (json.dumps(data, indent=2) + "\n").encode())
        if user == OPERATOR_USER and operators_gid is not None:
            os.chown(path, -1, operators_gid)
            path.chmod(0o640)
        credentials[user] = path
    passwd = out_dir / "passwd"
    write_private(passwd, ("\n".join(passwd_lines) + "\n").encode())
    acl = out_dir / "acl"
    acl.write_text(render_acl(site, clusters), encoding="utf-8")
    persist = persistence_dir or out_dir / "persist"
    persist.mkdir(parents=True, exist_ok=True)
    listeners = [
        Listener(
            port,
            bind,
            "The controller, on this machine."
            if tls is not None
            else "The controller and the clusters (no TLS: a bench, not the field).",
            max_connections,
        )
    ]
    if tls is not None:
        listeners.append(
            Listener(tls_port, tls_bind, "The clusters, over TLS.", max_connections, tls)
        )
    conf = out_dir / "mosquitto.conf"
    conf.write_text(
        render_conf(
            site=site, passwd=passwd, acl=acl, persist=persist, listeners=listeners, run_as=run_as
        ),
        encoding="utf-8",
    )
    if run_as:
        broker_reads = [passwd, acl, persist]
        if tls is not None:
            broker_reads += [tls.cert.parent, tls.cert, tls.key]
        _give_to(run_as, broker_reads)
    return BrokerFiles(conf, passwd, acl, credentials, tls, cluster_url, tls_source, kept_gid)


def _shared_operator_gid(cred_dir: Path) -> int | None:
    """The group an earlier run shared ``_operator.json`` with (group-readable), or None."""
    try:
        st = (cred_dir / f"{OPERATOR_USER}.json").stat()
    except FileNotFoundError:
        return None
    return st.st_gid if st.st_mode & 0o040 else None
