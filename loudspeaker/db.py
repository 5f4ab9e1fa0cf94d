"""Database engine: SQLite with WAL and a busy timeout by default, any SQLAlchemy URL."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, event
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import create_engine

from loudspeaker import models  # noqa: F401 - registers the tables
from loudspeaker.exceptions import StorageError

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


def migration_config() -> Config:
    """Alembic's configuration, pointing at ``loudspeaker/migrations``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def init_db(engine: Engine) -> None:
    """Bring the schema to the newest migration (creating it in an empty database)."""
    cfg = migration_config()
    head = ScriptDirectory.from_config(cfg).get_current_head()
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current == head:
                return
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open or migrate the database: {exc}") from None
    logger.info("database schema migrated from %s to %s", current or "empty", head)


def as_utc(value: datetime | None) -> datetime | None:
    """Database drivers may hand back naive UTC (SQLite); make it aware again."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
