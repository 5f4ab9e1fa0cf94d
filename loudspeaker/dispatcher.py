"""The dispatcher: sends queued deliveries, records acknowledgements, enforces deadlines.

One thread owns all database writes of the controller. MQTT callbacks only parse and
enqueue (they run on the MQTT loop thread, which must never block); the CLI only inserts
``queued`` rows and pokes. Every iteration drains the inbound queue, dispatches what is
queued, and applies deadlines, in one transaction.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, col, select

from firmware_bridge.exceptions import ProtocolError
from firmware_bridge.mqtt import MqttLink
from firmware_bridge.protocol import (
    Ack,
    AckState,
    Kind,
    Priority,
    Status,
    Topic,
    WithdrawCommand,
    decode_ack,
    decode_status,
    encode,
    new_id,
    topic,
)
from loudspeaker import outbox
from loudspeaker.db import as_utc
from loudspeaker.exceptions import KeystoreError
from loudspeaker.keys import CommandSigner
from loudspeaker.keystore import Keystore
from loudspeaker.models import (
    Broadcast,
    ClusterAvailability,
    ClusterRecord,
    ClusterStatus,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    MediaRecord,
    StopRequest,
    now,
)
from loudspeaker.worker import EventWorker

logger = logging.getLogger(__name__)

_ACK_TO_STATE = {
    AckState.RECEIVED: DeliveryState.RECEIVED,
    AckState.STAGED: DeliveryState.STAGED,
    AckState.PLAYING: DeliveryState.PLAYING,
    AckState.PLAYED: DeliveryState.PLAYED,
    AckState.FAILED: DeliveryState.FAILED,
}
_ACTIVE = [
    DeliveryState.SENT.value,
    DeliveryState.RECEIVED.value,
    DeliveryState.STAGED.value,
    DeliveryState.PLAYING.value,
]
# Time a cluster gets to fetch the audio before playback must have started.
_FETCH_ALLOWANCE = timedelta(seconds=60)
_FINAL_MARGIN = timedelta(seconds=30)
_DEADLINE_EVERY = timedelta(seconds=0.5)


@dataclass(frozen=True)
class _Sent:
    delivery_id: int
    ok: bool
    reason: str
    # When the broker acknowledged: applying later must not make "sent" look later
    # than the cluster's own "received" that arrived in the same batch.
    at: datetime | None = None


@dataclass(frozen=True)
class _AckIn:
    ack: Ack
    at: datetime


@dataclass(frozen=True)
class _StatusIn:
    status: Status
    at: datetime


@dataclass(frozen=True)
class _WithdrawIn:
    delivery_ids: tuple[int, ...]
    reason: str


_Event = _Sent | _AckIn | _StatusIn | _WithdrawIn


class Dispatcher(EventWorker["_Event"]):
    """Owns delivery state. ``start()`` runs the worker thread; ``poke()`` wakes it."""

    def __init__(
        self,
        engine: Engine,
        link: MqttLink,
        *,
        site: str,
        media_base_url: str,
        ack_timeout_s: float,
        command_ttl_s: float,
        poll_interval_s: float = 0.2,
        emergency_retry_s: float = 3.0,
        keystore: Keystore,
    ) -> None:
        super().__init__("dispatcher", poll_interval_s)
        self.engine = engine
        self.link = link
        self.site = site
        self.media_base_url = media_base_url.rstrip("/")
        self.ack_timeout = timedelta(seconds=ack_timeout_s)
        self.command_ttl = timedelta(seconds=command_ttl_s)
        self._inflight: set[int] = set()
        self._last_sent: dict[int, datetime] = {}
        self.emergency_retry = timedelta(seconds=emergency_retry_s)
        self._known_clusters: set[str] = set()
        self.dropped_messages = 0
        self.signer = CommandSigner(engine, keystore)
        # Answers can only arrive while we listen: deadlines never count time we were down.
        self._listening_since = now()
        self._resync = False
        self.resent = 0
        self._by_command: dict[str, Delivery] = {}
        self._deadlines_at = datetime.min.replace(tzinfo=UTC)

    # -- any thread -------------------------------------------------------------------------

    def withdraw(self, delivery_ids: Sequence[int], reason: str) -> None:
        """Take back deliveries that have not started (a schedule changed).

        Queued ones end ``failed`` at once; sent or staged ones get a ``withdraw`` command
        and end ``failed`` when the cluster confirms; playing ones are left to finish.
        """
        if delivery_ids:
            self._put(_WithdrawIn(tuple(delivery_ids), reason))

    def on_message(self, topic_name: str, payload: bytes) -> None:
        """MQTT handler: parse, validate, enqueue. Malformed input is logged and dropped."""
        at = now()
        try:
            parsed = Topic.parse(topic_name)
            if parsed.site != self.site:
                raise ProtocolError(f"message for site {parsed.site!r}, we serve {self.site!r}")
            if parsed.kind is Kind.ACK:
                ack = decode_ack(payload)
                if ack.cluster != parsed.cluster:
                    raise ProtocolError(
                        f"ack names cluster {ack.cluster!r} on {parsed.cluster!r}'s topic"
                    )
                self._inbound.put(_AckIn(ack, at))
            elif parsed.kind is Kind.STATUS:
                if not payload:
                    return  # a retained message being cleared
                status = decode_status(payload)
                if status.cluster != parsed.cluster:
                    raise ProtocolError(
                        f"status names cluster {status.cluster!r} on {parsed.cluster!r}'s topic"
                    )
                self._inbound.put(_StatusIn(status, at))
            else:
                return
        except ProtocolError as exc:
            self.dropped_messages += 1
            logger.warning("dropped message on %s: %s; payload %r", topic_name, exc, payload[:200])
            return
        self._wake.set()

    def on_connected(self) -> None:
        """The controller's MQTT session (re)started: ask every unfinished cluster again.

        Acks that arrived while we were down (or that a crashed broker lost) would
        otherwise never come back; re-sending the same command id makes the cluster
        repeat its last state without playing anything twice (docs/protocol.md, §5).
        """
        self._listening_since = now()
        self._resync = True
        self._wake.set()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load the cluster list and start the worker thread."""
        self.reload_clusters()
        self._start_thread()

    def reload_clusters(self) -> None:
        """Re-read which clusters the site has."""
        with Session(self.engine) as s:
            self._known_clusters = set(s.exec(select(ClusterRecord.id)).all())

    # -- worker thread ---------------------------------------------------------------------

    def step(self) -> None:
        """One iteration: apply inbound events, dispatch, apply deadlines."""
        events = self._take()
        try:
            with Session(self.engine) as s:
                held = self._prefetch(s, events)  # the identity map only holds weak refs
                # One flush at commit instead of one per event (docs/scaling.md).
                with s.no_autoflush:
                    for ev in events:
                        self._apply_guarded(s, ev)
                s.commit()
                del held
        except OperationalError as exc:
            # Locked or briefly unavailable database: keep the events, try again.
            logger.warning("database busy (%s); %d events kept for retry", exc, len(events))
            self._retry = events
            return
        try:
            with Session(self.engine) as s:
                self._stop_requests(s)
                self._dispatch(s)
                self._deadlines(s)
                s.commit()
        except OperationalError as exc:
            # Published commands are tracked in _inflight, so nothing goes out twice.
            logger.warning("database busy (%s); dispatch and deadlines retried", exc)

    def _apply(self, s: Session, ev: _Event) -> None:
        if isinstance(ev, _Sent):
            self._inflight.discard(ev.delivery_id)
            d = s.get(Delivery, ev.delivery_id)
            if d is None:
                return
            at = ev.at or now()
            if ev.ok:
                self._advance(s, d, DeliveryState.SENT, at, None, "")
            else:
                self._advance(s, d, DeliveryState.FAILED, at, None, f"broker refused: {ev.reason}")
        elif isinstance(ev, _AckIn):
            self._apply_ack(s, ev.ack, ev.at)
        elif isinstance(ev, _WithdrawIn):
            self._apply_withdraw(s, ev)
        else:
            self._apply_status(s, ev.status, ev.at)

    def _apply_ack(self, s: Session, ack: Ack, at: datetime) -> None:
        if ack.cluster not in self._known_clusters:
            self.reload_clusters()
            if ack.cluster not in self._known_clusters:
                logger.warning("ack from unknown cluster %r dropped", ack.cluster)
                self.dropped_messages += 1
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
            self.dropped_messages += 1
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
            self.dropped_messages += 1
            return
        self._touch(s, ack.cluster, at)
        if ack.state is AckState.INTERRUPTED:
            # Pre-empted by an emergency; the cluster re-queued it and will play it again.
            s.add(
                DeliveryEvent(
                    delivery_id=d.id or 0,
                    state="interrupted",
                    at=at,
                    cluster_ts=ack.ts,
                    reason=ack.reason or "",
                )
            )
            if not DeliveryState(d.state).final:
                d.reason = ack.reason or "interrupted"
                d.updated_at = at
                s.add(d)
            return
        self._advance(s, d, _ACK_TO_STATE[ack.state], at, ack.ts, ack.reason or "")

    def _advance(
        self,
        s: Session,
        d: Delivery,
        state: DeliveryState,
        at: datetime,
        cluster_ts: datetime | None,
        reason: str,
    ) -> None:
        """Move a delivery forward; never backwards; record every report in the trail."""
        current = DeliveryState(d.state)
        s.add(
            DeliveryEvent(
                delivery_id=d.id or 0,
                state=state.value,
                at=at,
                cluster_ts=cluster_ts,
                reason=reason,
            )
        )
        if current is DeliveryState.UNREACHABLE and state in (
            DeliveryState.PLAYED,
            DeliveryState.FAILED,
        ):
            # A cluster we gave up on reports later: the truth wins, and the trail shows it.
            logger.info("late %s from %s for %s", state.value, d.cluster_id, d.broadcast_id)
        elif current.final or state.rank < current.rank:
            return
        elif state.rank == current.rank:
            # The same step reported again (a replay after an interruption): still alive.
            d.updated_at = at
            if state is DeliveryState.PLAYING:
                d.reason = ""
            s.add(d)
            return
        d.state = state.value
        setattr(d, f"{state.value}_at", at)
        if state in (DeliveryState.FAILED, DeliveryState.UNREACHABLE) or reason:
            d.reason = reason
        elif state is DeliveryState.PLAYED:
            d.reason = ""
        d.updated_at = at
        s.add(d)

    def _touch(self, s: Session, cluster: str, at: datetime) -> None:
        st = s.get(ClusterStatus, cluster)
        if st is not None:
            st.last_seen = at
            s.add(st)

    def _apply_status(self, s: Session, status: Status, at: datetime) -> None:
        if status.cluster not in self._known_clusters:
            self.reload_clusters()
            if status.cluster not in self._known_clusters:
                logger.warning("status from unknown cluster %r dropped", status.cluster)
                self.dropped_messages += 1
                return
        # Queries below must see what earlier events of this batch changed.
        s.flush()
        online = status.state == "online"
        st = s.get(ClusterStatus, status.cluster) or ClusterStatus(cluster_id=status.cluster)
        changed = st.online != online or st.since is None
        st.last_seen = at
        st.agent = status.agent or st.agent
        st.reason = status.reason or ""
        if changed:
            st.online = online
            st.since = at
            self._record_interval(s, status.cluster, online, at, status.reason or "")
            logger.info(
                "cluster %s is %s%s",
                status.cluster,
                status.state,
                f" ({status.reason})" if status.reason else "",
            )
        s.add(st)
        if online and changed:
            waiting = s.exec(
                select(Delivery)
                .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
                .where(
                    Delivery.cluster_id == status.cluster,
                    Delivery.state == DeliveryState.SENT.value,
                    Broadcast.priority == Priority.EMERGENCY.value,
                )
            ).all()
            for d in waiting:
                self._resend(s, d, at, "cluster came back online")
        if not online:
            # An emergency is not given up when its cluster drops: the box keeps it on disk
            # and the controller sends it again when it returns, until it expires.
            active = s.exec(
                select(Delivery)
                .join(Broadcast, col(Broadcast.id) == col(Delivery.broadcast_id))
                .where(
                    Delivery.cluster_id == status.cluster,
                    col(Delivery.state).in_(
                        [
                            DeliveryState.RECEIVED.value,
                            DeliveryState.STAGED.value,
                            DeliveryState.PLAYING.value,
                        ]
                    ),
                    Broadcast.priority != Priority.EMERGENCY.value,
                )
            ).all()
            for d in active:
                if self._staged_ahead(d, at):
                    continue  # stored on the box, which plays it by its own clock
                self._advance(
                    s,
                    d,
                    DeliveryState.UNREACHABLE,
                    at,
                    None,
                    f"cluster went offline while {d.state} ({status.reason or 'no reason given'})",
                )

    def _record_interval(
        self, s: Session, cluster: str, online: bool, at: datetime, reason: str
    ) -> None:
        open_rows = s.exec(
            select(ClusterAvailability).where(
                ClusterAvailability.cluster_id == cluster,
                col(ClusterAvailability.ended_at).is_(None),
            )
        ).all()
        for row in open_rows:
            row.ended_at = at
            s.add(row)
        s.add(ClusterAvailability(cluster_id=cluster, online=online, started_at=at, reason=reason))

    def _dispatch(self, s: Session) -> None:
        if not self.link.connected.is_set():
            return
        if self._resync:
            self._resync = False
            self._resend_unfinished(s)
        queued = s.exec(
            select(Delivery).where(Delivery.state == DeliveryState.QUEUED.value).limit(5000)
        ).all()
        if not queued:
            return
        broadcasts: dict[str, tuple[Broadcast, MediaRecord] | None] = {}
        t = now()
        for d in queued:
            if d.id in self._inflight:
                continue
            if d.broadcast_id not in broadcasts:
                broadcasts[d.broadcast_id] = self._with_media(s, d.broadcast_id)
            pair = broadcasts[d.broadcast_id]
            if pair is None:
                self._advance(
                    s, d, DeliveryState.FAILED, t, None, "broadcast or its audio is missing"
                )
                continue
            b, m = pair
            expires = as_utc(d.expires_at)
            if expires is None:
                expires = t + self.command_ttl
                d.expires_at = expires
                s.add(d)
            elif expires <= t:
                self._advance(
                    s,
                    d,
                    DeliveryState.UNREACHABLE,
                    t,
                    None,
                    "not sent before it expired (broker down?)",
                )
                continue
            self._send(s, d, b, m, t, expires)

    def _send(
        self,
        s: Session,
        d: Delivery,
        b: Broadcast,
        m: MediaRecord,
        t: datetime,
        expires: datetime,
    ) -> None:
        try:
            cmd = self.signer.sign(
                outbox.play_command(
                    d, b, m, media_base_url=self.media_base_url, issued_at=t, expires_at=expires
                )
            )
        except KeystoreError as exc:
            # Unsigned, every box with keys would refuse it: fail it here, with the reason.
            self._advance(s, d, DeliveryState.FAILED, t, None, str(exc))
            return
        assert d.id is not None
        self._inflight.add(d.id)
        self._last_sent[d.id] = t
        self.link.publish(
            topic(self.site, d.cluster_id, Kind.CMD),
            encode(cmd),
            qos=1,
            on_done=functools.partial(self._sent, d.id),
        )

    def _resend(self, s: Session, d: Delivery, t: datetime, why: str) -> None:
        """Send an emergency again (same command id: a cluster that has it plays it once)."""
        if d.id in self._inflight or not self.link.connected.is_set():
            return
        pair = self._with_media(s, d.broadcast_id)
        expires = as_utc(d.expires_at)
        if pair is None or expires is None or expires <= t:
            return
        s.add(DeliveryEvent(delivery_id=d.id or 0, state="resent", at=t, reason=why))
        self._send(s, d, *pair, t, expires)

    def _stop_requests(self, s: Session) -> None:
        if not self.link.connected.is_set():
            return
        pending = s.exec(select(StopRequest).where(col(StopRequest.handled_at).is_(None))).all()
        t = now()
        for req in pending:
            deliveries = s.exec(
                select(Delivery).where(Delivery.broadcast_id == req.broadcast_id)
            ).all()
            for d in deliveries:
                state = DeliveryState(d.state)
                if state.final:
                    continue
                if state is DeliveryState.QUEUED and d.id not in self._inflight:
                    self._advance(
                        s,
                        d,
                        DeliveryState.FAILED,
                        t,
                        None,
                        "stopped by operator before it was sent",
                    )
                    continue
                # The cluster answers with the item's fate ("stopped by operator...").
                try:
                    stop = self.signer.sign(
                        outbox.stop_command(
                            d.cluster_id,
                            req.broadcast_id,
                            issued_at=t,
                            expires_at=as_utc(d.expires_at) or t + self.command_ttl,
                        )
                    )
                except KeystoreError as exc:
                    s.add(
                        DeliveryEvent(
                            delivery_id=d.id or 0, state="stop-failed", at=t, reason=str(exc)
                        )
                    )
                    continue
                self.link.publish(topic(self.site, d.cluster_id, Kind.CMD), encode(stop), qos=1)
                s.add(
                    DeliveryEvent(
                        delivery_id=d.id or 0,
                        state="stop-sent",
                        at=t,
                        reason=f"stop requested by {req.requested_by or 'operator'}",
                    )
                )
            req.handled_at = t
            s.add(req)
            logger.info("stop of broadcast %s sent", req.broadcast_id)

    def _resend_unfinished(self, s: Session) -> None:
        t = now()
        active = s.exec(select(Delivery).where(col(Delivery.state).in_(_ACTIVE))).all()
        pairs: dict[str, tuple[Broadcast, MediaRecord] | None] = {}
        count = 0
        for d in active:
            expires = as_utc(d.expires_at) or t + self.command_ttl
            if expires <= t:
                continue
            if d.broadcast_id not in pairs:
                pairs[d.broadcast_id] = self._with_media(s, d.broadcast_id)
            pair = pairs[d.broadcast_id]
            if pair is None:
                continue
            cmd = outbox.play_command(
                d,
                pair[0],
                pair[1],
                media_base_url=self.media_base_url,
                issued_at=min(t, expires - timedelta(seconds=1)),
                expires_at=expires,
            )
            try:
                signed = self.signer.sign(cmd)
            except KeystoreError:
                continue  # logged by the signer; the delivery expires as unreachable
            self.link.publish(topic(self.site, d.cluster_id, Kind.CMD), encode(signed), qos=1)
            count += 1
        self.resent += count
        if count:
            logger.info("asked %d unfinished deliveries for their state again", count)

    def _prefetch(self, s: Session, events: list[_Event]) -> list[object]:
        """Load what a batch of events touches with a few IN queries, not one per event."""
        commands = sorted({ev.ack.command for ev in events if isinstance(ev, _AckIn)})
        sent = sorted({ev.delivery_id for ev in events if isinstance(ev, _Sent)})
        clusters = sorted({ev.ack.cluster for ev in events if isinstance(ev, _AckIn)})
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

    def _apply_guarded(self, s: Session, ev: _Event) -> None:
        try:
            self._apply(s, ev)
        except (OperationalError, InterfaceError):
            raise  # the database, not the event: keep the whole batch for a retry
        except Exception:
            # One bad event (a bug, an unexpected value) must not lose the others.
            logger.exception("event %r could not be applied; dropped", ev)
            self.dropped_messages += 1

    def _sent(self, delivery_id: int, ok: bool, reason: str) -> None:
        self._put(_Sent(delivery_id, ok, reason, now()))

    def _deadlines(self, s: Session) -> None:
        if not self.link.connected.is_set():
            # Deaf while the broker is away: silence proves nothing about the clusters.
            return
        t = now()
        # Loading every active delivery is O(active): at 10,000 clusters doing it on every
        # wake-up cost more than the acks themselves. Deadlines are seconds long anyway.
        if t - self._deadlines_at < _DEADLINE_EVERY:
            return
        self._deadlines_at = t
        active: Sequence[Delivery] = s.exec(
            select(Delivery).where(col(Delivery.state).in_(_ACTIVE))
        ).all()
        if not active:
            return
        lengths: dict[str, timedelta] = {}
        priorities = self._priorities(s, {d.broadcast_id for d in active})
        for d in active:
            if priorities.get(d.broadcast_id) == Priority.EMERGENCY.value:
                self._emergency_deadline(s, d, t)
                continue
            start_at = as_utc(d.start_at)
            if start_at is not None:
                # A timed item waits on the cluster until its air time (and may be pushed
                # up to its expiry by an overrun): the deadlines count from there.
                self._timed_deadline(s, d, t, start_at)
                continue
            if d.state == DeliveryState.SENT.value:
                sent = max(as_utc(d.sent_at) or t, self._listening_since)
                if t - sent > self.ack_timeout:
                    secs = self.ack_timeout.total_seconds()
                    self._advance(
                        s, d, DeliveryState.UNREACHABLE, t, None, f"no answer within {secs:.0f} s"
                    )
                continue
            if d.broadcast_id not in lengths:
                lengths[d.broadcast_id] = self._air_time(s, d.broadcast_id)
            # Counted from the last sign of progress; an item interrupted by an emergency
            # waits for the emergency to end, up to the command's lifetime.
            start = max(as_utc(d.updated_at) or t, self._listening_since)
            allowance = _FETCH_ALLOWANCE + lengths[d.broadcast_id] + _FINAL_MARGIN
            if d.reason.startswith("interrupted"):
                allowance = max(allowance, self.command_ttl)
            if t - start > allowance:
                self._advance(
                    s,
                    d,
                    DeliveryState.UNREACHABLE,
                    t,
                    None,
                    f"no final acknowledgement (last state {d.state})",
                )

    def _priorities(self, s: Session, ids: set[str]) -> dict[str, str]:
        if not ids:
            return {}
        rows = s.exec(
            select(Broadcast.id, Broadcast.priority).where(col(Broadcast.id).in_(list(ids)))
        ).all()
        return {bid: prio for bid, prio in rows}

    def _emergency_deadline(self, s: Session, d: Delivery, t: datetime) -> None:
        """Emergencies are retried until they expire, not given up after one timeout."""
        expires = as_utc(d.expires_at)
        if expires is not None and t >= expires:
            if d.state == DeliveryState.SENT.value:
                why = "no answer before the emergency expired (cluster offline?)"
            else:
                why = f"emergency expired before a final answer (last state {d.state})"
            self._advance(s, d, DeliveryState.UNREACHABLE, t, None, why)
            return
        if d.state != DeliveryState.SENT.value or d.id is None:
            return
        last = self._last_sent.get(d.id) or as_utc(d.sent_at) or t
        if t - last >= self.emergency_retry:
            self._resend(s, d, t, "no answer yet; sent again")

    def _with_media(self, s: Session, broadcast_id: str) -> tuple[Broadcast, MediaRecord] | None:
        """A broadcast and its audio record, or None if either is missing."""
        b = s.get(Broadcast, broadcast_id)
        m = s.get(MediaRecord, b.media_sha256) if b else None
        return (b, m) if b is not None and m is not None else None

    def _air_time(self, s: Session, broadcast_id: str) -> timedelta:
        pair = self._with_media(s, broadcast_id)
        if pair is None:
            return timedelta(0)
        b, m = pair
        return timedelta(seconds=m.duration_s * b.repeat + b.gap_s * (b.repeat - 1))

    # -- timed (scheduled) deliveries --------------------------------------------------------

    def _timed_deadline(self, s: Session, d: Delivery, t: datetime, start_at: datetime) -> None:
        latest_start = max(as_utc(d.expires_at) or start_at, start_at)
        if d.state in (DeliveryState.SENT.value, DeliveryState.RECEIVED.value):
            # The broker keeps the command for a cluster that is offline now; it is only
            # lost once it can no longer start.
            if t > latest_start + self.ack_timeout:
                self._advance(
                    s,
                    d,
                    DeliveryState.UNREACHABLE,
                    t,
                    None,
                    f"not staged on the cluster before its air time (last state {d.state})",
                )
            return
        air = self._air_time(s, d.broadcast_id)
        if t - latest_start > air + _FINAL_MARGIN:
            self._advance(
                s,
                d,
                DeliveryState.UNREACHABLE,
                t,
                None,
                f"no final acknowledgement (last state {d.state})",
            )

    @staticmethod
    def _staged_ahead(d: Delivery, at: datetime) -> bool:
        start_at = as_utc(d.start_at)
        if start_at is None or d.state != DeliveryState.STAGED.value:
            return False
        return max(as_utc(d.expires_at) or start_at, start_at) > at

    def _apply_withdraw(self, s: Session, ev: _WithdrawIn) -> None:
        t = now()
        for delivery_id in ev.delivery_ids:
            d = s.get(Delivery, delivery_id)
            if d is None or DeliveryState(d.state).final:
                continue
            if d.state == DeliveryState.QUEUED.value and delivery_id not in self._inflight:
                self._advance(s, d, DeliveryState.FAILED, t, None, f"withdrawn: {ev.reason}")
                continue
            if d.state == DeliveryState.PLAYING.value:
                logger.info("%s on %s is playing; not withdrawn", d.broadcast_id, d.cluster_id)
                continue
            expires = as_utc(d.expires_at) or t + self.command_ttl
            try:
                cmd = self.signer.sign(
                    WithdrawCommand(
                        id=new_id(),
                        cluster=d.cluster_id,
                        broadcast=d.broadcast_id,
                        command=d.command_id,
                        issued_at=t,
                        expires_at=max(expires, t + self.command_ttl),
                    )
                )
            except KeystoreError as exc:
                s.add(
                    DeliveryEvent(
                        delivery_id=delivery_id,
                        state=d.state,
                        at=t,
                        reason=f"withdraw not sent: {exc}",
                    )
                )
                continue
            self.link.publish(topic(self.site, d.cluster_id, Kind.CMD), encode(cmd), qos=1)
            s.add(
                DeliveryEvent(
                    delivery_id=delivery_id,
                    state=d.state,
                    at=t,
                    reason=f"withdraw sent: {ev.reason}",
                )
            )
