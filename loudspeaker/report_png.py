"""The monthly report's charts as PNG images, drawn with Pillow.

Pillow is a few MB and draws a bar chart in milliseconds; matplotlib would bring
numpy and ~50 MB for two bar charts. Horizontal bars keep long Vietnamese hamlet
names readable. A font with Vietnamese glyphs is looked up (DejaVu, Noto, Liberation);
without one, Pillow's built-in font is used and some diacritics may not show.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from loudspeaker.exceptions import ReportError
from loudspeaker.report_xlsx import (
    COLOR_AIR,
    COLOR_OFFLINE,
    COLOR_ONLINE,
    COLOR_UNKNOWN,
    atomic_output,
    chart_rows,
)
from loudspeaker.reports import MonthlyReport

logger = logging.getLogger(__name__)

_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/opentype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "DejaVuSans.ttf",
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

WIDTH = 1200
BAR_H = 26
PAD = 16


@lru_cache(maxsize=8)
def _font(size: int) -> Font:
    for name in _FONT_CANDIDATES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    logger.warning("no TrueType font with Vietnamese glyphs found; install fonts-dejavu-core")
    return ImageFont.load_default(size=size)


@dataclass(frozen=True)
class Series:
    """One coloured part of every bar."""

    name: str
    color: str
    values: list[float]


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return (int(hex_color[0:2], 16), int(hex_color[2:4], 16), int(hex_color[4:6], 16))


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at least ``raw`` (axis ticks people can read)."""
    if raw <= 0:
        return 0.25
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def bar_chart(
    title: str,
    labels: list[str],
    series: list[Series],
    *,
    unit: str,
    percent: bool = False,
) -> Image.Image:
    """Horizontal bar chart; several series are stacked. ``percent``: axis is 0-100 %."""
    title_font, font, small = _font(22), _font(15), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max([int(probe.textlength(t, font=font)) for t in labels] + [80]) + 12
    legend_h = 30 if len(series) > 1 else 0
    height = PAD * 2 + 40 + legend_h + max(1, len(labels)) * BAR_H + 50
    img = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD), title, fill="black", font=title_font)
    top = PAD + 40 + legend_h
    x0 = PAD + label_w
    x1 = WIDTH - PAD - 70
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    step = 25.0 if percent else _nice_step(max([*totals, 0.0]) / 4)
    scale_max = step * 4
    if len(series) > 1:
        lx = x0
        for s in series:
            draw.rectangle((lx, PAD + 42, lx + 14, PAD + 56), fill=_rgb(s.color))
            draw.text((lx + 20, PAD + 40), s.name, fill="black", font=small)
            lx += int(draw.textlength(s.name, font=small)) + 50
    for i, label in enumerate(labels):
        y = top + i * BAR_H
        draw.text((PAD, y + 4), label, fill="black", font=font)
        x = float(x0)
        for s in series:
            w = (x1 - x0) * s.values[i] / scale_max
            if w > 0:
                draw.rectangle((x, y + 3, x + w, y + BAR_H - 3), fill=_rgb(s.color))
            x += w
        value = series[0].values[i] if percent else totals[i]
        text = f"{value:.1f} %" if percent else f"{value:.{2 if value < 10 else 1}f}"
        draw.text((x + 6 if not percent else x1 + 6, y + 5), text, fill="black", font=small)
    axis_y = top + max(1, len(labels)) * BAR_H + 4
    draw.line((x0, top - 2, x0, axis_y), fill="black")
    draw.line((x0, axis_y, x1, axis_y), fill="black")
    decimals = 0 if step >= 1 else max(0, -math.floor(math.log10(step)) + 1)
    for k in range(5):
        v = step * k
        x = x0 + (x1 - x0) * k / 4
        draw.line((x, axis_y, x, axis_y + 4), fill="black")
        tick = f"{v:.{decimals}f}" + (" %" if percent else "")
        tw = draw.textlength(tick, font=small)
        draw.text((x - tw / 2, axis_y + 6), tick, fill="black", font=small)
    uw = draw.textlength(unit, font=small)
    draw.text((x1 - uw, axis_y + 24), unit, fill="black", font=small)
    if not labels:
        draw.text((x0 + 10, top + 4), "(không có dữ liệu)", fill="gray", font=font)
    return img


def write_pngs(report: MonthlyReport, directory: Path) -> list[Path]:
    """Write ``phut-phat-song-theo-thon-YYYY-MM.png`` and ``truc-tuyen-theo-cum-YYYY-MM.png``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create folder {directory}: {exc.strerror or exc}") from None
    hamlets, h_title, clusters, c_title = chart_rows(report)
    month = str(report.month)
    air = bar_chart(
        f"{h_title} — tháng {report.month.label}",
        [h.name for h in hamlets],
        [Series("Phút phát sóng", COLOR_AIR, [h.counts.minutes_on_air for h in hamlets])],
        unit="phút",
    )
    avail = bar_chart(
        f"{c_title} — tháng {report.month.label}",
        [f"{c.id} {report.hamlet_name(c.hamlet)}" for c in clusters],
        [
            Series("Trực tuyến", COLOR_ONLINE, [c.availability.online_pct or 0 for c in clusters]),
            Series(
                "Mất kết nối", COLOR_OFFLINE, [c.availability.offline_pct or 0 for c in clusters]
            ),
            Series(
                "Không rõ",
                COLOR_UNKNOWN,
                # Nothing elapsed yet (a future month): the whole bar is unknown.
                [
                    100.0 if c.availability.unknown_pct is None else c.availability.unknown_pct
                    for c in clusters
                ],
            ),
        ],
        unit="% thời gian",
        percent=True,
    )
    out = []
    for name, img in (
        (f"phut-phat-song-theo-thon-{month}.png", air),
        (f"truc-tuyen-theo-cum-{month}.png", avail),
    ):
        path = directory / name
        with atomic_output(path) as fh:
            img.save(fh, format="PNG", optimize=True)
        out.append(path)
    return out
