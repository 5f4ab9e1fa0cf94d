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
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from firmware_bridge.exceptions import ProtocolError
from firmware_bridge.protocol import (
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
from loudspeaker.models import now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AckIn:
    """A cluster's acknowledgement of a play command, as received."""

    ack: Ack
    at: datetime


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
        self, site: str, *, drops: Drops | None = None, clock: Callable[[], datetime] = now
    ) -> None:
        self.site = site
        self.drops = drops if drops is not None else Drops()
        self.clock = clock
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
        at = self.clock()
        kind = _kind_of(topic_name)
        try:
            event = self._decode(topic_name, payload, at)
        except _Dropped as drop:
            self.drops.count(kind, drop.reason)
            logger.warning(
                "dropped message on %s: %s; payload %r", topic_name, drop.detail, payload[:200]
            )
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

    def _decode(self, topic_name: str, payload: bytes, at: datetime) -> InboundEvent | None:
        try:
            parsed = Topic.parse(topic_name)
        except ProtocolError as exc:
            raise _Dropped(DropReason.BAD_TOPIC, str(exc)) from None
        if parsed.site != self.site:
            raise _Dropped(
                DropReason.FOREIGN_SITE, f"message for site {parsed.site!r}, we serve {self.site!r}"
            )
        try:
            event, named = self._payload(parsed.kind, payload, at)
        except ProtocolError as exc:
            raise _Dropped(DropReason.MALFORMED, str(exc)) from None
        if event is None:
            return None
        if named != parsed.cluster:
            raise _Dropped(
                DropReason.CLUSTER_MISMATCH,
                f"{parsed.kind.value} names cluster {named!r} on {parsed.cluster!r}'s topic",
            )
        return event

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
