"""The monthly report as a workbook (XLSX, native charts, A4 print setup) or a CSV table.

Headings are Vietnamese: the report goes to the People's Committee and upward. The
same column list feeds the workbook and the CSV, so the two never disagree.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.page import PageMargins
from openpyxl.worksheet.properties import PageSetupProperties
from openpyxl.worksheet.worksheet import Worksheet

from loudspeaker.exceptions import ReportError
from loudspeaker.reports import (
    Availability,
    ClusterFigures,
    Counts,
    HamletFigures,
    MonthlyReport,
)

logger = logging.getLogger(__name__)

OUTCOME_VI = {
    "played": "đã phát",
    "failed": "lỗi",
    "unreachable": "mất liên lạc",
    "missed": "bỏ lỡ",
    "pending": "chưa xong",
}
PRIORITY_VI = {"normal": "thường", "priority": "ưu tiên", "emergency": "khẩn cấp"}
# More bars than this make an unreadable chart (a province has ~1,000 clusters): the
# chart then shows the ones that need attention, and its title says so.
CHART_MAX_BARS = 40

COLOR_ONLINE = "2E7D32"
COLOR_OFFLINE = "C62828"
COLOR_UNKNOWN = "9E9E9E"
COLOR_AIR = "1565C0"

Figures = HamletFigures | ClusterFigures


@dataclass(frozen=True)
class Metric:
    """One numeric column of the hamlet and cluster tables."""

    heading: str
    value: Callable[[Counts, Availability, int | None], float | int | None]
    fmt: str = "0"
    width: float = 10.0
    percent: bool = False


def _pct(v: float | None) -> float | None:
    return None if v is None else v / 100.0


METRICS: tuple[Metric, ...] = (
    Metric("Phút phát sóng", lambda c, a, n: round(c.minutes_on_air, 2), "0.0", 10),
    Metric("Cụm·phút", lambda c, a, n: round(c.cluster_minutes, 2), "0.0", 9),
    Metric("Bản tin thường", lambda c, a, n: c.bulletins.get("normal", 0), width=9),
    Metric("Bản tin ưu tiên", lambda c, a, n: c.bulletins.get("priority", 0), width=9),
    Metric("Bản tin khẩn cấp", lambda c, a, n: c.bulletins.get("emergency", 0), width=9),
    Metric("Lượt phát (tin × cụm)", lambda c, a, n: c.deliveries, width=10),
    Metric("Đã phát", lambda c, a, n: c.outcomes["played"], width=8),
    Metric("Lỗi", lambda c, a, n: c.outcomes["failed"], width=7),
    Metric("Mất liên lạc", lambda c, a, n: c.outcomes["unreachable"], width=8),
    Metric("Bỏ lỡ", lambda c, a, n: c.outcomes["missed"], width=7),
    Metric("Bị ngắt giữa chừng", lambda c, a, n: c.interrupted, width=9),
    Metric("Chưa xong", lambda c, a, n: c.outcomes["pending"], width=8),
    Metric("Trực tuyến", lambda c, a, n: _pct(a.online_pct), "0.0%", 9, True),
    Metric("Mất kết nối", lambda c, a, n: _pct(a.offline_pct), "0.0%", 9, True),
    Metric("Không rõ", lambda c, a, n: _pct(a.unknown_pct), "0.0%", 9, True),
    Metric("Cảnh báo", lambda c, a, n: n, width=8),
)

_THIN = Side(style="thin", color="808080")
_BORDER = Border(left=_THIN, right=_THIN, top=_THIN, bottom=_THIN)
_HEAD_FILL = PatternFill("solid", fgColor="D9E2F3")
_TOTAL_FILL = PatternFill("solid", fgColor="F2F2F2")
_WRAP = Alignment(wrap_text=True, vertical="center", horizontal="center")


# -- output paths ----------------------------------------------------------------------------


def check_output(path: Path, suffixes: tuple[str, ...]) -> Path:
    """Refuse an output path we cannot write, before any work is done."""
    if path.suffix.lower() not in suffixes:
        raise ReportError(f"output {path} must end in {' or '.join(suffixes)}")
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise ReportError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ReportError(f"cannot write {path}: folder {parent} is not writable")
    if path.exists() and (path.is_dir() or not os.access(path, os.W_OK)):
        raise ReportError(f"cannot write {path}: it exists and is not a writable file")
    return path


@contextmanager
def atomic_output(path: Path, mode: str = "wb", **kw: Any) -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and move it into place when done.

    A half-written report is never left under the final name (a reader opening it
    while we write, or a crash, must not see a truncated file).
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- shared text -----------------------------------------------------------------------------


def period_text(report: MonthlyReport) -> str:
    """``01/11/2026 - 30/11/2026`` in the site's zone."""
    zone = ZoneInfo(report.zone)
    first = report.start.astimezone(zone)
    last = (report.end - timedelta(seconds=1)).astimezone(zone)
    return f"{first:%d/%m/%Y} – {last:%d/%m/%Y}"


def generated_text(report: MonthlyReport) -> str:
    """When the report was made, in the site's zone."""
    return report.generated_at.astimezone(ZoneInfo(report.zone)).strftime("%H:%M %d/%m/%Y")


def reasons_of(report: MonthlyReport, cluster: str | None = None) -> str:
    """``lỗi: stopped by operator ×1; ...`` for one cluster (or all)."""
    parts = [
        f"{OUTCOME_VI.get(r.outcome, r.outcome)}: {r.reason} ×{r.count}"
        for r in report.reasons
        if cluster is None or r.cluster == cluster
    ]
    return "; ".join(parts)


def notes(report: MonthlyReport) -> list[str]:
    """How every figure is counted (printed on the notes sheet)."""
    alarm_note = (
        "Cảnh báo: số cảnh báo sự cố ghi nhận trong tháng (bảng alarm)."
        if report.alarms_recorded
        else "Cảnh báo: hệ thống chưa ghi nhận cảnh báo sự cố (chức năng giám sát chưa "
        "có), nên cột này để trống, không phải bằng 0."
    )
    return [
        f"Kỳ báo cáo theo giờ {report.zone}: {period_text(report)}. Bản tin tính vào "
        "tháng của giờ phát theo lịch (nếu không có lịch thì giờ tạo bản tin).",
        "Phút phát sóng của một cụm loa = tổng (thời lượng × số lần lặp) của các lượt đã "
        "phát xong; không tính khoảng nghỉ giữa các lần lặp.",
        "Phút phát sóng của thôn/xã = thời lượng các bản tin khác nhau đã phát ở ít nhất "
        "một cụm của thôn/xã (điều người dân nghe được). Cụm·phút = cộng theo từng cụm.",
        "Lượt bị ngắt giữa chừng (đã bắt đầu phát rồi bị dừng, lỗi hoặc mất liên lạc) "
        "không được tính phút phát sóng, vì không biết đã phát được bao lâu.",
        "Trực tuyến / mất kết nối / không rõ: phần trăm thời gian đã qua của tháng. "
        "'Không rõ' là thời gian chưa có bản ghi trạng thái của cụm (ví dụ trước khi cụm "
        "kết nối lần đầu); không được tính là trực tuyến hay mất kết nối.",
        "Bỏ lỡ: bản tin theo lịch không được phát đúng giờ. Chưa xong: lượt phát chưa có "
        "kết quả cuối cùng khi lập báo cáo.",
        alarm_note,
    ]


# -- workbook --------------------------------------------------------------------------------


def _print_setup(ws: Worksheet, *, landscape: bool, title_rows: str | None) -> None:
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.orientation = "landscape" if landscape else "portrait"
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0  # as many pages tall as needed
    ws.sheet_properties.pageSetUpPr = PageSetupProperties(fitToPage=True)
    ws.page_margins = PageMargins(left=0.4, right=0.4, top=0.6, bottom=0.6, header=0.3, footer=0.3)
    ws.print_options.horizontalCentered = True
    if title_rows:
        ws.print_title_rows = title_rows
    ws.oddFooter.center.text = "Trang &P / &N"
    ws.oddFooter.right.text = "&A"


def _heading(ws: Worksheet, row: int, text: str, width: int, size: int = 12) -> None:
    ws.cell(row=row, column=1, value=text).font = Font(bold=True, size=size)
    ws.merge_cells(start_row=row, start_column=1, end_row=row, end_column=width)
    ws.cell(row=row, column=1).alignment = Alignment(horizontal="center", wrap_text=True)


def _header_row(ws: Worksheet, row: int, headings: list[str]) -> None:
    for i, h in enumerate(headings, start=1):
        cell = ws.cell(row=row, column=i, value=h)
        cell.font = Font(bold=True)
        cell.fill = _HEAD_FILL
        cell.alignment = _WRAP
        cell.border = _BORDER
    ws.row_dimensions[row].height = 45


def _data_row(
    ws: Worksheet,
    row: int,
    labels: list[object],
    counts: Counts,
    avail: Availability,
    alarms: int | None,
    *,
    metrics: tuple[Metric, ...] = METRICS,
    total: bool = False,
) -> None:
    col = 1
    for text in labels:
        cell = ws.cell(row=row, column=col, value=text)
        cell.border = _BORDER
        if total:
            cell.font = Font(bold=True)
            cell.fill = _TOTAL_FILL
        col += 1
    for m in metrics:
        cell = ws.cell(row=row, column=col, value=m.value(counts, avail, alarms))
        cell.number_format = m.fmt
        cell.border = _BORDER
        if total:
            cell.font = Font(bold=True)
            cell.fill = _TOTAL_FILL
        col += 1


def _widths(ws: Worksheet, widths: list[float]) -> None:
    for i, w in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(i)].width = w


def _summary_sheet(wb: Workbook, r: MonthlyReport) -> None:
    ws = wb.active
    assert ws is not None
    ws.title = "Tổng hợp"
    ncols = 2 + len(METRICS)
    site = r.site_name or r.site_id or "(chưa nạp sơ đồ xã)"
    _heading(ws, 1, "CỘNG HÒA XÃ HỘI CHỦ NGHĨA VIỆT NAM — Độc lập - Tự do - Hạnh phúc", ncols, 11)
    _heading(ws, 2, f"UBND {site} — Đài truyền thanh", ncols, 11)
    _heading(ws, 3, f"BÁO CÁO HOẠT ĐỘNG PHÁT THANH THÁNG {r.month.label}", ncols, 14)
    ws.cell(
        row=4,
        column=1,
        value=f"Kỳ báo cáo: {period_text(r)} (giờ {r.zone}). Lập lúc {generated_text(r)}.",
    )
    t = r.total
    bulletins = ", ".join(
        f"{PRIORITY_VI[p]} {n}" for p, n in t.bulletins.items() if p in PRIORITY_VI
    )
    alarms = str(r.alarms) if r.alarms_recorded else "chưa ghi nhận (xem Ghi chú)"
    online = _pct(r.availability.online_pct)
    unknown = _pct(r.availability.unknown_pct)
    summary: list[tuple[str, object, str]] = [
        ("Tổng số bản tin", t.total_bulletins, "0"),
        ("  trong đó", bulletins, "@"),
        ("Số phút phát sóng (toàn xã)", round(t.minutes_on_air, 2), "0.0"),
        ("Cụm·phút phát sóng", round(t.cluster_minutes, 2), "0.0"),
        ("Lượt phát (bản tin × cụm loa)", t.deliveries, "0"),
        ("Đã phát / lỗi / mất liên lạc / bỏ lỡ / chưa xong", _outcomes_text(t), "@"),
        ("Bị ngắt giữa chừng", t.interrupted, "0"),
        ("Thời gian trực tuyến bình quân các cụm", online, "0.0%"),
        ("Thời gian không rõ trạng thái", unknown, "0.0%"),
        ("Cảnh báo sự cố", alarms, "@"),
    ]
    row = 6
    for label, value, fmt in summary:
        ws.cell(row=row, column=1, value=label).font = Font(bold=True)
        ws.merge_cells(start_row=row, start_column=1, end_row=row, end_column=2)
        cell = ws.cell(row=row, column=3, value=value)
        cell.number_format = fmt
        cell.alignment = Alignment(horizontal="left")
        row += 1
    if r.empty:
        ws.cell(row=row, column=1, value="Không có bản tin nào trong tháng này.").font = Font(
            italic=True
        )
    row += 1
    _heading(ws, row, "Tổng hợp theo thôn", ncols, 12)
    header = row + 1
    _header_row(ws, header, ["Thôn", "Số cụm loa", *[m.heading for m in METRICS]])
    row = header + 1
    for h in r.hamlets:
        alarms_h = h.alarms if r.alarms_recorded else None
        _data_row(ws, row, [h.name, len(h.clusters)], h.counts, h.availability, alarms_h)
        row += 1
    _data_row(
        ws,
        row,
        ["Cộng toàn xã", len(r.clusters)],
        t,
        r.availability,
        r.alarms if r.alarms_recorded else None,
        total=True,
    )
    _widths(ws, [24, 8, *[m.width for m in METRICS]])
    ws.freeze_panes = ws.cell(row=header + 1, column=2)
    _print_setup(ws, landscape=True, title_rows=f"{header}:{header}")


def _outcomes_text(c: Counts) -> str:
    o = c.outcomes
    return f"{o['played']} / {o['failed']} / {o['unreachable']} / {o['missed']} / {o['pending']}"


def _cluster_sheet(wb: Workbook, r: MonthlyReport) -> None:
    ws = wb.create_sheet("Theo cụm loa")
    metrics = tuple(m for m in METRICS if m.heading != "Cụm·phút")  # same as minutes here
    ncols = 3 + len(metrics)
    _heading(ws, 1, f"TỔNG HỢP THEO CỤM LOA — THÁNG {r.month.label}", ncols, 13)
    ws.cell(row=2, column=1, value=f"Kỳ báo cáo: {period_text(r)} (giờ {r.zone}).")
    _header_row(ws, 3, ["Thôn", "Mã cụm", "Tên cụm loa", *[m.heading for m in metrics]])
    row = 4
    for c in r.clusters:
        _data_row(
            ws,
            row,
            [r.hamlet_name(c.hamlet), c.id, c.name],
            c.counts,
            c.availability,
            c.alarms if r.alarms_recorded else None,
            metrics=metrics,
        )
        row += 1
    _widths(ws, [20, 9, 28, *[m.width for m in metrics]])
    ws.freeze_panes = "D4"
    _print_setup(ws, landscape=True, title_rows="3:3")


def _reasons_sheet(wb: Workbook, r: MonthlyReport) -> None:
    ws = wb.create_sheet("Lỗi và bỏ lỡ")
    _heading(ws, 1, f"LƯỢT PHÁT LỖI, MẤT LIÊN LẠC, BỎ LỠ — THÁNG {r.month.label}", 5, 13)
    _header_row(ws, 2, ["Thôn", "Cụm loa", "Kết quả", "Lý do", "Số lượt"])
    row = 3
    for line in r.reasons:
        values = [
            r.hamlet_name(line.hamlet),
            line.cluster,
            OUTCOME_VI.get(line.outcome, line.outcome),
            line.reason,
            line.count,
        ]
        for i, v in enumerate(values, start=1):
            cell = ws.cell(row=row, column=i, value=v)
            cell.border = _BORDER
            if i == 4:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
        row += 1
    if not r.reasons:
        ws.cell(row=row, column=1, value="Không có lượt phát lỗi, mất liên lạc hay bỏ lỡ.")
    _widths(ws, [20, 10, 14, 60, 9])
    _print_setup(ws, landscape=False, title_rows="2:2")


def chart_rows(r: MonthlyReport) -> tuple[list[HamletFigures], str, list[ClusterFigures], str]:
    """The bars each chart shows, and its title (capped at CHART_MAX_BARS)."""
    hamlets = r.hamlets
    h_title = "Số phút phát sóng theo thôn"
    if len(hamlets) > CHART_MAX_BARS:
        hamlets = sorted(hamlets, key=lambda h: (h.counts.air_s, h.id))[:CHART_MAX_BARS]
        h_title += f" ({CHART_MAX_BARS} thôn ít nhất)"
    clusters = r.clusters
    c_title = "Tỉ lệ thời gian trực tuyến theo cụm loa"
    if len(clusters) > CHART_MAX_BARS:
        clusters = sorted(clusters, key=lambda c: (c.availability.online_pct or 0.0, c.id))[
            :CHART_MAX_BARS
        ]
        c_title += f" ({CHART_MAX_BARS} cụm thấp nhất)"
    return hamlets, h_title, clusters, c_title


def _chart_sheets(wb: Workbook, r: MonthlyReport) -> None:
    charts = wb.create_sheet("Biểu đồ")
    data = wb.create_sheet("Số liệu biểu đồ")
    hamlets, h_title, clusters, c_title = chart_rows(r)
    _heading(charts, 1, f"BIỂU ĐỒ — THÁNG {r.month.label}", 10, 13)
    _print_setup(charts, landscape=False, title_rows=None)
    if not hamlets and not clusters:
        charts.cell(row=3, column=1, value="Chưa có thôn hay cụm loa nào (chưa nạp sơ đồ xã).")
        return
    data.append(["Thôn", "Phút phát sóng"])
    for h in hamlets:
        data.append([h.name, round(h.counts.minutes_on_air, 2)])
    top = len(hamlets) + 3
    data.cell(row=top, column=1, value="Cụm loa")
    for i, label in enumerate(("Trực tuyến", "Mất kết nối", "Không rõ"), start=2):
        data.cell(row=top, column=i, value=label)
    for n, c in enumerate(clusters, start=top + 1):
        a = c.availability
        data.cell(row=n, column=1, value=f"{c.id} {r.hamlet_name(c.hamlet)}")
        for i, v in enumerate((a.online_pct, a.offline_pct, a.unknown_pct), start=2):
            cell = data.cell(row=n, column=i, value=None if v is None else round(v / 100, 4))
            cell.number_format = "0.0%"
    _widths(data, [30, 14, 14, 14])

    if hamlets:
        bar = BarChart()
        bar.type = "bar"
        bar.title = h_title
        bar.y_axis.title = "phút"
        bar.add_data(
            Reference(data, min_col=2, min_row=1, max_row=len(hamlets) + 1), titles_from_data=True
        )
        bar.set_categories(Reference(data, min_col=1, min_row=2, max_row=len(hamlets) + 1))
        bar.series[0].graphicalProperties.solidFill = COLOR_AIR
        bar.legend = None
        _axes_visible(bar)
        bar.height = max(7.0, 0.6 * len(hamlets) + 3)
        bar.width = 17.0
        charts.add_chart(bar, "A3")
    if clusters:
        av = BarChart()
        av.type = "bar"
        av.grouping = "percentStacked"
        av.overlap = 100
        av.title = c_title
        av.add_data(
            Reference(data, min_col=2, max_col=4, min_row=top, max_row=top + len(clusters)),
            titles_from_data=True,
        )
        av.set_categories(Reference(data, min_col=1, min_row=top + 1, max_row=top + len(clusters)))
        for s, color in zip(av.series, (COLOR_ONLINE, COLOR_OFFLINE, COLOR_UNKNOWN), strict=True):
            s.graphicalProperties.solidFill = color
            s.graphicalProperties.line.solidFill = color
        av.y_axis.number_format = "0%"
        av.legend.position = "b"
        _axes_visible(av)
        av.height = max(8.0, 0.55 * len(clusters) + 4)
        av.width = 17.0
        rows_used = int(bar.height / 0.5) + 6 if hamlets else 3
        charts.add_chart(av, f"A{rows_used}")


def _axes_visible(chart: BarChart) -> None:
    # openpyxl 3.1 writes <c:delete val="1"/> for axes by default: Excel then hides them.
    chart.x_axis.delete = False
    chart.y_axis.delete = False


def _notes_sheet(wb: Workbook, r: MonthlyReport) -> None:
    ws = wb.create_sheet("Ghi chú")
    _heading(ws, 1, "CÁCH TÍNH CÁC SỐ LIỆU", 1, 13)
    for i, text in enumerate(notes(r), start=3):
        cell = ws.cell(row=i, column=1, value=f"{i - 2}. {text}")
        cell.alignment = Alignment(wrap_text=True, vertical="top")
    ws.column_dimensions["A"].width = 110
    _print_setup(ws, landscape=False, title_rows=None)


def build_workbook(report: MonthlyReport) -> Workbook:
    """The report as an openpyxl workbook (not yet saved)."""
    wb = Workbook()
    _summary_sheet(wb, report)
    _cluster_sheet(wb, report)
    _reasons_sheet(wb, report)
    _chart_sheets(wb, report)
    _notes_sheet(wb, report)
    wb.properties.title = f"Báo cáo phát thanh tháng {report.month.label}"
    wb.properties.creator = "loudspeaker"
    return wb


def write_xlsx(report: MonthlyReport, path: Path) -> Path:
    """Write the workbook to ``path`` (atomically)."""
    check_output(path, (".xlsx",))
    wb = build_workbook(report)
    with atomic_output(path) as fh:
        wb.save(fh)
    return path


# -- CSV -------------------------------------------------------------------------------------

CSV_HEAD = ["Tháng", "Cấp", "Mã", "Tên", "Thôn", "Số cụm loa"]


def write_csv(report: MonthlyReport, path: Path) -> Path:
    """One row for the commune, one per hamlet, one per cluster; UTF-8 with BOM for Excel."""
    check_output(path, (".csv",))
    month = report.month.label
    with atomic_output(path, "w", encoding="utf-8-sig", newline="") as fh:
        w = csv.writer(fh)
        heads = [m.heading + (" (%)" if m.percent else "") for m in METRICS]
        w.writerow([*CSV_HEAD, *heads, "Lý do lỗi / mất liên lạc / bỏ lỡ"])

        def row(labels: list[str], c: Counts, a: Availability, n: int | None, why: str) -> None:
            values = [m.value(c, a, n) for m in METRICS]
            cells = [
                "" if v is None else _csv_number(v, m) for v, m in zip(values, METRICS, strict=True)
            ]
            w.writerow([month, *labels, *cells, why])

        alarms = report.alarms if report.alarms_recorded else None
        site = report.site_name or report.site_id
        row(
            ["xã", report.site_id, site, "", str(len(report.clusters))],
            report.total,
            report.availability,
            alarms,
            reasons_of(report),
        )
        for h in report.hamlets:
            n = h.alarms if report.alarms_recorded else None
            row(
                ["thôn", h.id, h.name, h.name, str(len(h.clusters))],
                h.counts,
                h.availability,
                n,
                "",
            )
        for c in report.clusters:
            n = c.alarms if report.alarms_recorded else None
            why = reasons_of(report, c.id)
            row(
                ["cụm loa", c.id, c.name, report.hamlet_name(c.hamlet), "1"],
                c.counts,
                c.availability,
                n,
                why,
            )
    return path


def _csv_number(v: float | int, m: Metric) -> str:
    if m.percent:
        return f"{100 * v:.1f}"
    if m.fmt == "0.0":
        return f"{v:.2f}"
    return str(v)
