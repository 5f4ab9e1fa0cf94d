"""Alarm rules: which faults a cluster has, judged from what the controller knows of it.

Pure functions over an :class:`Observation`, so every rule is unit-tested without a
broker; :class:`~loudspeaker.health.HealthMonitor` feeds them and records raise/clear in
the ``alarm`` table. Thresholds come from the site file's ``[health]`` table. Continuous
values clear with hysteresis so a value hovering at the threshold does not flap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from loudspeaker.site import HealthConfig


class AlarmKind(StrEnum):
    """Every alarm the controller raises."""

    OFFLINE = "offline"
    HEARTBEAT_MISSED = "heartbeat_missed"
    OVERHEAT = "overheat"
    UNDERVOLTAGE = "undervoltage"
    LINE_OPEN = "line_open"
    LINE_SHORT = "line_short"
    CLOCK_DRIFT = "clock_drift"
    STORAGE_LOW = "storage_low"
    PLAYBACK_FAILURES = "playback_failures"
    LINK_FLAPPING = "link_flapping"
    CONTROL_LINK = "control_link"
    FLOODING = "flooding"
    # The controller's own: a worker thread died and the supervisor restarted it
    # (``cluster_id`` is CONTROLLER, loudspeaker/supervisor.py).
    WORKER_RESTARTED = "worker_restarted"


# The ``cluster_id`` of alarms about the controller itself, not a box.
CONTROLLER = "controller"
# The kinds raised on CONTROLLER (not by the cluster rules of ``evaluate``).
CONTROLLER_KINDS = (AlarmKind.WORKER_RESTARTED,)


SEVERITY: dict[AlarmKind, str] = {
    AlarmKind.OFFLINE: "critical",
    AlarmKind.HEARTBEAT_MISSED: "critical",
    AlarmKind.LINE_OPEN: "critical",
    AlarmKind.LINE_SHORT: "critical",
    AlarmKind.PLAYBACK_FAILURES: "critical",
    AlarmKind.OVERHEAT: "major",
    AlarmKind.UNDERVOLTAGE: "major",
    AlarmKind.LINK_FLAPPING: "major",
    AlarmKind.CLOCK_DRIFT: "minor",
    AlarmKind.STORAGE_LOW: "minor",
    # EN 54-16 counts a failed transmission path as a fault to report: without it the
    # box cannot switch its amplifier (a serial cluster cannot play at all).
    AlarmKind.CONTROL_LINK: "critical",
    # The controller protects itself (docs/protocol.md, Limits), but a box that floods is
    # broken or its credentials are in other hands.
    AlarmKind.FLOODING: "major",
    AlarmKind.WORKER_RESTARTED: "major",
}

# What a technician should do first, shown with each alarm.
ACTION: dict[AlarmKind, str] = {
    AlarmKind.OFFLINE: "check mains power and the 4G/Wi-Fi link at the pole",
    AlarmKind.HEARTBEAT_MISSED: "the agent is connected but silent: reboot the cluster",
    AlarmKind.OVERHEAT: "check the amplifier fan and ventilation; lower the volume",
    AlarmKind.UNDERVOLTAGE: "check the mains supply, charger and battery",
    AlarmKind.LINE_OPEN: "check the speaker cable, horns and fuse at the pole",
    AlarmKind.LINE_SHORT: "check the speaker cable for water or damage; horns for a short",
    AlarmKind.CLOCK_DRIFT: "check NTP on the box; replace the RTC battery",
    AlarmKind.STORAGE_LOW: "clear the audio cache or replace the SD card",
    AlarmKind.PLAYBACK_FAILURES: "run `loudspeaker diagnose`; reboot the cluster",
    AlarmKind.LINK_FLAPPING: "check the 4G antenna and signal; move or replace the modem",
    AlarmKind.CONTROL_LINK: (
        "check the serial cable/USB adapter or RS-485 bus, the receiver's power and address"
    ),
    AlarmKind.FLOODING: (
        "the box sends far more than allowed: restart its agent; if it persists, revoke "
        "its broker credentials (stolen?)"
    ),
    AlarmKind.WORKER_RESTARTED: (
        "read the controller's log for the error that killed the worker and report it"
    ),
}


@dataclass(frozen=True)
class Observation:
    """What the controller knows of one cluster at one moment."""

    now: datetime
    watching_since: datetime  # when the controller started listening
    online: bool | None = None  # None: never heard a status
    online_since: datetime | None = None
    last_heartbeat_at: datetime | None = None
    interval_s: float | None = None  # as the cluster declares it
    amp_temp_c: float | None = None
    supply_v: float | None = None
    line: str = "unknown"
    clock_skew_s: float | None = None
    free_storage_mb: float | None = None
    play_failures: int | None = None
    disconnects: Sequence[datetime] = ()
    offline_reason: str = ""
    control_link: str | None = None  # "ok" | "down" | None (no MCU link, or not heard)
    control_link_detail: str = ""
    flooding: str | None = None  # why the box counts as flooding now; None: it does not
    flood_calm_s: float = 0.0  # how long the rate limiter watches before it calls a box calm
    flood_raised_at: datetime | None = None  # when the open flooding alarm was raised


@dataclass(frozen=True)
class Finding:
    """A rule's opinion: ``active`` True/False, or None when it cannot tell (no data)."""

    kind: AlarmKind
    active: bool | None
    message: str = ""
    value: float | None = None
    threshold: float | None = None


def evaluate(obs: Observation, cfg: HealthConfig, active: set[AlarmKind]) -> list[Finding]:
    """Every rule applied to ``obs``; ``active`` says which alarms are raised now."""
    return [
        _offline(obs, cfg),
        _missed(obs, cfg, active),
        _above(
            AlarmKind.OVERHEAT,
            obs.amp_temp_c,
            cfg.temp_max_c,
            cfg.temp_hysteresis_c,
            active,
            "amplifier at {v:.1f} °C (limit {t:.0f} °C)",
        ),
        _below(
            AlarmKind.UNDERVOLTAGE,
            obs.supply_v,
            cfg.voltage_min_v,
            cfg.voltage_hysteresis_v,
            active,
            "supply at {v:.2f} V (minimum {t:.2f} V)",
        ),
        _line(AlarmKind.LINE_OPEN, obs.line, "open"),
        _line(AlarmKind.LINE_SHORT, obs.line, "short"),
        _clock(obs, cfg, active),
        _below(
            AlarmKind.STORAGE_LOW,
            obs.free_storage_mb,
            cfg.storage_min_mb,
            cfg.storage_min_mb * 0.1,
            active,
            "{v:.0f} MB free (minimum {t:.0f} MB)",
            strict=True,
        ),
        _failures(obs, cfg),
        _flapping(obs, cfg),
        _control_link(obs),
        _flooding(obs, active),
    ]


def _offline(obs: Observation, cfg: HealthConfig) -> Finding:
    kind = AlarmKind.OFFLINE
    if obs.online is None:
        return Finding(kind, None)
    if obs.online:
        return Finding(kind, False, "back online")
    since = obs.online_since or obs.now
    if (obs.now - since).total_seconds() < cfg.offline_grace_s:
        return Finding(kind, None)
    why = f" ({obs.offline_reason})" if obs.offline_reason else ""
    return Finding(kind, True, f"offline{why}")


def _missed(obs: Observation, cfg: HealthConfig, active: set[AlarmKind]) -> Finding:
    kind = AlarmKind.HEARTBEAT_MISSED
    if obs.online is False:
        return Finding(kind, False, "cluster offline (see the offline alarm)")
    interval = obs.interval_s or cfg.heartbeat_s
    limit = cfg.missed_heartbeats * interval
    last = obs.last_heartbeat_at
    if kind in active:
        # A raised alarm (maybe carried over a controller restart) clears only when the
        # box is heard again: the time since the controller started proves nothing.
        if last is None:
            silent = (obs.now - obs.watching_since).total_seconds()
            return Finding(kind, True, f"never heard a heartbeat in {silent:.0f} s", silent, limit)
        silent = (obs.now - last).total_seconds()
    else:
        # Silence counts from the later of the last heartbeat and the controller's start:
        # a box healthy before a restart gets its usual grace, not an alarm for the time
        # the controller itself was down.
        since = obs.watching_since if last is None else max(last, obs.watching_since)
        silent = (obs.now - since).total_seconds()
    if silent <= limit:
        return Finding(kind, False, "heartbeats resumed", silent, limit)
    if last is None:
        return Finding(kind, True, f"never heard a heartbeat in {silent:.0f} s", silent, limit)
    return Finding(
        kind,
        True,
        f"no heartbeat for {silent:.0f} s (expected every {interval:g} s)",
        silent,
        limit,
    )


def _above(
    kind: AlarmKind,
    value: float | None,
    limit: float,
    hysteresis: float,
    active: set[AlarmKind],
    text: str,
) -> Finding:
    if value is None:
        return Finding(kind, None)
    on = value >= limit or (kind in active and value > limit - hysteresis)
    return Finding(kind, on, text.format(v=value, t=limit), value, limit)


def _below(
    kind: AlarmKind,
    value: float | None,
    limit: float,
    hysteresis: float,
    active: set[AlarmKind],
    text: str,
    *,
    strict: bool = False,
) -> Finding:
    if value is None:
        return Finding(kind, None)
    crossed = value < limit if strict else value <= limit
    on = crossed or (kind in active and value < limit + hysteresis)
    return Finding(kind, on, text.format(v=value, t=limit), value, limit)


def _line(kind: AlarmKind, line: str, bad: str) -> Finding:
    if line == "unknown":
        return Finding(kind, None)
    return Finding(kind, line == bad, f"speaker line {line}")


def _clock(obs: Observation, cfg: HealthConfig, active: set[AlarmKind]) -> Finding:
    kind = AlarmKind.CLOCK_DRIFT
    skew = obs.clock_skew_s
    if skew is None:
        return Finding(kind, None)
    limit = cfg.clock_drift_max_s
    on = abs(skew) > limit or (kind in active and abs(skew) > limit * 0.8)
    side = "ahead" if skew > 0 else "behind"
    return Finding(kind, on, f"clock {abs(skew):.1f} s {side} (limit {limit:g} s)", skew, limit)


def _failures(obs: Observation, cfg: HealthConfig) -> Finding:
    kind = AlarmKind.PLAYBACK_FAILURES
    n = obs.play_failures
    if n is None:
        return Finding(kind, None)
    limit = cfg.playback_failures_max
    return Finding(kind, n >= limit, f"{n} playbacks failed in a row", float(n), float(limit))


def _flapping(obs: Observation, cfg: HealthConfig) -> Finding:
    kind = AlarmKind.LINK_FLAPPING
    recent = [t for t in obs.disconnects if (obs.now - t).total_seconds() <= cfg.flap_window_s]
    n = len(recent)
    return Finding(
        kind,
        n >= cfg.flap_count,
        f"{n} connection losses in {cfg.flap_window_s:g} s",
        float(n),
        float(cfg.flap_count),
    )


def _control_link(obs: Observation) -> Finding:
    kind = AlarmKind.CONTROL_LINK
    # None: the box has no MCU link (or reported none), so it has no such fault. After a
    # controller restart the monitor seeds "down" from the open alarm, not None.
    if obs.control_link != "down":
        return Finding(kind, False, "control link answers again")
    detail = obs.control_link_detail or "the box reports its serial control link down"
    return Finding(kind, True, detail[:300])


def _flooding(obs: Observation, active: set[AlarmKind]) -> Finding:
    kind = AlarmKind.FLOODING
    if obs.flooding is None:
        watched = (obs.now - obs.watching_since).total_seconds()
        raised = obs.flood_raised_at
        carried = kind in active and raised is not None and raised < obs.watching_since
        if carried and watched < obs.flood_calm_s:
            # Carried over a controller restart: the new rate limiter has not yet watched
            # the box long enough to call it calm, so a restart alone never clears it.
            return Finding(kind, None)
        return Finding(kind, False, "the box keeps within its rate limit again")
    return Finding(kind, True, f"flooding: {obs.flooding}"[:300])
