"""File modes of the data directory: no other OS account reads the database or the keys.

Private (the default): the data directory and its secret sub-directories are 0700, the
SQLite database, its ``-wal``/``-shm`` files and the key store 0600. With an operators'
group (``LOUDSPEAKER_GROUP``, docs/security.md "Secrets") the directories are 2770
(setgid: what is created inside inherits the group) and those files 0660, all in that
group, so the operators' CLI can read the database and the key store (the controller-down
emergency path signs with them) and nothing is readable by anyone else.

New files are created under a matching umask; existing ones are tightened at every start
of the controller and the CLI, and each fix is logged.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loudspeaker.config import ENV_GROUP, Settings
from loudspeaker.exceptions import ConfigError, StorageError

logger = logging.getLogger(__name__)

# Per-user secrets stay the owner's even in group mode (the CLI refuses looser tokens).
_OWNER_ONLY = 0o600


@dataclass(frozen=True)
class FileModes:
    """The modes for one deployment: private, or shared with the operators' group."""

    gid: int | None = None

    @classmethod
    def for_group(cls, group: str | None) -> FileModes:
        """Private modes, or modes shared with ``group`` (a name or a numeric id)."""
        if not group:
            return cls()
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(
                f"{ENV_GROUP}={group}: no such group; create it (`groupadd {group}`) or unset it"
            ) from None
        return cls(gid)

    @property
    def dir_mode(self) -> int:
        """Mode of the data directory and its secret sub-directories."""
        return 0o2770 if self.gid is not None else 0o700

    @property
    def file_mode(self) -> int:
        """Mode of the database files and the key store."""
        return 0o660 if self.gid is not None else 0o600

    @property
    def umask(self) -> int:
        """The umask that creates files no other account may read."""
        return 0o007 if self.gid is not None else 0o077


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Create files under ``mask`` within the block (the process umask is restored)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _fix(path: Path, mode: int, gid: int | None, *, exact: bool) -> str | None:
    """Bring ``path`` to ``mode`` (``exact``) or strip bits beyond it, and to group ``gid``.

    Returns what was changed, or None. A file of another owner cannot be changed by us:
    that is logged and left to its owner.
    """
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None  # never follow a link planted in a directory we tidy
    have = stat.S_IMODE(st.st_mode)
    want = mode if exact else have & mode
    changes: list[str] = []
    try:
        if gid is not None and st.st_gid != gid:
            os.chown(path, -1, gid)
            changes.append(f"group {st.st_gid} -> {gid}")
        if have != want or changes:
            # chown may clear the setgid bit: set the mode after it, every time.
            os.chmod(path, want)
            if have != want:
                changes.append(f"mode {have:o} -> {want:o}")
    except PermissionError as exc:
        logger.warning(
            "cannot tighten %s (owner uid %s, mode %o): %s; fix it as its owner",
            path,
            st.st_uid,
            have,
            exc.strerror,
        )
        return None
    return f"{path}: {', '.join(changes)}" if changes else None


def ensure_dir(path: Path, modes: FileModes) -> str | None:
    """Create ``path`` (and parents) if missing; bring it to the directory mode."""
    with umask(modes.umask):
        path.mkdir(parents=True, exist_ok=True)
    return _fix(path, modes.dir_mode, modes.gid, exact=True)


def create_secret_file(path: Path, data: bytes, modes: FileModes) -> bool:
    """Create ``path`` holding ``data`` with the file mode, never replacing one that exists.

    The content is complete before the name appears (a temporary file opened with
    ``O_EXCL``, then a hard link, which fails if the name exists), so a concurrent reader
    never sees a half-written file. Returns False if another process created it first.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with umask(modes.umask):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes.file_mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _fix(tmp, modes.file_mode, modes.gid, exact=True)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def secure_data_dir(settings: Settings) -> list[str]:
    """Create the data directory and tighten what is loose in it; returns what was fixed.

    Covered: the data directory; ``secrets/`` (the key store), ``media/``, ``run/``,
    ``spool/emergencies/``, ``tokens/`` and ``keys/`` (the files of the last two
    owner-only: people's tokens and the boxes' key files); the SQLite database with its
    ``-wal`` and ``-shm``.
    SQLite gives ``-wal``/``-shm`` the mode of the database file, so the database is
    created here, empty, with the right mode before SQLite first opens it.
    """
    modes = FileModes.for_group(settings.group)
    data_dir = settings.data_dir
    try:
        # media/, run/ and the emergency spool too: in group mode operators' CLI writes
        # there (an emergency's audio; an emergency the busy database could not take).
        subdirs = ("", "secrets", "media", "run", "tokens", "keys", "spool", "spool/emergencies")
        fixed = [ensure_dir(data_dir / name, modes) for name in subdirs]
        fixed.append(_fix(settings.keystore_path, modes.file_mode, modes.gid, exact=True))
        for name in ("tokens", "keys"):
            fixed.extend(
                _fix(p, _OWNER_ONLY, None, exact=False) for p in sorted((data_dir / name).iterdir())
            )
        db = settings.sqlite_path
        if db is not None:
            if db.parent != data_dir:
                with umask(modes.umask):
                    db.parent.mkdir(parents=True, exist_ok=True)
            with umask(modes.umask), contextlib.suppress(FileExistsError):
                os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, modes.file_mode))
            for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-journal")):
                fixed.append(_fix(path, modes.file_mode, modes.gid, exact=True))
    except OSError as exc:
        raise StorageError(
            f"cannot use data directory {data_dir}: {exc.strerror} ({exc.filename}): run this "
            f"as the account that owns it, or as a member of its group ({ENV_GROUP})"
        ) from None
    done = [f for f in fixed if f]
    for line in done:
        logger.warning("tightened file permissions: %s", line)
    return done
