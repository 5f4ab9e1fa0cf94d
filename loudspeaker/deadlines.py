"""When the controller stops waiting for a cluster: the three deadline policies.

Pure: :func:`judge` looks at one active delivery (``sent`` to ``playing``) at time ``t``
and says whether to keep waiting, send it again, or give it up as ``unreachable`` (and
why). The dispatcher applies the verdict through the state machine (loudspeaker/delivery.py).

- **Emergency**: retried every ``emergency_retry`` while unanswered, given up only when it
  expires (its validity): a cluster offline now may come back in time.
- **Timed** (a scheduled item staged ahead, ``start_at`` set): it waits on the cluster until
  its air time, possibly pushed up to its expiry by an overrun; deadlines count from there.
- **Immediate** (everything else): an answer within ``ack_timeout`` of being sent, then a
  final answer within the fetch allowance plus air time plus a margin of the last sign of
  progress (up to the command's lifetime for an item interrupted by an emergency).

Silence only counts while the controller listens (``listening_since``): time it was down
or cut off from the broker proves nothing about the clusters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from loudspeaker.db import as_utc
from loudspeaker.models import Delivery, DeliveryState

# Time a cluster gets to fetch the audio before playback must have started.
FETCH_ALLOWANCE = timedelta(seconds=60)
FINAL_MARGIN = timedelta(seconds=30)


class Policy(StrEnum):
    """Which deadline rule a delivery follows."""

    EMERGENCY = "emergency"
    TIMED = "timed"
    IMMEDIATE = "immediate"


class Action(StrEnum):
    """What to do about one delivery now."""

    WAIT = "wait"
    RESEND = "resend"
    GIVE_UP = "give-up"  # unreachable, with the verdict's reason


@dataclass(frozen=True)
class Rules:
    """The controller's deadline settings."""

    ack_timeout: timedelta
    command_ttl: timedelta
    emergency_retry: timedelta = timedelta(seconds=3)


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` decided, and why (the delivery's reason when giving up)."""

    action: Action
    reason: str = ""


WAIT = Verdict(Action.WAIT)


def air_time(duration_s: float, repeat: int, gap_s: float) -> timedelta:
    """How long a broadcast plays: every repeat and the gaps between them."""
    return timedelta(seconds=duration_s * repeat + gap_s * (repeat - 1))


def policy_of(d: Delivery, *, emergency: bool) -> Policy:
    """The rule ``d`` follows."""
    if emergency:
        return Policy.EMERGENCY
    return Policy.TIMED if d.start_at is not None else Policy.IMMEDIATE


def judge(
    d: Delivery,
    t: datetime,
    rules: Rules,
    *,
    emergency: bool,
    air: timedelta,
    listening_since: datetime,
    last_sent: datetime | None = None,
) -> Verdict:
    """The verdict on active delivery ``d`` at ``t``.

    ``air`` is the broadcast's air time; ``last_sent`` when the controller last published
    ``d`` (for emergency retries; the row's ``sent_at`` when not known).
    """
    policy = policy_of(d, emergency=emergency)
    if policy is Policy.EMERGENCY:
        return _emergency(d, t, rules, last_sent)
    if policy is Policy.TIMED:
        return _timed(d, t, rules, air)
    return _immediate(d, t, rules, air, listening_since)


def _emergency(d: Delivery, t: datetime, rules: Rules, last_sent: datetime | None) -> Verdict:
    expires = as_utc(d.expires_at)
    if expires is not None and t >= expires:
        if d.state == DeliveryState.SENT.value:
            why = "no answer before the emergency expired (cluster offline?)"
        else:
            why = f"emergency expired before a final answer (last state {d.state})"
        return Verdict(Action.GIVE_UP, why)
    if d.state != DeliveryState.SENT.value:
        return WAIT
    last = last_sent or as_utc(d.sent_at) or t
    if t - last >= rules.emergency_retry:
        return Verdict(Action.RESEND, "no answer yet; sent again")
    return WAIT


def _timed(d: Delivery, t: datetime, rules: Rules, air: timedelta) -> Verdict:
    start_at = as_utc(d.start_at)
    assert start_at is not None
    latest_start = max(as_utc(d.expires_at) or start_at, start_at)
    if d.state in (DeliveryState.SENT.value, DeliveryState.RECEIVED.value):
        # The broker keeps the command for a cluster that is offline now; it is only lost
        # once it can no longer start.
        if t > latest_start + rules.ack_timeout:
            return Verdict(
                Action.GIVE_UP,
                f"not staged on the cluster before its air time (last state {d.state})",
            )
        return WAIT
    if t - latest_start > air + FINAL_MARGIN:
        return Verdict(Action.GIVE_UP, f"no final acknowledgement (last state {d.state})")
    return WAIT


def _immediate(
    d: Delivery, t: datetime, rules: Rules, air: timedelta, listening_since: datetime
) -> Verdict:
    if d.state == DeliveryState.SENT.value:
        sent = max(as_utc(d.sent_at) or t, listening_since)
        if t - sent > rules.ack_timeout:
            secs = rules.ack_timeout.total_seconds()
            return Verdict(Action.GIVE_UP, f"no answer within {secs:.0f} s")
        return WAIT
    # Counted from the last sign of progress; an item interrupted by an emergency waits for
    # the emergency to end, up to the command's lifetime.
    start = max(as_utc(d.updated_at) or t, listening_since)
    allowance = FETCH_ALLOWANCE + air + FINAL_MARGIN
    if d.reason.startswith("interrupted"):
        allowance = max(allowance, rules.command_ttl)
    if t - start > allowance:
        return Verdict(Action.GIVE_UP, f"no final acknowledgement (last state {d.state})")
    return WAIT


def staged_ahead(d: Delivery, at: datetime) -> bool:
    """A timed item stored on its cluster before its (latest) start: the box plays it by
    its own clock, so losing sight of the cluster now does not lose it."""
    start_at = as_utc(d.start_at)
    if start_at is None or d.state != DeliveryState.STAGED.value:
        return False
    return max(as_utc(d.expires_at) or start_at, start_at) > at
