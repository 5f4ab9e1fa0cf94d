"""``loudspeaker schedule`` on a database with no controller running: the officer's view."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from cli import app
from firmware_bridge.protocol import utcnow
from loudspeaker.broadcasts import register_media
from loudspeaker.db import make_engine
from loudspeaker.media import MediaStore
from loudspeaker.models import Announcement
from tests.conftest import SITE_FILE, load_site
from tests.helpers import make_tone_mp3

pytestmark = pytest.mark.integration

VN = ZoneInfo("Asia/Ho_Chi_Minh")


def _setup(tmp_path: Path, sqlite_url: str, quiet: str | None = None) -> list[str]:
    site = tmp_path / "site.toml"
    text = SITE_FILE.read_text(encoding="utf-8")
    if quiet:
        zone = 'timezone = "Asia/Ho_Chi_Minh"\n'
        text = text.replace(zone, f'{zone}quiet_hours = "{quiet}"\n')
    site.write_text(text, encoding="utf-8")
    load_site(sqlite_url, site)
    engine = make_engine(sqlite_url)
    af = make_tone_mp3(tmp_path / "tone.mp3", 0.3)
    with Session(engine) as s:
        media = register_media(s, MediaStore(tmp_path / "data" / "media"), af)
        # The planner only needs the length: a 10-minute and a 5-minute bulletin.
        for ann_id, title, seconds in (
            ("tin-sang", "Tin sáng", 600),
            ("tin-huyen", "Tin huyện", 300),
        ):
            s.add(Announcement(id=ann_id, title=title, kind="tone", media_sha256=media.sha256,
                               duration_s=seconds, size=af.size, created_at=utcnow()))  # fmt: skip
        s.commit()
    engine.dispose()
    return ["--data-dir", str(tmp_path / "data"), "--db-url", sqlite_url]


def run(base: list[str], *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, [*base, *args])
    if "--json" in args and res.exit_code == 0:
        return res.exit_code, res.stdout
    return res.exit_code, " ".join(res.output.split())  # rich wraps long lines


def test_conflicts_the_circular_39_way(tmp_path: Path, sqlite_url: str) -> None:
    base = _setup(tmp_path, sqlite_url)
    code, out = run(base, "schedule", "add", "tin-sang", "--to", "all", "--daily", "05:30",
                    "--priority", "priority")  # fmt: skip
    assert code == 0, out
    assert "controller is not running" in out
    # A normal item on the same clusters at 05:35 goes after it, and the officer is told.
    code, out = run(base, "schedule", "add", "tin-huyen", "--to", "hamlet:coc-xa", "--daily",
                    "05:35")  # fmt: skip
    assert code == 0, out
    assert "placed after schedule 1: plays at 05:40:02 instead of 05:35:00" in out
    # A priority item colliding with the priority one: refused, a person decides.
    add = ["schedule", "add", "tin-huyen", "--to", "cluster:lb-01", "--weekly", "mon@05:31",
           "--priority", "priority"]  # fmt: skip
    code, out = run(base, *add)
    assert code == 1
    assert "Circular 39/2020" in out and "--after" in out and "--replace" in out
    code, out = run(base, *add, "--after")
    assert code == 0, out
    tomorrow = (utcnow().astimezone(VN) + timedelta(days=1)).date().isoformat()
    code, data = run(base, "schedule", "list", "--day", tomorrow, "--week", "--json")
    assert code == 0, data
    timeline = json.loads(data)["timeline"]
    assert {r["schedule"] for r in timeline} == {1, 2, 3}
    mondays = [r for r in timeline if r["schedule"] == 3]
    assert len(mondays) == 1 and mondays[0]["note"] == "placed after schedule 1"
    assert {r["state"] for r in timeline} == {"planned"}
    code, out = run(base, "schedule", "pause", "1")
    assert code == 0, out
    code, data = run(base, "schedule", "list", "--json")
    assert [s["paused"] for s in json.loads(data)["schedules"]] == [True, False, False]
    code, out = run(base, "schedule", "remove", "3")
    assert code == 0, out
    code, out = run(base, "schedule", "remove", "3")
    assert code == 1 and "no schedule 3" in out
    code, out = run(base, "announce", "remove", "tin-sang")
    assert code == 1 and "schedule 1" in out  # still needed by a schedule


def test_quiet_hours_and_bad_input_are_refused_clearly(tmp_path: Path, sqlite_url: str) -> None:
    base = _setup(tmp_path, sqlite_url, quiet="21:00-05:00")
    code, out = run(base, "schedule", "add", "tin-sang", "--to", "all", "--daily", "04:55")
    assert code == 1 and "quiet hours 21:00-05:00" in out
    tomorrow = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%d")
    cases = [
        (["--to", "all", "--daily", "05:30", "--weekly", "mon@05:30"], "exactly one of"),
        (["--to", "hamlet:atlantis", "--daily", "05:30"], "no hamlet 'atlantis'"),
        (["--to", "all", "--at", "2001-01-01 05:30"], "never happens after now"),
        (["--to", "all", "--daily", "05:30", "--after", "--replace"], "one of --after"),
        (
            ["--to", "all", "--daily", "05:30", "--from", tomorrow, "--until", "2001-01-01"],
            "before",
        ),
    ]
    for args, says in cases:
        code, out = run(base, "schedule", "add", "tin-sang", *args)
        assert code != 0 and says in out, (args, out)
    code, out = run(base, "schedule", "add", "nope", "--to", "all", "--daily", "05:30")
    assert code == 1 and "no announcement 'nope'" in out
