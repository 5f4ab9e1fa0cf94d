"""Verdicts of ``loudspeaker diagnose``: raw measurements in, a verdict and an action out.

The cluster only measures (self-test, test-tone current, link counters, its clock); the
controller judges, against the site's ``[health]`` thresholds, so every box is judged
alike and the rules are unit-tested here without hardware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from loudspeaker.site import HealthConfig

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
_RTT_WARN_S = 2.0
_RTT_FAIL_S = 10.0
_RECONNECTS_WARN = 3
_RSSI_WARN_DBM = -105


@dataclass(frozen=True)
class Check:
    """One test's outcome."""

    name: str
    status: str  # ok | warn | fail | skip
    summary: str
    action: str = ""
    value: float | None = None


@dataclass(frozen=True)
class Diagnosis:
    """The overall verdict: ``status`` ok | warning | fault | unreachable."""

    status: str
    verdict: str
    action: str
    checks: list[Check] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def unreachable(reason: str) -> Diagnosis:
    """The verdict when the cluster never answered the diagnose command."""
    return Diagnosis(
        status="unreachable",
        verdict=f"cluster did not answer: {reason}",
        action="check mains power and the 4G/Wi-Fi link at the pole; then diagnose again",
        checks=[Check("round_trip", FAIL, reason)],
    )


def judge(
    detail: dict[str, Any],
    *,
    sent_at: datetime,
    answered_at: datetime,
    cluster_ts: datetime,
    cfg: HealthConfig,
) -> Diagnosis:
    """Judge a diagnose result's ``detail`` (see the ControlResult payload)."""
    tests: dict[str, Any] = detail.get("tests") or {}
    took = float(detail.get("took_s") or 0.0)
    rtt = max(0.0, (answered_at - sent_at).total_seconds() - took)
    checks = [_round_trip(rtt)]
    if "self_test" in tests:
        checks.append(_self_test(tests["self_test"]))
    if "tone" in tests:
        checks.append(_tone(tests["tone"], cfg))
    if "link" in tests:
        checks.append(_link(tests["link"]))
    if "clock" in tests:
        # The box stamped the result just before sending; half the round trip later it
        # arrived. What remains is how far its clock is off ours.
        offset = (cluster_ts - answered_at).total_seconds() + rtt / 2
        checks.append(_clock(offset, cfg))
    fails = [c for c in checks if c.status == FAIL]
    warns = [c for c in checks if c.status == WARN]
    if fails:
        status, primary = "fault", fails[0]
    elif warns:
        status, primary = "warning", warns[0]
    else:
        return Diagnosis(
            "ok", "healthy: every test passed", "none", checks, {"round_trip_s": round(rtt, 3)}
        )
    actions = [c.action for c in (*fails, *warns) if c.action]
    return Diagnosis(
        status,
        primary.summary,
        "; then ".join(dict.fromkeys(actions)),
        checks,
        {"round_trip_s": round(rtt, 3)},
    )


def _round_trip(rtt: float) -> Check:
    if rtt > _RTT_FAIL_S:
        return Check(
            "round_trip", FAIL, f"command round trip {rtt:.1f} s", "check the 4G link", rtt
        )
    if rtt > _RTT_WARN_S:
        return Check(
            "round_trip", WARN, f"slow command round trip {rtt:.1f} s", "check the 4G link", rtt
        )
    return Check("round_trip", OK, f"command round trip {rtt * 1000:.0f} ms", value=rtt)


def _self_test(t: dict[str, Any]) -> Check:
    if "error" in t:
        return Check(
            "self_test",
            FAIL,
            f"microcontroller did not answer: {t['error']}",
            "check the serial cable between the modem board and the microcontroller",
        )
    if t.get("ok"):
        return Check("self_test", OK, "microcontroller self-test passed")
    failed = [k for k, v in (t.get("checks") or {}).items() if not v]
    what = ", ".join(failed) or t.get("detail") or "unknown check"
    return Check(
        "self_test",
        FAIL,
        f"microcontroller self-test failed: {what}",
        "replace the receiver board (self-test failure)",
    )


def _tone(t: dict[str, Any], cfg: HealthConfig) -> Check:
    if "skipped" in t:
        return Check("tone", SKIP, str(t["skipped"]))
    if "error" in t and "result" not in t:
        return Check("tone", FAIL, f"test tone could not run: {t['error']}", "reboot the cluster")
    result = t.get("result")
    if result in ("error", "timeout"):
        why = t.get("error") or "no end of playback"
        return Check(
            "tone",
            FAIL,
            f"player hung during the test tone: {why}",
            "reboot the cluster; if it recurs, reinstall the player on the box",
        )
    if result == "stopped":
        return Check("tone", SKIP, "test tone gave way to a broadcast")
    tone_a, idle_a = t.get("tone_a"), t.get("idle_a")
    if tone_a is None or idle_a is None:
        return Check("tone", SKIP, "test tone played; this box cannot measure amplifier current")
    tone_a, idle_a = float(tone_a), float(idle_a)
    if tone_a >= cfg.current_max_a:
        return Check(
            "tone",
            FAIL,
            f"speaker line short: {tone_a:.2f} A during the test tone "
            f"(limit {cfg.current_max_a:g} A)",
            "check the speaker cable for water or damage and the horns for a short",
            tone_a,
        )
    if tone_a - idle_a < cfg.tone_min_a:
        return Check(
            "tone",
            FAIL,
            f"speaker line open: the amplifier drew {tone_a:.2f} A playing a tone "
            f"(idle {idle_a:.2f} A): nothing is connected",
            "check the speaker cable, horns and fuse at the pole",
            tone_a,
        )
    return Check(
        "tone",
        OK,
        f"test tone drew {tone_a:.2f} A (idle {idle_a:.2f} A): speakers connected",
        value=tone_a,
    )


def _link(t: dict[str, Any]) -> Check:
    if "error" in t:
        return Check("link", FAIL, f"link counters unreadable: {t['error']}", "reboot the cluster")
    serial = int(t.get("rx_errors") or 0) + int(t.get("timeouts") or 0)
    reconnects = int(t.get("mqtt_reconnects") or 0)
    rssi = t.get("rssi_dbm")
    if serial:
        return Check(
            "link",
            WARN,
            f"serial link errors: {t.get('rx_errors', 0)} bad frames, "
            f"{t.get('timeouts', 0)} timeouts",
            "check the RS-485/serial cable and connectors in the box",
            float(serial),
        )
    if reconnects >= _RECONNECTS_WARN or (rssi is not None and rssi < _RSSI_WARN_DBM):
        return Check(
            "link",
            WARN,
            f"network link unstable: {reconnects} reconnects, signal {rssi} dBm",
            "check the 4G antenna and signal",
            float(reconnects),
        )
    return Check("link", OK, f"links clean ({reconnects} reconnects, signal {rssi} dBm)")


def _clock(offset: float, cfg: HealthConfig) -> Check:
    if abs(offset) > cfg.clock_drift_max_s:
        side = "ahead" if offset > 0 else "behind"
        return Check(
            "clock",
            FAIL,
            f"clock {abs(offset):.1f} s {side}",
            "check NTP on the box; replace the RTC battery",
            offset,
        )
    return Check("clock", OK, f"clock within {abs(offset):.2f} s", value=offset)
