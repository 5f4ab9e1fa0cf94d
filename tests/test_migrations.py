"""Schema migrations: an empty database reaches the models' schema, and they stay in step."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlmodel import SQLModel

from loudspeaker.db import head_revision, init_db, make_engine, migration_config

pytestmark = pytest.mark.integration


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    init_db(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
        head = ScriptDirectory.from_config(migration_config()).get_current_head()
        assert ctx.get_current_revision() == head
        # init_db's quick check relies on numbered revision files.
        assert head_revision() == head
    assert diff == [], (
        "the models changed without a migration: run `alembic revision --autogenerate` "
        f"(see docs/architecture.md, Storage): {diff}"
    )
    assert set(SQLModel.metadata.tables) <= set(inspect(engine).get_table_names())
    init_db(engine)  # a second start is a no-op
    engine.dispose()
