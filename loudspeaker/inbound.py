"""Inbound MQTT on the controller: each message is validated and decoded once, here.

:class:`InboundRouter` runs on the MQTT loop thread. It parses the topic, checks the site
and the payload against the wire contract (firmware_bridge/protocol.py) and that the
message names the cluster whose topic it came on, then hands one typed event to every
worker registered for its kind (acks to the dispatcher and the schedule runner; status to
the dispatcher and the health monitor; heartbeats and control results to the health
monitor). What fails is logged with the payload and counted in :class:`Drops` by reason;
nothing raised here can reach the loop.

Workers count the drops they decide themselves (an ack for a command nobody sent, a
heartbeat from a cluster not in the site) in the same :class:`Drops`, so the metrics
endpoint has one count per reason.

Overload (docs/protocol.md, "Limits"): every message takes a token from its cluster's
bucket (loudspeaker/flooding.py). Past the limit the router still hands on status and
heartbeats (the latest of each per cluster; the inboxes coalesce them, so nothing more
reaches the database) and acks of commands the dispatcher waits on (``awaits``); other acks and
control results are dropped as ``rate-limited``. Each worker's inbox coalesces by
:func:`coalesce_key` and is bounded; :func:`must_keep` says what it never refuses.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from firmware_bridge.exceptions import PayloadTooDeep, PayloadTooLarge, ProtocolError
from firmware_bridge.protocol import (
    MAX_PAYLOAD_BYTES,
    Ack,
    ControlResult,
    Heartbeat,
    Kind,
    Status,
    Topic,
    decode_ack,
    decode_heartbeat,
    decode_result,
    decode_status,
)
from loudspeaker.flooding import FloodGuard
from loudspeaker.models import now
from loudspeaker.throttled_log import Throttle

logger = logging.getLogger(__name__)

# The command id of an ack, found without decoding it (a flooding box's acks).
_COMMAND_FIELD = re.compile(rb'"command"\s*:\s*"([A-Za-z0-9-]{1,64})"')
# The state of a status, found without decoding it (a flooding box's held-back status).
_STATE_FIELD = re.compile(rb'"state"\s*:\s*"(online|offline)"')


@dataclass(frozen=True)
class AckIn:
    """A cluster's acknowledgement of a play command, as received."""

    ack: Ack
    at: datetime
    # The dispatcher waits on this command (an unfinished delivery): never dropped.
    awaited: bool = False


@dataclass(frozen=True)
class StatusIn:
    """A cluster's retained online/offline status, as received."""

    status: Status
    at: datetime


@dataclass(frozen=True)
class HeartbeatIn:
    """A cluster's heartbeat, as received."""

    heartbeat: Heartbeat
    at: datetime


@dataclass(frozen=True)
class ResultIn:
    """A cluster's answer to a control command, as received."""

    result: ControlResult
    at: datetime


InboundEvent = AckIn | StatusIn | HeartbeatIn | ResultIn


class DropReason(StrEnum):
    """Why a message was dropped (the ``reason`` label of the metric)."""

    BAD_TOPIC = "bad-topic"
    FOREIGN_SITE = "foreign-site"
    MALFORMED = "malformed"
    TOO_LARGE = "too-large"
    TOO_DEEP = "too-deep"
    RATE_LIMITED = "rate-limited"  # its box is over its rate limit (flooding)
    QUEUE_FULL = "queue-full"  # a worker's inbox was full
    CLUSTER_MISMATCH = "cluster-mismatch"
    UNKNOWN_CLUSTER = "unknown-cluster"
    UNKNOWN_COMMAND = "unknown-command"
    WRONG_BROADCAST = "wrong-broadcast"
    NOT_APPLIED = "not-applied"  # a bug or an unexpected value while applying it


class Drops:
    """Dropped inbound messages by kind and reason (thread safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[Kind | None, DropReason]] = Counter()

    def count(self, kind: Kind | None, reason: DropReason) -> None:
        """One more message of ``kind`` (None: not even the kind is known) dropped."""
        with self._lock:
            self._counts[(kind, reason)] += 1

    def total(self, kinds: Iterable[Kind | None] | None = None) -> int:
        """Drops of ``kinds`` (every kind when None)."""
        with self._lock:
            if kinds is None:
                return sum(self._counts.values())
            wanted = set(kinds)
            return sum(n for (kind, _), n in self._counts.items() if kind in wanted)

    def by_reason(self) -> dict[tuple[str, str], int]:
        """``(kind, reason) -> count`` (kind ``""`` when unknown), for the metrics."""
        with self._lock:
            return {
                (kind.value if kind else "", reason.value): n
                for (kind, reason), n in sorted(
                    self._counts.items(), key=lambda kv: (str(kv[0][0] or ""), kv[0][1])
                )
            }


class InboundRouter:
    """Validates and decodes each message once; hands typed events to workers by kind."""

    def __init__(
        self,
        site: str,
        *,
        drops: Drops | None = None,
        clock: Callable[[], datetime] = now,
        flood: FloodGuard | None = None,
    ) -> None:
        self.site = site
        self.drops = drops if drops is not None else Drops()
        self.clock = clock
        self.flood = flood if flood is not None else FloodGuard()
        # Whether the dispatcher waits on (cluster, command): set by the controller.
        self.awaits: Callable[[str, str], bool] = lambda _cluster, _command: False
        self._log = _DropLog()
        # The latest undecoded status (per state, as coalesce_key) and heartbeat of
        # flooding boxes, by (kind, cluster, state), oldest first.
        self._stash: dict[tuple[Kind, str, str], tuple[str, bytes, datetime]] = {}
        # on_message runs on the loop thread, flush_stash on a worker's.
        self._lock = threading.RLock()
        # Handlers by kind; each takes the event type of its kind (see the on_* methods).
        self._routes: dict[Kind, list[Callable[[Any], None]]] = {kind: [] for kind in Kind}

    # Handlers run on the MQTT loop thread: they must only queue the event, never block.

    def on_ack(self, handler: Callable[[AckIn], None]) -> None:
        """Hand every valid acknowledgement to ``handler``."""
        self._routes[Kind.ACK].append(handler)

    def on_status(self, handler: Callable[[StatusIn], None]) -> None:
        """Hand every valid status message to ``handler``."""
        self._routes[Kind.STATUS].append(handler)

    def on_heartbeat(self, handler: Callable[[HeartbeatIn], None]) -> None:
        """Hand every valid heartbeat to ``handler``."""
        self._routes[Kind.HEALTH].append(handler)

    def on_result(self, handler: Callable[[ResultIn], None]) -> None:
        """Hand every valid control result to ``handler``."""
        self._routes[Kind.RESULT].append(handler)

    def on_message(self, topic_name: str, payload: bytes) -> None:
        """MQTT handler: decode, check, route. Never raises."""
        with self._lock:
            self._handle(topic_name, payload, self.clock(), admit=True)

    def flush_stash(self) -> None:
        """Decode and route the latest status/heartbeat held back from flooding boxes.

        Called every iteration of a worker (any thread), so the last word of a box that
        stopped flooding is applied even if it sends nothing more.
        """
        with self._lock:
            stash, self._stash = self._stash, {}
            for topic_name, payload, at in stash.values():
                self._handle(topic_name, payload, at, admit=False)

    def _handle(self, topic_name: str, payload: bytes, at: datetime, *, admit: bool) -> None:
        kind = _kind_of(topic_name)
        try:
            event = self._decode(topic_name, payload, at, admit=admit)
        except _Dropped as drop:
            self.drops.count(kind, drop.reason)
            self._log.dropped(topic_name, kind, drop, payload)
            return
        except Exception:
            # A decoder bug must not end the MQTT loop: the message is lost, loudly.
            self.drops.count(kind, DropReason.MALFORMED)
            logger.exception("message on %s not understood; dropped", topic_name)
            return
        if event is None or kind is None:
            return
        for handler in self._routes.get(kind, ()):
            try:
                handler(event)
            except Exception:
                logger.exception("handler %r failed on a message on %s", handler, topic_name)

    def _decode(
        self, topic_name: str, payload: bytes, at: datetime, *, admit: bool
    ) -> InboundEvent | None:
        try:
            parsed = Topic.parse(topic_name)
        except ProtocolError as exc:
            raise _Dropped(DropReason.BAD_TOPIC, str(exc)) from None
        if parsed.site != self.site:
            raise _Dropped(
                DropReason.FOREIGN_SITE, f"message for site {parsed.site!r}, we serve {self.site!r}"
            )
        within = True
        if admit:
            # Every message counts against its box, even one that fails to decode.
            within = self.flood.admit(parsed.cluster)
            if within:
                self._unstash(parsed.cluster)  # what it said before this comes first
            elif self._held_back(parsed, topic_name, payload, at):
                return None
        try:
            event, named = self._payload(parsed.kind, payload, at)
        except PayloadTooLarge as exc:
            raise _Dropped(DropReason.TOO_LARGE, str(exc)) from None
        except PayloadTooDeep as exc:
            raise _Dropped(DropReason.TOO_DEEP, str(exc)) from None
        except ProtocolError as exc:
            raise _Dropped(DropReason.MALFORMED, str(exc)) from None
        if event is None:
            return None
        if named != parsed.cluster:
            raise _Dropped(
                DropReason.CLUSTER_MISMATCH,
                f"{parsed.kind.value} names cluster {named!r} on {parsed.cluster!r}'s topic",
            )
        if isinstance(event, AckIn) and self.awaits(event.ack.cluster, event.ack.command):
            event = AckIn(event.ack, event.at, awaited=True)
        if not within and isinstance(event, AckIn | ResultIn) and not must_keep(event):
            raise _Dropped(
                DropReason.RATE_LIMITED, f"{parsed.cluster} is over its rate limit (flooding)"
            )
        return event

    def _held_back(self, parsed: Topic, topic_name: str, payload: bytes, at: datetime) -> bool:
        """A message past its box's rate limit, dealt with before the costly decoding.

        Only the latest heartbeat and the latest status of each state are kept, undecoded
        (an offline then online keeps its transition, as in :func:`coalesce_key`); acks are
        decoded only when they name a command the dispatcher waits on; control results
        are dropped. True: nothing more to do with it now.
        """
        if parsed.kind in (Kind.STATUS, Kind.HEALTH):
            state = b""
            if parsed.kind is Kind.STATUS:
                m = _STATE_FIELD.search(payload[:MAX_PAYLOAD_BYTES])
                state = m.group(1) if m is not None else b""
            key = (parsed.kind, parsed.cluster, state.decode())
            self._stash.pop(key, None)  # the newest goes to the back
            self._stash[key] = (topic_name, payload, at)
            return True
        if parsed.kind is Kind.ACK:
            # A cheap look at the command id; a payload that lies here is decoded in full
            # (and checked) or dropped, either way no harm.
            m = _COMMAND_FIELD.search(payload[:MAX_PAYLOAD_BYTES])
            if m is not None and self.awaits(parsed.cluster, m.group(1).decode()):
                return False
        raise _Dropped(
            DropReason.RATE_LIMITED, f"{parsed.cluster} is over its rate limit (flooding)"
        )

    def _unstash(self, cluster: str) -> None:
        if not self._stash:
            return
        for key in [k for k in self._stash if k[1] == cluster]:
            self._handle(*self._stash.pop(key), admit=False)

    @staticmethod
    def _payload(kind: Kind, payload: bytes, at: datetime) -> tuple[InboundEvent | None, str]:
        if kind is Kind.ACK:
            ack = decode_ack(payload)
            return AckIn(ack, at), ack.cluster
        if kind is Kind.STATUS:
            if not payload:
                return None, ""  # a retained message being cleared
            status = decode_status(payload)
            return StatusIn(status, at), status.cluster
        if kind is Kind.HEALTH:
            hb = decode_heartbeat(payload)
            return HeartbeatIn(hb, at), hb.cluster
        if kind is Kind.RESULT:
            res = decode_result(payload)
            return ResultIn(res, at), res.cluster
        return None, ""  # our own commands, should a subscription ever cover them


class _Dropped(Exception):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _kind_of(topic_name: str) -> Kind | None:
    try:
        return Kind(topic_name.rsplit("/", 1)[-1])
    except ValueError:
        return None


def event_kind(event: object) -> Kind | None:
    """The wire kind an inbound event came as (None: one of a worker's own events)."""
    if isinstance(event, AckIn):
        return Kind.ACK
    if isinstance(event, StatusIn):
        return Kind.STATUS
    if isinstance(event, HeartbeatIn):
        return Kind.HEALTH
    if isinstance(event, ResultIn):
        return Kind.RESULT
    return None


def coalesce_key(event: object) -> Hashable | None:
    """What an inbound event is about: a worker's inbox keeps only the latest of each.

    A status is keyed by its cluster and state: a reboot's ``offline`` then ``online``
    queued together stay two events (the offline spell and the disconnect count need
    both), while a flood of toggles is at most two, the newest moved to the back, so the
    latest state still wins. The latest heartbeat of a cluster wins (its readings are a
    level, not a transition); repeats of one ack state for one command, and of one
    control result, collapse into one. A worker's own events (None) are never coalesced.
    """
    if isinstance(event, StatusIn):
        return (Kind.STATUS, event.status.cluster, event.status.state)
    if isinstance(event, HeartbeatIn):
        return (Kind.HEALTH, event.heartbeat.cluster)
    if isinstance(event, AckIn):
        ack = event.ack
        # Only true repeats collapse: an ack naming another broadcast (forged, or a bug)
        # must never stand in for the genuine one queued before it.
        return (Kind.ACK, ack.cluster, ack.command, ack.broadcast, ack.state)
    if isinstance(event, ResultIn):
        return (Kind.RESULT, event.result.cluster, event.result.command)
    return None


def must_keep(event: object) -> bool:
    """Events a full inbox still takes: a worker's own, acks the dispatcher waits on, status.

    A status is retained and sent again only when it changes: one refused would leave its
    cluster's availability wrong for good. Coalescing bounds them (two per cluster, see
    :func:`coalesce_key`). Heartbeats may be refused: the next one comes within minutes.
    """
    if isinstance(event, AckIn):
        return event.awaited
    if isinstance(event, StatusIn):
        return True
    return event_kind(event) is None


class _DropLog:
    """One WARNING per kind and reason every ``every_s``, with how many were dropped since.

    A flood of bad messages must not become a flood of log lines.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        self._throttle = Throttle(every_s)

    def dropped(self, topic_name: str, kind: Kind | None, drop: _Dropped, payload: bytes) -> None:
        n = self._throttle.tick((kind, drop.reason))
        if not n:
            return
        more = f" ({n - 1} more like it since the last report)" if n > 1 else ""
        logger.warning(
            "dropped message on %s: %s; payload %r%s",
            topic_name,
            drop.detail,
            payload[:200],
            more,
        )
