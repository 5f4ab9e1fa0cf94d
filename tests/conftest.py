"""Fixtures: a real mosquitto per test, SQLite or a throwaway PostgreSQL, real agents.

Every fixture here that starts a process is for integration tests only: the process guard
(tests/process_guard.py) fails an unmarked test that starts one, so ``make unit`` runs
without mosquitto or PostgreSQL.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.config import Settings
from loudspeaker.controller import Controller
from loudspeaker.db import init_db, make_engine
from loudspeaker.site import load_site_file, store_site
from tests import leaks
from tests.helpers import running_fleet, scaled
from tests.pg import PgCluster
from tests.process_guard import GUARD, is_integration, require_integration

ROOT = Path(__file__).resolve().parent.parent
SITE_FILE = ROOT / "sites" / "luc-binh.toml"


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a process running (and kill it, so the next test is clean).

    Set up before and torn down after every other function-scoped fixture, so what a
    fixture stops in its teardown does not count. A leaked controller or agent holds
    database connections, ports and CPU, and makes a later, unrelated test fail.
    Only integration tests are looked at: the process guard lets no other test start one
    (and reading /proc three times a test adds seconds to the unit suite).
    """
    if not is_integration(request.node):
        yield
        return
    before = leaks.children_keys()
    yield
    tmp = request.node.funcargs.get("tmp_path") if hasattr(request.node, "funcargs") else None
    left = leaks.settle(before, tmp, grace=scaled(1.0))
    if left:
        leaks.kill(left, timeout=scaled(5.0))
    unwaited = leaks.unwaited(before)
    if unwaited:
        # A Popen never waited for warns "subprocess N is still running" when it is
        # garbage-collected, failing whichever test is running then: collect it now, so
        # the warning (an error here) lands on the test that started it. (Not reaped
        # here: subprocess reaps what it still tracks, and its Popen must see the status.)
        gc.collect()
    if left:
        lines = "\n".join(f"  pid {p.pid}: {p.cmdline}" for p in left)
        pytest.fail(f"the test left {len(left)} process(es) running (now killed):\n{lines}")


@pytest.fixture
def mosquitto(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A real mosquitto on a free loopback port, private to the test."""
    require_integration(request, "a real mosquitto broker")
    broker = EmbeddedBroker(tmp_path / "mosquitto", supervise=False)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL server for the session (each test gets its own database)."""
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(
    params=[
        "sqlite",
        # The PostgreSQL variant starts a server: an integration test wherever it is used.
        pytest.param("postgres", marks=[pytest.mark.integration, pytest.mark.postgres]),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The integration suite runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'loudspeaker.db'}"
    require_integration(request, "a PostgreSQL server")
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite only, for tests whose subject is not the database."""
    return f"sqlite:///{tmp_path / 'data' / 'loudspeaker.db'}"


def make_settings(tmp_path: Path, db: str, broker: EmbeddedBroker, **kw: object) -> Settings:
    """Settings for a controller on ``broker`` with data under ``tmp_path``."""
    return Settings(
        data_dir=tmp_path / "data",
        db_url=db,
        broker_url=broker.endpoint.url,
        **kw,  # type: ignore[arg-type]
    )


def load_site(db: str, site_file: Path = SITE_FILE) -> None:
    """Store a site file in the database."""
    engine = make_engine(db)
    init_db(engine)
    with Session(engine) as s:
        store_site(s, load_site_file(site_file))
    engine.dispose()


@pytest.fixture
def controller(tmp_path: Path, db_url: str, mosquitto: EmbeddedBroker) -> Iterator[Controller]:
    """A started controller (in this process) on the test's broker and database."""
    load_site(db_url)
    ctl = Controller(make_settings(tmp_path, db_url, mosquitto, ack_timeout_s=5.0))
    ctl.start()
    yield ctl
    ctl.stop()


@pytest.fixture
def fleet(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Fleet]:
    """The site's ten clusters as simulated agents (audio plays 4x faster than real time)."""
    ids = [f"lb-{i:02d}" for i in range(1, 11)]
    with running_fleet(ids, mosquitto.endpoint, tmp_path / "fleet") as agents:
        yield agents


def pytest_configure(config: pytest.Config) -> None:
    # Subprocesses started by tests (serve, simulate, agent) import the checkout.
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    GUARD.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    # Setup included: a session-wide server is started by the first test that needs it.
    with GUARD.checking(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with GUARD.checking(item):
        return (yield)
