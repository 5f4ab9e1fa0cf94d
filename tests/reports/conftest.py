"""Fixtures of the reports suite: a database holding the fixture month."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from loudspeaker.db import init_db, make_engine
from tests.conftest import load_site
from tests.reports.month_fixture import populate


@pytest.fixture
def month_engine(db_url: str) -> Iterator[Engine]:
    """The Lục Bình site and the fixture month, on SQLite and on PostgreSQL."""
    load_site(db_url)
    engine = make_engine(db_url)
    init_db(engine)
    populate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def month_sqlite(sqlite_url: str) -> Iterator[str]:
    """The fixture month in a SQLite file; yields its URL (for CLI tests)."""
    load_site(sqlite_url)
    engine = make_engine(sqlite_url)
    init_db(engine)
    populate(engine)
    engine.dispose()
    yield sqlite_url
