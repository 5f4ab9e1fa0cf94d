"""Sending the dispatcher's commands: sign, publish, and remember what is in flight.

The dispatcher decides what to send; :class:`CommandSender` turns a delivery into signed
bytes on the cluster's command topic. It publishes through a :class:`Publisher` (the
controller's :class:`~firmware_bridge.mqtt.MqttLink`, or in tests a recording fake).
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Protocol

from firmware_bridge.mqtt import PublishDone
from firmware_bridge.protocol import Kind, encode, topic
from loudspeaker import cluster_commands
from loudspeaker.keys import CommandSigner
from loudspeaker.models import Broadcast, Delivery, MediaRecord

# Acks of a played item arrive after its command expired (it expires before it must
# start, not before it ends): long announcements included, an hour covers them.
_ACKS_AFTER_EXPIRY = timedelta(hours=1)


class Publisher(Protocol):
    """What the controller's workers need of an MQTT link."""

    connected: threading.Event

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_done: PublishDone | None = None,
    ) -> None:
        """Send ``payload``; ``on_done(ok, reason)`` when the broker answers."""


class CommandSender:
    """Signs and publishes play, stop and withdraw commands for one site.

    Signing raises :class:`~loudspeaker.exceptions.KeystoreError` before anything is
    published: an unsigned command would be refused by every box with keys.
    """

    def __init__(
        self,
        link: Publisher,
        signer: CommandSigner,
        *,
        site: str,
        media_base_url: str,
        command_ttl: timedelta,
    ) -> None:
        self.link = link
        self.signer = signer
        self.site = site
        self.media_base_url = media_base_url.rstrip("/")
        self.command_ttl = command_ttl
        # Published, PUBACK not yet applied: never published twice meanwhile.
        self.inflight: set[int] = set()
        # When each delivery was last published (emergency retries count from there).
        self.last_sent: dict[int, datetime] = {}
        # Play commands published and not long expired, by (cluster, command id): their
        # acks are never dropped under overload (read on the MQTT loop thread; replaced
        # whole when pruned, so a reader never sees it half changed).
        self._awaited: dict[tuple[str, str], datetime] = {}
        self._awaited_pruned_at = 0

    def awaits(self, cluster: str, command: str) -> bool:
        """Whether ``cluster``'s acks of ``command`` answer a play command we sent."""
        return (cluster, command) in self._awaited

    def _await(self, d: Delivery, t: datetime, expires: datetime) -> None:
        self._awaited[(d.cluster_id, d.command_id)] = expires + _ACKS_AFTER_EXPIRY
        if len(self._awaited) >= 2 * max(self._awaited_pruned_at, 5_000):
            self._awaited = {k: v for k, v in self._awaited.items() if v > t}
            self._awaited_pruned_at = len(self._awaited)

    @property
    def connected(self) -> bool:
        """The broker is reachable now."""
        return self.link.connected.is_set()

    def _publish(self, cluster: str, payload: bytes, on_done: PublishDone | None = None) -> None:
        self.link.publish(topic(self.site, cluster, Kind.CMD), payload, qos=1, on_done=on_done)

    def play(
        self,
        d: Delivery,
        b: Broadcast,
        m: MediaRecord,
        t: datetime,
        expires: datetime,
        on_done: PublishDone,
    ) -> None:
        """Publish ``d``'s play command; ``on_done`` runs on the broker's answer."""
        cmd = self.signer.sign(
            cluster_commands.play_command(
                d, b, m, media_base_url=self.media_base_url, issued_at=t, expires_at=expires
            )
        )
        assert d.id is not None
        self.inflight.add(d.id)
        self.last_sent[d.id] = t
        self._await(d, t, expires)
        self._publish(d.cluster_id, encode(cmd), on_done)

    def ask_again(
        self, d: Delivery, b: Broadcast, m: MediaRecord, t: datetime, expires: datetime
    ) -> None:
        """Publish ``d``'s play command again so the cluster repeats its last state.

        Same command id: a cluster that has it answers without playing it twice.
        """
        cmd = cluster_commands.play_command(
            d,
            b,
            m,
            media_base_url=self.media_base_url,
            issued_at=min(t, expires - timedelta(seconds=1)),
            expires_at=expires,
        )
        self._await(d, t, expires)
        self._publish(d.cluster_id, encode(self.signer.sign(cmd)))

    def stop(self, d: Delivery, broadcast_id: str, t: datetime, expires: datetime) -> None:
        """Publish a stop of ``broadcast_id`` to ``d``'s cluster."""
        cmd = cluster_commands.stop_command(
            d.cluster_id, broadcast_id, issued_at=t, expires_at=expires
        )
        self._publish(d.cluster_id, encode(self.signer.sign(cmd)))

    def withdraw(self, d: Delivery, t: datetime, expires: datetime) -> None:
        """Publish a withdraw of ``d``'s play command."""
        cmd = cluster_commands.withdraw_command(d, issued_at=t, expires_at=expires)
        self._publish(d.cluster_id, encode(self.signer.sign(cmd)))
