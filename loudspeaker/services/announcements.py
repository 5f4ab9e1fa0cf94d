"""Announcements: bulletins rendered once, then broadcast, scheduled or used in emergencies.

Who may make or remove one: whoever may broadcast (a hamlet head: for her own hamlet). An
announcement plays nowhere by itself; where it may play is checked when it is broadcast,
scheduled or used for an emergency.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import audio
from loudspeaker import announcements, audit
from loudspeaker.announcements import AnnouncementView
from loudspeaker.audio_source import audio_settings
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.exceptions import InvalidRequest, LoudspeakerError
from loudspeaker.media import MediaStore
from loudspeaker.services.context import ServiceContext

ProgressFn = Callable[[float], None]


def _author(ctx: ServiceContext, actor: Actor, action: str, target: str) -> None:
    authorize(ctx, actor, Permission.BROADCAST, actor.hamlet or None, action=action, target=target)


def _titled(title: str | None) -> str:
    if not title or not title.strip():
        raise InvalidRequest("give the announcement a --title")
    return title


def spoken_text(ctx: ServiceContext, text: str) -> str:
    """``text`` exactly as TTS will read it (numbers, dates, abbreviations spelled out).

    Needs no permission: nothing is stored and nothing plays.
    """
    settings = audio_settings(ctx.settings.data_dir)
    return audio.normalize_text(text, extra_abbreviations=settings.extra_abbreviations)


def make_from_text(
    ctx: ServiceContext,
    actor: Actor,
    text: str,
    *,
    title: str | None,
    engine: str = "auto",
    speed: float = 1.0,
    progress: ProgressFn | None = None,
) -> AnnouncementView:
    """Render ``text`` with TTS and keep it as an announcement."""
    title = _titled(title)
    _author(ctx, actor, "announce.tts", title)
    data_dir = ctx.settings.data_dir
    with ctx.session() as s:
        ann = announcements.create_from_text(
            s,
            data_dir,
            text,
            title=title,
            engine=engine,
            speed=speed,
            created_by=actor.name,
            progress=progress,
        )
        announcements.prune_media(s, data_dir)
        return AnnouncementView.of(ann)


def make_from_file(
    ctx: ServiceContext,
    actor: Actor,
    path: Path,
    *,
    title: str | None,
    progress: ProgressFn | None = None,
) -> AnnouncementView:
    """Process a recording (trim, loudness, chime, encode) and keep it as an announcement."""
    title = _titled(title)
    _author(ctx, actor, "announce.file", title)
    data_dir = ctx.settings.data_dir
    with ctx.session() as s:
        ann = announcements.create_from_file(
            s, data_dir, path, title=title, created_by=actor.name, progress=progress
        )
        announcements.prune_media(s, data_dir)
        return AnnouncementView.of(ann)


def current(ctx: ServiceContext, actor: Actor) -> list[AnnouncementView]:
    """Every current announcement, newest first."""
    authorize(ctx, actor, Permission.VIEW, action="announce.list")
    with ctx.session() as s:
        return [AnnouncementView.of(a) for a in announcements.list_all(s)]


def show(ctx: ServiceContext, actor: Actor, announcement_id: str) -> AnnouncementView:
    """One announcement; ``NotFoundError`` if there is none (or it was removed)."""
    authorize(ctx, actor, Permission.VIEW, action="announce.show", target=announcement_id)
    with ctx.session() as s:
        return AnnouncementView.of(announcements.get(s, announcement_id))


def preview(
    ctx: ServiceContext, actor: Actor, announcement_id: str, output: Path
) -> AnnouncementView:
    """Copy the exact audio the clusters will play to ``output``."""
    authorize(ctx, actor, Permission.VIEW, action="announce.preview", target=announcement_id)
    with ctx.session() as s:
        ann = AnnouncementView.of(announcements.get(s, announcement_id))
    stored = MediaStore(ctx.settings.media_dir).path_for(ann.sha256)
    if stored is None:
        raise LoudspeakerError(
            f"the audio of {ann.id} is no longer in the media directory; make it again"
        )
    try:
        shutil.copyfile(stored, output)
    except OSError as exc:
        raise LoudspeakerError(f"cannot write {output}: {exc}") from None
    return ann


def remove(ctx: ServiceContext, actor: Actor, announcement_id: str) -> AnnouncementView:
    """Remove an announcement (refused while a broadcast or schedule still needs it)."""
    _author(ctx, actor, "announce.remove", announcement_id)
    with ctx.session() as s:
        ann = announcements.remove(s, announcement_id)
        audit.record(s, actor.name, "announce.remove", ann.id, role=actor.role)
        s.commit()
        announcements.prune_media(s, ctx.settings.data_dir)
        return AnnouncementView.of(ann)
