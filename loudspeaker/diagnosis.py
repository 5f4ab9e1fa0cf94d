"""Verdicts of ``loudspeaker diagnose``: raw measurements in, a verdict and an action out.

The cluster only measures (self-test, test-tone current, link counters, its clock); the
controller judges, against the site's ``[health]`` thresholds, so every box is judged
alike and the rules are unit-tested here without hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from firmware_bridge.exceptions import ProtocolError
from firmware_bridge.protocol import (
    ClockReport,
    DiagnoseReport,
    LinkReport,
    SelfTestReport,
    ToneReport,
    decode_diagnose_detail,
)
from loudspeaker.site import HealthConfig

# A check's status: judged (ok/warn/fail), or not judged because the test did not run
# (skip) or the box has no such part (not_present). Only "ok" is ever called passed.
OK, WARN, FAIL, SKIP, NOT_PRESENT = "ok", "warn", "fail", "skip", "not_present"
_RTT_WARN_S = 2.0
_RTT_FAIL_S = 10.0
_RECONNECTS_WARN = 3
_RSSI_WARN_DBM = -105


@dataclass(frozen=True)
class Check:
    """One test's outcome."""

    name: str
    status: str  # ok | warn | fail | skip | not_present
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
    asked: Sequence[str] = (),
) -> Diagnosis:
    """Judge a diagnose result's ``detail`` (a :class:`DiagnoseDetail` on the wire).

    Only a test the box reports ``passed`` can be judged healthy; a test it did not run,
    could not run or does not have is shown as such, never as passed, and a test in
    ``asked`` that the box did not report at all is shown as not run.
    """
    try:
        parsed = decode_diagnose_detail(detail)
    except ProtocolError as exc:
        return Diagnosis(
            "fault",
            f"the cluster's diagnose result is not understood: {exc}",
            "update the cluster's agent to this protocol version, then diagnose again",
            [Check("result", FAIL, str(exc))],
        )
    tests = parsed.tests
    rtt = max(0.0, (answered_at - sent_at).total_seconds() - parsed.took_s)
    checks = [_round_trip(rtt)]
    if tests.self_test is not None:
        checks.append(_self_test(tests.self_test))
    if tests.tone is not None:
        checks.append(_tone(tests.tone, cfg))
    if tests.link is not None:
        checks.append(_link(tests.link))
    if tests.clock is not None:
        checks.append(_clock(tests.clock, cluster_ts, answered_at, rtt, cfg))
    reported = {c.name for c in checks}
    checks += [
        Check(n, SKIP, "the box did not report this test") for n in asked if n not in reported
    ]
    fails = [c for c in checks if c.status == FAIL]
    warns = [c for c in checks if c.status == WARN]
    measured = {"round_trip_s": round(rtt, 3)}
    if fails:
        status, primary = "fault", fails[0]
    elif warns:
        status, primary = "warning", warns[0]
    else:
        return Diagnosis("ok", _healthy(checks), "none", checks, measured)
    actions = [c.action for c in (*fails, *warns) if c.action]
    return Diagnosis(
        status, primary.summary, "; then ".join(dict.fromkeys(actions)), checks, measured
    )


def _healthy(checks: list[Check]) -> str:
    passed = [c.name for c in checks if c.status == OK]
    words = {SKIP: "not run", NOT_PRESENT: "not present"}
    others = [f"{c.name} {words.get(c.status, c.status)}" for c in checks if c.status != OK]
    if not others:
        return "healthy: every test passed"
    return f"healthy: {', '.join(passed)} passed; " + ", ".join(others)


def _not_run(name: str, report: DiagnoseReport) -> Check | None:
    """The check for a test that did not run (skipped or not present), else None."""
    if report.status == "skipped":
        return Check(name, SKIP, report.reason or "not run")
    if report.status == "not_present":
        return Check(name, NOT_PRESENT, report.reason or "not present on this box")
    return None


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


def _self_test(t: SelfTestReport) -> Check:
    if (c := _not_run("self_test", t)) is not None:
        return c
    if t.status == "passed":
        return Check("self_test", OK, "microcontroller self-test passed")
    failed = [k for k, v in t.checks.items() if not v]
    what = ", ".join(failed) or t.reason or "unknown check"
    if not t.checks:
        return Check(
            "self_test",
            FAIL,
            f"microcontroller did not answer: {what}",
            "check the serial cable between the modem board and the microcontroller",
        )
    return Check(
        "self_test",
        FAIL,
        f"microcontroller self-test failed: {what}",
        "replace the receiver board (self-test failure)",
    )


def _tone(t: ToneReport, cfg: HealthConfig) -> Check:
    if (c := _not_run("tone", t)) is not None:
        return c
    if t.status == "failed":
        if t.result is None:
            return Check("tone", FAIL, f"test tone could not run: {t.reason}", "reboot the cluster")
        return Check(
            "tone",
            FAIL,
            f"player hung during the test tone: {t.reason}",
            "reboot the cluster; if it recurs, reinstall the player on the box",
        )
    tone_a, idle_a = t.tone_a, t.idle_a
    if tone_a is None or idle_a is None:
        return Check("tone", SKIP, "test tone played; this box cannot measure amplifier current")
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


def _link(t: LinkReport) -> Check:
    if (c := _not_run("link", t)) is not None:
        return c
    if t.status == "failed":
        return Check("link", FAIL, f"link counters unreadable: {t.reason}", "reboot the cluster")
    serial = (t.rx_errors or 0) + (t.timeouts or 0)
    reconnects = t.mqtt_reconnects
    rssi = t.rssi_dbm
    # An unknown number is said to be unknown, never printed as "None".
    signal = "signal unknown" if rssi is None else f"signal {rssi} dBm"
    known = "reconnects unknown" if reconnects is None else f"{reconnects} reconnects"
    if serial:
        return Check(
            "link",
            WARN,
            f"serial link errors: {t.rx_errors or 0} bad frames, {t.timeouts or 0} timeouts",
            "check the RS-485/serial cable and connectors in the box",
            float(serial),
        )
    if (reconnects or 0) >= _RECONNECTS_WARN or (rssi is not None and rssi < _RSSI_WARN_DBM):
        return Check(
            "link",
            WARN,
            f"network link unstable: {known}, {signal}",
            "check the 4G antenna and signal",
            float(reconnects or 0),
        )
    return Check("link", OK, f"links clean ({known}, {signal})")


def _clock(
    t: ClockReport, cluster_ts: datetime, answered_at: datetime, rtt: float, cfg: HealthConfig
) -> Check:
    if (c := _not_run("clock", t)) is not None:
        return c
    if t.status == "failed":
        return Check("clock", FAIL, f"clock unreadable: {t.reason}", "reboot the cluster")
    # The box stamped the result just before sending; half the round trip later it
    # arrived. What remains is how far its clock is off ours.
    offset = (cluster_ts - answered_at).total_seconds() + rtt / 2
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
