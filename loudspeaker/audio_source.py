"""What a broadcast or an emergency plays: the one resolver of every way to give it.

A source is a recording on disk, a prepared announcement (its stored audio plays as is,
with no rendering), a tone (the emergency siren), or text spoken by TTS. Broadcasts,
emergencies and announcements all render through here, with the site's own chime and
abbreviations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

import audio
from loudspeaker.exceptions import InvalidRequest, LoudspeakerError, NotFoundError
from loudspeaker.media import MediaStore
from loudspeaker.models import Announcement, MediaRecord

AUDIO_SUFFIXES = (".mp3", ".wav", ".m4a", ".ogg", ".opus", ".amr", ".3gp", ".aac", ".flac")
SIREN_SECONDS = 8.0
# Longer than any file name: such an argument is text to speak, never a path.
_MAX_PATH_ARGUMENT = 255


def audio_settings(data_dir: Path) -> audio.AudioSettings:
    """Audio settings with the site's own chime and abbreviations when it has them."""
    chime = next((p for p in sorted(data_dir.glob("chime.*")) if p.is_file()), None)
    abbreviations = data_dir / "abbreviations.toml"
    return audio.AudioSettings(
        chime_path=chime,
        extra_abbreviations=abbreviations if abbreviations.is_file() else None,
    )


@dataclass(frozen=True)
class SourceRequest:
    """How the audio was asked for: at most one of recording, announcement and tone;
    with none of them the text is spoken."""

    text: str = ""
    recording: Path | None = None
    announcement: str | None = None
    tone: str | None = None
    engine: str = "auto"

    def __post_init__(self) -> None:
        chosen = [self.recording is not None, self.announcement is not None, self.tone is not None]
        if sum(chosen) > 1:
            raise InvalidRequest("choose one of --recording, --siren and --announcement, not both")


@dataclass(frozen=True)
class AudioSource:
    """The audio ready to register, and how the broadcast row describes where it came from."""

    audio: audio.RenderedAudio
    kind: str  # text | file | tone (an announcement: the kind it was made from)
    source: str  # the text, the file name, the tone
    title: str  # a default title for the broadcast
    announcement_id: str | None = None


def stored_audio(session: Session, media_dir: Path, ann: Announcement) -> audio.RenderedAudio:
    """The audio an announcement was rendered to, as stored (nothing is rendered again)."""
    media = session.get(MediaRecord, ann.media_sha256)
    stored = MediaStore(media_dir).path_for(ann.media_sha256)
    if media is None or stored is None:
        raise LoudspeakerError(
            f"the audio of announcement {ann.id} is gone from the media directory; make it again"
        )
    return audio.RenderedAudio(
        path=stored,
        sha256=media.sha256,
        size=media.size,
        duration_s=media.duration_s,
        format=media.format,
        mime=media.mime,
        engine=ann.engine,
        spoken_text=ann.spoken_text or None,
    )


def current_announcement(session: Session, announcement_id: str) -> Announcement | None:
    """The announcement with this id unless it does not exist or was removed."""
    ann = session.get(Announcement, announcement_id)
    return ann if ann is not None and ann.removed_at is None else None


def resolve_source(session: Session, data_dir: Path, req: SourceRequest) -> AudioSource:
    """Render (or, for an announcement, look up) the audio ``req`` asks for."""
    media_dir = data_dir / "media"
    if req.announcement is not None:
        ann = current_announcement(session, req.announcement)
        if ann is None:
            raise NotFoundError(
                f"no announcement {req.announcement!r} (see `loudspeaker announce list`)"
            )
        return AudioSource(
            stored_audio(session, media_dir, ann), ann.kind, ann.source, ann.title, ann.id
        )
    if req.tone is not None:
        rendered = audio.render_tone(req.tone, cache_dir=media_dir, seconds=SIREN_SECONDS)
        return AudioSource(rendered, "tone", req.tone, req.text[:60] or req.tone)
    settings = audio_settings(data_dir)
    if req.recording is not None:
        rendered = audio.render_recording(req.recording, cache_dir=media_dir, settings=settings)
        return AudioSource(rendered, "file", req.recording.name, req.recording.stem)
    rendered = audio.render_text(
        req.text, cache_dir=media_dir, engine=req.engine, settings=settings
    )
    return AudioSource(rendered, "text", req.text, req.text[:60])


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a long text is "File name too long", not a file
        return False


# What an announcement id looks like (announcements._new_id): 8 lower-case hex digits.
_ANNOUNCEMENT_ID = re.compile(r"[0-9a-f]{8}")


def request_from_argument(session: Session, what: str, engine: str) -> SourceRequest:
    """Read one free-form argument: an existing recording, an announcement id, or text.

    A name that looks like an audio file but does not exist is refused rather than read
    out loud.
    """
    path = Path(what)
    if _is_file(path):
        return SourceRequest(recording=path, engine=engine)
    if len(what) < _MAX_PATH_ARGUMENT and path.suffix.lower() in AUDIO_SUFFIXES:
        raise InvalidRequest(f"audio file {what} does not exist")
    if current_announcement(session, what) is not None:
        return SourceRequest(announcement=what, engine=engine)
    if _ANNOUNCEMENT_ID.fullmatch(what):
        # A mistyped or removed id must not be read out to the whole commune as a word.
        raise NotFoundError(
            f"no announcement {what!r} (see `loudspeaker announce list`); to speak these "
            "characters, write them as a sentence"
        )
    return SourceRequest(text=what, engine=engine)
