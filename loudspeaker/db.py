"""Database engine: SQLite with WAL and a busy timeout by default, any SQLAlchemy URL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import create_engine

from loudspeaker import models  # noqa: F401 - registers the tables
from loudspeaker.exceptions import StorageError

if TYPE_CHECKING:
    from alembic.config import Config

    from loudspeaker.keystore import Keystore

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """Create an engine; for SQLite, create the directory and turn on WAL.

    ``busy_timeout_ms``: how long a SQLite write waits for another writer's lock.
    """
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Sessions never cross threads, but the pool may hand a connection to another.
        connect_args = {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
    try:
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StorageError(f"cannot use database URL {url!r}: {exc}") from None
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


MIGRATIONS = Path(__file__).parent / "migrations"


def migration_config() -> Config:
    """Alembic's configuration, pointing at ``loudspeaker/migrations``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest migration's id: revisions are numbered, ``NNNN_what.py``."""
    ids = sorted(p.name[:4] for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return ids[-1]


def current_revision(engine: Engine) -> str | None:
    """The database's migration id, or None for an empty (or pre-migration) database."""
    try:
        with engine.connect() as conn:
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None
    return str(value) if value is not None else None


# The migration that sealed the cluster keys: the clear values it replaced are scrubbed.
SEALED_KEYS_REVISION = "0002"


def init_db(engine: Engine, keystore: Keystore | None = None) -> None:
    """Bring the schema to the newest migration (creating it in an empty database).

    The common case, a database already at the newest revision, costs one query and no
    Alembic import: every CLI command passes here, an emergency among them. ``keystore``
    seals cluster keys that an older database holds in clear (migration 0002); without
    one such a database is refused with ``KeystoreError``.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return
    from alembic import command

    cfg = migration_config()
    cfg.attributes["keystore"] = keystore
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        if current is not None and current < SEALED_KEYS_REVISION:
            _scrub(engine)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open or migrate the database: {exc}") from None
    logger.info("database schema migrated from %s to %s", current or "empty", head)


def _scrub(engine: Engine) -> None:
    """Reclaim the space of deleted rows, so no clear key stays behind in the files."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif engine.dialect.name == "postgresql":
            conn.exec_driver_sql("VACUUM FULL cluster_key")


def as_utc(value: datetime | None) -> datetime | None:
    """Database drivers may hand back naive UTC (SQLite); make it aware again."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
