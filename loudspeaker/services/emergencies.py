"""Emergencies: trigger (reaching the clusters even with the controller down), follow, stop."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

from sqlmodel import Session

from firmware_bridge.backoff import Backoff
from firmware_bridge.credentials import OPERATOR_USER
from firmware_bridge.exceptions import KeyFileError
from firmware_bridge.mqtt import BrokerEndpoint
from loudspeaker import audit
from loudspeaker import emergency as em
from loudspeaker import emergency_spool as spool
from loudspeaker.auth import Actor, Permission, Role, authorize, hamlets_of
from loudspeaker.broker import running_broker
from loudspeaker.config import ENV_OPERATOR_CREDENTIALS
from loudspeaker.db import make_engine
from loudspeaker.db_faults import DB_ERRORS, first_line, retry_within
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.keys import CommandSigner
from loudspeaker.models import Broadcast
from loudspeaker.runtime import (
    ControllersAccountRefused,
    Endpoints,
    operators_broker,
    operators_credentials,
    remembered_port,
)
from loudspeaker.services.context import ServiceContext
from loudspeaker.site import current_site
from loudspeaker.targets import hamlet_clusters

logger = logging.getLogger(__name__)

EmergencyRequest = em.EmergencyRequest
EmergencyView = em.EmergencyView

# Of the 3 s from the hamlet head's Enter to the boxes' speakers, recording may take this
# much, retries included; the rest is the poke and the controller's emergency lane.
RECORD_BUDGET_S = 2.0
RECORD_BACKOFF = Backoff(initial=0.05, factor=2.0, cap=0.4, jitter=0.2)
# How long one attempt waits on SQLite's write lock before it is retried.
ATTEMPT_LOCK_WAIT_MS = 400


@dataclass(frozen=True)
class DirectSend:
    """What happened when the emergency was sent straight over the broker."""

    sent: tuple[str, ...]
    failed: Mapping[str, str] = field(default_factory=dict)  # cluster -> the broker's refusal
    acks: Mapping[str, str] = field(default_factory=dict)  # cluster -> its last answer
    unsigned: Mapping[str, str] = field(default_factory=dict)  # cluster -> why its key failed

    @property
    def missed(self) -> list[str]:
        """Clusters that got nothing."""
        return sorted({*self.unsigned, *self.failed})

    def to_json(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "sent": list(self.sent),
            "failed": dict(self.failed),
            "acks": dict(self.acks),
            "not_signed": dict(self.unsigned),
        }


@dataclass(frozen=True)
class EmergencyTriggered:
    """An emergency recorded; handed to the controller, or (``direct``) sent by us."""

    broadcast_id: str
    target: str
    controller_notified: bool
    direct: DirectSend | None = None


@dataclass(frozen=True)
class EmergencyStopped:
    """Stop requested for these emergencies."""

    broadcast_ids: tuple[str, ...]
    controller_notified: bool


def trigger(
    ctx: ServiceContext, actor: Actor, request: EmergencyRequest, *, direct_wait_s: float = 10.0
) -> EmergencyTriggered:
    """Record an emergency and get it out: through the controller, or, when none runs,
    straight over the broker (waiting up to ``direct_wait_s`` for the clusters' answers).

    Raises ``LoudspeakerError`` if neither way is open; the emergency stays recorded and
    goes out when the controller starts.
    """
    request.check()  # a refusal is the user's to fix, not the database's
    everywhere = request.everywhere
    with ctx.session() as s:
        hamlets = hamlets_of(hamlet_clusters(s, request.hamlets))
    authorize(
        ctx,
        actor,
        Permission.EMERGENCY,
        None if everywhere else hamlets,
        action="emergency.trigger",
        target="all" if everywhere else ",".join(sorted(hamlets)),
    )
    bid = _record_within_budget(ctx, actor, request)
    if ctx.notify_controller():
        return EmergencyTriggered(bid, request.target, controller_notified=True)
    return EmergencyTriggered(bid, request.target, False, _send_direct(ctx, bid, direct_wait_s))


def _record_within_budget(ctx: ServiceContext, actor: Actor, request: EmergencyRequest) -> str:
    """Record the emergency, retrying a locked or slow database within the budget.

    The audio is rendered and stored first (no database write needed), and the broadcast
    id fixed then: every retry, and the spool, carry the same id, so it is never recorded
    twice. Past the budget the prepared request is spooled on disk
    (loudspeaker/emergency_spool.py) for the controller to record and send once the
    database frees, and a ``LoudspeakerError`` says exactly that: what was done, what was
    not, and what happens next.
    """
    with ctx.session() as s:
        prepared = em.prepare(s, ctx.settings.data_dir, request)
    # Its own engine with a short lock wait: the shared one waits 30 s for a lock.
    engine = make_engine(ctx.settings.database_url, busy_timeout_ms=ATTEMPT_LOCK_WAIT_MS)

    def attempt() -> str:
        with Session(engine, expire_on_commit=False) as s:
            # An attempt whose commit went through but whose answer was lost: done already.
            if s.get(Broadcast, prepared.broadcast_id) is None:
                spool.record(s, ctx.settings.data_dir, prepared, actor=actor.name, role=actor.role)
                s.commit()
                em.log_recorded(prepared, actor.name)
        return prepared.broadcast_id

    try:
        return retry_within(attempt, RECORD_BUDGET_S, RECORD_BACKOFF, "emergency record")
    except DB_ERRORS as exc:
        why = first_line(exc)
    finally:
        engine.dispose()
    busy = f"the database stayed busy for {RECORD_BUDGET_S:.0f} s ({why})"
    try:
        path = spool.EmergencySpool(ctx.settings.data_dir).put(
            prepared, actor=actor.name, role=actor.role
        )
    except OSError as exc:
        raise LoudspeakerError(
            f"{busy} and the emergency could not be kept for later either ({exc}): it is NOT "
            "recorded, NOT sent and NOT kept; give it again, or free the database (stop the "
            "program holding it) and check that this account may write the data directory's "
            "spool/emergencies (`loudspeaker serve` makes it, group-writable in group mode)"
        ) from None
    if ctx.notify_controller():
        then = "the controller records and sends it as soon as the database is free"
    else:
        then = "`loudspeaker serve` records and sends it when it starts and the database is free"
    raise LoudspeakerError(
        f"{busy}: the emergency is NOT recorded and NOT sent yet; it is kept in {path} and "
        f"{then} (check with `loudspeaker emergency status`); do not give it again"
    )


def _send_direct(ctx: ServiceContext, broadcast_id: str, wait_s: float) -> DirectSend:
    endpoint, host, port = _direct_route(ctx)
    with ctx.session() as s:
        result = em.send_direct(
            s,
            broadcast_id,
            endpoint=endpoint,
            site=current_site(s).site.id,
            media_dir=ctx.settings.media_dir,
            http_host=host,
            http_port=port,
            sign=CommandSigner(ctx.engine, ctx.keystore).sign,
            wait_s=wait_s,
            public_url=ctx.settings.public_url,
        )
    return DirectSend(tuple(result.sent), result.failed, result.acks, result.unsigned)


def _direct_route(ctx: ServiceContext) -> tuple[BrokerEndpoint, str, int]:
    """Broker endpoint and media address to use while the controller is down.

    The broker: ``LOUDSPEAKER_BROKER``, else the one the last ``serve`` wrote to
    ``run/endpoints.json``, else the private broker if it runs. The login: the operators'
    account (``_operator.json``: ``LOUDSPEAKER_OPERATOR_CREDENTIALS``, else the file named
    in ``run/endpoints.json``), never the controller's, whose session it would take over.
    """
    st = ctx.settings
    last = Endpoints.read(st.endpoints_file)
    url = st.broker_url or (last.broker_url if last else None)
    creds = operators_credentials(st, last)
    if creds is None and last is not None and last.credentials_file and not st.broker_url:
        # serve logged in to a locked-down broker, but named no operators' account.
        raise LoudspeakerError(
            f"the controller is not running and no operators' broker credentials are known "
            f"(run/endpoints.json names none): set {ENV_OPERATOR_CREDENTIALS} to "
            f"{OPERATOR_USER}.json from `loudspeaker broker config` (re-run it to write one; it "
            "keeps every password), or start `loudspeaker serve` with that file beside the "
            "controller's. The emergency is recorded and goes out as soon as serve starts"
        )
    try:
        endpoint = operators_broker(url, creds).endpoint or running_broker(st.run_dir / "mosquitto")
    except KeyFileError as exc:
        raise LoudspeakerError(
            f"the controller is not running and the operators' broker credentials cannot be "
            f"used: {exc}. Run this as a member of the operators' group (the file is 0640), or "
            f"set {ENV_OPERATOR_CREDENTIALS} to a copy of {OPERATOR_USER}.json you may read. "
            "The emergency is recorded and goes out as soon as `loudspeaker serve` starts"
        ) from None
    except ControllersAccountRefused as exc:
        raise LoudspeakerError(
            f"{exc} ({ENV_OPERATOR_CREDENTIALS}). The emergency is recorded and goes out as "
            "soon as `loudspeaker serve` starts"
        ) from None
    if endpoint is None:
        raise LoudspeakerError(
            "the controller is not running and no broker is reachable: the emergency is "
            "recorded and goes out as soon as `loudspeaker serve` starts"
        )
    # The controller's own media address, so URLs in queued commands stay valid.
    host, port = st.http_host, st.http_port or remembered_port(st.run_dir, "media")
    if last is not None and not st.http_port:
        parsed = urlparse(last.media)
        host, port = parsed.hostname or host, parsed.port or port
    return endpoint, host, port


def status(ctx: ServiceContext, actor: Actor, broadcast_id: str) -> EmergencyView:
    """Where an emergency stands on each cluster, and why the others did not play it."""
    authorize(ctx, actor, Permission.VIEW, action="emergency.status", target=broadcast_id)
    with ctx.session() as s:
        return em.status(s, broadcast_id)


def active(ctx: ServiceContext, actor: Actor) -> list[EmergencyView]:
    """Every emergency still going out, newest first."""
    authorize(ctx, actor, Permission.VIEW, action="emergency.status", target="all")
    with ctx.session() as s:
        return [em.status(s, b.id) for b in em.active(s)]


def stop(ctx: ServiceContext, actor: Actor, broadcast_id: str | None) -> EmergencyStopped:
    """Stop one emergency, or (``None``) every active one the actor may stop.

    The same rule as giving one: a hamlet head may stop an emergency that reaches only
    her hamlet; commune-wide roles may stop any.
    """
    with ctx.session() as s:
        targets = em.stop_targets(s, broadcast_id)
        reached = {b.id: em.hamlets_reached(s, b) for b in targets}
    if broadcast_id is None and actor.role == Role.HAMLET_HEAD.value:
        # "Stop" from a hamlet head means the active ones of her hamlet.
        targets = [b for b in targets if reached[b.id] <= {actor.hamlet}] or targets
    hamlets = set().union(*(reached[b.id] for b in targets))
    authorize(
        ctx,
        actor,
        Permission.EMERGENCY,
        hamlets or None,
        action="emergency.stop",
        target=broadcast_id or "all",
    )
    with ctx.session() as s:
        mine = [b for b in em.stop_targets(s, broadcast_id) if b.id in {t.id for t in targets}]
        ids = tuple(b.id for b in em.request_stop(s, mine, actor.name))
        audit.record(s, actor.name, "emergency.stop", ",".join(ids), role=actor.role)
        s.commit()
    return EmergencyStopped(ids, ctx.notify_controller())
