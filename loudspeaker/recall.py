"""Taking broadcasts back: an operator's stop, a changed schedule's withdraw.

Run by the dispatcher's thread inside its transaction. What was never sent ends
``failed`` at once; what a cluster holds gets a command, and the cluster's answer (through
the dispatcher's acks) ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session, col, select

from loudspeaker import delivery
from loudspeaker.db import as_utc
from loudspeaker.exceptions import KeystoreError
from loudspeaker.models import Delivery, DeliveryState, StopRequest
from loudspeaker.sending import CommandSender

logger = logging.getLogger(__name__)


def carry_out_stops(s: Session, sender: CommandSender, t: datetime) -> None:
    """Send every pending operator stop to the clusters of its broadcast."""
    pending = s.exec(select(StopRequest).where(col(StopRequest.handled_at).is_(None))).all()
    for req in pending:
        for d in s.exec(select(Delivery).where(Delivery.broadcast_id == req.broadcast_id)).all():
            _stop_one(s, sender, d, req, t)
        req.handled_at = t
        s.add(req)
        logger.info("stop of broadcast %s sent", req.broadcast_id)


def _stop_one(
    s: Session, sender: CommandSender, d: Delivery, req: StopRequest, t: datetime
) -> None:
    state = DeliveryState(d.state)
    if state.final:
        return
    if state is DeliveryState.QUEUED and d.id not in sender.inflight:
        delivery.record(s, d, delivery.failed(t, "stopped by operator before it was sent"))
        return
    # The cluster answers with the item's fate ("stopped by operator...").
    try:
        sender.stop(d, req.broadcast_id, t, as_utc(d.expires_at) or t + sender.command_ttl)
    except KeystoreError as exc:
        s.add(delivery.note(d, "stop-failed", t, str(exc)))
        return
    why = f"stop requested by {req.requested_by or 'operator'}"
    s.add(delivery.note(d, "stop-sent", t, why))


def withdraw(
    s: Session, sender: CommandSender, delivery_ids: Sequence[int], reason: str, t: datetime
) -> None:
    """Take back deliveries that have not started (a schedule changed).

    Queued ones end ``failed`` at once; sent or staged ones get a ``withdraw`` command and
    end ``failed`` when the cluster confirms; playing ones are left to finish.
    """
    for delivery_id in delivery_ids:
        d = s.get(Delivery, delivery_id)
        if d is None or DeliveryState(d.state).final:
            continue
        if d.state == DeliveryState.QUEUED.value and delivery_id not in sender.inflight:
            delivery.record(s, d, delivery.failed(t, f"withdrawn: {reason}"))
            continue
        if d.state == DeliveryState.PLAYING.value:
            logger.info("%s on %s is playing; not withdrawn", d.broadcast_id, d.cluster_id)
            continue
        expires = as_utc(d.expires_at) or t + sender.command_ttl
        try:
            sender.withdraw(d, t, max(expires, t + sender.command_ttl))
        except KeystoreError as exc:
            s.add(delivery.note(d, d.state, t, f"withdraw not sent: {exc}"))
            continue
        s.add(delivery.note(d, d.state, t, f"withdraw sent: {reason}"))
