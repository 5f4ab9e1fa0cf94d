"""The commands the controller (or, with it down, the CLI) sends to clusters, built here.

One place, so the dispatcher and the CLI's direct emergency path send the same bytes.
(Formerly ``loudspeaker/outbox.py``: it builds commands, it is not a transactional outbox.)
"""

from __future__ import annotations

from datetime import datetime

from firmware_bridge.protocol import (
    MediaRef,
    PlayCommand,
    Priority,
    StopCommand,
    WithdrawCommand,
    new_id,
)
from loudspeaker.db import as_utc
from loudspeaker.models import Broadcast, Delivery, MediaRecord


def media_url(base_url: str, media: MediaRecord) -> str:
    """The content-addressed URL clusters fetch ``media`` from."""
    return f"{base_url.rstrip('/')}/media/{media.sha256}.{media.format}"


def play_command(
    delivery: Delivery,
    broadcast: Broadcast,
    media: MediaRecord,
    *,
    media_base_url: str,
    issued_at: datetime,
    expires_at: datetime,
) -> PlayCommand:
    """The PlayCommand for one delivery (same id every time it is sent)."""
    return PlayCommand(
        id=delivery.command_id,
        cluster=delivery.cluster_id,
        broadcast=broadcast.id,
        issued_at=issued_at,
        expires_at=expires_at,
        priority=Priority(broadcast.priority),
        title=broadcast.title[:200],
        media=MediaRef(
            url=media_url(media_base_url, media),
            sha256=media.sha256,
            size=media.size,
            duration_s=media.duration_s,
            mime=media.mime,
        ),
        repeat=broadcast.repeat,
        gap_s=broadcast.gap_s,
        volume=broadcast.volume,
        start_at=as_utc(delivery.start_at),
    )


def stop_command(
    cluster: str, broadcast: str | None, *, issued_at: datetime, expires_at: datetime
) -> StopCommand:
    """A StopCommand for one cluster."""
    return StopCommand(
        id=new_id(),
        cluster=cluster,
        broadcast=broadcast,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def withdraw_command(
    delivery: Delivery, *, issued_at: datetime, expires_at: datetime
) -> WithdrawCommand:
    """A WithdrawCommand taking back ``delivery``'s play command (a schedule changed)."""
    return WithdrawCommand(
        id=new_id(),
        cluster=delivery.cluster_id,
        broadcast=delivery.broadcast_id,
        command=delivery.command_id,
        issued_at=issued_at,
        expires_at=expires_at,
    )
