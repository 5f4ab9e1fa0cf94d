"""``loudspeaker broadcast``: send text or a recording now, and follow it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from firmware_bridge.protocol import Priority
from loudspeaker.commands import common as c
from loudspeaker.commands.common import GapOpt, JsonOpt, RepeatOpt, State, console, print_json
from loudspeaker.commands.progress import follow, status_table
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.services import broadcasts
from loudspeaker.services.broadcasts import BroadcastRequest


@c.face
def broadcast(
    state: State,
    what: Annotated[
        str,
        typer.Argument(
            help="An audio file or the text to speak; or `status ID`; or `list`",
            metavar="AUDIO_FILE_OR_TEXT",
        ),
    ],
    broadcast_id: Annotated[
        str | None, typer.Argument(help="With `status`: the id", metavar="[ID]")
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="all | hamlet:NAME | cluster:ID")] = None,
    title: Annotated[str | None, typer.Option(help="Title shown in logs and reports")] = None,
    priority: Annotated[Priority, typer.Option(help="normal or priority")] = Priority.NORMAL,
    repeat: RepeatOpt = 1,
    gap: GapOpt = 0.0,
    engine: Annotated[str, typer.Option(help="TTS engine: auto, gtts, offline")] = "auto",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every cluster is done")] = False,
    timeout: Annotated[
        float, typer.Option(min=0, help="With --wait: give up after this many seconds")
    ] = 300.0,
    as_json: JsonOpt = False,
) -> None:
    """Broadcast text (spoken by TTS) or a recording now; `broadcast status ID` shows progress."""
    if what == "status":
        if not broadcast_id:
            raise LoudspeakerError("usage: loudspeaker broadcast status ID")
        actor = state.actor()
        if wait:
            view = broadcasts.wait(state, actor, broadcast_id, timeout)
        else:
            view = broadcasts.status(state, actor, broadcast_id)
        if as_json:
            print_json(view.to_json())
        else:
            console.print(status_table(view, state.zone()))
        return
    if what == "list":
        views = broadcasts.recent(state, state.actor())
        if as_json:
            print_json([v.to_json() for v in views])
            return
        zone = state.zone()
        table = Table("id", "created", "priority", "title", "target", "states")
        for v in views:
            b = v.broadcast
            states = ", ".join(f"{k} {n}" for k, n in sorted(v.counts.items()))
            created = b.created_at.astimezone(zone).strftime(c.DAY_MINUTE)
            table.add_row(b.id, created, b.priority, b.title, b.target, states)
        console.print(table)
        return
    if broadcast_id is not None:
        raise LoudspeakerError("give the text as one quoted argument")
    request = BroadcastRequest(what, to or "", title, priority, repeat, gap, engine)
    actor = state.actor()
    sent = broadcasts.send(state, actor, request)
    c.warn_not_running(sent.controller_notified, "the broadcast is queued and goes out")
    if not as_json:
        console.print(
            f"Broadcast [bold]{sent.broadcast_id}[/] queued for {sent.clusters} clusters "
            f"({sent.engine}, {sent.duration_s:.1f} s)."
        )
    if wait:
        view = follow(state, sent.broadcast_id, timeout, live=not as_json)
        if as_json:
            print_json(view.to_json())
        if not all(d.state == "played" for d in view.deliveries):
            raise typer.Exit(1)
    elif as_json:
        print_json(broadcasts.status(state, actor, sent.broadcast_id).to_json())
