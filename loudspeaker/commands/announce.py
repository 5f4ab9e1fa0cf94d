"""``loudspeaker announce``: make, list, preview and remove announcements."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.announcements import AnnouncementView
from loudspeaker.commands import common as c
from loudspeaker.commands.common import IdArg, JsonOpt, State, command, console, print_json
from loudspeaker.commands.progress import render_progress
from loudspeaker.services import announcements

announce_app = typer.Typer(help="Bulletins ready to play: TTS text or recordings.")
TitleOpt = Annotated[str | None, typer.Option(help="Title for logs, schedules and reports")]


def _made(ann: AnnouncementView, as_json: bool) -> None:
    if as_json:
        print_json(ann.to_json())
        return
    console.print(
        f"Announcement [bold]{ann.id}[/] “{ann.title}”: {ann.kind}, {ann.engine}, "
        f"{ann.duration_s:.1f} s, {ann.size} bytes"
    )


@command(announce_app, "tts")
def tts(
    state: State,
    text: Annotated[str, typer.Argument(help="The bulletin text, in Vietnamese")],
    title: TitleOpt = None,
    engine: Annotated[str, typer.Option(help="auto (gTTS, else offline), gtts, offline")] = "auto",
    speed: Annotated[float, typer.Option(min=0.5, max=2.0, help="Speaking speed factor")] = 1.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the text exactly as it will be spoken")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render typed text with text-to-speech and keep it as an announcement."""
    if dry_run:
        spoken = announcements.spoken_text(state, text)
        if as_json:
            print_json({"text": text, "spoken_text": spoken})
        else:
            typer.echo(spoken)
        return
    with render_progress("rendering speech", not as_json) as progress:
        ann = announcements.make_from_text(
            state,
            state.actor(),
            text,
            title=title,
            engine=engine,
            speed=speed,
            progress=progress,
        )
    _made(ann, as_json)


@command(announce_app, "file")
def from_file(
    state: State,
    path: Annotated[Path, typer.Argument(help="A recording: mp3, wav, m4a, ogg, amr, 3gp...")],
    title: TitleOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Process a recording (trim, loudness, chime, encode) and keep it as an announcement."""
    with render_progress("processing recording", not as_json) as progress:
        ann = announcements.make_from_file(
            state, state.actor(), path, title=title, progress=progress
        )
    _made(ann, as_json)


@command(announce_app, "list")
def list_(state: State, as_json: JsonOpt = False) -> None:
    """Every current announcement, newest first."""
    rows = announcements.current(state, state.actor())
    if as_json:
        print_json([a.to_json() for a in rows])
        return
    zone = state.zone()
    table = Table("id", "created", "title", "kind", "engine", "duration", "by")
    for a in rows:
        created = c.local_time(a.created_at, zone, c.DAY_MINUTE)
        duration = f"{a.duration_s:.1f} s"
        table.add_row(a.id, created, a.title, a.kind, a.engine, duration, a.created_by)
    console.print(table)


@command(announce_app, "show")
def show(state: State, announcement_id: IdArg, as_json: JsonOpt = False) -> None:
    """Details of one announcement, with the text as spoken."""
    ann = announcements.show(state, state.actor(), announcement_id)
    if as_json:
        print_json(ann.to_json())
        return
    made_at = c.local_time(ann.created_at, state.zone(), c.DAY_MINUTE)
    console.print(f"[bold]{ann.title}[/] ({ann.id})")
    console.print(f"kind {ann.kind}, engine {ann.engine}, {ann.duration_s:.1f} s, {ann.size} bytes")
    console.print(f"made by {ann.created_by or '-'} at {made_at}")
    console.print(f"sha256 {ann.sha256}")
    said = [f"text: {ann.source}", f"spoken: {ann.spoken_text}"]
    for line in said if ann.kind == "text" else [f"file: {ann.source}"]:
        console.print(line, highlight=False, markup=False)


@command(announce_app, "preview")
def preview(
    state: State,
    announcement_id: IdArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the MP3")],
    as_json: JsonOpt = False,
) -> None:
    """Write the exact audio the clusters will play to a file, to listen to it."""
    ann = announcements.preview(state, state.actor(), announcement_id, output)
    if as_json:
        print_json({"id": ann.id, "output": str(output), "size": ann.size})
    else:
        console.print(f"Wrote {output} ({ann.duration_s:.1f} s)")


@command(announce_app, "remove")
def remove(state: State, announcement_id: IdArg, as_json: JsonOpt = False) -> None:
    """Remove an announcement (refused while a broadcast or schedule still needs it)."""
    ann = announcements.remove(state, state.actor(), announcement_id)
    if as_json:
        print_json({"id": ann.id, "removed": True})
    else:
        console.print(f"Removed announcement {ann.id} “{ann.title}”.")
