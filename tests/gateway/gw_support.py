"""Helpers of the gateway suite (a plain module: conftest names collide across dirs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select
from typer.testing import CliRunner

from cli import app
from firmware_bridge.backoff import Backoff
from loudspeaker.controller import Controller
from loudspeaker.models import AlarmRecord, ClusterHealth

ROOT = Path(__file__).resolve().parents[2]
MIXED_SITE = ROOT / "sites" / "luc-binh-mixed.toml"
PLAIN_SITE = ROOT / "sites" / "luc-binh.toml"

# Over a pty an answer takes ~100 µs: short timeouts keep the suite fast and still give
# a corrupted or lost frame several chances.
FAST_RETRANSMIT = Backoff(initial=0.03, factor=1.5, cap=0.15, max_attempts=6)
FAST_RECONNECT = Backoff(initial=0.02, factor=2.0, cap=0.16)

HEARTBEAT_S = 0.5
HEALTH_TABLE = """
[health]
heartbeat_s = 0.5
missed_heartbeats = 3
control_timeout_s = 5
history_fine_s = 1
history_fine_keep = 30
history_coarse_s = 10
history_coarse_keep = 30
"""


def site_with_health(source: Path, target: Path) -> Path:
    """``source`` plus a fast ``[health]`` table, written to ``target``."""
    target.write_text(source.read_text(encoding="utf-8") + HEALTH_TABLE, encoding="utf-8")
    return target


def cli(ctl: Controller, *argv: str) -> tuple[int, str]:
    """Run the ``loudspeaker`` CLI in-process against ``ctl``'s data."""
    args = ["--data-dir", str(ctl.settings.data_dir), "--db-url", ctl.settings.database_url]
    out = CliRunner().invoke(app, [*args, *argv])
    return out.exit_code, out.output


def show(ctl: Controller, cluster: str) -> dict[str, Any]:
    """``loudspeaker clusters show CLUSTER --json``."""
    code, out = cli(ctl, "clusters", "show", cluster, "--json")
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


def active_alarms(ctl: Controller, cluster: str) -> set[str]:
    """Kinds of the alarms raised and not cleared on ``cluster``."""
    assert ctl.health is not None
    with Session(ctl.health.engine) as s:
        rows = s.exec(
            select(AlarmRecord).where(
                AlarmRecord.cluster_id == cluster, col(AlarmRecord.cleared_at).is_(None)
            )
        ).all()
    return {a.kind for a in rows}


def alarm_history(ctl: Controller, cluster: str, kind: str) -> list[AlarmRecord]:
    """Every alarm of ``kind`` on ``cluster``, raised or cleared."""
    assert ctl.health is not None
    with Session(ctl.health.engine) as s:
        return list(
            s.exec(
                select(AlarmRecord).where(
                    AlarmRecord.cluster_id == cluster, AlarmRecord.kind == kind
                )
            ).all()
        )


def health_row(ctl: Controller, cluster: str) -> ClusterHealth | None:
    """The controller's latest health row of ``cluster``."""
    assert ctl.health is not None
    with Session(ctl.health.engine) as s:
        return s.get(ClusterHealth, cluster)
