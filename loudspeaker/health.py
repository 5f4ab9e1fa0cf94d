"""Cluster health on the controller: latest state, downsampled history, alarms, control.

:class:`HealthMonitor` owns the ``cluster_health``, ``health_sample``, ``alarm`` and
``control_request`` tables and is their only writer in the controller. Like the
dispatcher, it is handed typed events by the inbound router (loudspeaker/inbound.py);
the monitor's own thread applies heartbeats, status changes and control results, sends
queued control requests, applies their deadlines and re-evaluates every alarm rule, in
one transaction per iteration. Time-based alarms (missed heartbeats, flapping) are
checked on every iteration, so they fire within one poll interval of the limit.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, delete, or_, select

from firmware_bridge.protocol import (
    ControlCommand,
    ControlResult,
    DiagnoseCommand,
    Heartbeat,
    Kind,
    PowerCommand,
    RebootCommand,
    Status,
    VolumeCommand,
    encode,
    topic,
)
from loudspeaker.alarms import ACTION, SEVERITY, AlarmKind, Observation, evaluate
from loudspeaker.db import as_utc
from loudspeaker.db_faults import DB_ERRORS, DbFaults
from loudspeaker.diagnosis import judge, unreachable
from loudspeaker.exceptions import KeystoreError, LoudspeakerError
from loudspeaker.flooding import FloodGuard
from loudspeaker.inbound import DropReason, Drops, HeartbeatIn, ResultIn, StatusIn
from loudspeaker.keys import CommandSigner
from loudspeaker.keystore import Keystore
from loudspeaker.models import (
    AlarmRecord,
    ClusterAvailability,
    ClusterHealth,
    ClusterRecord,
    ClusterStatus,
    ControlRequest,
    ControlState,
    HealthSample,
    now,
)
from loudspeaker.sending import Publisher
from loudspeaker.site import HealthConfig, current_site
from loudspeaker.worker import EventWorker

logger = logging.getLogger(__name__)

_LINE_RANK = {"unknown": 0, "ok": 1, "open": 2, "short": 3}
_RELOAD_EVERY = timedelta(seconds=10)
_PRUNE_EVERY = timedelta(seconds=60)
_ALARM_UPDATE_EVERY = timedelta(seconds=30)
_ALARM_KEEP = timedelta(days=365)
_PLANNED_OFFLINE = ("agent stopped", "reboot")
_OPEN_STATES = [ControlState.QUEUED.value, ControlState.SENT.value, ControlState.ACCEPTED.value]


@dataclass(frozen=True)
class _SentIn:
    """The broker's answer to a control command the monitor published."""

    request_id: str
    ok: bool
    reason: str


_Event = HeartbeatIn | StatusIn | ResultIn | _SentIn
# The kinds whose drops are the monitor's (``dropped_messages``).
_KINDS = (Kind.HEALTH, Kind.RESULT)


@dataclass
class _Cluster:
    """What the monitor keeps in memory about one cluster."""

    online: bool | None = None
    since: datetime | None = None
    offline_reason: str = ""
    last_hb_at: datetime | None = None
    boot_id: str = ""
    interval_s: float | None = None
    amp_temp_c: float | None = None
    supply_v: float | None = None
    line: str = "unknown"
    skew: float | None = None
    free_storage_mb: float | None = None
    play_failures: int | None = None
    control_link: str | None = None
    control_link_detail: str = ""
    disconnects: deque[datetime] = field(default_factory=lambda: deque(maxlen=1000))
    alarms: dict[AlarmKind, AlarmRecord] = field(default_factory=dict)


def command_for(req: ControlRequest, issued: datetime) -> ControlCommand:
    """The wire command of a stored control request."""
    expires = as_utc(req.expires_at) or issued
    base: dict[str, Any] = {
        "id": req.id,
        "cluster": req.cluster_id,
        "issued_at": issued,
        "expires_at": expires,
    }
    args = req.args or {}
    if req.action == "volume":
        return VolumeCommand(**base, volume=int(args["volume"]))
    if req.action == "power":
        return PowerCommand(**base, on=bool(args["on"]))
    if req.action == "reboot":
        return RebootCommand(**base)
    if req.action == "diagnose":
        extra = {k: args[k] for k in ("tests", "tone_s") if k in args}
        return DiagnoseCommand(**base, **extra)
    raise LoudspeakerError(f"unknown control action {req.action!r}")


class HealthMonitor(EventWorker["_Event"]):
    """Owns cluster health state. ``start()`` runs the worker thread; ``poke()`` wakes it."""

    def __init__(
        self,
        engine: Engine,
        link: Publisher,
        *,
        site: str,
        poll_interval_s: float = 0.5,
        keystore: Keystore,
        drops: Drops | None = None,
    ) -> None:
        super().__init__("health", poll_interval_s)
        self.engine = engine
        self.link = link
        self.site = site
        self.config = HealthConfig()
        # Control commands are signed like every other command (docs/security.md).
        self.signer = CommandSigner(engine, keystore)
        self._clusters: dict[str, _Cluster] = {}
        self._inflight: set[str] = set()
        self._started_at = now()
        self._loaded_at = self._started_at
        self._pruned_at = self._started_at
        self.heartbeats_received = 0
        self.results_received = 0
        self.drops = drops if drops is not None else Drops()
        self.alarms_raised = 0
        # Which boxes exceed their rate limit (the router's), for the flooding alarm.
        self.flood: FloodGuard | None = None
        self.faults = DbFaults("health")
        self._cache_stale = False

    # -- any thread -------------------------------------------------------------------------

    @property
    def dropped_messages(self) -> int:
        """Heartbeats and control results dropped (by the router or here)."""
        return self.drops.total(_KINDS)

    def accept(self, event: HeartbeatIn | StatusIn | ResultIn) -> None:
        """Queue a heartbeat, status or control result from the inbound router."""
        self._put(event)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Load thresholds and what is known of each cluster, then start the thread."""
        self.load()
        self._start_thread()

    def load(self) -> None:
        """Load thresholds and what is known of each cluster (``start()`` does it first)."""
        self._started_at = now()
        with Session(self.engine) as s:
            self._reload(s)
            self._seed(s)

    def _reload(self, s: Session) -> None:
        try:
            self.config = current_site(s).health
        except LoudspeakerError as exc:
            logger.warning("health: using default thresholds (%s)", exc)
        ids = set(s.exec(select(ClusterRecord.id)).all())
        for cid in ids - self._clusters.keys():
            self._clusters[cid] = _Cluster()
        for cid in self._clusters.keys() - ids:
            del self._clusters[cid]
        self._loaded_at = now()

    def _seed(self, s: Session) -> None:
        for st in s.exec(select(ClusterStatus)).all():
            c = self._clusters.get(st.cluster_id)
            if c is not None and st.since is not None:
                c.online, c.since, c.offline_reason = st.online, as_utc(st.since), st.reason
        for h in s.exec(select(ClusterHealth)).all():
            c = self._clusters.get(h.cluster_id)
            if c is None:
                continue
            c.last_hb_at = as_utc(h.received_at)
            c.boot_id, c.interval_s = h.boot_id, h.interval_s
            c.amp_temp_c, c.supply_v, c.line = h.amp_temp_c, h.supply_v, h.line
            c.skew, c.free_storage_mb = h.clock_skew_s, h.free_storage_mb
            c.play_failures = h.play_failures
        for a in s.exec(select(AlarmRecord).where(col(AlarmRecord.cleared_at).is_(None))).all():
            c = self._clusters.get(a.cluster_id)
            if c is not None:
                try:
                    c.alarms[AlarmKind(a.kind)] = a
                except ValueError:
                    logger.warning("alarm %s of unknown kind %r left as it is", a.id, a.kind)
                if a.kind == AlarmKind.CONTROL_LINK.value:
                    # Heartbeats do not persist the link state: the open alarm is the memory.
                    c.control_link, c.control_link_detail = "down", a.message
        self._seed_disconnects(s)

    def _seed_disconnects(self, s: Session) -> None:
        # The flapping rule counts connection losses in a window; without the recent ones
        # a restart would clear a flapping alarm. The availability history holds them:
        # spells alternate, so an offline spell that is not a cluster's first one followed
        # an online spell (the intervals read here include the one spanning the cutoff).
        cutoff = self._started_at - timedelta(seconds=self.config.flap_window_s)
        rows = s.exec(
            select(ClusterAvailability)
            .where(
                or_(
                    col(ClusterAvailability.started_at) >= cutoff,
                    col(ClusterAvailability.ended_at).is_(None),
                    col(ClusterAvailability.ended_at) >= cutoff,
                )
            )
            .order_by(col(ClusterAvailability.started_at), col(ClusterAvailability.id))
        ).all()
        seen: set[str] = set()
        for row in rows:
            c = self._clusters.get(row.cluster_id)
            started = as_utc(row.started_at)
            first = row.cluster_id not in seen
            seen.add(row.cluster_id)
            if c is None or first or row.online or started is None or started < cutoff:
                continue
            if not row.reason.startswith(_PLANNED_OFFLINE):
                c.disconnects.append(started)

    # -- worker thread ----------------------------------------------------------------------

    def step(self) -> None:
        """One iteration: apply inbound events, send/expire control, evaluate alarms."""
        if self._cache_stale and not self._reset_alarm_cache():
            return
        events = self._take()
        t = now()
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                if t - self._loaded_at >= _RELOAD_EVERY:
                    self._reload(s)
                for ev in events:
                    self._apply(s, ev)
                self._control(s, t)
                self._alarms(s, t)
                if t - self._pruned_at >= _PRUNE_EVERY:
                    self._prune(s, t)
                s.commit()
        except DB_ERRORS as exc:
            # Any database error, not only a lock: a poisoned session or detached alarm
            # rows must not blind the technicians until a restart.
            self._retry = events + self._retry
            self._cache_stale = True
            self._stop.wait(self.faults.failed(exc, len(events)))
            return
        except BaseException:
            self._retry = events + self._retry  # for the restarted thread
            self._cache_stale = True
            raise
        self.faults.ok()

    def _reset_alarm_cache(self) -> bool:
        """Read the open alarms again; False (after backing off) if the database failed."""
        # A rolled-back transaction may have lost alarm rows we added, and left the ones we
        # hold expired and detached: read them all again in a new session.
        try:
            with Session(self.engine, expire_on_commit=False) as s:
                rows = s.exec(select(AlarmRecord).where(col(AlarmRecord.cleared_at).is_(None)))
                fresh = list(rows.all())
        except DB_ERRORS as exc:
            self._stop.wait(self.faults.failed(exc, len(self._retry)))
            return False
        for c in self._clusters.values():
            c.alarms.clear()
        for a in fresh:
            c2 = self._clusters.get(a.cluster_id)
            if c2 is not None and a.kind in AlarmKind.__members__.values():
                c2.alarms[AlarmKind(a.kind)] = a
        self._cache_stale = False
        return True

    def _apply(self, s: Session, ev: _Event) -> None:
        if isinstance(ev, HeartbeatIn):
            self._apply_heartbeat(s, ev.heartbeat, ev.at)
        elif isinstance(ev, StatusIn):
            self._apply_status(ev.status, ev.at)
        elif isinstance(ev, ResultIn):
            self._apply_result(s, ev.result, ev.at)
        else:
            self._inflight.discard(ev.request_id)
            if not ev.ok:
                req = s.get(ControlRequest, ev.request_id)
                if req is not None and not ControlState(req.state).final:
                    self._finish(s, req, ControlState.FAILED, f"broker refused: {ev.reason}")

    def _apply_heartbeat(self, s: Session, hb: Heartbeat, at: datetime) -> None:
        c = self._clusters.get(hb.cluster)
        if c is None:
            self.drops.count(Kind.HEALTH, DropReason.UNKNOWN_CLUSTER)
            logger.warning("heartbeat from unknown cluster %r dropped", hb.cluster)
            return
        self.heartbeats_received += 1
        skew = round((hb.ts - at).total_seconds(), 3)
        row = s.get(ClusterHealth, hb.cluster) or ClusterHealth(
            cluster_id=hb.cluster, received_at=at
        )
        row.received_at = at
        row.cluster_ts = hb.ts
        row.seq, row.boot_id, row.interval_s, row.uptime_s = (
            hb.seq,
            hb.boot_id,
            hb.interval_s,
            hb.uptime_s,
        )
        row.agent, row.firmware, row.clock_skew_s = hb.agent, hb.firmware, skew
        row.volume, row.amp_power = hb.volume, hb.amp_power
        row.amp_temp_c, row.supply_v, row.amp_current_a = (
            hb.amp_temp_c,
            hb.supply_v,
            hb.amp_current_a,
        )
        row.line, row.rssi_dbm, row.playing = hb.line, hb.rssi_dbm, hb.playing or ""
        row.free_storage_mb, row.play_failures = hb.free_storage_mb, hb.play_failures
        row.last_error = hb.last_error or ""
        row.heartbeats = (row.heartbeats or 0) + 1
        s.add(row)
        self._sample(s, hb, at, skew)
        previous_boot = c.boot_id
        c.last_hb_at, c.boot_id, c.interval_s = at, hb.boot_id, hb.interval_s
        c.amp_temp_c, c.supply_v, c.line = hb.amp_temp_c, hb.supply_v, hb.line
        c.skew, c.free_storage_mb, c.play_failures = skew, hb.free_storage_mb, hb.play_failures
        c.control_link = hb.control_link
        c.control_link_detail = (hb.last_error or "") if hb.control_link == "down" else ""
        if previous_boot and previous_boot != hb.boot_id:
            logger.info("cluster %s restarted (boot %s)", hb.cluster, hb.boot_id)
            self._confirm_reboots(s, hb.cluster, hb.boot_id, at)

    def _sample(self, s: Session, hb: Heartbeat, at: datetime, skew: float) -> None:
        cfg = self.config
        for res in (cfg.history_fine_s, cfg.history_coarse_s):
            epoch = int(at.timestamp())
            start = datetime.fromtimestamp(epoch - epoch % res, tz=at.tzinfo)
            row = s.exec(
                select(HealthSample).where(
                    HealthSample.cluster_id == hb.cluster,
                    HealthSample.resolution_s == res,
                    HealthSample.bucket_start == start,
                )
            ).first() or HealthSample(cluster_id=hb.cluster, resolution_s=res, bucket_start=start)
            n = row.n
            row.temp_min, row.temp_avg, row.temp_max = _agg(
                row.temp_min, row.temp_avg, row.temp_max, hb.amp_temp_c, n
            )
            row.supply_min, row.supply_avg, row.supply_max = _agg(
                row.supply_min, row.supply_avg, row.supply_max, hb.supply_v, n
            )
            if hb.amp_current_a is not None:
                row.current_max = max(row.current_max or 0.0, hb.amp_current_a)
            if hb.rssi_dbm is not None:
                row.rssi_avg = _avg(row.rssi_avg, float(hb.rssi_dbm), n)
            if row.skew_max is None or abs(skew) > abs(row.skew_max):
                row.skew_max = skew
            if _LINE_RANK.get(hb.line, 0) > _LINE_RANK.get(row.line, 0):
                row.line = hb.line
            row.play_failures_max = max(row.play_failures_max, hb.play_failures)
            row.n = n + 1
            s.add(row)

    def _apply_status(self, st: Status, at: datetime) -> None:
        c = self._clusters.get(st.cluster)
        if c is None:
            return
        online = st.state == "online"
        reason = st.reason or ""
        if c.online is True and not online and not reason.startswith(_PLANNED_OFFLINE):
            c.disconnects.append(at)
        if c.online != online:
            c.since = at
        c.online = online
        c.offline_reason = "" if online else reason

    # -- control requests ------------------------------------------------------------------

    def _apply_result(self, s: Session, res: ControlResult, at: datetime) -> None:
        self.results_received += 1
        req = s.get(ControlRequest, res.command)
        if req is None or req.cluster_id != res.cluster:
            self.drops.count(Kind.RESULT, DropReason.UNKNOWN_COMMAND)
            logger.warning(
                "result for unknown command %s from %s dropped", res.command, res.cluster
            )
            return
        state = ControlState(req.state)
        if state.final or state is ControlState.ACCEPTED:
            logger.info("duplicate %s result for %s ignored", res.type, res.command)
            return
        req.answered_at = at
        if not res.ok:
            result: dict[str, Any] = {"detail": res.detail}
            if req.action == "diagnose":
                result["diagnosis"] = unreachable(res.reason or "failed").to_json()
                result["diagnosis"]["verdict"] = f"diagnose failed on the cluster: {res.reason}"
                result["diagnosis"]["status"] = "fault"
                result["diagnosis"]["action"] = "reboot the cluster, then diagnose again"
            req.result = result
            self._finish(s, req, ControlState.FAILED, res.reason or "failed on the cluster")
            return
        if req.action == "reboot":
            req.state = ControlState.ACCEPTED.value
            req.reason = res.reason or "rebooting"
            req.result = {"boot_id_before": res.detail.get("boot_id", "")}
            s.add(req)
            return
        result = {"detail": res.detail, "cluster_ts": res.ts.isoformat()}
        if req.action == "diagnose":
            sent = as_utc(req.sent_at) or at
            result["diagnosis"] = judge(
                res.detail,
                sent_at=sent,
                answered_at=at,
                cluster_ts=res.ts,
                cfg=self.config,
                asked=list((req.args or {}).get("tests") or []),
            ).to_json()
        req.result = result
        self._finish(s, req, ControlState.CONFIRMED, res.reason or "")

    def _confirm_reboots(self, s: Session, cluster: str, boot_id: str, at: datetime) -> None:
        for req in s.exec(
            select(ControlRequest).where(
                ControlRequest.cluster_id == cluster,
                ControlRequest.state == ControlState.ACCEPTED.value,
            )
        ).all():
            if (req.result or {}).get("boot_id_before") != boot_id:
                req.result = {**(req.result or {}), "boot_id_after": boot_id}
                self._finish(s, req, ControlState.CONFIRMED, "back online after reboot")

    def _finish(self, s: Session, req: ControlRequest, state: ControlState, reason: str) -> None:
        req.state = state.value
        req.reason = reason[:500]
        req.done_at = now()
        s.add(req)
        log = logger.info if state is ControlState.CONFIRMED else logger.warning
        log("control %s %s on %s: %s %s", req.action, req.id, req.cluster_id, state.value, reason)

    def _control(self, s: Session, t: datetime) -> None:
        cfg = self.config
        open_reqs = s.exec(
            select(ControlRequest).where(col(ControlRequest.state).in_(_OPEN_STATES)).limit(500)
        ).all()
        for req in open_reqs:
            state = ControlState(req.state)
            if state is ControlState.QUEUED:
                self._send(s, req, t)
            elif state is ControlState.SENT:
                allowance = cfg.control_timeout_s
                if req.action == "diagnose":
                    allowance += float((req.args or {}).get("tone_s", 2.0)) * 3
                sent = as_utc(req.sent_at) or t
                if (t - sent).total_seconds() > allowance:
                    why = f"no answer from the cluster within {allowance:.0f} s"
                    if req.action == "diagnose":
                        req.result = {"diagnosis": unreachable(why).to_json()}
                    self._finish(s, req, ControlState.FAILED, why)
            else:
                answered = as_utc(req.answered_at) or t
                if (t - answered).total_seconds() > cfg.reboot_timeout_s:
                    why = f"did not come back within {cfg.reboot_timeout_s:.0f} s of rebooting"
                    self._finish(s, req, ControlState.FAILED, why)

    def _send(self, s: Session, req: ControlRequest, t: datetime) -> None:
        if req.id in self._inflight:
            return
        expires = as_utc(req.expires_at)
        c = self._clusters.get(req.cluster_id)
        why = ""
        if expires is not None and expires <= t:
            why = "expired before it could be sent (broker down?)"
        elif c is None:
            why = f"cluster {req.cluster_id!r} is not in the site"
        elif c.online is False:
            since = c.since.isoformat(timespec="seconds") if c.since else "?"
            why = f"cluster is offline since {since} ({c.offline_reason or 'no reason'}); not sent"
        if why:
            if req.action == "diagnose":
                req.result = {"diagnosis": unreachable(why).to_json()}
            self._finish(s, req, ControlState.FAILED, why)
            return
        if not self.link.connected.is_set():
            return
        try:
            cmd = self.signer.sign(command_for(req, t))
        except KeystoreError as exc:
            self._finish(s, req, ControlState.FAILED, str(exc))
            return
        except (LoudspeakerError, KeyError, ValueError) as exc:
            self._finish(s, req, ControlState.FAILED, f"bad request: {exc}")
            return
        self._inflight.add(req.id)
        req.state = ControlState.SENT.value
        req.sent_at = t
        s.add(req)
        self.link.publish(
            topic(self.site, req.cluster_id, Kind.CMD),
            encode(cmd),
            qos=1,
            on_done=functools.partial(self._sent, req.id),
        )

    def _sent(self, request_id: str, ok: bool, reason: str) -> None:
        self._put(_SentIn(request_id, ok, reason))

    # -- alarms -----------------------------------------------------------------------------

    def observation(self, cluster: str, t: datetime) -> Observation:
        """What the alarm rules see of ``cluster`` at ``t``."""
        c = self._clusters[cluster]
        flood = c.alarms.get(AlarmKind.FLOODING)
        return Observation(
            now=t,
            watching_since=self._started_at,
            online=c.online,
            online_since=c.since,
            last_heartbeat_at=c.last_hb_at,
            interval_s=c.interval_s,
            amp_temp_c=c.amp_temp_c,
            supply_v=c.supply_v,
            line=c.line,
            clock_skew_s=c.skew,
            free_storage_mb=c.free_storage_mb,
            play_failures=c.play_failures,
            disconnects=tuple(c.disconnects),
            offline_reason=c.offline_reason,
            control_link=c.control_link,
            control_link_detail=c.control_link_detail,
            flooding=self.flood.flooding(cluster) if self.flood is not None else None,
            flood_calm_s=self.flood.limit.calm_s if self.flood is not None else 0.0,
            flood_raised_at=as_utc(flood.raised_at) if flood is not None else None,
        )

    def _alarms(self, s: Session, t: datetime) -> None:
        for cid, c in self._clusters.items():
            findings = evaluate(self.observation(cid, t), self.config, set(c.alarms))
            for f in findings:
                current = c.alarms.get(f.kind)
                if f.active and current is None:
                    rec = AlarmRecord(
                        cluster_id=cid,
                        kind=f.kind.value,
                        severity=SEVERITY[f.kind],
                        raised_at=t,
                        message=f.message,
                        value=f.value,
                        threshold=f.threshold,
                        last_value=f.value,
                        updated_at=t,
                    )
                    s.add(rec)
                    c.alarms[f.kind] = rec
                    self.alarms_raised += 1
                    logger.warning(
                        "ALARM %s on %s: %s (%s)", f.kind.value, cid, f.message, ACTION[f.kind]
                    )
                elif f.active is False and current is not None:
                    current.cleared_at = t
                    current.clear_message = f.message
                    current.last_value = f.value
                    current.updated_at = t
                    s.add(current)
                    del c.alarms[f.kind]
                    logger.info("alarm %s on %s cleared: %s", f.kind.value, cid, f.message)
                elif f.active and current is not None:
                    updated = as_utc(current.updated_at) or t
                    if f.value != current.last_value and t - updated >= _ALARM_UPDATE_EVERY:
                        current.last_value = f.value
                        current.updated_at = t
                        s.add(current)

    def _prune(self, s: Session, t: datetime) -> None:
        # No try/except here: an error inside the transaction leaves the session to be rolled
        # back (PendingRollbackError at commit); step() recovers from it as a whole.
        cfg = self.config
        for res, keep in (
            (cfg.history_fine_s, cfg.history_fine_keep),
            (cfg.history_coarse_s, cfg.history_coarse_keep),
        ):
            cutoff = t - timedelta(seconds=res * keep)
            s.exec(
                delete(HealthSample).where(
                    col(HealthSample.resolution_s) == res,
                    col(HealthSample.bucket_start) < cutoff,
                )
            )
        s.exec(delete(AlarmRecord).where(col(AlarmRecord.cleared_at) < t - _ALARM_KEEP))
        self._pruned_at = t


def _avg(avg: float | None, value: float, n: int) -> float:
    return value if avg is None or n == 0 else round((avg * n + value) / (n + 1), 3)


def _agg(
    lo: float | None, avg: float | None, hi: float | None, value: float | None, n: int
) -> tuple[float | None, float | None, float | None]:
    if value is None:
        return lo, avg, hi
    return (
        value if lo is None else min(lo, value),
        _avg(avg, value, n),
        value if hi is None else max(hi, value),
    )
