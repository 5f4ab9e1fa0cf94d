"""``loudspeaker emergency``: trigger, stop and follow emergency broadcasts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker import emergency as em
from loudspeaker.commands import common as c
from loudspeaker.commands.common import GapOpt, JsonOpt, RepeatOpt, State, console, print_json
from loudspeaker.commands.progress import follow, status_table
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.services import emergencies
from loudspeaker.services.emergencies import DirectSend, EmergencyRequest, EmergencyView


@c.face
def emergency(
    state: State,
    text: Annotated[
        str,
        typer.Argument(
            help="What the emergency is (spoken by TTS unless --recording/--siren); "
            "or `stop [ID]`, or `status ID`",
            metavar="TEXT",
        ),
    ],
    emergency_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="With stop/status")
    ] = None,
    hamlet: Annotated[
        list[str] | None, typer.Option("--hamlet", help="Hamlet name or id (repeat for several)")
    ] = None,
    all_hamlets: Annotated[bool, typer.Option("--all", help="Every hamlet of the commune")] = False,
    recording: Annotated[
        Path | None, typer.Option(help="Play this recording instead of TTS")
    ] = None,
    siren: Annotated[bool, typer.Option("--siren", help="Play the alert siren")] = False,
    announcement: Annotated[
        str | None, typer.Option(help="Play a prepared announcement (no rendering: fastest)")
    ] = None,
    repeat: RepeatOpt = 1,
    gap: GapOpt = 0.0,
    valid: Annotated[
        float, typer.Option(help="Seconds a cluster offline now still gets it when back")
    ] = em.DEFAULT_VALIDITY_S,
    engine: Annotated[str, typer.Option(help="TTS engine (offline is fastest)")] = "offline",
    wait: Annotated[float, typer.Option(help="Seconds to follow the acknowledgements")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Emergency broadcast: plays at once on the target hamlets' clusters, pre-empting all."""
    if text == "status":
        actor = state.actor()
        if emergency_id:
            _show(state, emergencies.status(state, actor, emergency_id), as_json)
        else:
            _list_active(emergencies.active(state, actor), as_json)
        return
    if text == "stop":
        stopped = emergencies.stop(state, state.actor(), emergency_id)
        c.warn_not_running(stopped.controller_notified, "the stop takes effect")
        ids = list(stopped.broadcast_ids)
        if as_json:
            print_json({"stopped": ids})
        else:
            console.print(f"Stop requested for {', '.join(ids)}.")
        return
    if emergency_id is not None:
        raise LoudspeakerError("give the emergency text as one quoted argument")
    request = EmergencyRequest(
        text,
        tuple(hamlet or ()),
        everywhere=all_hamlets,
        recording=recording,
        siren=siren,
        announcement=announcement,
        repeat=repeat,
        gap_s=gap,
        validity_s=valid,
        engine=engine,
    )
    done = emergencies.trigger(state, state.actor(), request, direct_wait_s=wait)
    _render_triggered(state, done, wait, as_json)


def _render_triggered(
    state: State, done: emergencies.EmergencyTriggered, wait: float, as_json: bool
) -> None:
    bid, direct = done.broadcast_id, done.direct
    if direct is not None:
        _say_direct(direct)
    if not as_json:
        console.print(f"[bold red]EMERGENCY {bid}[/] triggered for {done.target}.")
    if done.controller_notified and wait > 0:
        follow(state, bid, wait, live=not as_json, until="playing")
    view = emergencies.status(state, state.actor(), bid)
    if as_json:
        data = view.to_json()
        if direct is not None:
            data["direct"] = direct.to_json()
        print_json(data)
    elif direct is None:
        _show(state, view, as_json=False)
    else:
        for cluster in direct.sent:
            console.print(f"  {cluster}: {direct.acks.get(cluster, 'no answer yet')}")
    if direct is not None and direct.missed:
        c.err_console.print(
            f"[bold red]error:[/] {len(direct.missed)} clusters got nothing: "
            f"{', '.join(direct.missed)} (see above)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _say_direct(direct: DirectSend) -> None:
    c.err_console.print(
        f"[yellow]controller not running:[/] sent directly over the broker to "
        f"{len(direct.sent)} clusters; the controller records their answers when it starts"
    )
    for cluster, why in direct.failed.items():
        c.err_console.print(f"[red]{cluster}: NOT sent[/] ({why})", highlight=False)
    for cluster, why in sorted(direct.unsigned.items()):
        c.err_console.print(
            f"[bold red]NOT SENT to {cluster}:[/] its key could not be opened: {why}",
            highlight=False,
            soft_wrap=True,
        )


def _show(state: State, view: EmergencyView, as_json: bool) -> None:
    if as_json:
        print_json(view.to_json())
        return
    console.print(status_table(view.view, state.zone()))
    b = view.view.broadcast
    if b.stopped_at:
        console.print(f"Stopped by {b.stopped_by or '?'}.")
    for miss in view.not_played:
        console.print(
            f"[red]{miss['cluster']}[/] ({miss['hamlet']}): {miss['why']}", highlight=False
        )


def _list_active(rows: list[EmergencyView], as_json: bool) -> None:
    if as_json:
        print_json([v.to_json() for v in rows])
        return
    if not rows:
        console.print("No emergency is active.")
        return
    table = Table("id", "target", "title", "states")
    for v in rows:
        b = v.view.broadcast
        states = ", ".join(f"{k} {n}" for k, n in sorted(v.view.counts.items()))
        table.add_row(b.id, b.target, b.title, states)
    console.print(table)
