"""``loudspeaker alarms``, ``loudspeaker diagnose ID``, ``loudspeaker cluster ...``."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from sqlmodel import col, select

from loudspeaker import audit
from loudspeaker.auth import Permission, require
from loudspeaker.commands.common import (
    console,
    handle_errors,
    local_time,
    print_json,
    state_of,
)
from loudspeaker.db import as_utc
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.models import AlarmRecord, ControlRequest

_COLOURS = {"critical": "bold red", "major": "red", "minor": "yellow"}
_STATUS_COLOURS = {"ok": "green", "warning": "yellow", "fault": "red", "unreachable": "red"}
_CHECK_COLOURS = {
    "ok": "green",
    "warn": "yellow",
    "fail": "red",
    "skip": "dim",
    "not_present": "dim",
}


def alarm_json(a: AlarmRecord) -> dict[str, Any]:
    """JSON-ready form of one alarm."""
    raised, cleared = as_utc(a.raised_at), as_utc(a.cleared_at)
    return {
        "id": a.id,
        "cluster": a.cluster_id,
        "kind": a.kind,
        "severity": a.severity,
        "active": a.cleared_at is None,
        "raised_at": raised.isoformat() if raised else None,
        "cleared_at": cleared.isoformat() if cleared else None,
        "message": a.message,
        "clear_message": a.clear_message or None,
        "value": a.value,
        "threshold": a.threshold,
        "last_value": a.last_value,
    }


@handle_errors
def alarms(
    ctx: typer.Context,
    history: Annotated[
        bool, typer.Option("--history", help="Include cleared alarms (newest first)")
    ] = False,
    cluster: Annotated[str | None, typer.Option(help="Only this cluster")] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --history: at most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Active alarms of every cluster (offline, overheating, line open/short...)."""
    from loudspeaker.alarms import ACTION, AlarmKind

    state = state_of(ctx)
    require(state, Permission.VIEW, action="alarms")
    zone = state.zone()
    with state.session() as s:
        q = select(AlarmRecord)
        if not history:
            q = q.where(col(AlarmRecord.cleared_at).is_(None))
        if cluster:
            q = q.where(AlarmRecord.cluster_id == cluster)
        rows = s.exec(q.order_by(col(AlarmRecord.raised_at).desc()).limit(limit)).all()
    data = [alarm_json(a) for a in rows]
    for d in data:
        try:
            d["action"] = ACTION[AlarmKind(d["kind"])]
        except ValueError:
            d["action"] = ""
    if as_json:
        print_json(data)
        return
    if not rows:
        console.print("No active alarms." if not history else "No alarms recorded.")
        return
    table = Table("cluster", "alarm", "severity", "raised", "cleared", "message", "do")
    fmt = "%d/%m %H:%M:%S"
    for a, d in zip(rows, data, strict=True):
        colour = _COLOURS.get(a.severity, "")
        table.add_row(
            a.cluster_id,
            f"[{colour}]{a.kind}[/]" if colour else a.kind,
            a.severity,
            local_time(as_utc(a.raised_at), zone, fmt),
            local_time(as_utc(a.cleared_at), zone, fmt) if a.cleared_at else "[bold]active[/]",
            a.message if a.cleared_at is None else f"{a.message} → {a.clear_message}",
            d["action"] if a.cleared_at is None else "",
        )
    console.print(table)


def request_json(req: ControlRequest) -> dict[str, Any]:
    """JSON-ready form of a control request and its outcome."""
    times = {
        k: (v.isoformat() if (v := as_utc(getattr(req, k))) else None)
        for k in ("created_at", "sent_at", "answered_at", "done_at")
    }
    return {
        "id": req.id,
        "cluster": req.cluster_id,
        "action": req.action,
        "args": req.args,
        "state": req.state,
        "confirmed": req.state == "confirmed",
        "reason": req.reason or None,
        "result": req.result,
        **times,
    }


def _run(
    ctx: typer.Context,
    cluster: str,
    action: str,
    args: dict[str, Any],
    timeout: float,
    as_json: bool,
) -> ControlRequest:
    from loudspeaker.control import send_and_wait

    state = state_of(ctx)
    permission = Permission.DIAGNOSE if action == "diagnose" else Permission.CONTROL
    actor = require(state, permission, action=f"cluster.{action}", target=cluster)
    req = send_and_wait(
        state.session,
        state.controller(),
        cluster,
        action,
        args,
        timeout_s=timeout,
        created_by=actor.name,
    )
    with state.session() as s:
        audit.record(
            s,
            actor.name,
            f"cluster.{action}",
            cluster,
            outcome="ok" if req.state == "confirmed" else str(req.state),
            detail={"args": args, "reason": req.reason or None},
            role=actor.role,
            commit=True,
        )
    if as_json:
        print_json(request_json(req))
    return req


def _report(req: ControlRequest, what: str, as_json: bool) -> None:
    if req.state == "confirmed":
        if not as_json:
            console.print(f"[green]{req.cluster_id}: {what} confirmed[/] {req.reason}".rstrip())
        return
    if req.state == "failed":
        if not as_json:
            console.print(f"[red]{req.cluster_id}: {what} failed:[/] {req.reason}")
        raise typer.Exit(1)
    if not as_json:
        console.print(
            f"[yellow]{req.cluster_id}: {what} not confirmed yet ({req.state}); "
            "see `loudspeaker clusters show`[/]"
        )
    raise typer.Exit(2)


cluster_app = typer.Typer(
    help="Remote control of one cluster: volume, amplifier power, reboot.",
    no_args_is_help=True,
)

TimeoutOpt = Annotated[float, typer.Option(help="Give up waiting after this many seconds")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]


@cluster_app.command("volume")
@handle_errors
def cluster_volume(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id, e.g. lb-04")],
    volume: Annotated[int, typer.Argument(min=0, max=100, help="Volume in percent, 0-100")],
    timeout: TimeoutOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Set the amplifier volume; confirmed by the cluster or reported as failed."""
    req = _run(ctx, cluster, "volume", {"volume": volume}, timeout, as_json)
    _report(req, f"volume {volume} %", as_json)


@cluster_app.command("power")
@handle_errors
def cluster_power(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id, e.g. lb-04")],
    onoff: Annotated[str, typer.Argument(help="on or off (the relay: off is not muted)")],
    timeout: TimeoutOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Switch the amplifier's mains relay on or off (broadcasts still power it briefly)."""
    if onoff not in ("on", "off"):
        raise LoudspeakerError(f"say `on` or `off`, not {onoff!r}")
    req = _run(ctx, cluster, "power", {"on": onoff == "on"}, timeout, as_json)
    _report(req, f"amplifier power {onoff}", as_json)


@cluster_app.command("reboot")
@handle_errors
def cluster_reboot(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id, e.g. lb-04")],
    timeout: TimeoutOpt = 150.0,
    as_json: JsonOpt = False,
) -> None:
    """Reboot the cluster; confirmed when it is back online as a new boot."""
    req = _run(ctx, cluster, "reboot", {}, timeout, as_json)
    _report(req, "reboot", as_json)


@handle_errors
def diagnose(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id, e.g. lb-04")],
    tone: Annotated[
        float, typer.Option(min=0.5, max=10, help="Seconds of test tone (plays aloud!)")
    ] = 2.0,
    no_tone: Annotated[bool, typer.Option("--no-tone", help="Skip the audible test tone")] = False,
    timeout: TimeoutOpt = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Run active tests on a cluster and give a verdict with a suggested action."""
    tests = ["self_test", "link", "clock"] if no_tone else ["self_test", "tone", "link", "clock"]
    req = _run(ctx, cluster, "diagnose", {"tests": tests, "tone_s": tone}, timeout, as_json)
    diag = (req.result or {}).get("diagnosis")
    if not as_json:
        if diag is None:
            console.print(f"[red]{cluster}: diagnose {req.state}:[/] {req.reason}")
        else:
            colour = _STATUS_COLOURS.get(diag["status"], "")
            console.print(f"[bold]{cluster}[/]: [{colour}]{diag['status']}[/] — {diag['verdict']}")
            table = Table("test", "result", "finding", "do")
            for c in diag["checks"]:
                cc = _CHECK_COLOURS.get(c["status"], "")
                table.add_row(c["name"], f"[{cc}]{c['status']}[/]", c["summary"], c["action"])
            console.print(table)
            if diag["action"] != "none":
                console.print(f"Suggested action: [bold]{diag['action']}[/]")
    if diag is None or diag["status"] in ("fault", "unreachable"):
        raise typer.Exit(1)
