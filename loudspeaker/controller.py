"""``loudspeaker serve``: the one controller process of a commune, wired together here.

It owns the only dispatcher, schedule runner and health monitor on the database; the CLI
talks to it by inserting rows and poking it over HTTP, never by running its own.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from firmware_bridge.mqtt import BrokerEndpoint, MqttLink, MqttLoop
from firmware_bridge.protocol import controller_subscriptions, health_subscriptions
from loudspeaker.broker import EmbeddedBroker
from loudspeaker.config import Settings
from loudspeaker.db import init_db, make_engine
from loudspeaker.dispatcher import Dispatcher
from loudspeaker.emergency_spool import EmergencySpool
from loudspeaker.exceptions import BrokerStartError, KeystoreError, LoudspeakerError
from loudspeaker.fd_budget import ensure_descriptors
from loudspeaker.filemodes import secure_data_dir
from loudspeaker.health import HealthMonitor
from loudspeaker.inbound import Drops, InboundRouter
from loudspeaker.keys import check_active_keys
from loudspeaker.keystore import Keystore
from loudspeaker.media import MediaServer, MediaStore
from loudspeaker.media_policy import MediaLimits, local_host, url_host
from loudspeaker.media_refs import ReferencedMedia
from loudspeaker.models import now
from loudspeaker.runtime import (
    ControllerCard,
    Endpoints,
    broker_endpoint,
    remember_port,
    remembered_port,
)
from loudspeaker.schedule_runner import ScheduleRunner
from loudspeaker.site import current_site
from loudspeaker.supervisor import Supervised, Supervisor

logger = logging.getLogger(__name__)


class Controller:
    """Storage, broker (embedded or external), media server, MQTT link and dispatcher."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.endpoint: BrokerEndpoint | None = None
        self.media: MediaServer | None = None
        self.loop: MqttLoop | None = None
        self.link: MqttLink | None = None
        self.dispatcher: Dispatcher | None = None
        self.health: HealthMonitor | None = None
        self.schedules: ScheduleRunner | None = None
        self.router: InboundRouter | None = None
        self.supervisor: Supervisor | None = None
        # Every dropped inbound message, by kind and reason (router and workers alike).
        self.drops = Drops()
        self.site_id = ""
        self.endpoints: Endpoints | None = None
        self._engine: Engine | None = None

    def start(self) -> None:
        """Open everything in order; on failure, close what was opened and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        st = self.settings
        # Before anything is opened: a limit that cannot hold the budget refuses here.
        budget = ensure_descriptors(st.http_max_connections)
        secure_data_dir(st)
        keystore = Keystore.of(st)
        engine = make_engine(st.database_url, busy_timeout_ms=int(st.db_busy_timeout_s * 1000))
        init_db(engine, keystore)
        try:
            # Every box with keys refuses unsigned commands: better not to start at all.
            check_active_keys(engine, keystore)
        except KeystoreError as exc:
            engine.dispose()
            raise KeystoreError(f"serve cannot sign commands, not starting: {exc}") from None
        # Said once it is sure to start: a refusal above stays the one line it prints.
        logger.info(
            "open-file limit %d (hard %d): up to %d media connections",
            budget.soft,
            budget.hard,
            budget.max_connections,
        )
        with Session(engine) as s:
            self.site_id = current_site(s).site.id
        external = broker_endpoint(st.broker_url, st.broker_credentials)
        if external is not None:
            self.endpoint = external
        else:
            self.broker = self._start_broker()
            self.endpoint = self.broker.endpoint
        self.media = self._start_media(
            MediaStore(st.media_dir),
            st.media_limits(budget.max_connections),
            ReferencedMedia(engine),
        )
        http_url = f"http://{url_host(st.http_host)}:{self.media.port}"
        self.loop = MqttLoop(name="controller-mqtt")
        self.loop.start()
        self.router = InboundRouter(self.site_id, drops=self.drops)
        self.link = MqttLink(
            f"controller-{self.site_id}",
            self.endpoint,
            on_message=self.router.on_message,
            subscriptions=(
                *controller_subscriptions(self.site_id),
                *health_subscriptions(self.site_id),
            ),
            keepalive=10,
            on_connected=self._on_connected,
        )
        self.dispatcher = Dispatcher(
            engine,
            self.link,
            site=self.site_id,
            media_base_url=st.public_url or http_url,
            ack_timeout_s=st.ack_timeout_s,
            command_ttl_s=st.command_ttl_s,
            poll_interval_s=st.poll_interval_s,
            keystore=keystore,
            drops=self.drops,
            spool=EmergencySpool(st.data_dir),
        )
        self.dispatcher.start()
        self.health = HealthMonitor(
            engine,
            self.link,
            site=self.site_id,
            poll_interval_s=min(0.5, st.poll_interval_s),
            keystore=keystore,
            drops=self.drops,
        )
        self.health.start()
        self._engine = engine
        self.schedules = ScheduleRunner(
            engine,
            self.dispatcher,
            horizon_s=st.schedule_horizon_s,
            grace_s=st.schedule_grace_s,
            clock_warn_s=st.clock_warn_s,
        )
        self.schedules.start()
        self.supervisor = Supervisor(engine, self._workers)
        self.supervisor.start()
        # Routes before the link joins the loop: no message arrives with nobody to take it.
        self.router.awaits = self.dispatcher.sender.awaits
        self.health.flood = self.router.flood  # the flooding alarm
        self.health.each_iteration.append(self.router.flush_stash)
        self.router.on_ack(self.dispatcher.accept)
        self.router.on_ack(self.schedules.accept)  # cluster clocks, from ack times
        self.router.on_status(self.dispatcher.accept)
        self.router.on_status(self.health.accept)
        self.router.on_heartbeat(self.health.accept)
        self.router.on_result(self.health.accept)
        self.loop.add(self.link)
        ControllerCard(
            pid=os.getpid(),
            site=self.site_id,
            broker_url=self.endpoint.url,
            # The CLI pokes this: over loopback when the server listens on every address,
            # as /api/poke answers loopback and this host's own address only.
            http_url=f"http://{url_host(local_host(st.http_host))}:{self.media.port}",
            started_at=now().isoformat(),
        ).write(st.run_dir)
        self.endpoints = Endpoints(
            broker_url=self.endpoint.url,
            credentials_file=(
                str(st.broker_credentials.resolve()) if st.broker_credentials else None
            ),
            operator_credentials_file=(
                str(op.resolve()) if (op := st.operator_credentials_file) else None
            ),
            media=http_url,
            metrics=f"{http_url}/metrics",
            pid=os.getpid(),
            started_at=now().isoformat(),
        )
        self.endpoints.write(st.endpoints_file)
        logger.info(
            "controller for %s up: broker %s, media %s", self.site_id, self.endpoint.url, http_url
        )

    def _start_broker(self) -> EmbeddedBroker:
        # Boxes are configured with the broker's port: keep the previous one when none is
        # fixed with --broker-port, as for the media port below.
        st = self.settings
        port = st.broker_port or remembered_port(st.run_dir, "broker")
        broker = EmbeddedBroker(st.run_dir / "mosquitto", host=st.broker_host, port=port)
        try:
            broker.start()
        except BrokerStartError:
            if st.broker_port or not port:
                raise
            logger.warning("previous broker port %s is taken; using a new one", port)
            broker = EmbeddedBroker(st.run_dir / "mosquitto", host=st.broker_host, port=0)
            broker.start()
        remember_port(st.run_dir, "broker", broker.port)
        return broker

    def _start_media(
        self, store: MediaStore, limits: MediaLimits, referenced: ReferencedMedia
    ) -> MediaServer:
        # Clusters keep the media URLs of commands they hold; with no fixed --http-port,
        # take the previous controller's port again so a restart does not break them.
        st = self.settings

        def server(port: int) -> MediaServer:
            return MediaServer(
                store,
                st.http_host,
                port,
                on_poke=self._poke,
                metrics=self._metrics,
                limits=limits,
                referenced=referenced,
            )

        port = st.http_port or remembered_port(st.run_dir, "media")
        media = server(port)
        try:
            media.start()
        except LoudspeakerError:
            if st.http_port:
                raise
            logger.warning("previous media port %s is taken; using a new one", port)
            media = server(0)
            media.start()
        remember_port(st.run_dir, "media", media.port)
        return media

    def _workers(self) -> dict[str, Supervised | None]:
        return {
            "dispatcher": self.dispatcher,
            "health": self.health,
            "schedule-runner": self.schedules,
        }

    def _poke(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.poke()
        if self.health is not None:
            self.health.poke()
        if self.schedules is not None:
            self.schedules.poke()

    def _on_connected(self, _link: MqttLink) -> None:
        if self.dispatcher is not None:
            self.dispatcher.on_connected()

    def _metrics(self) -> str:
        from loudspeaker.metrics import ControllerStats, collect

        if self._engine is None:
            return ""
        link, disp, health = self.link, self.dispatcher, self.health
        stats = ControllerStats(
            mqtt_connected=link is not None and link.connected.is_set(),
            mqtt_reconnects=link.reconnects if link is not None else 0,
            dispatcher_backlog=disp.backlog if disp is not None else 0,
            health_backlog=health.backlog if health is not None else 0,
            dropped_messages=self.drops.total(),
            dropped_by_reason=self.drops.by_reason(),
            heartbeats_received=health.heartbeats_received if health is not None else 0,
            worker_restarts=dict(self.supervisor.restarts) if self.supervisor else {},
        )
        return collect(self._engine, stats)

    def stop(self) -> None:
        """Stop in reverse order and remove the address card."""
        card = ControllerCard.read(self.settings.run_dir)
        if card is not None and card.pid == os.getpid():
            ControllerCard.path(self.settings.run_dir).unlink(missing_ok=True)
        if self.supervisor is not None:
            self.supervisor.stop()  # first: workers stopping are not workers dying
        if self.schedules is not None:
            self.schedules.stop()
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.health is not None:
            self.health.stop()
        if self.loop is not None:
            if self.link is not None:
                self.loop.close_link(self.link)
            self.loop.stop()
        if self.media is not None:
            self.media.stop()
        if self.broker is not None:
            self.broker.stop()

    @property
    def data_dir(self) -> Path:
        """The data directory in use."""
        return self.settings.data_dir
