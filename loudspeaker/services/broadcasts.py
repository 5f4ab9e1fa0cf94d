"""Broadcasts now: send, follow, list. Every face calls these; none repeats their rules."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from firmware_bridge.protocol import Priority
from loudspeaker import audit
from loudspeaker.audio_source import request_from_argument, resolve_source
from loudspeaker.auth import Actor, Permission, authorize, hamlets_of
from loudspeaker.broadcasts import (
    BroadcastView,
    broadcast_status,
    create_broadcast,
    recent_broadcasts,
    register_media,
)
from loudspeaker.exceptions import InvalidRequest
from loudspeaker.media import MediaStore
from loudspeaker.repeats import check_repeats
from loudspeaker.services.context import ServiceContext
from loudspeaker.targets import resolve_targets

POLL_S = 0.1
_STARTED = frozenset({"playing", "played", "failed", "unreachable"})


@dataclass(frozen=True)
class BroadcastRequest:
    """A broadcast to send now."""

    what: str  # a recording's path, an announcement id, or the text to speak
    to: str  # a target spec: all | hamlet:NAME | cluster:ID, comma-separated
    title: str | None = None  # default: the announcement's title, file name or text
    priority: Priority = Priority.NORMAL
    repeat: int = 1
    gap_s: float = 0.0
    engine: str = "auto"  # TTS engine for text: auto, gtts, offline

    def __post_init__(self) -> None:
        if not self.to.strip():
            raise InvalidRequest("say where: --to all | hamlet:NAME | cluster:ID")
        if self.priority is Priority.EMERGENCY:
            raise InvalidRequest("emergencies use `loudspeaker emergency`")


@dataclass(frozen=True)
class BroadcastSent:
    """A broadcast queued for the controller."""

    broadcast_id: str
    title: str
    clusters: int
    engine: str  # what rendered the audio (espeak-ng, gtts, recording, ...)
    duration_s: float
    size: int
    controller_notified: bool


def send(ctx: ServiceContext, actor: Actor, request: BroadcastRequest) -> BroadcastSent:
    """Render (or look up) the audio and queue it for every target cluster."""
    with ctx.session() as s:
        clusters = resolve_targets(s, request.to)
    authorize(
        ctx,
        actor,
        Permission.BROADCAST,
        hamlets_of(clusters),
        action="broadcast.create",
        target=request.to,
    )
    check_repeats(request.repeat, request.gap_s)
    with ctx.session() as s:
        source_request = request_from_argument(s, request.what, request.engine)
    # Rendering may take seconds (gTTS): in a session of its own, with no read left open.
    with ctx.session() as s:
        src = resolve_source(s, ctx.settings.data_dir, source_request)
    with ctx.session() as s:
        media = register_media(s, MediaStore(ctx.settings.media_dir), src.audio)
        b = create_broadcast(
            s,
            media=media,
            title=request.title or src.title,
            target=request.to,
            clusters=clusters,
            priority=request.priority,
            source_kind=src.kind,
            source=src.source,
            announcement_id=src.announcement_id,
            repeat=request.repeat,
            gap_s=request.gap_s,
            created_by=actor.name,
            commit=False,
        )
        audit.record(
            s,
            actor.name,
            "broadcast.create",
            request.to,
            detail={
                "broadcast": b.id,
                "title": b.title,
                "priority": b.priority,
                "clusters": len(clusters),
                "media": media.sha256,
            },
            role=actor.role,
        )
        s.commit()
    return BroadcastSent(
        broadcast_id=b.id,
        title=b.title,
        clusters=len(clusters),
        engine=src.audio.engine,
        duration_s=src.audio.duration_s,
        size=src.audio.size,
        controller_notified=ctx.notify_controller(),
    )


def status(ctx: ServiceContext, actor: Actor, broadcast_id: str) -> BroadcastView:
    """Where a broadcast stands on each cluster (an unambiguous id prefix will do)."""
    authorize(ctx, actor, Permission.VIEW, action="broadcast.status")
    with ctx.session() as s:
        return broadcast_status(s, broadcast_id)


def recent(ctx: ServiceContext, actor: Actor, limit: int = 20) -> list[BroadcastView]:
    """The newest broadcasts first, each with its status."""
    authorize(ctx, actor, Permission.VIEW, action="broadcast.list")
    with ctx.session() as s:
        return [broadcast_status(s, b.id) for b in recent_broadcasts(s, limit)]


def wait(
    ctx: ServiceContext,
    actor: Actor,
    broadcast_id: str,
    timeout_s: float,
    *,
    until: Literal["finished", "playing"] = "finished",
    on_update: Callable[[BroadcastView], None] | None = None,
) -> BroadcastView:
    """Follow a broadcast until every cluster is done (or has started, ``until="playing"``),
    or ``timeout_s`` passes; ``on_update`` sees every state read meanwhile."""
    view = status(ctx, actor, broadcast_id)
    deadline = time.monotonic() + timeout_s

    def reached(v: BroadcastView) -> bool:
        if until == "playing":
            return all(d.state in _STARTED for d in v.deliveries)
        return v.finished

    while not reached(view) and time.monotonic() < deadline:
        time.sleep(POLL_S)  # the database is the only place the state is (no event to wait on)
        with ctx.session() as s:
            view = broadcast_status(s, view.broadcast.id)
        if on_update is not None:
            on_update(view)
    return view
