"""Alembic environment: migrations run on the connection ``loudspeaker.db`` hands over."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from loudspeaker import models  # noqa: F401 - registers the tables

target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    """Run with the connection passed in ``config.attributes['connection']``."""
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run against a database")
run_migrations_online()
