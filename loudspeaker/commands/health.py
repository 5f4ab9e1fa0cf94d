"""``loudspeaker alarms``, ``loudspeaker diagnose ID``, ``loudspeaker cluster ...``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.commands import common as c
from loudspeaker.commands.common import JsonOpt, State, TimeoutOpt, command, console, print_json
from loudspeaker.services import clusters as service
from loudspeaker.services.clusters import ControlOutcome

_COLOURS = {"critical": "bold red", "major": "red", "minor": "yellow"}
_STATUS_COLOURS = {"ok": "green", "warning": "yellow", "fault": "red", "unreachable": "red"}
_CHECK_COLOURS = {
    "ok": "green", "warn": "yellow", "fail": "red", "skip": "dim", "not_present": "dim",
}  # fmt: skip


@c.face
def alarms(
    state: State,
    history: Annotated[
        bool, typer.Option("--history", help="Include cleared alarms (newest first)")
    ] = False,
    cluster: Annotated[str | None, typer.Option(help="Only this cluster")] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --history: at most this many")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Active alarms of every cluster (offline, overheating, line open/short...)."""
    data = service.alarms(state, state.actor(), history=history, cluster=cluster, limit=limit)
    if as_json:
        print_json(data)
        return
    if not data:
        console.print("No active alarms." if not history else "No alarms recorded.")
        return
    zone = state.zone()
    table = Table("cluster", "alarm", "severity", "raised", "cleared", "message", "do")
    for d in data:
        colour, active = _COLOURS.get(d["severity"], ""), d["cleared_at"] is None
        table.add_row(
            d["cluster"],
            f"[{colour}]{d['kind']}[/]" if colour else d["kind"],
            d["severity"],
            c.iso_time(d["raised_at"], zone, c.DAY_SECOND),
            "[bold]active[/]" if active else c.iso_time(d["cleared_at"], zone, c.DAY_SECOND),
            d["message"] if active else f"{d['message']} → {d['clear_message'] or ''}",
            d["action"] if active else "",
        )
    console.print(table)


def _report(done: ControlOutcome, what: str, as_json: bool) -> None:
    if as_json:
        print_json(done.request)
    elif done.confirmed:
        console.print(f"[green]{done.cluster}: {what} confirmed[/] {done.reason}".rstrip())
    elif done.failed:
        console.print(f"[red]{done.cluster}: {what} failed:[/] {done.reason}")
    else:
        console.print(
            f"[yellow]{done.cluster}: {what} not confirmed yet ({done.state}); "
            "see `loudspeaker clusters show`[/]"
        )
    if not done.confirmed:
        raise typer.Exit(1 if done.failed else 2)


cluster_app = typer.Typer(
    help="Remote control of one cluster: volume, amplifier power, reboot.",
    no_args_is_help=True,
)

ClusterArg = Annotated[str, typer.Argument(help="Cluster id, e.g. lb-04")]


@command(cluster_app, "volume")
def cluster_volume(
    state: State,
    cluster: ClusterArg,
    volume: Annotated[int, typer.Argument(min=0, max=100, help="Volume in percent, 0-100")],
    timeout: TimeoutOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Set the amplifier volume; confirmed by the cluster or reported as failed."""
    done = service.set_volume(state, state.actor(), cluster, volume, timeout_s=timeout)
    _report(done, f"volume {volume} %", as_json)


@command(cluster_app, "power")
def cluster_power(
    state: State,
    cluster: ClusterArg,
    onoff: Annotated[str, typer.Argument(help="on or off (the relay: off is not muted)")],
    timeout: TimeoutOpt = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Switch the amplifier's mains relay on or off (broadcasts still power it briefly)."""
    done = service.set_power(state, state.actor(), cluster, onoff, timeout_s=timeout)
    _report(done, f"amplifier power {onoff}", as_json)


@command(cluster_app, "reboot")
def cluster_reboot(
    state: State, cluster: ClusterArg, timeout: TimeoutOpt = 150.0, as_json: JsonOpt = False
) -> None:
    """Reboot the cluster; confirmed when it is back online as a new boot."""
    done = service.reboot(state, state.actor(), cluster, timeout_s=timeout)
    _report(done, "reboot", as_json)


@c.face
def diagnose(
    state: State,
    cluster: ClusterArg,
    tone: Annotated[
        float, typer.Option(min=0.5, max=10, help="Seconds of test tone (plays aloud!)")
    ] = 2.0,
    no_tone: Annotated[bool, typer.Option("--no-tone", help="Skip the audible test tone")] = False,
    timeout: TimeoutOpt = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Run active tests on a cluster and give a verdict with a suggested action."""
    done = service.diagnose(
        state, state.actor(), cluster, tone_s=tone, with_tone=not no_tone, timeout_s=timeout
    )
    diag = done.result.get("diagnosis")
    if as_json:
        print_json(done.request)
    elif diag is None:
        console.print(f"[red]{cluster}: diagnose {done.state}:[/] {done.reason}")
    else:
        colour = _STATUS_COLOURS.get(diag["status"], "")
        console.print(f"[bold]{cluster}[/]: [{colour}]{diag['status']}[/] — {diag['verdict']}")
        table = Table("test", "result", "finding", "do")
        for t in diag["checks"]:
            cc = _CHECK_COLOURS.get(t["status"], "")
            table.add_row(t["name"], f"[{cc}]{t['status']}[/]", t["summary"], t["action"])
        console.print(table)
        if diag["action"] != "none":
            console.print(f"Suggested action: [bold]{diag['action']}[/]")
    if diag is None or diag["status"] in ("fault", "unreachable"):
        raise typer.Exit(1)
