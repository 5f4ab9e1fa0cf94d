"""The delivery state machine: where one broadcast stands on one cluster, and what moves it.

Pure: :func:`transition` takes a delivery's current state and one event and says what the
delivery becomes and what the trail records; :func:`apply` writes that onto the row in
memory and returns the trail entry to add. No session, no broker: every path that changes
a delivery (the dispatcher, the CLI's direct emergency send) goes through here, and the
rules are tested on their own (tests/test_delivery.py). :func:`record` is the one
convenience that touches a session: it only adds the rows.

The rules (docs/protocol.md, state machine):

- states only move forward (``queued`` < ``sent`` < ``received`` < ``staged`` <
  ``playing`` < final); a report of an earlier step is refused, but recorded in the trail;
- a final state stays final, with one exception: a cluster given up on as
  ``unreachable`` that later reports ``played`` or ``failed`` is believed (the truth wins,
  and the trail shows both);
- the same step reported again (a replay after an interruption) only says "still alive";
- every report, applied or refused, is recorded in the trail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from firmware_bridge.protocol import AckState
from loudspeaker.models import Delivery, DeliveryEvent, DeliveryState

if TYPE_CHECKING:
    from sqlmodel import Session

logger = logging.getLogger(__name__)

ACK_TO_STATE = {
    AckState.RECEIVED: DeliveryState.RECEIVED,
    AckState.STAGED: DeliveryState.STAGED,
    AckState.PLAYING: DeliveryState.PLAYING,
    AckState.PLAYED: DeliveryState.PLAYED,
    AckState.FAILED: DeliveryState.FAILED,
}
# What an interrupted item records in the trail: it is not a state of its own.
INTERRUPTED = "interrupted"
# What a direct send by the CLI records: the delivery's own reason stays empty.
SENT_DIRECTLY = "sent directly by the CLI (controller not running)"


class Move(StrEnum):
    """How a transition changed the delivery."""

    FORWARD = "forward"  # a later state: it moves there
    LATE_TRUTH = "late-truth"  # unreachable, then the cluster's final word: believed
    REPEATED = "repeated"  # the same step again: only "still alive"
    NOTED = "noted"  # a note that moves nothing but the reason (an interruption)
    REFUSED = "refused"  # backwards, or after a final state: trail only


@dataclass(frozen=True)
class Event:
    """Something that happened to one delivery.

    ``reason`` becomes the delivery's reason where the rules say so; ``note`` (when set)
    is what the trail records instead of it.
    """

    state: DeliveryState
    at: datetime
    reason: str = ""
    cluster_ts: datetime | None = None
    note: str | None = None


@dataclass(frozen=True)
class Transition:
    """What an event does to a delivery: its new state and reason, and the trail entry."""

    move: Move
    state: DeliveryState
    trail_state: str
    at: datetime
    trail_reason: str
    cluster_ts: datetime | None = None
    reason: str | None = None  # None: the delivery's reason is left as it is
    touch: bool = False  # updated_at = at
    stamp: bool = False  # {state}_at = at


# -- events -------------------------------------------------------------------------------


def sent(at: datetime, *, note: str | None = None) -> Event:
    """The broker accepted the command (PUBACK)."""
    return Event(DeliveryState.SENT, at, note=note)


def broker_refused(at: datetime, why: str) -> Event:
    """The broker refused the command (or never confirmed it)."""
    return Event(DeliveryState.FAILED, at, f"broker refused: {why}")


def acked(state: AckState, at: datetime, cluster_ts: datetime, reason: str = "") -> Event:
    """The cluster reported a step (every ack state but ``interrupted``)."""
    return Event(ACK_TO_STATE[state], at, reason, cluster_ts)


def failed(at: datetime, why: str) -> Event:
    """The controller gives the delivery up as failed (not sendable, stopped, withdrawn)."""
    return Event(DeliveryState.FAILED, at, why)


def unreachable(at: datetime, why: str) -> Event:
    """The cluster did not answer in time, or went away."""
    return Event(DeliveryState.UNREACHABLE, at, why)


# -- the rules ----------------------------------------------------------------------------


def transition(current: DeliveryState, event: Event) -> Transition:
    """What ``event`` does to a delivery in state ``current``."""
    state = event.state
    late_truth = current is DeliveryState.UNREACHABLE and state in (
        DeliveryState.PLAYED,
        DeliveryState.FAILED,
    )
    if not late_truth and (current.final or state.rank < current.rank):
        return _recorded(Move.REFUSED, current, event)
    if state is current:
        # The same step reported again (a replay after an interruption): still alive.
        cleared = "" if state is DeliveryState.PLAYING else None
        return _recorded(Move.REPEATED, current, event, reason=cleared, touch=True)
    reason: str | None = None
    if state in (DeliveryState.FAILED, DeliveryState.UNREACHABLE) or event.reason:
        reason = event.reason
    elif state is DeliveryState.PLAYED:
        reason = ""
    move = Move.LATE_TRUTH if late_truth else Move.FORWARD
    return _recorded(move, state, event, reason=reason, touch=True, stamp=True)


def _recorded(
    move: Move,
    state: DeliveryState,
    event: Event,
    *,
    reason: str | None = None,
    touch: bool = False,
    stamp: bool = False,
) -> Transition:
    return Transition(
        move=move,
        state=state,
        trail_state=event.state.value,
        at=event.at,
        trail_reason=event.reason if event.note is None else event.note,
        cluster_ts=event.cluster_ts,
        reason=reason,
        touch=touch,
        stamp=stamp,
    )


def interruption(
    current: DeliveryState, at: datetime, cluster_ts: datetime | None, reason: str
) -> Transition:
    """An emergency pre-empted the item; the cluster re-queued it and will play it again."""
    if current.final:
        return Transition(Move.REFUSED, current, INTERRUPTED, at, reason, cluster_ts)
    return Transition(
        Move.NOTED,
        current,
        INTERRUPTED,
        at,
        reason,
        cluster_ts,
        reason=reason or INTERRUPTED,
        touch=True,
    )


def apply(d: Delivery, tr: Transition) -> DeliveryEvent:
    """Write ``tr`` onto ``d`` (in memory) and return the trail entry to add."""
    if tr.stamp:
        d.state = tr.state.value
        setattr(d, f"{tr.state.value}_at", tr.at)
    if tr.reason is not None:
        d.reason = tr.reason
    if tr.touch:
        d.updated_at = tr.at
    return DeliveryEvent(
        delivery_id=d.id or 0,
        state=tr.trail_state,
        at=tr.at,
        cluster_ts=tr.cluster_ts,
        reason=tr.trail_reason,
    )


def advance(d: Delivery, event: Event) -> tuple[Transition, DeliveryEvent]:
    """:func:`transition` from ``d``'s state, applied to ``d``."""
    tr = transition(DeliveryState(d.state), event)
    return tr, apply(d, tr)


def note(d: Delivery, label: str, at: datetime, reason: str) -> DeliveryEvent:
    """A trail entry that moves nothing (a re-send, a stop or withdraw sent)."""
    return DeliveryEvent(delivery_id=d.id or 0, state=label, at=at, reason=reason)


def record(session: Session, d: Delivery, event: Event) -> Transition:
    """Apply ``event`` to ``d`` and add the row and its trail entry to ``session``."""
    tr, trail = advance(d, event)
    if tr.move is Move.LATE_TRUTH:
        # A cluster we gave up on reports later: the truth wins, and the trail shows it.
        logger.info("late %s from %s for %s", tr.state.value, d.cluster_id, d.broadcast_id)
    session.add(trail)
    if tr.move is not Move.REFUSED:
        session.add(d)
    return tr
