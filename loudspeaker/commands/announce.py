"""``loudspeaker announce``: make, list, preview and remove announcements."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loudspeaker import announcements, audit
from loudspeaker.auth import Actor, Permission, current_actor, require
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
from loudspeaker.models import Announcement

announce_app = typer.Typer(help="Bulletins ready to play: TTS text or recordings.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON")]


@contextmanager
def render_progress(label: str, enabled: bool) -> Iterator[Callable[[float], None]]:
    """A transient progress bar on stderr fed by audio's progress callback."""
    if not enabled:
        yield lambda _f: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=1.0)
        yield lambda f: progress.update(task, completed=f)


def _show(ann: Announcement, as_json: bool, zone_name: str | None = None) -> None:
    if as_json:
        print_json(announcements.to_json(ann))
        return
    console.print(
        f"Announcement [bold]{ann.id}[/] “{ann.title}”: {ann.kind}, {ann.engine}, "
        f"{ann.duration_s:.1f} s, {ann.size} bytes"
    )


def _author(state: State, action: str, target: str) -> Actor:
    """Who may make announcements: whoever may broadcast (a hamlet head: for their hamlet).

    An announcement plays nowhere by itself; where it may play is checked when it is
    broadcast, scheduled or used for an emergency.
    """
    me = current_actor(state)
    return require(state, Permission.BROADCAST, me.hamlet or None, action=action, target=target)


@announce_app.command("tts")
@handle_errors
def tts(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help="The bulletin text, in Vietnamese")],
    title: Annotated[str | None, typer.Option(help="Title for logs, schedules and reports")] = None,
    engine: Annotated[str, typer.Option(help="auto (gTTS, else offline), gtts, offline")] = "auto",
    speed: Annotated[float, typer.Option(min=0.5, max=2.0, help="Speaking speed factor")] = 1.0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the text exactly as it will be spoken")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Render typed text with text-to-speech and keep it as an announcement."""
    import audio

    state = state_of(ctx)
    if dry_run:
        settings = announcements.audio_settings(state.settings.data_dir)
        spoken = audio.normalize_text(text, extra_abbreviations=settings.extra_abbreviations)
        if as_json:
            print_json({"text": text, "spoken_text": spoken})
        else:
            typer.echo(spoken)
        return
    if not title:
        raise LoudspeakerError("give the announcement a --title")
    actor = _author(state, "announce.tts", title)
    with render_progress("rendering speech", not as_json) as progress, state.session() as s:
        ann = announcements.create_from_text(
            s,
            state.settings.data_dir,
            text,
            title=title,
            engine=engine,
            speed=speed,
            created_by=actor.name,
            progress=progress,
        )
        announcements.prune_media(s, state.settings.data_dir)
    _show(ann, as_json)


@announce_app.command("file")
@handle_errors
def from_file(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A recording: mp3, wav, m4a, ogg, amr, 3gp...")],
    title: Annotated[str | None, typer.Option(help="Title for logs, schedules and reports")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Process a recording (trim, loudness, chime, encode) and keep it as an announcement."""
    state = state_of(ctx)
    if not title:
        raise LoudspeakerError("give the announcement a --title")
    actor = _author(state, "announce.file", title)
    with render_progress("processing recording", not as_json) as progress, state.session() as s:
        ann = announcements.create_from_file(
            s, state.settings.data_dir, path, title=title, created_by=actor.name, progress=progress
        )
        announcements.prune_media(s, state.settings.data_dir)
    _show(ann, as_json)


@announce_app.command("list")
@handle_errors
def list_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every current announcement, newest first."""
    state = state_of(ctx)
    require(state, Permission.VIEW, action="announce.list")
    zone = state.zone()
    with state.session() as s:
        rows = announcements.list_all(s)
    if as_json:
        print_json([announcements.to_json(a) for a in rows])
        return
    table = Table("id", "created", "title", "kind", "engine", "duration", "by")
    for a in rows:
        table.add_row(
            a.id,
            local_time(a.created_at, zone, "%Y-%m-%d %H:%M"),
            a.title,
            a.kind,
            a.engine,
            f"{a.duration_s:.1f} s",
            a.created_by,
        )
    console.print(table)


@announce_app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    announcement_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """Details of one announcement, with the text as spoken."""
    state = state_of(ctx)
    require(state, Permission.VIEW, action="announce.show", target=announcement_id)
    with state.session() as s:
        ann = announcements.get(s, announcement_id)
    if as_json:
        print_json(announcements.to_json(ann))
        return
    zone = state.zone()
    console.print(f"[bold]{ann.title}[/] ({ann.id})")
    console.print(f"kind {ann.kind}, engine {ann.engine}, {ann.duration_s:.1f} s, {ann.size} bytes")
    console.print(
        f"made by {ann.created_by or '-'} at {local_time(ann.created_at, zone, '%Y-%m-%d %H:%M')}"
    )
    console.print(f"sha256 {ann.media_sha256}")
    if ann.kind == "text":
        console.print(f"text: {ann.source}", highlight=False, markup=False)
        console.print(f"spoken: {ann.spoken_text}", highlight=False, markup=False)
    else:
        console.print(f"file: {ann.source}", highlight=False, markup=False)


@announce_app.command("preview")
@handle_errors
def preview(
    ctx: typer.Context,
    announcement_id: Annotated[str, typer.Argument(metavar="ID")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the MP3")],
    as_json: JsonOpt = False,
) -> None:
    """Write the exact audio the clusters will play to a file, to listen to it."""
    from loudspeaker.media import MediaStore

    state = state_of(ctx)
    require(state, Permission.VIEW, action="announce.preview", target=announcement_id)
    with state.session() as s:
        ann = announcements.get(s, announcement_id)
    src = MediaStore(state.settings.media_dir).path_for(ann.media_sha256)
    if src is None:
        raise LoudspeakerError(
            f"the audio of {ann.id} is no longer in the media directory; make it again"
        )
    try:
        shutil.copyfile(src, output)
    except OSError as exc:
        raise LoudspeakerError(f"cannot write {output}: {exc}") from None
    if as_json:
        print_json({"id": ann.id, "output": str(output), "size": ann.size})
    else:
        console.print(f"Wrote {output} ({ann.duration_s:.1f} s)")


@announce_app.command("remove")
@handle_errors
def remove(
    ctx: typer.Context,
    announcement_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: JsonOpt = False,
) -> None:
    """Remove an announcement (refused while a broadcast or schedule still needs it)."""
    state = state_of(ctx)
    actor = _author(state, "announce.remove", announcement_id)
    with state.session() as s:
        ann = announcements.remove(s, announcement_id)
        audit.record(s, actor.name, "announce.remove", ann.id, role=actor.role, commit=True)
        announcements.prune_media(s, state.settings.data_dir)
    if as_json:
        print_json({"id": ann.id, "removed": True})
    else:
        console.print(f"Removed announcement {ann.id} “{ann.title}”.")
