"""Emergencies: trigger (reaching the clusters even with the controller down), follow, stop."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlparse

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlmodel import Session

from firmware_bridge.backoff import Backoff, Retrier
from firmware_bridge.credentials import OPERATOR_USER
from firmware_bridge.exceptions import KeyFileError
from firmware_bridge.mqtt import BrokerEndpoint
from loudspeaker import audit
from loudspeaker import emergency as em
from loudspeaker import emergency_spool as spool
from loudspeaker.auth import Actor, Permission, authorize, hamlets_of
from loudspeaker.broker import running_broker
from loudspeaker.config import ENV_OPERATOR_CREDENTIALS
from loudspeaker.db import make_engine
from loudspeaker.exceptions import InvalidRequest, LoudspeakerError
from loudspeaker.keys import CommandSigner
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


def where(hamlets: Sequence[str], everywhere: bool) -> tuple[str, ...]:
    """An emergency's ``hamlets`` (empty: every hamlet); some hamlets or all, never both."""
    if bool(hamlets) == everywhere:
        raise InvalidRequest("say where: --hamlet NAME (repeatable) or --all")
    return tuple(hamlets)


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
    everywhere = not request.hamlets
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

    Past the budget the request is spooled on disk (loudspeaker/emergency_spool.py) for the
    controller to record and send once the database frees, and a ``LoudspeakerError`` says
    exactly that: what was done, what was not, and what happens next.
    """
    request.check()  # a refusal is the user's to fix, not the database's
    deadline = time.monotonic() + RECORD_BUDGET_S
    retrier = Retrier(RECORD_BACKOFF)
    # Its own engine with a short lock wait: the shared one waits 30 s for a lock.
    engine = make_engine(ctx.settings.database_url, busy_timeout_ms=ATTEMPT_LOCK_WAIT_MS)
    try:
        while True:
            try:
                with Session(engine, expire_on_commit=False) as s:
                    b = spool.record(
                        s, ctx.settings.data_dir, request, actor=actor.name, role=actor.role
                    )
                    s.commit()
                    return b.id
            except (OperationalError, SATimeoutError) as exc:
                why = str(exc.orig if isinstance(exc, OperationalError) else exc)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                delay = min(retrier.next_delay(), left)
                logger.warning("emergency not recorded yet (%s); retrying in %.2f s", why, delay)
                time.sleep(delay)
    finally:
        engine.dispose()
    path = spool.EmergencySpool(ctx.settings.data_dir).put(
        request, actor=actor.name, role=actor.role
    )
    if ctx.notify_controller():
        then = "the controller records and sends it as soon as the database is free"
    else:
        then = "`loudspeaker serve` records and sends it when it starts and the database is free"
    raise LoudspeakerError(
        f"the database stayed busy for {RECORD_BUDGET_S:.0f} s ({why}): the emergency is NOT "
        f"recorded and NOT sent yet; it is kept in {path} and {then} (check with "
        "`loudspeaker emergency status`); do not give it again"
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
    """Stop one emergency, or (``None``) every active one."""
    authorize(
        ctx, actor, Permission.EMERGENCY, action="emergency.stop", target=broadcast_id or "all"
    )
    with ctx.session() as s:
        ids = tuple(b.id for b in em.request_stop(s, broadcast_id, actor.name))
        audit.record(s, actor.name, "emergency.stop", ",".join(ids), role=actor.role)
        s.commit()
    return EmergencyStopped(ids, ctx.notify_controller())
