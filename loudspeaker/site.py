"""The site file: the commune's hamlets and clusters, as data (TOML).

Administrative boundaries are redrawn from time to time; nothing about a particular
commune lives in code. Errors name the field and the line of the file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlmodel import Session, col, delete, select

from firmware_bridge.protocol import ID_PATTERN
from loudspeaker.exceptions import SiteError
from loudspeaker.models import ClusterRecord, HamletRecord, SiteRecord, now

Id = Annotated[str, Field(pattern=ID_PATTERN, description="lowercase letters, digits, '-'")]


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (e.g. Asia/Ho_Chi_Minh)") from None
    return value


def _check_quiet(value: str | None) -> str | None:
    from schedules.exceptions import SpecError
    from schedules.quiet import QuietHours

    if value is None:
        return None
    try:
        return str(QuietHours.parse(value))
    except SpecError as exc:
        raise ValueError(str(exc)) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteInfo(_Strict):
    """The ``[site]`` table."""

    id: Id
    name: str = Field(min_length=1, max_length=200)
    timezone: Annotated[str, AfterValidator(_check_zone)] = "Asia/Ho_Chi_Minh"
    province: str = ""
    district: str = ""
    emergency_volume: int = Field(
        default=100, ge=0, le=100, description="Volume (%) clusters play emergencies at"
    )

    # Normal and priority bulletins never play inside these hours ("21:00-05:00").
    quiet_hours: Annotated[str | None, AfterValidator(_check_quiet)] = None


class HamletSpec(_Strict):
    """One ``[[hamlets]]`` entry."""

    id: Id
    name: str = Field(min_length=1, max_length=200)


class Location(_Strict):
    """Where the pole stands."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    description: str = ""


class ClusterSpec(_Strict):
    """One ``[[clusters]]`` entry."""

    id: Id
    hamlet: Id
    name: str = ""
    transport: Literal["mqtt", "serial"] = "mqtt"
    location: Location | None = None
    notes: str = ""
    # transport = "serial": which gateway and bus address reach it
    gateway: Id | None = None
    port: str | None = None
    address: int | None = Field(default=None, ge=1, le=247)


class HealthConfig(_Strict):
    """The optional ``[health]`` table: alarm thresholds and history sizes."""

    heartbeat_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="expected heartbeat interval of a cluster not yet heard",
    )
    missed_heartbeats: int = Field(
        default=3, ge=2, le=100, description="missed beats before alarming"
    )
    offline_grace_s: float = Field(
        default=0.0, ge=0, le=3600, description="offline this long: alarm"
    )
    temp_max_c: float = Field(
        default=75.0, gt=0, le=150, description="amplifier overheating at/above"
    )
    temp_hysteresis_c: float = Field(default=5.0, ge=0, le=50)
    voltage_min_v: float = Field(default=11.5, gt=0, le=400, description="under-voltage at/below")
    voltage_hysteresis_v: float = Field(default=0.3, ge=0, le=50)
    clock_drift_max_s: float = Field(default=5.0, gt=0, le=86400, description="clock drift above")
    storage_min_mb: float = Field(default=200.0, ge=0, description="free storage below")
    playback_failures_max: int = Field(default=3, ge=1, le=100, description="consecutive failures")
    flap_count: int = Field(
        default=3, ge=2, le=1000, description="disconnects within flap_window_s"
    )
    flap_window_s: float = Field(default=300.0, gt=0, le=86400)
    tone_min_a: float = Field(
        default=0.15, gt=0, le=50, description="test tone must draw this much over idle"
    )
    current_max_a: float = Field(default=4.0, gt=0, le=100, description="above: speaker line short")
    control_timeout_s: float = Field(default=20.0, gt=0, le=600, description="answer within")
    reboot_timeout_s: float = Field(default=120.0, gt=0, le=3600, description="back online within")
    history_fine_s: int = Field(default=60, ge=1, le=3600, description="fine history bucket")
    history_fine_keep: int = Field(default=1440, ge=10, le=100_000, description="fine buckets kept")
    history_coarse_s: int = Field(default=900, ge=2, le=86400, description="coarse history bucket")
    history_coarse_keep: int = Field(
        default=2880, ge=10, le=100_000, description="coarse buckets kept"
    )


class SiteFile(_Strict):
    """A whole site file."""

    site: SiteInfo
    hamlets: list[HamletSpec] = Field(min_length=1)
    clusters: list[ClusterSpec] = Field(min_length=1)
    health: HealthConfig = HealthConfig()

    def hamlet(self, ref: str) -> HamletSpec | None:
        """Find a hamlet by id or by name (case-insensitive)."""
        for h in self.hamlets:
            if ref in (h.id,) or ref.casefold() == h.name.casefold():
                return h
        return None


class _Locator:
    """Finds the line of a field in the TOML text (tomllib does not keep positions)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers: dict[str, list[int]] = {}
        for n, line in enumerate(self.lines, start=1):
            m = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?", line)
            if m:
                self.headers.setdefault(m.group(1), []).append(n)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        if not loc:
            return None
        table = str(loc[0])
        starts = self.headers.get(table)
        if not starts:
            return None
        index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        if index >= len(starts):
            return starts[-1]
        start = starts[index]
        key = next((str(p) for p in loc[1:] if not isinstance(p, int)), None)
        if key is None:
            return start
        end = len(self.lines)
        for other in (n for ns in self.headers.values() for n in ns):
            if start < other <= end:
                end = other - 1
        for n in range(start + 1, end + 1):
            if re.match(rf"^\s*{re.escape(key)}\s*=", self.lines[n - 1]):
                return n
        return start


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1] = f"{parts[-1]}[{p}]" if parts else f"[{p}]"
        else:
            parts.append(str(p))
    return ".".join(parts)


def parse_site(text: str, source: str = "site file") -> SiteFile:
    """Parse and validate a site file's text; raise ``SiteError`` naming field and line."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{source}: not valid TOML: {exc}") from None
    locator = _Locator(text)
    try:
        site = SiteFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = locator.line_of(loc)
        at = f" (line {line})" if line else ""
        raise SiteError(f"{source}: {_where(loc)}{at}: {err['msg']}") from None

    def fail(loc: tuple[Any, ...], msg: str) -> SiteError:
        line = locator.line_of(loc)
        at = f" (line {line})" if line else ""
        return SiteError(f"{source}: {_where(loc)}{at}: {msg}")

    seen_h: set[str] = set()
    for i, h in enumerate(site.hamlets):
        if h.id in seen_h:
            raise fail(("hamlets", i, "id"), f"duplicate hamlet id {h.id!r}")
        seen_h.add(h.id)
    seen_c: set[str] = set()
    for i, c in enumerate(site.clusters):
        if c.id in seen_c:
            raise fail(("clusters", i, "id"), f"duplicate cluster id {c.id!r}")
        seen_c.add(c.id)
        if c.hamlet not in seen_h:
            known = ", ".join(sorted(seen_h))
            raise fail(("clusters", i, "hamlet"), f"unknown hamlet {c.hamlet!r} (known: {known})")
        if c.transport == "serial" and (c.gateway is None or c.address is None):
            raise fail(
                ("clusters", i, "transport"),
                "a serial cluster needs 'gateway' and 'address' (1-247)",
            )
    if site.health.history_coarse_s <= site.health.history_fine_s:
        raise fail(("health", "history_coarse_s"), "must be longer than history_fine_s")
    return site


def load_site_file(path: Path) -> SiteFile:
    """Read and validate a site file from disk."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError(f"cannot read site file {path}: {exc}") from None
    return parse_site(text, source=str(path))


def store_site(session: Session, site: SiteFile) -> None:
    """Replace the stored site with ``site`` (history of broadcasts is kept)."""
    existing = session.exec(select(SiteRecord)).all()
    for rec in existing:
        if rec.id != site.site.id:
            raise SiteError(
                f"this database already holds site {rec.id!r}; use another --data-dir "
                f"for {site.site.id!r} (one controller per commune)"
            )
    session.exec(delete(HamletRecord).where(col(HamletRecord.site_id) == site.site.id))
    session.exec(delete(ClusterRecord).where(col(ClusterRecord.site_id) == site.site.id))
    record = session.get(SiteRecord, site.site.id) or SiteRecord(
        id=site.site.id, name=site.site.name, loaded_at=now()
    )
    record.name = site.site.name
    record.timezone = site.site.timezone
    record.source = site.model_dump(mode="json")
    record.loaded_at = now()
    session.add(record)
    for h in site.hamlets:
        session.add(HamletRecord(id=h.id, site_id=site.site.id, name=h.name))
    for c in site.clusters:
        extra = {
            k: v
            for k, v in (("gateway", c.gateway), ("port", c.port), ("address", c.address))
            if v is not None
        }
        session.add(
            ClusterRecord(
                id=c.id,
                site_id=site.site.id,
                hamlet_id=c.hamlet,
                name=c.name,
                transport=c.transport,
                lat=c.location.lat if c.location else None,
                lon=c.location.lon if c.location else None,
                location=c.location.description if c.location else "",
                notes=c.notes,
                extra=extra,
            )
        )
    session.commit()


def current_site(session: Session) -> SiteFile:
    """The stored site; ``SiteError`` telling the user to load one if there is none."""
    rec = session.exec(select(SiteRecord)).first()
    if rec is None:
        raise SiteError("no site loaded: run `loudspeaker site load sites/luc-binh.toml` first")
    return SiteFile.model_validate(rec.source)
