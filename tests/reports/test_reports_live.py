"""End to end: real broker, controller and simulated clusters; then the log and report."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import load_workbook
from sqlmodel import Session

from firmware_bridge.simulator import Fleet
from loudspeaker.broadcasts import broadcast_status, create_broadcast, register_media
from loudspeaker.controller import Controller
from loudspeaker.db import make_engine
from loudspeaker.logbook import make_filter, read_log
from loudspeaker.media import MediaStore
from loudspeaker.report_xlsx import write_xlsx
from loudspeaker.reports import Month, monthly_report
from loudspeaker.targets import resolve_targets
from tests.helpers import make_tone_mp3, wait_until
from tests.reports.month_fixture import ZONE

pytestmark = pytest.mark.integration


def test_played_broadcast_shows_in_log_and_report(
    controller: Controller, fleet: Fleet, db_url: str, tmp_path: Path
) -> None:
    engine = make_engine(db_url)
    audio = make_tone_mp3(tmp_path / "tone.mp3", seconds=1.0)
    with Session(engine) as s:
        media = register_media(s, MediaStore(controller.settings.media_dir), audio)
        b = create_broadcast(
            s,
            media=media,
            title="Thông báo thử",
            target="hamlet:coc-xa",
            clusters=resolve_targets(s, "hamlet:coc-xa"),
            repeat=2,
            created_by="tester",
        )
        bid, created = b.id, b.created_at
    assert controller.dispatcher is not None
    controller.dispatcher.poke()

    def finished() -> bool:
        with Session(engine) as s:
            return broadcast_status(s, bid).finished

    assert wait_until(finished, 30), "broadcast did not finish"

    with engine.connect() as conn:
        day = created.astimezone(ZONE).date().isoformat()
        entries = read_log(conn, make_filter(conn, ZONE, date_from=day, date_to=day))
        local = created.astimezone(ZONE)
        report = monthly_report(conn, Month(local.year, local.month), ZONE)
    entry = next(e for e in entries if e.id == bid)
    assert entry.created_by == "tester"
    assert entry.duration_s == pytest.approx(1.0)
    assert [(d.cluster, d.outcome) for d in entry.deliveries] == [
        ("lb-09", "played"),
        ("lb-10", "played"),
    ]
    for d in entry.deliveries:
        assert d.started_at is not None and d.finished_at is not None
        assert d.started_at <= d.finished_at
        delay = d.delay_s(entry.scheduled_at)
        assert delay is not None and delay >= 0

    coc_xa = next(h for h in report.hamlets if h.id == "coc-xa")
    assert coc_xa.counts.air_s == pytest.approx(2.0)  # 1 s x 2 repeats, heard once
    assert coc_xa.counts.cluster_air_s == pytest.approx(4.0)  # on two clusters
    assert report.total.outcomes["played"] == 2
    # The agents connected during this test: online since then, unknown before.
    lb09 = next(c for c in report.clusters if c.id == "lb-09").availability
    assert lb09.online_s > 0
    assert lb09.unknown_s > 0 or (local.day == 1 and local.hour == 0)
    assert lb09.offline_s == 0

    wb = load_workbook(write_xlsx(report, tmp_path / "now.xlsx"))
    assert wb["Tổng hợp"]["A3"].value.endswith(Month(local.year, local.month).label)
    engine.dispose()
