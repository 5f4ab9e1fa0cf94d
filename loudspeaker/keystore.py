"""The key store: cluster signing keys are sealed in the database under a local key file.

A copied database, a backup or a PostgreSQL account yields no signing key: each secret is
encrypted with AES-256-GCM under ``DATA_DIR/secrets/keystore.key`` (32 random bytes,
created once with ``O_EXCL``; 0600 in a 0700 directory, or 0660/2770 for the operators'
group: loudspeaker.filemodes). Losing that file loses the keys in the database, so it is
backed up apart from the database (docs/security.md, "Secrets").

Sealed form (ASCII, stored in ``cluster_key.secret_sealed``)::

    v1.<key store id: 16 hex>.<base64url(nonce 12 bytes || ciphertext || tag 16 bytes)>

The key store id tells a wrong or replaced key file apart from a corrupted value. The
associated data names the row (``cluster_key/<cluster>/<kid>``), so someone who can write
the database cannot move one cluster's sealed key to another.
"""

from __future__ import annotations

import base64
import binascii
import grp
import hashlib
import os
import secrets
import stat
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loudspeaker.config import Settings
from loudspeaker.exceptions import KeystoreError
from loudspeaker.filemodes import FileModes, create_secret_file, ensure_dir

KEY_BYTES = 32
NONCE_BYTES = 12
VERSION = "v1"
# The way out when the key store that sealed the database's keys is gone for good.
RESET_ADVICE = (
    "`loudspeaker keys reset --all --yes` (drops the keys that cannot be opened), then "
    "`loudspeaker keys issue CLUSTER` for every cluster and install each box's new key file"
)


def cluster_key_context(cluster: str, kid: str) -> str:
    """The associated data that binds a sealed signing key to its row."""
    return f"cluster_key/{cluster}/{kid}"


class Keystore:
    """Seals and opens secrets with the key in ``path`` (created on the first seal, never
    while the database holds sealed values: see :meth:`seal`)."""

    def __init__(self, path: Path, modes: FileModes | None = None) -> None:
        self.path = path
        self.modes = modes or FileModes()
        self._key: bytes | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: Settings) -> Keystore:
        """The deployment's key store: ``DATA_DIR/secrets/keystore.key``."""
        return cls(settings.keystore_path, FileModes.for_group(settings.group))

    @staticmethod
    def _id_of(key: bytes) -> str:
        return hashlib.sha256(b"loudspeaker-keystore-id\n" + key).hexdigest()[:16]

    def _group_name(self) -> str:
        gid = self.modes.gid
        try:
            return grp.getgrgid(gid).gr_name if gid is not None else ""
        except KeyError:
            return str(gid)

    def _check_mode(self, st: os.stat_result) -> None:
        """Refuse a key file that accounts outside the deployment's may read or write.

        Private: nothing for group or other. Operators' group: group bits only if the file
        is in that group, never other bits.
        """
        mode = stat.S_IMODE(st.st_mode)
        loose = mode & 0o077 & ~self.modes.file_mode
        wrong_group = self.modes.gid is not None and mode & 0o070 and st.st_gid != self.modes.gid
        if not loose and not wrong_group:
            return
        if self.modes.gid is None:
            fix = f"chmod 600 {self.path}"
            who = "accounts other than its owner"
        else:
            fix = f"chgrp {self._group_name()} {self.path} && chmod 660 {self.path}"
            who = f"accounts outside the operators' group {self._group_name()}"
        raise KeystoreError(
            f"key store {self.path} is open to {who} (mode {mode:o}, group {st.st_gid}): "
            f"run `{fix}`"
        )

    def missing_message(self) -> str:
        """What to do when the key file is gone but the database holds sealed keys."""
        return (
            f"key store {self.path} is missing, so the cluster signing keys sealed in the "
            "database cannot be opened (a new key store cannot open them either): restore "
            f"the file from your backup (same path, mode {self.modes.file_mode:o}); if there "
            f"is no backup, run {RESET_ADVICE}"
        )

    def _read(self) -> bytes:
        try:
            st = self.path.stat()
            self._check_mode(st)
            key = self.path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(self.missing_message()) from None
        except PermissionError:
            raise KeystoreError(
                f"cannot read key store {self.path}: run this as the controller's account, "
                "or as a member of the operators' group (LOUDSPEAKER_GROUP, docs/security.md)"
            ) from None
        if len(key) != KEY_BYTES:
            raise KeystoreError(
                f"key store {self.path} is not a {KEY_BYTES}-byte key ({len(key)} bytes): "
                "restore it from your backup"
            )
        return key

    def _load(self, *, create: bool) -> bytes:
        with self._lock:
            if self._key is None:
                if create and not self.path.exists():
                    ensure_dir(self.path.parent, self.modes)
                    # If another process wins the race, its key is the one read below.
                    create_secret_file(self.path, secrets.token_bytes(KEY_BYTES), self.modes)
                self._key = self._read()
            return self._key

    def exists(self) -> bool:
        """Whether the key file is there (it may still be unreadable)."""
        try:
            self.path.stat()
        except FileNotFoundError:
            return False
        except PermissionError:
            raise KeystoreError(
                f"cannot look at key store {self.path}: run this as the controller's account, "
                "or as a member of the operators' group (LOUDSPEAKER_GROUP, docs/security.md)"
            ) from None
        return True

    def check(self) -> None:
        """Read the key file now; ``KeystoreError`` says why it cannot be used."""
        self._load(create=False)

    def seal(self, secret: bytes, context: str, *, create: bool = True) -> str:
        """``secret`` encrypted for storage.

        The key file is created if there is none and ``create`` is true. Callers pass
        ``create=False`` while the database holds sealed values: a new key store could
        never open them, and creating one would hide that the old one is lost.
        """
        key = self._load(create=create)
        nonce = os.urandom(NONCE_BYTES)
        box = AESGCM(key).encrypt(nonce, secret, context.encode())
        blob = base64.urlsafe_b64encode(nonce + box).decode("ascii")
        return f"{VERSION}.{self._id_of(key)}.{blob}"

    def open(self, sealed: str, context: str) -> bytes:
        """The secret in ``sealed``; ``KeystoreError`` says why it cannot be opened."""
        key = self._load(create=False)
        try:
            version, key_id, blob = sealed.split(".", 2)
            raw = base64.urlsafe_b64decode(blob.encode("ascii"))
        except (ValueError, binascii.Error):
            raise KeystoreError(f"{context}: the stored secret is not a sealed value") from None
        if version != VERSION:
            raise KeystoreError(f"{context}: sealed with unknown format {version!r}")
        if key_id != self._id_of(key):
            raise KeystoreError(
                f"{context}: sealed under key store {key_id}, but {self.path} is another "
                f"key store ({self._id_of(key)}), which cannot open it: put back the key "
                f"store this database was sealed under (from your backup); if it is lost, "
                f"run {RESET_ADVICE}"
            )
        try:
            return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError):
            raise KeystoreError(
                f"{context}: the stored secret was altered or belongs to another row"
            ) from None
