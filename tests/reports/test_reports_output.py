"""The report's files: XLSX (native charts, A4 print setup), CSV, PNG charts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from openpyxl import load_workbook
from PIL import Image
from sqlalchemy import Engine

from loudspeaker.db import make_engine
from loudspeaker.exceptions import ReportError
from loudspeaker.report_png import write_pngs
from loudspeaker.report_xlsx import CHART_MAX_BARS, chart_rows, write_csv, write_xlsx
from loudspeaker.reports import ClusterFigures, Month, MonthlyReport, monthly_report
from tests.reports.month_fixture import NOW, ZONE


@pytest.fixture
def november(month_sqlite: str) -> MonthlyReport:
    engine: Engine = make_engine(month_sqlite)
    with engine.connect() as conn:
        report = monthly_report(conn, Month(2026, 11), ZONE, now=NOW)
    engine.dispose()
    return report


@pytest.fixture
def june(month_sqlite: str) -> MonthlyReport:
    engine: Engine = make_engine(month_sqlite)
    with engine.connect() as conn:
        report = monthly_report(conn, Month(2026, 6), ZONE, now=NOW)
    engine.dispose()
    return report


def _find(ws: object, text: str) -> tuple[int, int]:
    for row in ws.iter_rows():  # type: ignore[attr-defined]
        for cell in row:
            if cell.value == text:
                return cell.row, cell.column
    raise AssertionError(f"{text!r} not on sheet")


def test_xlsx_figures_headings_and_print_setup(november: MonthlyReport, tmp_path: Path) -> None:
    path = write_xlsx(november, tmp_path / "bao-cao.xlsx")
    wb = load_workbook(path)
    assert wb.sheetnames[:4] == ["Tổng hợp", "Theo cụm loa", "Lỗi và bỏ lỡ", "Biểu đồ"]
    ws = wb["Tổng hợp"]
    assert ws["A3"].value == "BÁO CÁO HOẠT ĐỘNG PHÁT THANH THÁNG 11/2026"
    r, _ = _find(ws, "Số phút phát sóng (toàn xã)")
    assert ws.cell(row=r, column=3).value == pytest.approx(5.75)
    # The hamlet table: header row repeated on every printed page, totals row at the end.
    hr, _ = _find(ws, "Thôn")
    headings = [ws.cell(row=hr, column=i).value for i in range(1, 19)]
    assert headings[:3] == ["Thôn", "Số cụm loa", "Phút phát sóng"]
    assert "Bản tin khẩn cấp" in headings and "Không rõ" in headings
    assert ws.print_title_rows == f"${hr}:${hr}"
    tr, _ = _find(ws, "Cộng toàn xã")
    assert tr == hr + 9  # eight hamlets, then the total
    col = headings.index("Đã phát") + 1
    assert ws.cell(row=tr, column=col).value == 12
    ban_cau_row, _ = _find(ws, "Thôn Bản Cầu")
    assert ws.cell(row=ban_cau_row, column=3).value == pytest.approx(3.0)
    for sheet in ("Tổng hợp", "Theo cụm loa", "Lỗi và bỏ lỡ", "Biểu đồ", "Ghi chú"):
        s = wb[sheet]
        assert int(s.page_setup.paperSize) == 9, sheet  # A4
        assert int(s.page_setup.fitToWidth) == 1, sheet
        assert s.sheet_properties.pageSetUpPr.fitToPage, sheet
        assert s.page_margins.left < 0.75, sheet
    assert wb["Tổng hợp"].page_setup.orientation == "landscape"
    assert wb["Theo cụm loa"].print_title_rows == "$3:$3"
    reasons = [row for row in wb["Lỗi và bỏ lỡ"].iter_rows(min_row=3, values_only=True)]
    assert ("Thôn Cốc Xả", "lb-10", "mất liên lạc", "no answer within 10 s", 1) in reasons
    notes = " ".join(str(c.value) for c in wb["Ghi chú"]["A"] if c.value)
    assert "Không rõ" in notes and "không được tính" in notes


def test_xlsx_has_native_charts(november: MonthlyReport, tmp_path: Path) -> None:
    path = write_xlsx(november, tmp_path / "r.xlsx")
    # openpyxl does not read charts back: look inside the package instead.
    import zipfile

    with zipfile.ZipFile(path) as z:
        charts = sorted(n for n in z.namelist() if n.startswith("xl/charts/chart"))
        xml = [z.read(n).decode() for n in charts]
    assert len(charts) == 2
    assert any("Số phút phát sóng theo thôn" in x for x in xml)
    assert any("percentStacked" in x and "Tỉ lệ thời gian trực tuyến" in x for x in xml)


def test_csv_rows_for_site_hamlets_clusters(november: MonthlyReport, tmp_path: Path) -> None:
    path = write_csv(november, tmp_path / "r.csv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # BOM: Excel reads it as UTF-8
    rows = list(csv.DictReader(path.read_text(encoding="utf-8-sig").splitlines()))
    assert len(rows) == 1 + 8 + 10
    site = rows[0]
    assert (site["Cấp"], site["Tháng"], site["Phút phát sóng"]) == ("xã", "11/2026", "5.75")
    assert site["Bản tin khẩn cấp"] == "1"
    assert site["Cảnh báo"] == "0"  # the alarm table exists: a recorded zero
    lb02 = next(r for r in rows if r["Mã"] == "lb-02")
    assert lb02["Cấp"] == "cụm loa"
    assert lb02["Trực tuyến (%)"] == "96.7"
    assert "stopped by operator ×1" in lb02["Lý do lỗi / mất liên lạc / bỏ lỡ"]


def test_pngs_are_images(november: MonthlyReport, tmp_path: Path) -> None:
    paths = write_pngs(november, tmp_path / "charts")
    assert [p.name for p in paths] == [
        "phut-phat-song-theo-thon-2026-11.png",
        "truc-tuyen-theo-cum-2026-11.png",
    ]
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "PNG"
            assert img.width == 1200
            assert img.height > 200


def test_empty_month_writes_valid_files(june: MonthlyReport, tmp_path: Path) -> None:
    assert june.empty
    wb = load_workbook(write_xlsx(june, tmp_path / "june.xlsx"))
    r, _ = _find(wb["Tổng hợp"], "Không có bản tin nào trong tháng này.")
    assert r > 0
    text = write_csv(june, tmp_path / "june.csv").read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(text.splitlines()))
    assert rows[0]["Lượt phát (tin × cụm)"] == "0"
    assert len(write_pngs(june, tmp_path / "png")) == 2


def test_refuses_bad_output_paths(november: MonthlyReport, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"must end in \.xlsx"):
        write_xlsx(november, tmp_path / "r.pdf")
    with pytest.raises(ReportError, match="does not exist"):
        write_xlsx(november, tmp_path / "missing" / "r.xlsx")
    with pytest.raises(ReportError, match="not a writable file"):
        (tmp_path / "adir.xlsx").mkdir()
        write_xlsx(november, tmp_path / "adir.xlsx")


def test_failed_write_leaves_no_partial_file(november: MonthlyReport, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = out / "r.csv"
    target.write_bytes(b"previous report")
    november.clusters[-1].counts.outcomes = {}  # breaks the CSV on its last row
    with pytest.raises(KeyError):
        write_csv(november, target)
    assert target.read_bytes() == b"previous report"
    assert [p.name for p in out.iterdir()] == ["r.csv"]


def test_charts_cap_bars_for_a_province(november: MonthlyReport) -> None:
    many = [ClusterFigures(f"c-{i:04d}", "", "ban-cau") for i in range(CHART_MAX_BARS * 3)]
    for i, c in enumerate(many):
        c.availability.online_s = float(i)
        c.availability.unknown_s = float(1000 - i)
    november.clusters = many
    _, _, shown, title = chart_rows(november)
    assert len(shown) == CHART_MAX_BARS
    assert shown[0].id == "c-0000"  # lowest availability first
    assert "thấp nhất" in title
