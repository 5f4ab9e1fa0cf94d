"""Fixtures of the health suite: a site with tight thresholds, a controller, a fast fleet."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_bridge.simulator import Fleet
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.controller import Controller
from tests.conftest import SITE_FILE, load_site, make_settings
from tests.helpers import running_fleet

CLUSTERS = [f"lb-{i:02d}" for i in range(1, 11)]
HEARTBEAT_S = 0.5

# Thresholds scaled to the test's time: beats every 0.5 s, answers within seconds.
HEALTH_TABLE = """
[health]
heartbeat_s = 0.5
missed_heartbeats = 3
flap_count = 3
flap_window_s = 4
clock_drift_max_s = 5
storage_min_mb = 100
playback_failures_max = 3
control_timeout_s = 3
reboot_timeout_s = 10
history_fine_s = 1
history_fine_keep = 30
history_coarse_s = 10
history_coarse_keep = 30
"""


@pytest.fixture
def health_site(tmp_path: Path) -> Path:
    """The shipped site file plus a ``[health]`` table."""
    path = tmp_path / "site.toml"
    path.write_text(SITE_FILE.read_text(encoding="utf-8") + HEALTH_TABLE, encoding="utf-8")
    return path


def _controller(tmp_path: Path, db: str, broker: EmbeddedBroker, site: Path) -> Controller:
    load_site(db, site)
    ctl = Controller(make_settings(tmp_path, db, broker, ack_timeout_s=5.0))
    ctl.start()
    return ctl


@pytest.fixture
def hcontroller(
    tmp_path: Path, sqlite_url: str, mosquitto: EmbeddedBroker, health_site: Path
) -> Iterator[Controller]:
    """A controller on SQLite with the health thresholds above."""
    ctl = _controller(tmp_path, sqlite_url, mosquitto, health_site)
    yield ctl
    ctl.stop()


@pytest.fixture
def hcontroller_any_db(
    tmp_path: Path, db_url: str, mosquitto: EmbeddedBroker, health_site: Path
) -> Iterator[Controller]:
    """The same controller on SQLite and on PostgreSQL."""
    ctl = _controller(tmp_path, db_url, mosquitto, health_site)
    yield ctl
    ctl.stop()


@pytest.fixture
def hfleet(tmp_path: Path, mosquitto: EmbeddedBroker) -> Iterator[Fleet]:
    """The ten clusters, beating every 0.5 s, audio at 4x speed."""
    with running_fleet(
        CLUSTERS, mosquitto.endpoint, tmp_path / "fleet", heartbeat_s=HEARTBEAT_S
    ) as f:
        yield f
