"""The dispatcher: sends queued deliveries, applies acknowledgements, enforces deadlines.

One thread owns every delivery write of the controller. The inbound router hands it typed
acks and status messages (loudspeaker/inbound.py); the broker's answers to what it
published come back as events too; the CLI only inserts ``queued`` rows and pokes. Each
iteration, in order:

0. the emergency lane: sends every queued emergency delivery, then records spooled
   emergencies (emergency_spool.py) and sends those, in short transactions of its own,
   before any bulk work;
1. applies the events the worker took (``batch_max`` at most, worker.py) in one short
   transaction: acks move deliveries through the state machine (loudspeaker/delivery.py),
   status messages record who is online (availability.py); when more are waiting the next
   iteration, lane first, starts at once;
2. carries out operator stops (recall.py), sends what is queued (sending.py), and applies
   the deadline rules (deadlines.py), in a last transaction.

Any database error rolls back the transaction it hit; the events not yet applied are
kept and the iteration is retried after the backoff of db_faults.py (a poke cuts the
wait short). Nothing is lost and nothing is published twice (in-flight commands are
tracked).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, case
from sqlmodel import Session, col, select

from firmware_bridge.protocol import AckState, Kind, Priority
from loudspeaker import availability, deadlines, delivery, recall
from loudspeaker.db import as_utc
from loudspeaker.db_faults import DB_ERRORS, DbFaults
from loudspeaker.emergency_spool import EmergencySpool
from loudspeaker.exceptions import KeystoreError
from loudspeaker.inbound import AckIn, DropReason, Drops, StatusIn
from loudspeaker.keys import CommandSigner
from loudspeaker.keystore import Keystore
from loudspeaker.models import (
    Broadcast,
    ClusterRecord,
    ClusterStatus,
    Delivery,
    DeliveryState,
    MediaRecord,
    now,
)
from loudspeaker.sending import CommandSender, Publisher
from loudspeaker.worker import EventWorker

logger = logging.getLogger(__name__)

_ACTIVE = [
    DeliveryState.SENT.value,
    DeliveryState.RECEIVED.value,
    DeliveryState.STAGED.value,
    DeliveryState.PLAYING.value,
]
_HELD_BY_CLUSTER = [
    DeliveryState.RECEIVED.value,
    DeliveryState.STAGED.value,
    DeliveryState.PLAYING.value,
]
_EMERGENCY = Priority.EMERGENCY.value
_DEADLINE_EVERY = timedelta(seconds=0.5)
# Queued deliveries sent per transaction: the lane loops until every queued emergency is
# out; the dispatch step sends this many normal deliveries per iteration.
_SEND_MAX = 500
# The kinds whose drops are the dispatcher's (``dropped_messages``).
_KINDS = (Kind.ACK, Kind.STATUS)


@dataclass(frozen=True)
class _Sent:
    """The broker's answer to a play command the dispatcher published."""

    delivery_id: int
    ok: bool
    reason: str
    # When the broker acknowledged: applying later must not make "sent" look later
    # than the cluster's own "received" that arrived in the same batch.
    at: datetime


@dataclass(frozen=True)
class _Withdraw:
    delivery_ids: tuple[int, ...]
    reason: str


_Event = AckIn | StatusIn | _Sent | _Withdraw
_Pair = tuple[Broadcast, MediaRecord]


class Dispatcher(EventWorker[_Event]):
    """Owns delivery state. ``start()`` runs the worker thread; ``poke()`` wakes it."""

    def __init__(
        self,
        engine: Engine,
        link: Publisher,
        *,
        site: str,
        media_base_url: str,
        ack_timeout_s: float,
        command_ttl_s: float,
        poll_interval_s: float = 0.2,
        emergency_retry_s: float = 3.0,
        keystore: Keystore,
        drops: Drops | None = None,
        spool: EmergencySpool | None = None,
    ) -> None:
        super().__init__("dispatcher", poll_interval_s)
        self.spool = spool
        self.faults = DbFaults("dispatcher")
        self.emergencies_sent = 0
        self.engine = engine
        self.link = link
        self.site = site
        self.signer = CommandSigner(engine, keystore)
        self.sender = CommandSender(
            link,
            self.signer,
            site=site,
            media_base_url=media_base_url,
            command_ttl=timedelta(seconds=command_ttl_s),
        )
        self.rules = deadlines.Rules(
            ack_timeout=timedelta(seconds=ack_timeout_s),
            command_ttl=timedelta(seconds=command_ttl_s),
            emergency_retry=timedelta(seconds=emergency_retry_s),
        )
        self.drops = drops if drops is not None else Drops()
        self.resent = 0
        self._known_clusters: set[str] = set()
        # Answers can only arrive while we listen: deadlines never count time we were down.
        self._listening_since = now()
        self._resync = False
        self._by_command: dict[str, Delivery] = {}
        self._deadlines_at = datetime.min.replace(tzinfo=UTC)

    # -- any thread -------------------------------------------------------------------------

    @property
    def dropped_messages(self) -> int:
        """Acks and status messages dropped (by the router or here)."""
        return self.drops.total(_KINDS)

    def accept(self, event: AckIn | StatusIn) -> None:
        """Queue an ack or status message from the inbound router (loop thread)."""
        self._put(event)

    def withdraw(self, delivery_ids: Sequence[int], reason: str) -> None:
        """Take back deliveries that have not started (see :func:`recall.withdraw`)."""
        if delivery_ids:
            self._put(_Withdraw(tuple(delivery_ids), reason))

    def on_connected(self) -> None:
        """The controller's MQTT session (re)started: ask every unfinished cluster again.

        Acks that arrived while we were down (or that a crashed broker lost) would
        otherwise never come back; re-sending the same command id makes the cluster
        repeat its last state without playing anything twice (docs/protocol.md, §5).
        """
        self._listening_since = now()
        self._resync = True
        self._wake.set()

    def _sent(self, delivery_id: int, ok: bool, reason: str) -> None:
        self._put(_Sent(delivery_id, ok, reason, now()))

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load the cluster list and start the worker thread."""
        self.reload_clusters()
        self._start_thread()

    def reload_clusters(self) -> None:
        """Re-read which clusters the site has."""
        with Session(self.engine) as s:
            self._known_clusters = set(s.exec(select(ClusterRecord.id)).all())

    # -- one iteration ----------------------------------------------------------------------

    def step(self) -> None:
        """One iteration: the emergency lane, then events, stops, dispatch and deadlines."""
        if not self._lane_guarded():
            return
        if not self._apply_events(self._take()):
            return
        try:
            with Session(self.engine) as s:
                if self.sender.connected:
                    recall.carry_out_stops(s, self.sender, now())
                    self._dispatch(s)
                    self._deadlines(s)
                s.commit()
        except DB_ERRORS as exc:
            # Published commands are tracked as in flight, so nothing goes out twice.
            self._backoff(self.faults.failed(exc, 0, "events (dispatch and deadlines retried)"))
            return
        self.faults.ok()

    def _backoff(self, delay: float) -> None:
        # A poke (an emergency queued) ends the wait: the lane tries again at once.
        self._wake.wait(delay)

    # -- 0. the emergency lane ------------------------------------------------------------

    def _lane_guarded(self) -> bool:
        """Serve the emergency lane; False (after backing off) if the database failed."""
        try:
            self._emergency_lane()
        except DB_ERRORS as exc:
            self._backoff(self.faults.failed(exc, 0, "emergencies (lane retried)"))
            return False
        except OSError as exc:
            # The spool directory unusable (its mode, a full disk): the spooled requests
            # wait, but no other delivery may stop for them.
            logger.error("emergency spool unusable (%s); spooled emergencies wait", exc)
        return True

    def _emergency_lane(self) -> None:
        """Send every queued emergency delivery, record spooled emergencies, send those.

        Runs before any bulk work of an iteration, in its own short transactions, so an
        emergency never waits behind a backlog. What is already queued goes out before the
        spool is read: a locked database that holds up recording must not hold it back.
        """
        self._send_queued_emergencies()
        if self.spool is not None and self.spool.record_all(self.engine):
            self._send_queued_emergencies()

    def _send_queued_emergencies(self) -> None:
        """Send queued emergency deliveries not in flight, ``_SEND_MAX`` per transaction."""
        after = 0
        while self.sender.connected:
            with Session(self.engine) as s:
                queued = s.exec(
                    select(Delivery)
                    .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
                    .where(
                        Delivery.state == DeliveryState.QUEUED.value,
                        Broadcast.priority == _EMERGENCY,
                        col(Delivery.id) > after,
                        col(Delivery.id).not_in(list(self.sender.inflight)),
                    )
                    .order_by(col(Delivery.id))
                    .limit(_SEND_MAX)
                ).all()
                if not queued:
                    return
                # Past this id next time: a row that failed to go out cannot loop the lane.
                after = queued[-1].id or after
                self.emergencies_sent += self._send_queued(s, queued)
                s.commit()
            if len(queued) < _SEND_MAX:
                return

    def _apply_events(self, events: list[_Event]) -> bool:
        """Apply one batch of events in one short transaction.

        The batch is bounded by the worker's ``batch_max``, so the emergency lane at the
        start of the next iteration is never more than one batch away. False when the
        database failed: the events are kept for the next iteration.
        """
        try:
            with Session(self.engine) as s:
                held = self._prefetch(s, events)  # the identity map only holds weak refs
                # One flush at commit instead of one per event (docs/scaling.md).
                with s.no_autoflush:
                    for ev in events:
                        self._apply_guarded(s, ev)
                s.commit()
                del held
        except DB_ERRORS as exc:
            # Rolled back with the session: keep the batch, try again.
            self._retry = events
            self._backoff(self.faults.failed(exc, len(events)))
            return False
        except BaseException:
            # Dying (the supervisor restarts the thread): the new one applies them.
            self._retry = events
            raise
        return True

    # -- 1. events --------------------------------------------------------------------------

    def _apply_guarded(self, s: Session, ev: _Event) -> None:
        try:
            self._apply(s, ev)
        except DB_ERRORS:
            raise  # the database, not the event: keep the whole batch for a retry
        except Exception:
            # One bad event (a bug, an unexpected value) must not lose the others.
            logger.exception("event %r could not be applied; dropped", ev)
            # Counted as the dispatcher's (its own events too, as the ack path they serve).
            kind = Kind.STATUS if isinstance(ev, StatusIn) else Kind.ACK
            self.drops.count(kind, DropReason.NOT_APPLIED)

    def _apply(self, s: Session, ev: _Event) -> None:
        if isinstance(ev, _Sent):
            self._apply_sent(s, ev)
        elif isinstance(ev, AckIn):
            self._apply_ack(s, ev)
        elif isinstance(ev, StatusIn):
            self._apply_status(s, ev)
        else:
            recall.withdraw(s, self.sender, ev.delivery_ids, ev.reason, now())

    def _apply_sent(self, s: Session, ev: _Sent) -> None:
        self.sender.inflight.discard(ev.delivery_id)
        d = s.get(Delivery, ev.delivery_id)
        if d is None:
            return
        if ev.ok:
            delivery.record(s, d, delivery.sent(ev.at))
        else:
            delivery.record(s, d, delivery.broker_refused(ev.at, ev.reason))

    def _known(self, cluster: str) -> bool:
        if cluster not in self._known_clusters:
            self.reload_clusters()
        return cluster in self._known_clusters

    def _apply_ack(self, s: Session, ev: AckIn) -> None:
        ack = ev.ack
        if not self._known(ack.cluster):
            logger.warning("ack from unknown cluster %r dropped", ack.cluster)
            self.drops.count(Kind.ACK, DropReason.UNKNOWN_CLUSTER)
            return
        d = self._by_command.get(ack.command)
        if d is None:
            d = s.exec(select(Delivery).where(Delivery.command_id == ack.command)).first()
        if d is None or d.cluster_id != ack.cluster:
            # Also a box's refusal of a stop or withdraw: it carries that command's own id.
            logger.warning(
                "ack for unknown command %s from %s dropped (%s%s)",
                ack.command,
                ack.cluster,
                ack.state,
                f": {ack.reason}" if ack.reason else "",
            )
            self.drops.count(Kind.ACK, DropReason.UNKNOWN_COMMAND)
            return
        if ack.broadcast != d.broadcast_id:
            # The box copies the command's broadcast; anything else is a confused or forged
            # report and must not move this delivery.
            logger.warning(
                "ack for command %s from %s names broadcast %r, not %r; dropped",
                ack.command,
                ack.cluster,
                ack.broadcast,
                d.broadcast_id,
            )
            self.drops.count(Kind.ACK, DropReason.WRONG_BROADCAST)
            return
        availability.touch(s, ack.cluster, ev.at)
        if ack.state is AckState.INTERRUPTED:
            tr = delivery.interruption(DeliveryState(d.state), ev.at, ack.ts, ack.reason or "")
            s.add(delivery.apply(d, tr))
            s.add(d)
            return
        delivery.record(s, d, delivery.acked(ack.state, ev.at, ack.ts, ack.reason or ""))

    def _apply_status(self, s: Session, ev: StatusIn) -> None:
        status, at = ev.status, ev.at
        if not self._known(status.cluster):
            logger.warning("status from unknown cluster %r dropped", status.cluster)
            self.drops.count(Kind.STATUS, DropReason.UNKNOWN_CLUSTER)
            return
        # Queries below must see what earlier events of this batch changed.
        s.flush()
        changed = availability.record_status(s, status, at)
        online = status.state == "online"
        if online and changed:
            for d in self._of_cluster(s, status.cluster, [DeliveryState.SENT.value], True):
                self._resend(s, d, at, "cluster came back online")
        if not online:
            # An emergency is not given up when its cluster drops: the box keeps it on disk
            # and the controller sends it again when it returns, until it expires.
            why = status.reason or "no reason given"
            for d in self._of_cluster(s, status.cluster, _HELD_BY_CLUSTER, False):
                if deadlines.staged_ahead(d, at):
                    continue  # stored on the box, which plays it by its own clock
                event = delivery.unreachable(at, f"cluster went offline while {d.state} ({why})")
                delivery.record(s, d, event)

    @staticmethod
    def _of_cluster(
        s: Session, cluster: str, states: list[str], emergency: bool
    ) -> Sequence[Delivery]:
        prio = col(Broadcast.priority) == _EMERGENCY
        return s.exec(
            select(Delivery)
            .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
            .where(
                Delivery.cluster_id == cluster,
                col(Delivery.state).in_(states),
                prio if emergency else ~prio,
            )
        ).all()

    def _prefetch(self, s: Session, events: list[_Event]) -> list[object]:
        """Load what a batch of events touches with a few IN queries, not one per event."""
        commands = sorted({ev.ack.command for ev in events if isinstance(ev, AckIn)})
        sent = sorted({ev.delivery_id for ev in events if isinstance(ev, _Sent)})
        clusters = sorted({ev.ack.cluster for ev in events if isinstance(ev, AckIn)})
        self._by_command = {}
        held: list[object] = []
        for i in range(0, len(commands), 500):
            chunk = commands[i : i + 500]
            for d in s.exec(select(Delivery).where(col(Delivery.command_id).in_(chunk))):
                self._by_command[d.command_id] = d
        for i in range(0, len(sent), 500):
            held += s.exec(select(Delivery).where(col(Delivery.id).in_(sent[i : i + 500]))).all()
        for i in range(0, len(clusters), 500):
            chunk = clusters[i : i + 500]
            held += s.exec(
                select(ClusterStatus).where(col(ClusterStatus.cluster_id).in_(chunk))
            ).all()
        return held

    # -- 2. sending -------------------------------------------------------------------------

    def _dispatch(self, s: Session) -> None:
        if self._resync:
            self._resync = False
            self._ask_unfinished_again(s)
        # Emergencies queued since the lane ran go first; in-flight rows are not picked
        # again, so a full answer means more is waiting, never the same rows twice.
        emergency_first = case((col(Broadcast.priority) == _EMERGENCY, 0), else_=1)
        queued = s.exec(
            select(Delivery)
            .outerjoin(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
            .where(
                Delivery.state == DeliveryState.QUEUED.value,
                col(Delivery.id).not_in(list(self.sender.inflight)),
            )
            .order_by(emergency_first, col(Delivery.id))
            .limit(_SEND_MAX)
        ).all()
        self.emergencies_sent += self._send_queued(s, queued)
        if len(queued) >= _SEND_MAX:
            self._wake.set()  # more queued: the next iteration (lane first) takes them

    def _send_queued(self, s: Session, queued: Sequence[Delivery]) -> int:
        """Send queued deliveries; how many emergency commands were published."""
        pairs: dict[str, _Pair | None] = {}
        t = now()
        emergencies = 0
        for d in queued:
            if d.id in self.sender.inflight:
                continue
            if d.broadcast_id not in pairs:
                pairs[d.broadcast_id] = _with_media(s, d.broadcast_id)
            pair = pairs[d.broadcast_id]
            if pair is None:
                delivery.record(s, d, delivery.failed(t, "broadcast or its audio is missing"))
                continue
            expires = as_utc(d.expires_at)
            if expires is None:
                expires = t + self.rules.command_ttl
                d.expires_at = expires
                s.add(d)
            elif expires <= t:
                why = "not sent before it expired (broker down?)"
                delivery.record(s, d, delivery.unreachable(t, why))
                continue
            if self._send(s, d, *pair, t, expires) and pair[0].priority == _EMERGENCY:
                emergencies += 1
        return emergencies

    def _send(
        self, s: Session, d: Delivery, b: Broadcast, m: MediaRecord, t: datetime, expires: datetime
    ) -> bool:
        """Publish a play command; False if it could not be signed (then failed)."""
        assert d.id is not None
        try:
            self.sender.play(d, b, m, t, expires, functools.partial(self._sent, d.id))
        except KeystoreError as exc:
            # Unsigned, every box with keys would refuse it: fail it here, with the reason.
            delivery.record(s, d, delivery.failed(t, str(exc)))
            return False
        return True

    def _resend(self, s: Session, d: Delivery, t: datetime, why: str) -> None:
        """Send an emergency again (same command id: a cluster that has it plays it once)."""
        if d.id in self.sender.inflight or not self.sender.connected:
            return
        pair = _with_media(s, d.broadcast_id)
        expires = as_utc(d.expires_at)
        if pair is None or expires is None or expires <= t:
            return
        s.add(delivery.note(d, "resent", t, why))
        self._send(s, d, *pair, t, expires)

    def _ask_unfinished_again(self, s: Session) -> None:
        t = now()
        active = s.exec(select(Delivery).where(col(Delivery.state).in_(_ACTIVE))).all()
        pairs: dict[str, _Pair | None] = {}
        count = 0
        for d in active:
            expires = as_utc(d.expires_at) or t + self.rules.command_ttl
            if expires <= t:
                continue
            if d.broadcast_id not in pairs:
                pairs[d.broadcast_id] = _with_media(s, d.broadcast_id)
            pair = pairs[d.broadcast_id]
            if pair is None:
                continue
            try:
                self.sender.ask_again(d, *pair, t, expires)
            except KeystoreError:
                continue  # logged by the signer; the delivery expires as unreachable
            count += 1
        self.resent += count
        if count:
            logger.info("asked %d unfinished deliveries for their state again", count)

    # -- 3. deadlines -----------------------------------------------------------------------

    def _deadlines(self, s: Session) -> None:
        t = now()
        # Loading every active delivery is O(active): at 10,000 clusters doing it on every
        # wake-up cost more than the acks themselves. Deadlines are seconds long anyway.
        if t - self._deadlines_at < _DEADLINE_EVERY:
            return
        self._deadlines_at = t
        active = s.exec(select(Delivery).where(col(Delivery.state).in_(_ACTIVE))).all()
        if not active:
            return
        priorities = _priorities(s, {d.broadcast_id for d in active})
        airs: dict[str, timedelta] = {}
        for d in active:
            if d.broadcast_id not in airs:
                airs[d.broadcast_id] = _air_time(s, d.broadcast_id)
            verdict = deadlines.judge(
                d,
                t,
                self.rules,
                emergency=priorities.get(d.broadcast_id) == _EMERGENCY,
                air=airs[d.broadcast_id],
                listening_since=self._listening_since,
                last_sent=self.sender.last_sent.get(d.id) if d.id is not None else None,
            )
            if verdict.action is deadlines.Action.GIVE_UP:
                delivery.record(s, d, delivery.unreachable(t, verdict.reason))
            elif verdict.action is deadlines.Action.RESEND:
                self._resend(s, d, t, verdict.reason)


def _priorities(s: Session, ids: set[str]) -> dict[str, str]:
    rows = s.exec(
        select(Broadcast.id, Broadcast.priority).where(col(Broadcast.id).in_(list(ids)))
    ).all()
    return {bid: prio for bid, prio in rows}


def _with_media(s: Session, broadcast_id: str) -> _Pair | None:
    """A broadcast and its audio record, or None if either is missing."""
    b = s.get(Broadcast, broadcast_id)
    m = s.get(MediaRecord, b.media_sha256) if b else None
    return (b, m) if b is not None and m is not None else None


def _air_time(s: Session, broadcast_id: str) -> timedelta:
    pair = _with_media(s, broadcast_id)
    if pair is None:
        return timedelta(0)
    b, m = pair
    return deadlines.air_time(m.duration_s, b.repeat, b.gap_s)
