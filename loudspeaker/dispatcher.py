"""The dispatcher: sends queued deliveries, records acknowledgements, enforces deadlines.

One thread owns all database writes of the controller. MQTT callbacks only parse and
enqueue (they run on the MQTT loop thread, which must never block); the CLI only inserts
``queued`` rows and pokes. Every iteration drains the inbound queue, dispatches what is
queued, and applies deadlines, in one transaction.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
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
    MediaRef,
    PlayCommand,
    Priority,
    Status,
    Topic,
    decode_ack,
    decode_status,
    encode,
    topic,
)
from loudspeaker.db import as_utc
from loudspeaker.models import (
    Broadcast,
    ClusterAvailability,
    ClusterRecord,
    ClusterStatus,
    Delivery,
    DeliveryEvent,
    DeliveryState,
    MediaRecord,
    now,
)

logger = logging.getLogger(__name__)

_ACK_TO_STATE = {
    AckState.RECEIVED: DeliveryState.RECEIVED,
    AckState.STAGED: DeliveryState.STAGED,
    AckState.PLAYING: DeliveryState.PLAYING,
    # Pre-empted by an emergency and re-queued: still on its way to "played"; the trail
    # keeps the report (see _apply_ack).
    AckState.INTERRUPTED: DeliveryState.PLAYING,
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


@dataclass(frozen=True)
class _AckIn:
    ack: Ack
    at: datetime


@dataclass(frozen=True)
class _StatusIn:
    status: Status
    at: datetime


_Event = _Sent | _AckIn | _StatusIn


class Dispatcher:
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
    ) -> None:
        self.engine = engine
        self.link = link
        self.site = site
        self.media_base_url = media_base_url.rstrip("/")
        self.ack_timeout = timedelta(seconds=ack_timeout_s)
        self.command_ttl = timedelta(seconds=command_ttl_s)
        self.poll_interval_s = poll_interval_s
        self._inbound: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._retry: list[_Event] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: set[int] = set()
        self._known_clusters: set[str] = set()
        self.dropped_messages = 0
        # Answers can only arrive while we listen: deadlines never count time we were down.
        self._listening_since = now()
        self._air_at: dict[str, datetime] = {}
        self._resync = False
        self.resent = 0
        self._by_command: dict[str, Delivery] = {}
        self._deadlines_at = datetime.min.replace(tzinfo=UTC)

    # -- any thread -------------------------------------------------------------------------

    def poke(self) -> None:
        """Look for new work now."""
        self._wake.set()

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
        self._thread = threading.Thread(target=self._run, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the current iteration and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def reload_clusters(self) -> None:
        """Re-read which clusters the site has."""
        with Session(self.engine) as s:
            self._known_clusters = set(s.exec(select(ClusterRecord.id)).all())

    # -- worker thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval_s)
            self._wake.clear()
            try:
                self.step()
            except Exception:
                # Keep dispatching: a bug in one iteration must not silence the commune.
                logger.exception("dispatcher iteration failed")
                self._stop.wait(0.5)

    def step(self) -> None:
        """One iteration: apply inbound events, dispatch, apply deadlines."""
        events = self._retry
        self._retry = []
        while True:
            try:
                events.append(self._inbound.get_nowait())
            except queue.Empty:
                break
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
            if ev.ok:
                self._advance(s, d, DeliveryState.SENT, now(), None, "")
            else:
                self._advance(
                    s, d, DeliveryState.FAILED, now(), None, f"broker refused: {ev.reason}"
                )
        elif isinstance(ev, _AckIn):
            self._apply_ack(s, ev.ack, ev.at)
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
            logger.warning(
                "ack for unknown command %s from %s dropped (%s)",
                ack.command,
                ack.cluster,
                ack.state,
            )
            self.dropped_messages += 1
            return
        self._touch(s, ack.cluster, at)
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
        elif current.final or state.rank <= current.rank:
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
        if not online:
            active = s.exec(
                select(Delivery).where(
                    Delivery.cluster_id == status.cluster,
                    col(Delivery.state).in_(
                        [
                            DeliveryState.RECEIVED.value,
                            DeliveryState.STAGED.value,
                            DeliveryState.PLAYING.value,
                        ]
                    ),
                )
            ).all()
            for d in active:
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
                b = s.get(Broadcast, d.broadcast_id)
                m = s.get(MediaRecord, b.media_sha256) if b else None
                broadcasts[d.broadcast_id] = (b, m) if b and m else None
            pair = broadcasts[d.broadcast_id]
            if pair is None:
                self._advance(
                    s, d, DeliveryState.FAILED, t, None, "broadcast or its audio is missing"
                )
                continue
            b, m = pair
            expires = as_utc(d.expires_at)
            if expires is None:
                # A scheduled item lives its TTL from its air time, not from now.
                expires = max(t, as_utc(b.scheduled_for) or t) + self.command_ttl
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
            cmd = PlayCommand(
                id=d.command_id,
                cluster=d.cluster_id,
                broadcast=b.id,
                issued_at=t,
                expires_at=expires,
                priority=Priority(b.priority),
                title=b.title[:200],
                media=MediaRef(
                    url=f"{self.media_base_url}/media/{m.sha256}.{m.format}",
                    sha256=m.sha256,
                    size=m.size,
                    duration_s=m.duration_s,
                    mime=m.mime,
                ),
                repeat=b.repeat,
                gap_s=b.gap_s,
                start_at=self._start_at(b, t, expires),
            )
            assert d.id is not None
            self._inflight.add(d.id)
            self.link.publish(
                topic(self.site, d.cluster_id, Kind.CMD),
                encode(cmd),
                qos=1,
                on_done=functools.partial(self._sent, d.id),
            )

    def _command(
        self, d: Delivery, b: Broadcast, m: MediaRecord, t: datetime, expires: datetime
    ) -> PlayCommand:
        return PlayCommand(
            id=d.command_id,
            cluster=d.cluster_id,
            broadcast=b.id,
            issued_at=min(t, expires - timedelta(seconds=1)),
            expires_at=expires,
            priority=Priority(b.priority),
            title=b.title[:200],
            media=MediaRef(
                url=f"{self.media_base_url}/media/{m.sha256}.{m.format}",
                sha256=m.sha256,
                size=m.size,
                duration_s=m.duration_s,
                mime=m.mime,
            ),
            repeat=b.repeat,
            gap_s=b.gap_s,
            start_at=self._start_at(b, t, expires),
        )

    def _start_at(self, b: Broadcast, t: datetime, expires: datetime) -> datetime | None:
        # TODO(scheduling, issue #4): the scheduler owns when a broadcast is queued; this
        # only forwards its air time so the cluster holds the item and plays it on time
        # even if the controller is down at that moment.
        at = as_utc(b.scheduled_for)
        if at is None or at <= t or at >= expires:
            return None
        return at

    def _resend_unfinished(self, s: Session) -> None:
        t = now()
        active = s.exec(select(Delivery).where(col(Delivery.state).in_(_ACTIVE))).all()
        pairs: dict[str, tuple[Broadcast, MediaRecord] | None] = {}
        for d in active:
            expires = as_utc(d.expires_at) or t + self.command_ttl
            if expires <= t:
                continue
            if d.broadcast_id not in pairs:
                b = s.get(Broadcast, d.broadcast_id)
                m = s.get(MediaRecord, b.media_sha256) if b else None
                pairs[d.broadcast_id] = (b, m) if b and m else None
            pair = pairs[d.broadcast_id]
            if pair is None:
                continue
            self.link.publish(
                topic(self.site, d.cluster_id, Kind.CMD),
                encode(self._command(d, pair[0], pair[1], t, expires)),
                qos=1,
            )
            self.resent += 1
        if self.resent:
            logger.info("asked %d unfinished deliveries for their state again", self.resent)

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
        self._inbound.put(_Sent(delivery_id, ok, reason))
        self._wake.set()

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
        for d in active:
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
                b = s.get(Broadcast, d.broadcast_id)
                if b is not None and b.scheduled_for is not None:
                    self._air_at[d.broadcast_id] = as_utc(b.scheduled_for) or t
            start = as_utc(d.received_at) or as_utc(d.sent_at) or t
            start = max(start, self._listening_since, self._air_at.get(d.broadcast_id, start))
            if t - start > _FETCH_ALLOWANCE + lengths[d.broadcast_id] + _FINAL_MARGIN:
                self._advance(
                    s,
                    d,
                    DeliveryState.UNREACHABLE,
                    t,
                    None,
                    f"no final acknowledgement (last state {d.state})",
                )

    def _air_time(self, s: Session, broadcast_id: str) -> timedelta:
        b = s.get(Broadcast, broadcast_id)
        m = s.get(MediaRecord, b.media_sha256) if b else None
        if b is None or m is None:
            return timedelta(0)
        return timedelta(seconds=m.duration_s * b.repeat + b.gap_s * (b.repeat - 1))
