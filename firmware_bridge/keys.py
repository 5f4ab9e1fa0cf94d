"""A cluster's command-signing keys: the key file on the box, and the keyring built from it.

The key file is written by ``loudspeaker keys issue|rotate|export`` on the controller and
installed on the box as ``<state dir>/keys.json`` (mode 0600; a looser file is refused,
as ssh refuses a readable private key). Format (docs/security.md)::

    {"v": 1, "site": "luc-binh", "cluster": "lb-01",
     "keys": [{"kid": "k9f2c41d0", "alg": "hmac-sha256", "secret": "<64 hex>",
               "created": "2026-11-30T02:00:00Z"}, ...]}

``keys`` is ordered newest first. During a rotation the file holds the new key and the
old one; the box accepts both until it has seen a command signed with the newer key,
then keeps accepting the older ones for a rotation window only (default 24 h), so a
controller that switches keys never loses the cluster and a stolen old key stops working.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import stat
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from firmware_bridge.exceptions import KeyFileError
from firmware_bridge.protocol import (
    MIN_KEY_BYTES,
    AnyCommand,
    Keyring,
    check_signature,
    validate_cluster_id,
)

logger = logging.getLogger(__name__)

KEY_FILE_VERSION = 1


@dataclass(frozen=True)
class KeyEntry:
    """One signing key: its id, secret (never shown) and creation time."""

    kid: str
    secret: bytes = field(repr=False)
    created: str = ""

    def to_json(self) -> dict[str, str]:
        """The key's entry in a key file (this does contain the secret)."""
        return {
            "kid": self.kid,
            "alg": "hmac-sha256",
            "secret": self.secret.hex(),
            "created": self.created,
        }


def new_secret() -> bytes:
    """A fresh 256-bit key."""
    return secrets.token_bytes(32)


def new_kid() -> str:
    """A fresh key id (not secret): ``k`` and 8 hex digits."""
    return "k" + secrets.token_hex(4)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, created 0600 (never briefly readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o600)  # in case of an odd umask or a pre-set ACL
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_key_file(path: Path, site: str, cluster: str, keys: list[KeyEntry]) -> None:
    """Write a cluster's key file (newest key first), mode 0600."""
    validate_cluster_id(site)
    validate_cluster_id(cluster)
    data = {
        "v": KEY_FILE_VERSION,
        "site": site,
        "cluster": cluster,
        "keys": [k.to_json() for k in keys],
    }
    write_private(path, (json.dumps(data, indent=2) + "\n").encode())


def check_private(path: Path) -> None:
    """Refuse a secret file that others may read or write."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`")


def read_key_file(path: Path, site: str, cluster: str) -> list[KeyEntry]:
    """Read and check a key file; ``KeyFileError`` says what is wrong."""
    try:
        check_private(path)
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise KeyFileError(f"key file {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != KEY_FILE_VERSION:
        raise KeyFileError(f"key file {path} is not a version {KEY_FILE_VERSION} key file")
    if data.get("site") != site or data.get("cluster") != cluster:
        raise KeyFileError(
            f"key file {path} is for {data.get('site')}/{data.get('cluster')}, "
            f"this box is {site}/{cluster}"
        )
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f"key file {path} holds no keys")
    out: list[KeyEntry] = []
    for i, e in enumerate(entries):
        try:
            secret = bytes.fromhex(e["secret"])
            kid = str(e["kid"])
            if e.get("alg", "hmac-sha256") != "hmac-sha256":
                raise ValueError(f"unsupported alg {e.get('alg')!r}")
        except (KeyError, TypeError, ValueError) as exc:
            # The message names the entry, never the secret.
            raise KeyFileError(f"key file {path}: keys[{i}] is malformed ({exc})") from None
        if len(secret) < MIN_KEY_BYTES:
            raise KeyFileError(f"key file {path}: key {kid} is shorter than {MIN_KEY_BYTES} bytes")
        out.append(KeyEntry(kid=kid, secret=secret, created=str(e.get("created", ""))))
    return out


class AgentKeyring:
    """The keys a box accepts now: re-read when the key file changes, old keys retired.

    ``load()`` reads the file; a box without one refuses to start unless it was told it
    is a bench box (``insecure_unsigned``), which then accepts unsigned commands.
    """

    def __init__(
        self,
        path: Path,
        state_path: Path,
        *,
        site: str,
        cluster: str,
        rotation_window: timedelta = timedelta(hours=24),
    ) -> None:
        self.path = path
        self.state_path = state_path
        self.site = site
        self.cluster = cluster
        self.rotation_window = rotation_window
        self._keys: list[KeyEntry] = []
        self._mtime: float | None = None
        # The newest key a verified command used, and when it was first used.
        self._newest_used: str | None = None
        self._since: datetime | None = None
        self._lock = threading.Lock()

    @property
    def configured(self) -> bool:
        """True when a key file is installed (then unsigned commands are refused)."""
        return bool(self._keys)

    @property
    def key_ids(self) -> list[str]:
        """Ids of the installed keys, newest first (not secret)."""
        return [k.kid for k in self._keys]

    def load(self, *, required: bool = True) -> None:
        """Read the key file and the rotation state.

        Raises ``KeyFileError`` if the file is unusable, or missing while ``required``
        (a box must not run unauthenticated by accident: docs/security.md, "fail closed").
        Without ``required`` a missing file means a bench box that accepts unsigned
        commands, and says so loudly.
        """
        if required and not self.path.exists():
            raise KeyFileError(
                f"{self.cluster}: no key file at {self.path}: install the key file written by "
                f"`loudspeaker keys issue {self.cluster}` (or `keys export {self.cluster}`), "
                "or pass --insecure-unsigned to run a bench box that accepts unauthenticated "
                "commands"
            )
        with self._lock:
            self._reload()
            self._load_state()
        if not self._keys:
            logger.warning(
                "%s: running with --insecure-unsigned and no key file at %s: commands are NOT "
                "authenticated (anyone who can publish to the broker can make it speak); "
                "install one with `loudspeaker keys issue %s`",
                self.cluster,
                self.path,
                self.cluster,
            )

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            if self._keys:
                logger.error(
                    "%s: key file %s disappeared; keeping the keys in memory",
                    self.cluster,
                    self.path,
                )
            return
        if mtime == self._mtime:
            return
        self._keys = read_key_file(self.path, self.site, self.cluster)
        self._mtime = mtime
        logger.info("%s: key file loaded: keys %s", self.cluster, ", ".join(self.key_ids))

    def _load_state(self) -> None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            self._newest_used = str(data["kid"])
            self._since = datetime.fromisoformat(data["since"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error(
                "%s: rotation state %s unreadable (%s); starting afresh",
                self.cluster,
                self.state_path,
                exc,
            )

    def _accepted(self, now: datetime) -> dict[str, bytes]:
        ids = self.key_ids
        if self._newest_used in ids and self._since is not None:
            cut = ids.index(self._newest_used)
            if now - self._since > self.rotation_window:
                return {k.kid: k.secret for k in self._keys[: cut + 1]}
        return {k.kid: k.secret for k in self._keys}

    def keyring(self, now: datetime) -> Keyring:
        """The keys accepted at ``now`` (after re-reading a changed key file)."""
        with self._lock:
            try:
                self._reload()
            except Exception:
                # A half-copied or broken new file must not lock the box out: keep the old.
                logger.exception(
                    "%s: new key file unusable; keeping the previous keys", self.cluster
                )
            return self._accepted(now)

    def verify(self, command: AnyCommand, now: datetime) -> str:
        """Check the command's signature against the accepted keys; note rotation progress."""
        kid = check_signature(command, self.keyring(now))
        with self._lock:
            ids = self.key_ids
            current = self._newest_used
            if current is None or current not in ids or ids.index(kid) < ids.index(current):
                self._newest_used, self._since = kid, now
                data = json.dumps({"kid": kid, "since": now.isoformat()})
                try:
                    write_private(self.state_path, data.encode())
                except OSError:
                    logger.exception("%s: cannot save rotation state", self.cluster)
        return kid
