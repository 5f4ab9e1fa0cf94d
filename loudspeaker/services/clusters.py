"""The clusters: what the controller knows of each, their alarms, and remote control.

Views are JSON-ready dicts (the same dict a face prints as JSON and renders as a table,
so the two never disagree). Remote control (volume, amplifier power, reboot, diagnose)
goes through the running controller: the request is stored, the controller is poked and
sends it, and the service waits (bounded) for the cluster's answer. Nothing is queued for
later: a reboot hours after it was asked for would surprise whoever is on site.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from loudspeaker import audit
from loudspeaker.auth import Actor, Permission, authorize
from loudspeaker.control import request_control, wait_final
from loudspeaker.db import as_utc
from loudspeaker.exceptions import ControllerNotRunning, InvalidRequest, NotFoundError
from loudspeaker.models import (
    AlarmRecord,
    ClusterAvailability,
    ClusterHealth,
    ClusterRecord,
    ClusterStatus,
    ControlRequest,
    ControlState,
    HealthSample,
)
from loudspeaker.services.context import ServiceContext

DIAGNOSE_TESTS = ("self_test", "tone", "link", "clock")


def _iso(value: Any) -> str | None:
    t = as_utc(value)
    return t.isoformat() if t else None


def alarm_json(a: AlarmRecord) -> dict[str, Any]:
    """JSON-ready form of one alarm."""
    return {
        "id": a.id,
        "cluster": a.cluster_id,
        "kind": a.kind,
        "severity": a.severity,
        "active": a.cleared_at is None,
        "raised_at": _iso(a.raised_at),
        "cleared_at": _iso(a.cleared_at),
        "message": a.message,
        "clear_message": a.clear_message or None,
        "value": a.value,
        "threshold": a.threshold,
        "last_value": a.last_value,
    }


def request_json(req: ControlRequest) -> dict[str, Any]:
    """JSON-ready form of a control request and its outcome."""
    times = {k: _iso(getattr(req, k)) for k in ("created_at", "sent_at", "answered_at", "done_at")}
    return {
        "id": req.id,
        "cluster": req.cluster_id,
        "action": req.action,
        "args": req.args,
        "state": req.state,
        "confirmed": req.state == "confirmed",
        "reason": req.reason or None,
        "result": req.result,
        **times,
    }


def _row(
    c: ClusterRecord, st: ClusterStatus | None, h: ClusterHealth | None, alarms: list[str]
) -> dict[str, Any]:
    return {
        "cluster": c.id,
        "hamlet": c.hamlet_id,
        "transport": c.transport,
        "online": st.online if st else None,
        "since": _iso(st.since) if st else None,
        "last_seen": _iso(st.last_seen) if st else None,
        "last_heartbeat": _iso(h.received_at) if h else None,
        "alarms": alarms,
        "volume": h.volume if h else None,
        "amp_power": h.amp_power if h else None,
        "temperature_c": h.amp_temp_c if h else None,
        "supply_v": h.supply_v if h else None,
        "amp_current_a": h.amp_current_a if h else None,
        "line": h.line if h else None,
        "rssi_dbm": h.rssi_dbm if h else None,
        "free_storage_mb": h.free_storage_mb if h else None,
        "clock_offset_s": h.clock_skew_s if h else None,
        "playing": (h.playing or None) if h else None,
        "last_error": (h.last_error or None) if h else None,
        "agent": (h.agent if h else "") or (st.agent if st else ""),
        "firmware": h.firmware if h else "",
        "uptime_s": h.uptime_s if h else None,
    }


def list_clusters(ctx: ServiceContext, actor: Actor) -> list[dict[str, Any]]:
    """Every cluster: hamlet, online, last seen, active alarms, the last heartbeat's readings."""
    authorize(ctx, actor, Permission.VIEW, action="clusters.list")
    with ctx.session() as s:
        cl = s.exec(select(ClusterRecord).order_by(ClusterRecord.id)).all()
        sts = {x.cluster_id: x for x in s.exec(select(ClusterStatus)).all()}
        hs = {x.cluster_id: x for x in s.exec(select(ClusterHealth)).all()}
        active: dict[str, list[str]] = {}
        for a in s.exec(select(AlarmRecord).where(col(AlarmRecord.cleared_at).is_(None))).all():
            active.setdefault(a.cluster_id, []).append(a.kind)
        return [_row(c, sts.get(c.id), hs.get(c.id), sorted(active.get(c.id, []))) for c in cl]


def _history(s: Session, cluster_id: str, per_resolution: int) -> dict[str, list[dict[str, Any]]]:
    samples = s.exec(
        select(HealthSample)
        .where(HealthSample.cluster_id == cluster_id)
        .order_by(col(HealthSample.resolution_s), col(HealthSample.bucket_start).desc())
    ).all()
    by_res: dict[int, list[dict[str, Any]]] = {}
    for smp in samples:
        bucket = by_res.setdefault(smp.resolution_s, [])
        if len(bucket) < per_resolution:
            bucket.append(
                {
                    "start": _iso(smp.bucket_start),
                    "n": smp.n,
                    "temp_c": [smp.temp_min, smp.temp_avg, smp.temp_max],
                    "supply_v": [smp.supply_min, smp.supply_avg, smp.supply_max],
                    "current_max_a": smp.current_max,
                    "rssi_avg_dbm": smp.rssi_avg,
                    "clock_offset_max_s": smp.skew_max,
                    "line": smp.line,
                    "play_failures_max": smp.play_failures_max,
                }
            )
    return {str(k): v for k, v in sorted(by_res.items())}


def show_cluster(
    ctx: ServiceContext, actor: Actor, cluster_id: str, history: int = 60
) -> dict[str, Any]:
    """Everything about one cluster: state, alarms, availability and health history."""
    authorize(ctx, actor, Permission.VIEW, action="clusters.list")
    with ctx.session() as s:
        c = s.get(ClusterRecord, cluster_id)
        if c is None:
            raise NotFoundError(f"no cluster {cluster_id!r} (see `loudspeaker clusters`)")
        row = _row(c, s.get(ClusterStatus, cluster_id), s.get(ClusterHealth, cluster_id), [])
        alarms = s.exec(
            select(AlarmRecord)
            .where(AlarmRecord.cluster_id == cluster_id)
            .order_by(col(AlarmRecord.raised_at).desc())
            .limit(50)
        ).all()
        row["alarms"] = sorted(a.kind for a in alarms if a.cleared_at is None)
        intervals = s.exec(
            select(ClusterAvailability)
            .where(ClusterAvailability.cluster_id == cluster_id)
            .order_by(col(ClusterAvailability.started_at).desc())
            .limit(50)
        ).all()
        controls = s.exec(
            select(ControlRequest)
            .where(ControlRequest.cluster_id == cluster_id)
            .order_by(col(ControlRequest.created_at).desc())
            .limit(20)
        ).all()
        return {
            **row,
            "name": c.name,
            "location": c.location,
            "notes": c.notes,
            "alarm_history": [alarm_json(a) for a in alarms],
            "availability": [
                {
                    "online": i.online,
                    "from": _iso(i.started_at),
                    "to": _iso(i.ended_at),
                    "reason": i.reason or None,
                }
                for i in intervals
            ],
            "history": _history(s, cluster_id, history),
            "control": [
                {
                    "action": r.action,
                    "args": r.args,
                    "state": r.state,
                    "reason": r.reason or None,
                    "at": _iso(r.created_at),
                }
                for r in controls
            ],
        }


def alarms(
    ctx: ServiceContext,
    actor: Actor,
    *,
    history: bool = False,
    cluster: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Active alarms (``history``: cleared ones too), newest first, each with the action
    to take while it is active."""
    from loudspeaker.alarms import ACTION, AlarmKind

    authorize(ctx, actor, Permission.VIEW, action="alarms")
    with ctx.session() as s:
        q = select(AlarmRecord)
        if not history:
            q = q.where(col(AlarmRecord.cleared_at).is_(None))
        if cluster:
            q = q.where(AlarmRecord.cluster_id == cluster)
        rows = s.exec(q.order_by(col(AlarmRecord.raised_at).desc()).limit(limit)).all()
    data = [alarm_json(a) for a in rows]
    for d in data:
        try:
            d["action"] = ACTION[AlarmKind(d["kind"])]
        except ValueError:
            d["action"] = ""
    return data


@dataclass(frozen=True)
class ControlOutcome:
    """How a control request ended: ``confirmed``, ``failed``, or still open at the timeout."""

    cluster: str
    action: str
    state: str
    reason: str
    result: dict[str, Any]
    request: dict[str, Any]  # the JSON view of the request (see :func:`request_json`)
    controller_notified: bool = True

    @property
    def confirmed(self) -> bool:
        """The cluster confirmed the action."""
        return self.state == ControlState.CONFIRMED.value

    @property
    def failed(self) -> bool:
        """The action failed (the reason says why)."""
        return self.state == ControlState.FAILED.value


def control(
    ctx: ServiceContext,
    actor: Actor,
    cluster: str,
    action: str,
    args: dict[str, Any],
    *,
    timeout_s: float,
) -> ControlOutcome:
    """Send a control action through the running controller and wait for the answer.

    ``diagnose`` needs the ``diagnose`` permission, the others ``control``; the request
    and its outcome are audited as ``cluster.ACTION``. ``ControllerNotRunning`` when no
    controller runs (control is never queued for later).
    """
    permission = Permission.DIAGNOSE if action == "diagnose" else Permission.CONTROL
    authorize(ctx, actor, permission, action=f"cluster.{action}", target=cluster)
    if timeout_s <= 0:
        raise InvalidRequest(f"timeout {timeout_s} s: give a positive number of seconds")
    if ctx.controller() is None:
        raise ControllerNotRunning(
            "the controller is not running: start `loudspeaker serve` first "
            "(control commands are not queued for later)"
        )
    with ctx.session() as s:
        ttl = max(timeout_s, 10.0)
        req_id = request_control(s, cluster, action, args, ttl_s=ttl, created_by=actor.name).id
    notified = ctx.notify_controller()
    req = wait_final(ctx.session, req_id, timeout_s=timeout_s)
    with ctx.session() as s:
        audit.record(
            s,
            actor.name,
            f"cluster.{action}",
            cluster,
            outcome="ok" if req.state == "confirmed" else str(req.state),
            detail={"args": args, "reason": req.reason or None},
            role=actor.role,
            commit=True,
        )
    return ControlOutcome(
        cluster, action, req.state, req.reason, req.result or {}, request_json(req), notified
    )


def set_volume(
    ctx: ServiceContext, actor: Actor, cluster: str, volume: int, *, timeout_s: float = 30.0
) -> ControlOutcome:
    """Set the amplifier volume, 0-100 %."""
    if not 0 <= volume <= 100:
        authorize(ctx, actor, Permission.CONTROL, action="cluster.volume", target=cluster)
        raise InvalidRequest(f"volume {volume} %: give a volume from 0 to 100")
    return control(ctx, actor, cluster, "volume", {"volume": volume}, timeout_s=timeout_s)


def set_power(
    ctx: ServiceContext, actor: Actor, cluster: str, onoff: str, *, timeout_s: float = 30.0
) -> ControlOutcome:
    """Switch the amplifier's mains relay ``on`` or ``off``."""
    if onoff not in ("on", "off"):
        authorize(ctx, actor, Permission.CONTROL, action="cluster.power", target=cluster)
        raise InvalidRequest(f"say `on` or `off`, not {onoff!r}")
    return control(ctx, actor, cluster, "power", {"on": onoff == "on"}, timeout_s=timeout_s)


def reboot(
    ctx: ServiceContext, actor: Actor, cluster: str, *, timeout_s: float = 150.0
) -> ControlOutcome:
    """Reboot the cluster; confirmed when it is back online as a new boot."""
    return control(ctx, actor, cluster, "reboot", {}, timeout_s=timeout_s)


def diagnose(
    ctx: ServiceContext,
    actor: Actor,
    cluster: str,
    *,
    tone_s: float = 2.0,
    with_tone: bool = True,
    timeout_s: float = 60.0,
) -> ControlOutcome:
    """Run the active tests (the audible test tone only ``with_tone``); the verdict is in
    ``result["diagnosis"]`` (absent when the cluster gave none)."""
    if not 0.5 <= tone_s <= 10:
        authorize(ctx, actor, Permission.DIAGNOSE, action="cluster.diagnose", target=cluster)
        raise InvalidRequest(f"test tone {tone_s} s: give 0.5 to 10 seconds")
    tests = [t for t in DIAGNOSE_TESTS if with_tone or t != "tone"]
    args = {"tests": tests, "tone_s": tone_s}
    return control(ctx, actor, cluster, "diagnose", args, timeout_s=timeout_s)
