"""Emergency broadcasts (phát khẩn cấp): immediate, pre-empting, retried, hard to lose.

An emergency is a broadcast with priority ``emergency``: clusters play it at once,
interrupting (and afterwards replaying) whatever plays, at the site's emergency volume,
ignoring quiet hours. The controller re-sends it to clusters that have not answered until
it expires (its validity), and to clusters that come back online meanwhile.

If the controller is not running, :func:`send_direct` lets the CLI reach the clusters
itself through the broker (logged in as the operators' account ``_operator``, with no
session of its own), serving the audio from a temporary media server on the controller's
own address; the controller reconciles the record when it starts again (the
acknowledgements wait for it in its own persistent MQTT session).

Two emergencies at once (overlapping hamlets) both play in full, in the order they were
triggered: an emergency never interrupts another (docs/emergency.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlmodel import Session, col, select

from firmware_bridge.mqtt import BrokerEndpoint, MqttLink, MqttLoop
from firmware_bridge.protocol import (
    Kind,
    PlayCommand,
    Priority,
    encode,
    new_id,
    topic,
)
from loudspeaker import cluster_commands, delivery
from loudspeaker.audio_source import SourceRequest, resolve_source
from loudspeaker.broadcasts import BroadcastView, broadcast_status, create_broadcast
from loudspeaker.exceptions import (
    InvalidRequest,
    KeystoreError,
    LoudspeakerError,
    NotFoundError,
)
from loudspeaker.inbound import AckIn, InboundRouter
from loudspeaker.media import MediaServer, MediaStore
from loudspeaker.models import (
    Broadcast,
    ClusterRecord,
    Delivery,
    DeliveryState,
    MediaRecord,
    StopRequest,
    now,
)
from loudspeaker.repeats import check_repeats
from loudspeaker.site import current_site
from loudspeaker.targets import hamlet_clusters

logger = logging.getLogger(__name__)

DEFAULT_VALIDITY_S = 1800.0
MIN_VALIDITY_S = 60.0
MAX_VALIDITY_S = 24 * 3600.0


@dataclass(frozen=True)
class EmergencyRequest:
    """What a hamlet head asked for (checked by :meth:`check` before anything is written)."""

    text: str
    hamlets: tuple[str, ...] = ()
    everywhere: bool = False  # every hamlet (--all); some hamlets or all, never both
    recording: Path | None = None
    siren: bool = False
    announcement: str | None = None  # a prepared warning: plays with no rendering at all
    repeat: int = 1
    gap_s: float = 0.0
    validity_s: float = DEFAULT_VALIDITY_S
    engine: str = "offline"

    def check(self) -> None:
        """Refuse a request that cannot be carried out, saying what to change."""
        if not self.text.strip():
            raise InvalidRequest("say what the emergency is: the text is its title or message")
        if bool(self.hamlets) == self.everywhere:
            raise InvalidRequest("say where: --hamlet NAME (repeatable) or --all")
        _ = self.source  # refuses two sources at once
        check_repeats(self.repeat, self.gap_s)
        if not MIN_VALIDITY_S <= self.validity_s <= MAX_VALIDITY_S:
            raise InvalidRequest(
                f"--valid must be between {MIN_VALIDITY_S:.0f} and {MAX_VALIDITY_S:.0f} seconds"
            )

    @property
    def source(self) -> SourceRequest:
        """What plays: the announcement, the siren, the recording, else the text spoken."""
        return SourceRequest(
            text=self.text,
            recording=self.recording,
            announcement=self.announcement,
            tone="siren" if self.siren else None,
            engine=self.engine,
        )

    @property
    def target(self) -> str:
        """The target spec stored with the broadcast."""
        return ",".join(f"hamlet:{h}" for h in self.hamlets) if self.hamlets else "all"


@dataclass(frozen=True)
class PreparedEmergency:
    """An emergency ready to record: its audio already in the media store, its id and its
    time fixed. Plain values only, so it can be spooled as JSON (emergency_spool.py) and
    recorded by another process: it never names the caller's own files."""

    broadcast_id: str
    created_at: datetime  # when it was given: its validity counts from here
    text: str
    hamlets: tuple[str, ...]
    target: str
    source_kind: str
    source: str
    announcement_id: str | None
    repeat: int
    gap_s: float
    validity_s: float
    # The stored audio (MediaStore, under its sha256) and what its media row says.
    sha256: str
    size: int
    duration_s: float
    format: str
    mime: str
    engine: str

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            **{f: getattr(self, f) for f in self.__dataclass_fields__},
            "created_at": self.created_at.isoformat(),
            "hamlets": list(self.hamlets),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PreparedEmergency:
        """Read :meth:`to_json`'s form back; ``ValueError``/``TypeError`` if it is not."""
        created = data.get("created_at")
        hamlets = data.get("hamlets")
        if not isinstance(created, str) or not isinstance(hamlets, list):
            raise ValueError("created_at or hamlets missing")
        at = datetime.fromisoformat(created)
        if at.tzinfo is None:
            raise ValueError("created_at has no time zone")
        return cls(**{**data, "created_at": at, "hamlets": tuple(str(h) for h in hamlets)})  # type: ignore[arg-type]

    @property
    def expires_at(self) -> datetime:
        """When it stops being worth playing."""
        return self.created_at + timedelta(seconds=self.validity_s)


def prepare(
    session: Session,
    data_dir: Path,
    req: EmergencyRequest,
    *,
    broadcast_id: str | None = None,
    created_at: datetime | None = None,
) -> PreparedEmergency:
    """Check ``req``, render (or look up) its audio and store it in the media store.

    Writes no row: this works while another program holds the database's write lock
    (an announcement is only read).
    """
    req.check()
    src = resolve_source(session, data_dir, req.source)
    a = src.audio
    sha, size = MediaStore(data_dir / "media").add_file(a.path, a.format)
    if sha != a.sha256 or size != a.size:
        raise LoudspeakerError(f"audio {a.path} changed while being stored; give it again")
    return PreparedEmergency(
        broadcast_id=broadcast_id or new_id()[:12],
        created_at=created_at or now(),
        text=req.text,
        hamlets=req.hamlets,
        target=req.target,
        source_kind=src.kind,
        source=src.source,
        announcement_id=src.announcement_id,
        repeat=req.repeat,
        gap_s=req.gap_s,
        validity_s=req.validity_s,
        sha256=sha,
        size=size,
        duration_s=a.duration_s,
        format=a.format,
        mime=a.mime,
        engine=a.engine,
    )


def record(
    session: Session, data_dir: Path, p: PreparedEmergency, *, created_by: str = ""
) -> Broadcast:
    """Insert a prepared emergency (media row, broadcast, one delivery per target cluster)
    in ``session``; the caller commits. Renders nothing."""
    clusters = hamlet_clusters(session, p.hamlets)
    site = current_site(session)
    media = session.get(MediaRecord, p.sha256)
    if media is None:
        if MediaStore(data_dir / "media").path_for(p.sha256) is None:
            raise LoudspeakerError(
                f"the audio of emergency {p.broadcast_id} is gone from the media directory"
            )
        media = MediaRecord(
            sha256=p.sha256,
            size=p.size,
            duration_s=p.duration_s,
            format=p.format,
            mime=p.mime,
            engine=p.engine,
            created_at=p.created_at,
        )
        session.add(media)
    b = create_broadcast(
        session,
        media=media,
        title=p.text[:200],
        target=p.target,
        clusters=clusters,
        priority=Priority.EMERGENCY,
        source_kind=p.source_kind,
        source=p.source,
        announcement_id=p.announcement_id,
        repeat=p.repeat,
        gap_s=p.gap_s,
        created_by=created_by,
        volume=site.site.emergency_volume,
        validity_s=p.validity_s,
        created_at=p.created_at,
        broadcast_id=p.broadcast_id,
        commit=False,
    )
    return b


def log_recorded(p: PreparedEmergency, created_by: str) -> None:
    """Say in the log that an emergency is recorded (once it is committed)."""
    logger.warning(
        "EMERGENCY %s by %s to %s: %s", p.broadcast_id, created_by or "?", p.target, p.text[:80]
    )


def trigger(
    session: Session,
    data_dir: Path,
    req: EmergencyRequest,
    *,
    created_by: str = "",
    commit: bool = True,
) -> Broadcast:
    """Record an emergency with one delivery per target cluster, valid for its validity."""
    p = prepare(session, data_dir, req)
    b = record(session, data_dir, p, created_by=created_by)
    if commit:
        session.commit()
        session.refresh(b)
        log_recorded(p, created_by)
    return b


def active(session: Session) -> list[Broadcast]:
    """Emergencies with a delivery not yet final, newest first."""
    open_states = [s.value for s in DeliveryState if not s.final]
    return list(
        session.exec(
            select(Broadcast)
            .join(Delivery, col(Delivery.broadcast_id) == col(Broadcast.id))
            .where(
                Broadcast.priority == Priority.EMERGENCY.value,
                col(Delivery.state).in_(open_states),
            )
            .distinct()
            .order_by(col(Broadcast.created_at).desc())
        ).all()
    )


def stop_targets(session: Session, broadcast_id: str | None) -> list[Broadcast]:
    """The emergency ``broadcast_id``, or (None) every active one; NotFoundError if none."""
    if broadcast_id is None:
        targets = active(session)
        if not targets:
            raise NotFoundError("no emergency is active")
        return targets
    b = session.get(Broadcast, broadcast_id)
    if b is None or b.priority != Priority.EMERGENCY.value:
        raise NotFoundError(f"no emergency {broadcast_id!r} (see `loudspeaker emergency status`)")
    return [b]


def hamlets_reached(session: Session, b: Broadcast) -> set[str]:
    """The hamlets whose clusters ``b`` was sent to."""
    return set(
        session.exec(
            select(ClusterRecord.hamlet_id)
            .join(Delivery, col(Delivery.cluster_id) == col(ClusterRecord.id))
            .where(Delivery.broadcast_id == b.id)
            .distinct()
        ).all()
    )


def request_stop(session: Session, targets: list[Broadcast], actor: str) -> list[Broadcast]:
    """Ask the controller to stop ``targets`` (emergencies).

    The caller commits (with its audit row) and then tells the controller.
    """
    t = now()
    for b in targets:
        b.stopped_at = t
        b.stopped_by = actor
        session.add(b)
        session.add(StopRequest(broadcast_id=b.id, requested_by=actor, requested_at=t))
        logger.warning("EMERGENCY %s stop requested by %s", b.id, actor or "?")
    return targets


@dataclass(frozen=True)
class EmergencyView:
    """An emergency's status: which clusters played it, which did not and why."""

    view: BroadcastView
    not_played: list[dict[str, object]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        b = self.view.broadcast
        return {
            **self.view.to_json(),
            "stopped_at": b.stopped_at.isoformat() if b.stopped_at else None,
            "stopped_by": b.stopped_by or None,
            "validity_s": b.validity_s,
            "volume": b.volume,
            "played": [d.cluster for d in self.view.deliveries if d.state == "played"],
            "not_played": self.not_played,
        }


def status(session: Session, broadcast_id: str) -> EmergencyView:
    """Where an emergency stands on each cluster."""
    view = broadcast_status(session, broadcast_id)
    if view.broadcast.priority != Priority.EMERGENCY.value:
        raise NotFoundError(
            f"{broadcast_id!r} is a {view.broadcast.priority} broadcast, not an emergency"
        )
    missing: list[dict[str, object]] = []
    for d in view.deliveries:
        if d.state == "played":
            continue
        if d.state in ("failed", "unreachable"):
            why = d.reason
        elif d.online is False:
            why = "cluster offline; it gets the emergency when it returns, while still valid"
        else:
            why = f"in progress ({d.state})"
        missing.append({"cluster": d.cluster, "hamlet": d.hamlet, "state": d.state, "why": why})
    return EmergencyView(view, missing)


# -- the CLI's path when the controller is down ----------------------------------------------


@dataclass
class DirectResult:
    """What the CLI saw while sending an emergency itself."""

    sent: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cluster -> why the broker refused
    acks: dict[str, str] = field(default_factory=dict)
    # Clusters whose key could not be opened -> why; nothing was sent to them.
    unsigned: dict[str, str] = field(default_factory=dict)
    media_url: str = ""


class _Answers:
    """What the broker and the boxes answered during a direct send (shared across threads)."""

    def __init__(self, deliveries: list[Delivery], result: DirectResult) -> None:
        self.result = result
        self.lock = threading.Lock()
        self.all_answered = threading.Event()
        self.pubacks = threading.Semaphore(0)
        # The broker's answer per published delivery: (ok, reason). A refused publish (no
        # ACL line for _operator, e.g. a cluster added after `broker config`) reached no box.
        self.broker: dict[int, tuple[bool, str]] = {}
        self._waiting = {d.command_id: d for d in deliveries}

    def on_ack(self, event: AckIn) -> None:
        ack = event.ack
        d = self._waiting.get(ack.command)
        if d is None or d.cluster_id != ack.cluster:
            return
        with self.lock:
            self.result.acks[d.cluster_id] = ack.state.value
            self._check()

    def on_broker_answer(self, index: int) -> Callable[[bool, str], None]:
        def record(ok: bool, reason: str) -> None:
            with self.lock:
                self.broker[index] = (ok, reason)
            self.pubacks.release()

        return record

    def expect_none_from(self, d: Delivery) -> None:
        """``d`` never reached its box (unsigned, refused by the broker): wait for no answer."""
        with self.lock:
            self._waiting.pop(d.command_id, None)
            self._check()

    def _check(self) -> None:  # under lock
        acks = self.result.acks
        if len(acks) >= len(self._waiting) and all(
            state in ("playing", "played", "failed") for state in acks.values()
        ):
            self.all_answered.set()


def _serve_media(media_dir: Path, http_host: str, http_port: int, sha256: str) -> MediaServer:
    """The emergency's audio (and nothing else) on the controller's usual port, or any
    free one when that is taken."""

    def only_this(wanted: str) -> bool:
        return wanted == sha256

    store = MediaStore(media_dir)
    server = MediaServer(store, http_host, http_port, lambda: None, referenced=only_this)
    try:
        server.start()
    except LoudspeakerError:
        server = MediaServer(store, http_host, 0, lambda: None, referenced=only_this)
        server.start()
    return server


def send_direct(
    session: Session,
    broadcast_id: str,
    *,
    endpoint: BrokerEndpoint,
    site: str,
    media_dir: Path,
    http_host: str,
    http_port: int,
    sign: Callable[[PlayCommand], PlayCommand] = lambda c: c,
    wait_s: float = 20.0,
    public_url: str | None = None,
) -> DirectResult:
    """Send an emergency's commands straight over the broker, serving its audio meanwhile.

    The audio is served from ``http_host:http_port`` (the controller's usual address, so the
    URLs in queued commands stay valid when the controller returns) until every target has
    fetched it or ``wait_s`` passes. Deliveries are marked ``sent`` on the broker's PUBACK,
    ``failed`` with the broker's reason when it refuses one (or never confirms it);
    the controller applies the clusters' acknowledgements when it starts again.
    """
    b = session.get(Broadcast, broadcast_id)
    m = session.get(MediaRecord, b.media_sha256) if b else None
    if b is None or m is None:
        raise NotFoundError(f"no emergency {broadcast_id!r}")
    deliveries = list(
        session.exec(
            select(Delivery).where(
                Delivery.broadcast_id == broadcast_id,
                Delivery.state == DeliveryState.QUEUED.value,
            )
        ).all()
    )
    server = _serve_media(media_dir, http_host, http_port, m.sha256)
    base = public_url or f"http://{http_host}:{server.port}"
    result = DirectResult(media_url=cluster_commands.media_url(base, m))
    answers = _Answers(deliveries, result)
    # The controller's own router: the same checks on what the boxes answer.
    inbound = InboundRouter(site)
    inbound.on_ack(answers.on_ack)
    loop = MqttLoop("emergency-direct")
    loop.start()
    # The operators' account (_operator), never the controller's: the broker binds the
    # client id to the user name, so the controller's account would take over its session
    # (and kick a running controller). This connection keeps no session (expiry 0, clean
    # start); the boxes' answers also wait in the controller's own session, which is
    # subscribed to every ack and status, for when it starts again.
    link = MqttLink(
        f"cli-emergency-{new_id()[:8]}",
        endpoint,
        on_message=inbound.on_message,
        subscriptions=tuple(topic(site, d.cluster_id, Kind.ACK) for d in deliveries),
        session_expiry_s=0,
    )
    loop.add(link)
    try:
        # `connected` is set on the SUBACK: no box's answer can come before we listen.
        if not link.connected.wait(5):
            raise LoudspeakerError(
                f"cannot reach the broker at {endpoint.url} either: the emergency is recorded "
                "but could not be sent; start `loudspeaker serve`"
            )
        published = _publish(session, link, deliveries, b, m, base, site, sign, answers)
        _record_broker_answers(session, published, answers)
        session.commit()
        answers.all_answered.wait(wait_s)
    finally:
        loop.close_link(link)
        loop.stop()
        server.stop()
    return result


def _publish(
    session: Session,
    link: MqttLink,
    deliveries: list[Delivery],
    b: Broadcast,
    m: MediaRecord,
    base: str,
    site: str,
    sign: Callable[[PlayCommand], PlayCommand],
    answers: _Answers,
) -> list[Delivery]:
    """Sign and publish each delivery's command; the ones published, in publishing order."""
    t = now()
    expires = t + timedelta(seconds=b.validity_s or DEFAULT_VALIDITY_S)
    published: list[Delivery] = []
    for d in deliveries:
        d.expires_at = d.expires_at or expires
        try:
            cmd = sign(
                cluster_commands.play_command(
                    d, b, m, media_base_url=base, issued_at=t, expires_at=d.expires_at
                )
            )
        except KeystoreError as exc:
            # Unsigned it would be refused by the box: not sent, and said so.
            answers.result.unsigned[d.cluster_id] = str(exc)
            answers.expect_none_from(d)
            delivery.record(session, d, delivery.failed(t, str(exc)))
            continue
        link.publish(
            topic(site, d.cluster_id, Kind.CMD),
            encode(cmd),
            on_done=answers.on_broker_answer(len(published)),
        )
        published.append(d)
    return published


def _record_broker_answers(session: Session, published: list[Delivery], answers: _Answers) -> None:
    """Mark each published delivery ``sent`` on its PUBACK, ``failed`` on a refusal or none."""
    for _ in published:
        answers.pubacks.acquire(timeout=5)
    t = now()
    for i, d in enumerate(published):
        with answers.lock:
            ok, why = answers.broker.get(i, (False, "the broker did not confirm it"))
        if ok:
            delivery.record(session, d, delivery.sent(t, note=delivery.SENT_DIRECTLY))
            answers.result.sent.append(d.cluster_id)
        else:
            refused = delivery.broker_refused(t, why)
            delivery.record(session, d, refused)
            answers.expect_none_from(d)  # no answer to wait for
            answers.result.failed[d.cluster_id] = refused.reason
