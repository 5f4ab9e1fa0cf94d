"""A production mosquitto configuration: per-cluster passwords, a topic ACL, TLS.

``loudspeaker broker config -o DIR`` writes::

    DIR/mosquitto.conf            listeners, no anonymous access, files below
    DIR/passwd          0600      one PBKDF2-SHA512 line per cluster + the controller
    DIR/acl                       each cluster: read its cmd, write its ack and status
    DIR/credentials/NAME.json 0600  what each box (and the controller) logs in with
    DIR/tls/...                   with --tls-self-signed: a private CA and server cert

Each cluster's MQTT user name is its cluster id, so the ACL's ``%u`` names its topics;
the controller is ``_controller`` (``_`` cannot start a cluster id). Client ids are forced
to the user name, so a box cannot knock another off the broker by reusing its client id.
Existing credentials in DIR are kept, so re-running after adding a cluster does not
invalidate the boxes already installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from firmware_bridge.keys import write_private
from loudspeaker.exceptions import ConfigError

logger = logging.getLogger(__name__)

CONTROLLER_USER = "_controller"
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default; the passwords are 256-bit random


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
class BrokerFiles:
    """What :func:`write_broker_config` wrote."""

    conf: Path
    passwd: Path
    acl: Path
    credentials: dict[str, Path]
    tls: TlsFiles | None
    cluster_url: str


def _openssl(args: list[str], cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise ConfigError("openssl is not installed (apt-get install openssl); or give --tls-cert")
    proc = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise ConfigError(f"openssl {args[0]} failed: {proc.stderr.strip()[-400:]}")


def make_self_signed(tls_dir: Path, host: str, *, days: int = 825) -> TlsFiles:
    """A private CA and a server certificate for ``host`` (P-256), keys 0600."""
    tls_dir.mkdir(parents=True, exist_ok=True)
    tls_dir.chmod(0o700)
    san = f"IP:{host}" if _is_ip(host) else f"DNS:{host}"
    if host != "127.0.0.1":
        san += ",IP:127.0.0.1"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    with tempfile.TemporaryDirectory(dir=tls_dir) as tmp_name:
        tmp = Path(tmp_name)
        ext = tmp / "san.ext"
        ext.write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n")
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


def write_broker_config(
    out_dir: Path,
    *,
    site: str,
    clusters: list[str],
    host: str,
    port: int = 1883,
    bind: str = "127.0.0.1",
    tls: TlsFiles | None = None,
    tls_port: int = 8883,
    tls_bind: str = "0.0.0.0",
    run_as: str | None = None,
    persistence_dir: Path | None = None,
    rotate: frozenset[str] = frozenset(),
) -> BrokerFiles:
    """Write the configuration for ``site``'s broker into ``out_dir`` (see module doc)."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cred_dir = out_dir / "credentials"
    cred_dir.mkdir(exist_ok=True)
    cred_dir.chmod(0o700)
    if tls is not None:
        cluster_url = f"mqtts://{host}:{tls_port}"
        shutil.copyfile(tls.ca, cred_dir / "ca.crt")
    else:
        cluster_url = f"mqtt://{host}:{port}"
        logger.warning(
            "no TLS: cluster passwords and commands cross the network in clear; "
            "use --tls-self-signed or --tls-cert/--tls-key"
        )
    passwd_lines: list[str] = []
    credentials: dict[str, Path] = {}
    for user in [CONTROLLER_USER, *clusters]:
        path = cred_dir / f"{user}.json"
        password = secrets.token_urlsafe(32) if user in rotate else _password(path)
        passwd_lines.append(f"{user}:{password_hash(password)}")
        is_box = user != CONTROLLER_USER
        url = cluster_url if is_box else f"mqtt://127.0.0.1:{port}"
        data = {"url": url, "username": user, "password": password, "site": site}
        if is_box and tls is not None:
            data["tls_ca"] = "ca.crt"  # relative to this file: install the two together
        write_private(path, (json.dumps(data, indent=2) + "\n").encode())
        credentials[user] = path
    passwd = out_dir / "passwd"
    write_private(passwd, ("\n".join(passwd_lines) + "\n").encode())
    acl = out_dir / "acl"
    acl.write_text(
        "\n".join(
            [
                f"# Written by `loudspeaker broker config` for site {site}; regenerate, "
                "do not edit.",
                "# The controller: everything of this site.",
                f"user {CONTROLLER_USER}",
                f"topic readwrite loudspeaker/{site}/#",
                "",
                "# Every cluster (user name = cluster id): its own commands in, its own",
                "# acknowledgements and status out. Nothing else, not even reading status.",
                f"pattern read loudspeaker/{site}/%u/cmd",
                f"pattern write loudspeaker/{site}/%u/ack",
                f"pattern write loudspeaker/{site}/%u/status",
                "",
            ]
        ),
        encoding="utf-8",
    )
    persist = persistence_dir or out_dir / "persist"
    persist.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Written by `loudspeaker broker config` for site {site}; regenerate, do not edit.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        "use_username_as_clientid true",
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
    lines += ["", "# The controller, on this machine.", f"listener {port} {bind}"]
    if tls is not None:
        lines += [
            "",
            "# The clusters, over TLS.",
            f"listener {tls_port} {tls_bind}",
            f"certfile {tls.cert.resolve()}",
            f"keyfile {tls.key.resolve()}",
            "tls_version tlsv1.2",
        ]
    conf = out_dir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return BrokerFiles(conf, passwd, acl, credentials, tls, cluster_url)
