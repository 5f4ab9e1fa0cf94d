"""``loudspeaker log`` and ``loudspeaker report monthly`` through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from openpyxl import load_workbook
from typer.testing import CliRunner

from cli import app


@pytest.fixture
def run(month_sqlite: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, ["--data-dir", str(tmp_path), "--db-url", month_sqlite, *args])

    invoke.db_url = month_sqlite  # type: ignore[attr-defined]
    return invoke


def test_log_json_whole_month(run) -> None:  # type: ignore[no-untyped-def]
    res = run("log", "--from", "2026-11-01", "--to", "2026-11-30", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    ids = [b["id"] for b in data["broadcasts"]]
    # Oldest first, by scheduled time; October's and December's are outside.
    assert ids == ["b-early", "b-all-1", "b-bc", "b-sched", "b-pending", "b-emerg"]
    all1 = data["broadcasts"][1]
    assert all1["counts"] == {"played": 8, "failed": 1, "unreachable": 1}
    assert all1["duration_s"] == 120.0
    assert all1["created_by"] == "can-bo-vh"
    lb01 = next(c for c in all1["clusters"] if c["cluster"] == "lb-01")
    assert lb01["delay_s"] == 4.0  # actual start vs scheduled
    lb10 = next(c for c in all1["clusters"] if c["cluster"] == "lb-10")
    assert (lb10["outcome"], lb10["reason"], lb10["started_at"]) == (
        "unreachable",
        "no answer within 10 s",
        None,
    )
    sched = data["broadcasts"][3]
    assert sched["scheduled_at"] == "2026-11-19T23:00:00+00:00"  # 20/11 06:00 local
    assert sched["created_at"].startswith("2026-10-25")
    assert sched["clusters"][0]["outcome"] == "missed"


def test_log_local_day_boundaries(run) -> None:  # type: ignore[no-untyped-def]
    # 30 November local includes 23:30 (16:30 UTC) and not 1 December 00:05.
    res = run("log", "--from", "2026-11-30", "--to", "2026-11-30", "--json")
    assert [b["id"] for b in json.loads(res.stdout)["broadcasts"]] == ["b-emerg"]
    res = run("log", "--to", "2026-12-01", "--json")  # --to alone: that one day
    assert [b["id"] for b in json.loads(res.stdout)["broadcasts"]] == ["b-dec"]


def test_log_filters(run) -> None:  # type: ignore[no-untyped-def]
    base = ("log", "--from", "2026-10-01", "--to", "2026-12-31", "--json")
    res = run(*base, "--hamlet", "Thôn Cốc Xả")
    bs = json.loads(res.stdout)["broadcasts"]
    assert [b["id"] for b in bs] == ["b-all-1", "b-emerg"]
    assert {c["cluster"] for b in bs for c in b["clusters"]} == {"lb-09", "lb-10"}
    res = run(*base, "--cluster", "lb-04")
    assert [b["id"] for b in json.loads(res.stdout)["broadcasts"]] == [
        "b-oct",
        "b-early",
        "b-all-1",
    ]
    res = run(*base, "--priority", "emergency")
    assert [b["id"] for b in json.loads(res.stdout)["broadcasts"]] == ["b-emerg"]


def test_log_csv(run) -> None:  # type: ignore[no-untyped-def]
    res = run("log", "--from", "2026-11-01", "--to", "2026-11-30", "--csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(res.stdout.splitlines()))
    assert len(rows) == 17  # broadcast x cluster pairs of November
    emerg = [r for r in rows if r["broadcast"] == "b-emerg"]
    assert emerg[0]["scheduled"] == "2026-11-30T23:30:00+07:00"  # shown in local time
    assert emerg[0]["what"] == "siren"
    assert emerg[0]["repeat"] == "3"


def test_log_table(run, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from loudspeaker.commands.common import console

    monkeypatch.setattr(console, "width", 220)  # as on an officer's wide terminal
    res = run("log", "--from", "2026-11-15", "--to", "2026-11-15")
    assert res.exit_code == 0, res.output
    assert "Thông báo họp thôn" in res.stdout
    assert "stopped by operator" in res.stdout
    # Cluster-supplied text is shown as is, never read as rich markup.
    from sqlmodel import Session, select

    from loudspeaker.db import make_engine
    from loudspeaker.models import Delivery

    engine = make_engine(run.db_url)
    with Session(engine) as s:
        d = s.exec(select(Delivery).where(Delivery.cluster_id == "lb-02")).all()
        for row in d:
            row.reason = "refused: [bold]x[/bold] [/]"
            s.add(row)
        s.commit()
    engine.dispose()
    res = run("log", "--from", "2026-11-15", "--to", "2026-11-15")
    assert res.exit_code == 0, res.output
    assert "refused: [bold]x[/bold] [/]" in res.stdout
    res = run("log", "--from", "2026-06-01", "--to", "2026-06-02")
    assert "No broadcasts in this period." in res.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "2026-11-31"), "not a calendar day"),
        (("--from", "30/11/2026"), "YYYY-MM-DD"),
        (("--from", "2026-11-10", "--to", "2026-11-01"), "before --from"),
        (("--hamlet", "nowhere"), "no hamlet 'nowhere'; known: ban-cau"),
        (("--cluster", "lb-99"), "no cluster 'lb-99'"),
        (("--priority", "urgent"), "not one of: normal, priority, emergency"),
        (("--json", "--csv"), "choose one"),
    ],
)
def test_log_bad_input(run, args: tuple[str, ...], message: str) -> None:  # type: ignore[no-untyped-def]
    res = run("log", *args)
    assert res.exit_code == 1
    assert message in res.stderr


def test_report_monthly_xlsx_and_png(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bao-cao-2026-11.xlsx"
    res = run("report", "monthly", "2026-11", "-o", str(out), "--png", str(tmp_path / "png"))
    assert res.exit_code == 0, res.output
    assert "6 bulletins" in res.stdout
    wb = load_workbook(out)
    assert wb["Tổng hợp"]["A3"].value.endswith("THÁNG 11/2026")
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "phut-phat-song-theo-thon-2026-11.png",
        "truc-tuyen-theo-cum-2026-11.png",
    ]


def test_report_monthly_csv_json(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r.csv"
    res = run("report", "monthly", "2026-11", "-o", str(out), "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["files"] == [str(out)]
    assert data["report"]["total"]["outcomes"]["played"] == 12
    assert out.read_text(encoding="utf-8-sig").startswith("Tháng,Cấp,Mã")


def test_report_monthly_empty_month(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "r.xlsx"
    res = run("report", "monthly", "2025-02", "-o", str(out))
    assert res.exit_code == 0, res.output
    assert "0 bulletins" in res.stdout
    assert load_workbook(out).sheetnames[0] == "Tổng hợp"


@pytest.mark.parametrize(
    ("month", "output", "message"),
    [
        ("2026-13", "r.xlsx", "is not YYYY-MM"),
        ("11-2026", "r.xlsx", "is not YYYY-MM"),
        ("2026-11", "r.pdf", "must end in .xlsx or .csv"),
        ("2026-11", "no/such/dir/r.xlsx", "does not exist"),
    ],
)
def test_report_monthly_bad_input(
    run, tmp_path: Path, month: str, output: str, message: str
) -> None:  # type: ignore[no-untyped-def]
    res = run("report", "monthly", month, "-o", str(tmp_path / output))
    assert res.exit_code == 1
    assert message in res.stderr.replace("\n", "")
    assert not (tmp_path / output).exists()


def test_report_png_must_be_a_folder(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    afile = tmp_path / "charts"
    afile.write_text("x")
    res = run("report", "monthly", "2026-11", "-o", str(tmp_path / "r.xlsx"), "--png", str(afile))
    assert res.exit_code == 1
    assert "is a file" in res.stderr
