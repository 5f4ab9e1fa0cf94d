"""``loudspeaker clusters``: what the controller knows of each cluster; ``clusters show ID``."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from sqlmodel import Session, col, select

from loudspeaker.auth import Permission, require
from loudspeaker.commands.common import console, handle_errors, local_time, print_json, state_of
from loudspeaker.db import as_utc
from loudspeaker.exceptions import LoudspeakerError, NotFoundError
from loudspeaker.models import (
    AlarmRecord,
    ClusterAvailability,
    ClusterHealth,
    ClusterRecord,
    ClusterStatus,
    ControlRequest,
    HealthSample,
)


def _iso(value: Any) -> str | None:
    t = as_utc(value)
    return t.isoformat() if t else None


def _row(
    c: ClusterRecord, st: ClusterStatus | None, h: ClusterHealth | None, alarms: list[str]
) -> dict[str, Any]:
    return {
        "cluster": c.id,
        "hamlet": c.hamlet_id,
        "transport": c.transport,
        "online": st.online if st else None,
        "since": _iso(st.since) if st else None,
        "last_seen": _iso(st.last_seen) if st else None,
        "last_heartbeat": _iso(h.received_at) if h else None,
        "alarms": alarms,
        "volume": h.volume if h else None,
        "amp_power": h.amp_power if h else None,
        "temperature_c": h.amp_temp_c if h else None,
        "supply_v": h.supply_v if h else None,
        "amp_current_a": h.amp_current_a if h else None,
        "line": h.line if h else None,
        "rssi_dbm": h.rssi_dbm if h else None,
        "free_storage_mb": h.free_storage_mb if h else None,
        "clock_offset_s": h.clock_skew_s if h else None,
        "playing": (h.playing or None) if h else None,
        "last_error": (h.last_error or None) if h else None,
        "agent": (h.agent if h else "") or (st.agent if st else ""),
        "firmware": h.firmware if h else "",
        "uptime_s": h.uptime_s if h else None,
    }


def _rows(s: Session) -> list[dict[str, Any]]:
    cl = s.exec(select(ClusterRecord).order_by(ClusterRecord.id)).all()
    sts = {x.cluster_id: x for x in s.exec(select(ClusterStatus)).all()}
    hs = {x.cluster_id: x for x in s.exec(select(ClusterHealth)).all()}
    active: dict[str, list[str]] = {}
    for a in s.exec(select(AlarmRecord).where(col(AlarmRecord.cleared_at).is_(None))).all():
        active.setdefault(a.cluster_id, []).append(a.kind)
    return [_row(c, sts.get(c.id), hs.get(c.id), sorted(active.get(c.id, []))) for c in cl]


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def _list(rows: list[dict[str, Any]], zone: ZoneInfo) -> None:
    table = Table(
        "cluster", "hamlet", "online", "last seen", "alarms", "vol", "temp", "supply", "line",
        "version",
    )  # fmt: skip
    for r in rows:
        online = "-" if r["online"] is None else ("yes" if r["online"] else "[red]no[/]")
        seen = as_utc_str(r["last_heartbeat"] or r["last_seen"], zone)
        line = r["line"] or "-"
        if line in ("open", "short"):
            line = f"[red]{line}[/]"
        vol = "-" if r["volume"] is None else f"{r['volume']} %"
        if r["amp_power"] is False:
            vol += " [yellow](off)[/]"
        version = r["agent"] + (f" / {r['firmware']}" if r["firmware"] else "")
        table.add_row(
            r["cluster"],
            r["hamlet"],
            online,
            seen,
            "[red]" + ", ".join(r["alarms"]) + "[/]" if r["alarms"] else "",
            vol,
            _fmt(r["temperature_c"], "°C"),
            _fmt(r["supply_v"], "V", 2),
            line,
            version,
        )
    console.print(table)


def as_utc_str(iso: str | None, zone: ZoneInfo) -> str:
    """An ISO time shown in the site's zone, or '-'."""
    from datetime import datetime

    return local_time(datetime.fromisoformat(iso) if iso else None, zone)


def cluster_detail(s: Session, cluster_id: str, history: int = 60) -> dict[str, Any]:
    """Everything about one cluster: state, alarms, availability and health history."""
    c = s.get(ClusterRecord, cluster_id)
    if c is None:
        raise NotFoundError(f"no cluster {cluster_id!r} (see `loudspeaker clusters`)")
    row = _row(
        c,
        s.get(ClusterStatus, cluster_id),
        s.get(ClusterHealth, cluster_id),
        [],
    )
    alarms = s.exec(
        select(AlarmRecord)
        .where(AlarmRecord.cluster_id == cluster_id)
        .order_by(col(AlarmRecord.raised_at).desc())
        .limit(50)
    ).all()
    row["alarms"] = sorted(a.kind for a in alarms if a.cleared_at is None)
    intervals = s.exec(
        select(ClusterAvailability)
        .where(ClusterAvailability.cluster_id == cluster_id)
        .order_by(col(ClusterAvailability.started_at).desc())
        .limit(50)
    ).all()
    samples = s.exec(
        select(HealthSample)
        .where(HealthSample.cluster_id == cluster_id)
        .order_by(col(HealthSample.resolution_s), col(HealthSample.bucket_start).desc())
    ).all()
    controls = s.exec(
        select(ControlRequest)
        .where(ControlRequest.cluster_id == cluster_id)
        .order_by(col(ControlRequest.created_at).desc())
        .limit(20)
    ).all()
    by_res: dict[int, list[dict[str, Any]]] = {}
    for smp in samples:
        bucket = by_res.setdefault(smp.resolution_s, [])
        if len(bucket) < history:
            bucket.append(
                {
                    "start": _iso(smp.bucket_start),
                    "n": smp.n,
                    "temp_c": [smp.temp_min, smp.temp_avg, smp.temp_max],
                    "supply_v": [smp.supply_min, smp.supply_avg, smp.supply_max],
                    "current_max_a": smp.current_max,
                    "rssi_avg_dbm": smp.rssi_avg,
                    "clock_offset_max_s": smp.skew_max,
                    "line": smp.line,
                    "play_failures_max": smp.play_failures_max,
                }
            )
    from loudspeaker.commands.health import alarm_json

    return {
        **row,
        "name": c.name,
        "location": c.location,
        "notes": c.notes,
        "alarm_history": [alarm_json(a) for a in alarms],
        "availability": [
            {
                "online": i.online,
                "from": _iso(i.started_at),
                "to": _iso(i.ended_at),
                "reason": i.reason or None,
            }
            for i in intervals
        ],
        "history": {str(k): v for k, v in sorted(by_res.items())},
        "control": [
            {
                "action": r.action,
                "args": r.args,
                "state": r.state,
                "reason": r.reason or None,
                "at": _iso(r.created_at),
            }
            for r in controls
        ],
    }


def _show(d: dict[str, Any], zone: ZoneInfo) -> None:
    fmt = "%d/%m %H:%M:%S"
    online = "-" if d["online"] is None else ("online" if d["online"] else "[red]offline[/]")
    console.print(f"[bold]{d['cluster']}[/] {d['name']} — hamlet {d['hamlet']}, {online}")
    facts = [
        ("last heartbeat", as_utc_str(d["last_heartbeat"], zone)),
        ("version", d["agent"] + (f" / firmware {d['firmware']}" if d["firmware"] else "")),
        ("uptime", _fmt(d["uptime_s"], "s", 0)),
        ("amplifier", "-" if d["amp_power"] is None else ("on" if d["amp_power"] else "OFF")),
        ("volume", "-" if d["volume"] is None else f"{d['volume']} %"),
        ("temperature", _fmt(d["temperature_c"], "°C")),
        ("supply", _fmt(d["supply_v"], "V", 2)),
        ("current", _fmt(d["amp_current_a"], "A", 2)),
        ("speaker line", d["line"] or "-"),
        ("signal", "-" if d["rssi_dbm"] is None else f"{d['rssi_dbm']} dBm"),
        ("free storage", _fmt(d["free_storage_mb"], "MB", 0)),
        ("clock offset", _fmt(d["clock_offset_s"], "s", 2)),
        ("playing", d["playing"] or "-"),
        ("last error", d["last_error"] or "-"),
    ]
    for k, v in facts:
        console.print(f"  {k:>14}: {v}")
    if d["alarm_history"]:
        t = Table("alarm", "raised", "cleared", "message", title="Alarms", title_justify="left")
        for a in d["alarm_history"]:
            t.add_row(
                a["kind"],
                as_utc_str(a["raised_at"], zone),
                as_utc_str(a["cleared_at"], zone) if a["cleared_at"] else "[bold red]active[/]",
                a["message"],
            )
        console.print(t)
    if d["availability"]:
        t = Table("state", "from", "to", "reason", title="Availability", title_justify="left")
        for i in d["availability"][:10]:
            frm = local_time(_parse(i["from"]), zone, fmt)
            to = local_time(_parse(i["to"]), zone, fmt) if i["to"] else "now"
            t.add_row("online" if i["online"] else "[red]offline[/]", frm, to, i["reason"] or "")
        console.print(t)
    for res, rows in d["history"].items():
        t = Table(
            "from", "n", "temp min/avg/max", "supply min/avg/max", "I max", "line",
            title=f"History ({res} s buckets, newest first)", title_justify="left",
        )  # fmt: skip
        for r in rows[:12]:
            t.add_row(
                local_time(_parse(r["start"]), zone, fmt),
                str(r["n"]),
                "/".join("-" if v is None else f"{v:.1f}" for v in r["temp_c"]),
                "/".join("-" if v is None else f"{v:.2f}" for v in r["supply_v"]),
                _fmt(r["current_max_a"], "A", 2),
                r["line"],
            )
        console.print(t)


def _parse(iso: str | None) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(iso) if iso else None


@handle_errors
def clusters(
    ctx: typer.Context,
    action: Annotated[
        str | None, typer.Argument(help="`show` for one cluster's detail", metavar="[show]")
    ] = None,
    cluster_id: Annotated[str | None, typer.Argument(help="With `show`: the id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Every cluster: hamlet, online, last seen, alarms, volume, temperature, supply, line."""
    state = state_of(ctx)
    require(state, Permission.VIEW, action="clusters.list")
    zone = state.zone()
    if action is not None:
        if action != "show" or not cluster_id:
            raise LoudspeakerError("usage: loudspeaker clusters [show ID] [--json]")
        with state.session() as s:
            detail = cluster_detail(s, cluster_id)
        if as_json:
            print_json(detail)
        else:
            _show(detail, zone)
        return
    with state.session() as s:
        rows = _rows(s)
    if as_json:
        print_json(rows)
        return
    _list(rows, zone)
