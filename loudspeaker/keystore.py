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


def cluster_key_context(cluster: str, kid: str) -> str:
    """The associated data that binds a sealed signing key to its row."""
    return f"cluster_key/{cluster}/{kid}"


class Keystore:
    """Seals and opens secrets with the key in ``path`` (created on the first seal)."""

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

    def _read(self) -> bytes:
        try:
            st = self.path.stat()
            if stat.S_IMODE(st.st_mode) & 0o007:
                raise KeystoreError(
                    f"key store {self.path} is readable by other accounts "
                    f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 600 {self.path}`"
                )
            key = self.path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(
                f"key store {self.path} is missing, so the cluster signing keys in the "
                "database cannot be used: restore it from your backup (same path, mode "
                "0600), or issue new keys (`loudspeaker keys rotate|activate CLUSTER`)"
            ) from None
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

    @property
    def key_id(self) -> str:
        """The id of the key in the file (not secret); raises if there is none."""
        return self._id_of(self._load(create=False))

    def seal(self, secret: bytes, context: str) -> str:
        """``secret`` encrypted for storage; the key file is created if there is none."""
        key = self._load(create=True)
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
                f"{context}: sealed under key store {key_id}, but {self.path} is "
                f"{self._id_of(key)}: restore the key store this database was used with, "
                "or issue new keys (`loudspeaker keys rotate|activate CLUSTER`)"
            )
        try:
            return AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode())
        except (InvalidTag, ValueError):
            raise KeystoreError(
                f"{context}: the stored secret was altered or belongs to another row"
            ) from None
