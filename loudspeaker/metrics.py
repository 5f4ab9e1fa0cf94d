"""Prometheus metrics of the controller, in the text exposition format (version 0.0.4).

Served at ``GET /metrics`` by the controller's HTTP server. Per-cluster values come from
the database (what the health monitor and dispatcher recorded), controller values from
the running objects. Written by hand: the format is simple and a dependency is not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from loudspeaker.alarms import CONTROLLER, CONTROLLER_KINDS, AlarmKind
from loudspeaker.db import as_utc
from loudspeaker.models import (
    AlarmRecord,
    ClusterHealth,
    ClusterRecord,
    ClusterStatus,
    ControlRequest,
    Delivery,
    DeliveryState,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A box's alarm kinds (the controller's own have their family of their own).
CLUSTER_KINDS = tuple(k for k in AlarmKind if k not in CONTROLLER_KINDS)


@dataclass
class _Family:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float | int | bool | None, **labels: str) -> None:
        if value is None:
            return
        self.samples.append((labels, float(value)))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value) if not value.is_integer() else str(int(value))


def render(families: Iterable[_Family]) -> str:
    """Families in the text format; each with HELP and TYPE, even when empty."""
    out: list[str] = []
    for f in families:
        out.append(f"# HELP {f.name} {f.help}")
        out.append(f"# TYPE {f.name} {f.kind}")
        for labels, value in f.samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.append(
                f"{f.name}{{{lab}}} {_number(value)}" if lab else f"{f.name} {_number(value)}"
            )
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class ControllerStats:
    """Live numbers of the running controller (not in the database)."""

    mqtt_connected: bool = False
    mqtt_reconnects: int = 0
    dispatcher_backlog: int = 0
    health_backlog: int = 0
    dropped_messages: int = 0
    # (kind, reason) -> count; kind "" when not even the topic was understood.
    dropped_by_reason: dict[tuple[str, str], int] = field(default_factory=dict)
    heartbeats_received: int = 0
    # worker name -> times the supervisor restarted its thread since start.
    worker_restarts: dict[str, int] = field(default_factory=dict)


def collect(engine: Engine, stats: ControllerStats) -> str:
    """Every metric, read now."""
    up = _Family("loudspeaker_cluster_up", "gauge", "1 if the cluster is online, else 0")
    seen = _Family(
        "loudspeaker_cluster_last_seen_timestamp_seconds",
        "gauge",
        "Unix time the controller last heard from the cluster",
    )
    hb = _Family(
        "loudspeaker_cluster_last_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of the cluster's last heartbeat (controller clock)",
    )
    temp = _Family(
        "loudspeaker_cluster_amplifier_temperature_celsius", "gauge", "Amplifier temperature"
    )
    volt = _Family("loudspeaker_cluster_supply_voltage_volts", "gauge", "Supply voltage")
    amps = _Family("loudspeaker_cluster_amplifier_current_amperes", "gauge", "Amplifier current")
    vol = _Family("loudspeaker_cluster_volume_percent", "gauge", "Amplifier volume, 0-100")
    power = _Family("loudspeaker_cluster_amplifier_power", "gauge", "1 if the relay is closed")
    line = _Family(
        "loudspeaker_cluster_speaker_line", "gauge", "1 for the current speaker line state"
    )
    rssi = _Family("loudspeaker_cluster_signal_dbm", "gauge", "Signal strength of the modem")
    storage = _Family(
        "loudspeaker_cluster_free_storage_bytes", "gauge", "Free storage for audio on the box"
    )
    skew = _Family(
        "loudspeaker_cluster_clock_offset_seconds",
        "gauge",
        "Cluster clock minus controller clock, measured on heartbeat arrival",
    )
    uptime = _Family("loudspeaker_cluster_uptime_seconds", "gauge", "Agent uptime")
    fails = _Family(
        "loudspeaker_cluster_playback_failures", "gauge", "Consecutive playback failures"
    )
    heartbeats = _Family(
        "loudspeaker_cluster_heartbeats_total", "counter", "Heartbeats received from the cluster"
    )
    alarm = _Family(
        "loudspeaker_cluster_alarm_active", "gauge", "1 while an alarm of this kind is raised"
    )
    deliveries = _Family(
        "loudspeaker_deliveries_total", "counter", "Deliveries that reached a final state"
    )
    ctl = _Family("loudspeaker_control_requests_total", "counter", "Control requests by state")
    with Session(engine) as s:
        clusters = s.exec(select(ClusterRecord).order_by(ClusterRecord.id)).all()
        statuses = {x.cluster_id: x for x in s.exec(select(ClusterStatus)).all()}
        healths = {x.cluster_id: x for x in s.exec(select(ClusterHealth)).all()}
        active = {
            (a.cluster_id, a.kind)
            for a in s.exec(select(AlarmRecord).where(col(AlarmRecord.cleared_at).is_(None)))
        }
        final = [st.value for st in DeliveryState if st.final]
        delivered = s.exec(
            select(Delivery.cluster_id, Delivery.state, func.count())
            .where(col(Delivery.state).in_(final))
            .group_by(col(Delivery.cluster_id), col(Delivery.state))
        ).all()
        controls = s.exec(
            select(ControlRequest.action, ControlRequest.state, func.count()).group_by(
                col(ControlRequest.action), col(ControlRequest.state)
            )
        ).all()
        queued = s.exec(
            select(func.count()).where(col(Delivery.state) == DeliveryState.QUEUED.value)
        ).one()
    counts = {(c, st): n for c, st, n in delivered}
    for c in clusters:
        lab = {"cluster": c.id, "hamlet": c.hamlet_id}
        st, h = statuses.get(c.id), healths.get(c.id)
        up.add(int(st.online) if st is not None else 0, **lab)
        last = as_utc(st.last_seen) if st is not None else None
        seen.add(last.timestamp() if last else None, **lab)
        for kind in CLUSTER_KINDS:
            alarm.add(int((c.id, kind.value) in active), **lab, kind=kind.value)
        for state in final:
            deliveries.add(counts.get((c.id, state), 0), **lab, state=state)
        if h is None:
            continue
        heard = as_utc(h.received_at)
        hb.add(heard.timestamp() if heard else None, **lab)
        temp.add(h.amp_temp_c, **lab)
        volt.add(h.supply_v, **lab)
        amps.add(h.amp_current_a, **lab)
        vol.add(h.volume, **lab)
        power.add(None if h.amp_power is None else int(h.amp_power), **lab)
        for state in ("ok", "open", "short", "unknown"):
            line.add(int(h.line == state), **lab, state=state)
        rssi.add(h.rssi_dbm, **lab)
        storage.add(None if h.free_storage_mb is None else h.free_storage_mb * 1e6, **lab)
        skew.add(h.clock_skew_s, **lab)
        uptime.add(h.uptime_s, **lab)
        fails.add(h.play_failures, **lab)
        heartbeats.add(h.heartbeats, **lab)
    for action, state, n in controls:
        ctl.add(n, action=action, state=state)
    depth = _Family(
        "loudspeaker_dispatcher_queue_depth",
        "gauge",
        "Deliveries queued in the database but not yet sent",
    )
    depth.add(queued)
    backlog = _Family(
        "loudspeaker_inbound_backlog", "gauge", "MQTT messages received but not yet applied"
    )
    backlog.add(stats.dispatcher_backlog, worker="dispatcher")
    backlog.add(stats.health_backlog, worker="health")
    connected = _Family("loudspeaker_mqtt_connected", "gauge", "1 if the controller is connected")
    connected.add(int(stats.mqtt_connected))
    reconnects = _Family(
        "loudspeaker_mqtt_reconnects_total", "counter", "Times the controller lost the broker"
    )
    reconnects.add(stats.mqtt_reconnects)
    dropped = _Family(
        "loudspeaker_dropped_messages_total", "counter", "Malformed or unknown messages dropped"
    )
    dropped.add(stats.dropped_messages)
    why = _Family(
        "loudspeaker_dropped_messages_by_reason_total",
        "counter",
        "Inbound messages dropped, by message kind and reason",
    )
    for (message_kind, reason), n in stats.dropped_by_reason.items():
        why.add(n, kind=message_kind, reason=reason)
    received = _Family(
        "loudspeaker_heartbeats_received_total", "counter", "Heartbeats since controller start"
    )
    received.add(stats.heartbeats_received)
    return render(
        [
            up,
            seen,
            hb,
            temp,
            volt,
            amps,
            vol,
            power,
            line,
            rssi,
            storage,
            skew,
            uptime,
            fails,
            heartbeats,
            alarm,
            deliveries,
            ctl,
            depth,
            backlog,
            connected,
            reconnects,
            dropped,
            why,
            received,
            *_controller_families(active, stats),
        ]
    )


def _controller_families(active: set[tuple[str, str]], stats: ControllerStats) -> list[_Family]:
    """The controller's own health: its alarms and its workers' restarts."""
    own = _Family(
        "loudspeaker_controller_alarm_active",
        "gauge",
        "1 while an alarm about the controller itself (not a box) is raised",
    )
    for kind in CONTROLLER_KINDS:
        own.add(int((CONTROLLER, kind.value) in active), kind=kind.value)
    restarts = _Family(
        "loudspeaker_worker_restarts_total",
        "counter",
        "Times a dead worker thread was restarted by the supervisor since start",
    )
    for worker in ("dispatcher", "health", "schedule-runner"):
        restarts.add(stats.worker_restarts.get(worker, 0), worker=worker)
    return [own, restarts]
