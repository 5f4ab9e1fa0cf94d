"""``loudspeaker clusters``: what the controller knows of each cluster; ``clusters show ID``."""

from __future__ import annotations

from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from loudspeaker.commands import common as c
from loudspeaker.commands.common import JsonOpt, State, console, face, iso_time, print_json
from loudspeaker.exceptions import InvalidRequest
from loudspeaker.services import clusters as service


def _fmt(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def _list(rows: list[dict[str, Any]], zone: ZoneInfo) -> None:
    table = Table(
        "cluster", "hamlet", "online", "last seen", "alarms", "vol", "temp", "supply", "line",
        "version",
    )  # fmt: skip
    for r in rows:
        online = "-" if r["online"] is None else ("yes" if r["online"] else "[red]no[/]")
        line = r["line"] or "-"
        if line in ("open", "short"):
            line = f"[red]{line}[/]"
        vol = "-" if r["volume"] is None else f"{r['volume']} %"
        if r["amp_power"] is False:
            vol += " [yellow](off)[/]"
        table.add_row(
            r["cluster"],
            r["hamlet"],
            online,
            iso_time(r["last_heartbeat"] or r["last_seen"], zone),
            "[red]" + ", ".join(r["alarms"]) + "[/]" if r["alarms"] else "",
            vol,
            _fmt(r["temperature_c"], "°C"),
            _fmt(r["supply_v"], "V", 2),
            line,
            r["agent"] + (f" / {r['firmware']}" if r["firmware"] else ""),
        )
    console.print(table)


def _show(d: dict[str, Any], zone: ZoneInfo) -> None:
    online = "-" if d["online"] is None else ("online" if d["online"] else "[red]offline[/]")
    console.print(f"[bold]{d['cluster']}[/] {d['name']} — hamlet {d['hamlet']}, {online}")
    facts = [
        ("last heartbeat", iso_time(d["last_heartbeat"], zone)),
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
            cleared = iso_time(a["cleared_at"], zone) if a["cleared_at"] else "[bold red]active[/]"
            t.add_row(a["kind"], iso_time(a["raised_at"], zone), cleared, a["message"])
        console.print(t)
    if d["availability"]:
        t = Table("state", "from", "to", "reason", title="Availability", title_justify="left")
        for i in d["availability"][:10]:
            to = iso_time(i["to"], zone, c.DAY_SECOND) if i["to"] else "now"
            state = "online" if i["online"] else "[red]offline[/]"
            t.add_row(state, iso_time(i["from"], zone, c.DAY_SECOND), to, i["reason"] or "")
        console.print(t)
    for res, rows in d["history"].items():
        t = Table(
            "from", "n", "temp min/avg/max", "supply min/avg/max", "I max", "line",
            title=f"History ({res} s buckets, newest first)", title_justify="left",
        )  # fmt: skip
        for r in rows[:12]:
            t.add_row(
                iso_time(r["start"], zone, c.DAY_SECOND),
                str(r["n"]),
                "/".join("-" if v is None else f"{v:.1f}" for v in r["temp_c"]),
                "/".join("-" if v is None else f"{v:.2f}" for v in r["supply_v"]),
                _fmt(r["current_max_a"], "A", 2),
                r["line"],
            )
        console.print(t)


@face
def clusters(
    state: State,
    action: Annotated[
        str | None, typer.Argument(help="`show` for one cluster's detail", metavar="[show]")
    ] = None,
    cluster_id: Annotated[str | None, typer.Argument(help="With `show`: the id")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every cluster: hamlet, online, last seen, alarms, volume, temperature, supply, line."""
    if action is not None and (action != "show" or not cluster_id):
        raise InvalidRequest("usage: loudspeaker clusters [show ID] [--json]")
    actor = state.actor()
    if cluster_id is None:
        rows = service.list_clusters(state, actor)
        if as_json:
            print_json(rows)
        else:
            _list(rows, state.zone())
        return
    detail = service.show_cluster(state, actor, cluster_id)
    if as_json:
        print_json(detail)
    else:
        _show(detail, state.zone())
