"""``loudspeaker broadcast``: send text or a recording now, and follow it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.live import Live
from rich.table import Table

import audio
from firmware_bridge.protocol import Priority
from loudspeaker import audit
from loudspeaker.auth import Permission, hamlets_of, require
from loudspeaker.broadcasts import AudioFile, BroadcastView
from loudspeaker.commands.common import (
    State,
    console,
    err_console,
    handle_errors,
    local_time,
    print_json,
    state_of,
)
from loudspeaker.exceptions import LoudspeakerError

AUDIO_SUFFIXES = (".mp3", ".wav", ".m4a", ".ogg", ".opus", ".amr", ".3gp", ".aac", ".flac")


@dataclass(frozen=True)
class Source:
    """What a broadcast plays, however it was given."""

    audio: AudioFile
    kind: str  # text | file | tone
    source: str
    title: str
    announcement_id: str | None = None


def resolve_source(state: State, what: str, engine: str) -> Source:
    """An existing recording, an announcement id, or text to speak."""
    from loudspeaker import announcements
    from loudspeaker.models import Announcement

    data_dir = state.settings.data_dir
    path = Path(what)
    if path.is_file():
        r = audio.render_recording(
            path,
            cache_dir=state.settings.media_dir,
            settings=announcements.audio_settings(data_dir),
        )
        return Source(AudioFile.from_rendered(r), "file", path.name, path.stem)
    if len(what) < 255 and path.suffix.lower() in AUDIO_SUFFIXES:
        raise LoudspeakerError(f"audio file {what} does not exist")
    with state.session() as s:
        ann = s.get(Announcement, what)
        if ann is not None and ann.removed_at is None:
            af = announcements.audio_of(s, ann, state.settings.media_dir)
            return Source(af, ann.kind, ann.source, ann.title, ann.id)
    r = audio.render_text(
        what,
        cache_dir=state.settings.media_dir,
        engine=engine,
        settings=announcements.audio_settings(data_dir),
    )
    return Source(AudioFile.from_rendered(r), "text", what, what[:60])


def status_table(view: BroadcastView, zone: ZoneInfo) -> Table:
    """Per cluster: the state and, for each step, seconds since the broadcast was queued."""
    b = view.broadcast
    queued = b.created_at
    table = Table(
        title=f"Broadcast {b.id} “{b.title}”, queued {local_time(queued, zone)} "
        f"({b.priority}); seconds after that:",
        title_justify="left",
    )
    with_reason = any(d.reason for d in view.deliveries)
    for name in ("cluster", "hamlet", "state", "sent", "recv", "staged", "playing", "done"):
        table.add_column(
            name, justify="right" if name not in ("cluster", "hamlet", "state") else "left"
        )
    if with_reason:
        table.add_column("reason", overflow="fold")
    colours = {"played": "green", "failed": "red", "unreachable": "red", "playing": "cyan"}

    def since(ts: datetime | None) -> str:
        return "-" if ts is None else f"{(ts - queued).total_seconds():.2f}"

    for d in view.deliveries:
        t = d.times
        done_at = t.get("played") or t.get("failed") or t.get("unreachable") or t.get("missed")
        colour = colours.get(d.state, "yellow")
        row = [
            d.cluster,
            d.hamlet,
            f"[{colour}]{d.state}[/]",
            since(t["sent"]),
            since(t["received"]),
            since(t["staged"]),
            since(t["playing"]),
            since(done_at),
        ]
        if with_reason:
            row.append(d.reason)
        table.add_row(*row)
    return table


def wait_for(
    state: State, broadcast_id: str, timeout: float, live: bool, until: str = "finished"
) -> BroadcastView:
    """Follow a broadcast until every cluster is done (or, ``until="playing"``, started)."""
    from loudspeaker.broadcasts import broadcast_status

    zone = state.zone()
    deadline = time.monotonic() + timeout
    started = {"playing", "played", "failed", "unreachable"}

    def done(v: BroadcastView) -> bool:
        if until == "playing":
            return all(d.state in started for d in v.deliveries)
        return v.finished

    def current() -> BroadcastView:
        with state.session() as s:
            return broadcast_status(s, broadcast_id)

    view = current()
    if not live:
        while not done(view) and time.monotonic() < deadline:
            time.sleep(0.1)
            view = current()
        return view
    with Live(status_table(view, zone), console=console, refresh_per_second=8) as lv:
        while not done(view) and time.monotonic() < deadline:
            time.sleep(0.1)
            view = current()
            lv.update(status_table(view, zone))
    console.print()
    return view


@handle_errors
def broadcast(
    ctx: typer.Context,
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
    repeat: Annotated[int, typer.Option(min=1, max=10, help="Times to play (1-10)")] = 1,
    gap: Annotated[float, typer.Option(min=0, max=7200, help="Seconds between repeats")] = 0.0,
    engine: Annotated[str, typer.Option(help="TTS engine: auto, gtts, offline")] = "auto",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every cluster is done")] = False,
    timeout: Annotated[
        float, typer.Option(help="With --wait: give up after this many seconds")
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Broadcast text (spoken by TTS) or a recording now; `broadcast status ID` shows progress."""
    from loudspeaker.broadcasts import (
        broadcast_status,
        create_broadcast,
        recent_broadcasts,
        register_media,
    )
    from loudspeaker.media import MediaStore
    from loudspeaker.targets import resolve_targets

    state = state_of(ctx)
    if what in ("status", "list"):
        require(state, Permission.VIEW, action=f"broadcast.{what}")
    if what == "status":
        if not broadcast_id:
            raise LoudspeakerError("usage: loudspeaker broadcast status ID")
        if wait:
            view = wait_for(state, broadcast_id, timeout, live=False)
        else:
            with state.session() as s:
                view = broadcast_status(s, broadcast_id)
        if as_json:
            print_json(view.to_json())
        else:
            console.print(status_table(view, state.zone()))
        return
    if what == "list":
        zone = state.zone()
        with state.session() as s:
            rows = recent_broadcasts(s)
            data = [(b, broadcast_status(s, b.id)) for b in rows]
        if as_json:
            print_json([v.to_json() for _, v in data])
            return
        table = Table("id", "created", "priority", "title", "target", "states")
        for b, v in data:
            states = ", ".join(f"{k} {n}" for k, n in sorted(v.counts.items()))
            table.add_row(
                b.id,
                b.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
                b.priority,
                b.title,
                b.target,
                states,
            )
        console.print(table)
        return
    if broadcast_id is not None:
        raise LoudspeakerError("give the text as one quoted argument")
    if to is None:
        raise LoudspeakerError("say where: --to all | hamlet:NAME | cluster:ID")
    if priority is Priority.EMERGENCY:
        raise LoudspeakerError("emergencies use `loudspeaker emergency`")
    with state.session() as s:
        clusters = resolve_targets(s, to)
    actor = require(
        state, Permission.BROADCAST, hamlets_of(clusters), action="broadcast.create", target=to
    )
    src = resolve_source(state, what, engine)
    af = src.audio
    with state.session() as s:
        media = register_media(s, MediaStore(state.settings.media_dir), af)
        b = create_broadcast(
            s,
            media=media,
            title=title or src.title,
            target=to,
            clusters=clusters,
            priority=priority,
            source_kind=src.kind,
            source=src.source,
            announcement_id=src.announcement_id,
            repeat=repeat,
            gap_s=gap,
            created_by=actor.name,
        )
        bid = b.id
        audit.record(
            s,
            actor.name,
            "broadcast.create",
            to,
            detail={
                "broadcast": bid,
                "title": b.title,
                "priority": b.priority,
                "clusters": len(clusters),
                "media": media.sha256,
            },
            role=actor.role,
            commit=True,
        )
    card = state.controller()
    if card is None:
        err_console.print(
            "[yellow]warning:[/] the controller is not running; the broadcast is queued and "
            "goes out when `loudspeaker serve` starts"
        )
    else:
        card.poke()
    if not as_json:
        console.print(
            f"Broadcast [bold]{bid}[/] queued for {len(clusters)} clusters "
            f"({af.engine}, {af.duration_s:.1f} s)."
        )
    if wait:
        view = wait_for(state, bid, timeout, live=not as_json)
        if as_json:
            print_json(view.to_json())
        if not all(d.state == "played" for d in view.deliveries):
            raise typer.Exit(1)
    elif as_json:
        with state.session() as s:
            print_json(broadcast_status(s, bid).to_json())
