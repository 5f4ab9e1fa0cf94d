"""The checks: every MUST of docs/protocol.md, driven against one box.

Each check is a method registered with :func:`check` under the protocol section it proves;
they run in the order written here (some prepare the box for the next: the volume check
sets the volume the emergency check expects back). A check passes by returning a short
detail, and fails, skips or is not applicable by raising. Every wait is bounded by the
kit's timeout, so a box that never answers makes checks fail, never hangs the kit.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from firmware_bridge.exceptions import ProtocolError
from firmware_bridge.keys import KeyEntry
from firmware_bridge.mqtt import BrokerEndpoint
from firmware_bridge.protocol import (
    DUPLICATE_DONE,
    DUPLICATE_IN_PROGRESS,
    EXPIRED_AT,
    REFUSED_PREFIX,
    RESUMED_AFTER_RESTART,
    STOPPED_BY_OPERATOR,
    WITHDRAWN,
    Ack,
    AckState,
    AnyCommand,
    ControlCommand,
    ControlResult,
    DiagnoseCommand,
    Heartbeat,
    Kind,
    PlayCommand,
    PowerCommand,
    Priority,
    RebootCommand,
    Status,
    StopCommand,
    VolumeCommand,
    WithdrawCommand,
    decode_diagnose_detail,
    decode_status,
    encode,
    new_id,
    utcnow,
)
from loudspeaker.conformance.harness import (
    ConformanceError,
    Controller,
    Inbox,
    MediaHost,
    Received,
    TestAudio,
    route_address,
)

logger = logging.getLogger(__name__)

Outcome = Literal["pass", "fail", "skipped", "not applicable"]


@dataclass
class CheckResult:
    """The verdict of one check."""

    key: str
    section: str
    title: str
    result: Outcome
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class KitOptions:
    """What the kit needs to drive one box."""

    endpoint: BrokerEndpoint
    site: str
    cluster: str
    key: KeyEntry | None = None
    media_host: str | None = None
    media_port: int = 0
    kill_command: str | None = None
    allow_reboot: bool = False
    timeout_s: float = 30.0
    will_timeout_s: float = 60.0


class Fail(Exception):
    """The box broke a rule; the message says which and what it did instead."""


class Skip(Exception):
    """The check was not run; the message says why and how to run it."""


class NotApplicable(Exception):
    """The box lacks the capability the check needs (decided from what it reports)."""


@dataclass(frozen=True)
class CheckSpec:
    """A registered check."""

    key: str
    section: str
    title: str
    run: Callable[[ConformanceKit], str]


CHECKS: list[CheckSpec] = []


def check(key: str, section: str, title: str) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Register a check method (in definition order)."""

    def register(fn: Callable[..., str]) -> Callable[..., str]:
        CHECKS.append(CheckSpec(key, section, title, fn))
        return fn

    return register


def _is_ack(r: Received, command_id: str) -> bool:
    return isinstance(r.message, Ack) and r.message.command == command_id


def _states(items: list[Received]) -> list[str]:
    return [r.message.state.value for r in items if isinstance(r.message, Ack)]


def _quote(text: str | None) -> str:
    return "no reason" if text is None else repr(text)


class ConformanceKit:
    """Drives one box through every check. ``run()`` returns one result per check."""

    def __init__(self, options: KitOptions) -> None:
        self.options = options
        self.timeout = options.timeout_s
        self.ctl = Controller(options.endpoint, options.site, options.cluster, options.key)
        self.inbox: Inbox = self.ctl.inbox
        self.audio: TestAudio | None = None
        # Commands the box must never act on, by the check that sent them: the command id,
        # the sequence number after which to look, and the states that betray it.
        self._never_play: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {}
        self._played: tuple[PlayCommand, bytes] | None = None
        self._staged_future: tuple[PlayCommand, bytes] | None = None
        self._volume_set: int | None = None
        self._emergency_done: tuple[int, int | None] | None = None
        self._volume_cmd: tuple[VolumeCommand, bytes, ControlResult] | None = None
        # The item staged before the reboot, the sequence number at the reboot, or why not.
        self._resume: tuple[PlayCommand, int] | str = "not run: the reboot check did not run"

    # -- running -------------------------------------------------------------------------------

    def run(self, only: set[str] | None = None) -> list[CheckResult]:
        """Run the checks (all, or the keys in ``only``); ``ConformanceError`` if it cannot."""
        opts = self.options
        host = opts.media_host or route_address(opts.endpoint.host, opts.endpoint.port)
        media = MediaHost(host, opts.media_port)
        try:
            self.audio = media.start()
            self.ctl.start(self.timeout)
            results: list[CheckResult] = []
            dead: str | None = None
            for spec in CHECKS:
                if only is not None and spec.key not in only:
                    continue
                if dead is not None:
                    results.append(CheckResult(spec.key, spec.section, spec.title, "skipped", dead))
                    continue
                result = self._run_one(spec)
                results.append(result)
                if spec.key == "status" and result.result == "fail":
                    dead = "not run: the box is not online (see the §1 status check)"
            self._judge_never_played(results)
            return results
        finally:
            self.ctl.stop()
            media.stop()

    def _run_one(self, spec: CheckSpec) -> CheckResult:
        started = time.monotonic()
        outcome: Outcome
        try:
            detail = spec.run(self)
            outcome = "pass"
        except Fail as exc:
            outcome, detail = "fail", str(exc)
        except Skip as exc:
            outcome, detail = "skipped", str(exc)
        except NotApplicable as exc:
            outcome, detail = "not applicable", str(exc)
        except ConformanceError as exc:
            outcome, detail = "fail", str(exc)
        except Exception as exc:
            # A kit bug must not hide the other checks' verdicts.
            logger.exception("check %s crashed", spec.key)
            outcome, detail = "fail", f"kit error: {type(exc).__name__}: {exc}"
        seconds = round(time.monotonic() - started, 2)
        logger.info("check %s: %s (%s)", spec.key, outcome, detail)
        return CheckResult(spec.key, spec.section, spec.title, outcome, detail, seconds)

    def _judge_never_played(self, results: list[CheckResult]) -> None:
        # Refused commands must stay unplayed for the whole run, not only until refused.
        for result in results:
            for command_id, after, betray in self._never_play.get(result.key, []):
                states = _states(self.inbox.acks(command_id, after))
                if any(s in betray for s in states) and result.result == "pass":
                    result.result = "fail"
                    result.detail = f"refused, then acted on it anyway (acks: {', '.join(states)})"

    # -- helpers -------------------------------------------------------------------------------

    @property
    def media(self) -> TestAudio:
        if self.audio is None:
            raise ConformanceError("media server not started")
        return self.audio

    def _send(self, command: AnyCommand) -> int:
        mark = self.inbox.last_seq()
        self.ctl.send_command(command, self.timeout)
        return mark

    def _send_bytes(self, payload: bytes) -> int:
        mark = self.inbox.last_seq()
        self.ctl.send(payload, self.timeout)
        return mark

    def _ack(self, command_id: str, after: int, timeout: float, *states: str) -> Received | None:
        def find(items: list[Received]) -> Received | None:
            for r in items:
                if r.seq > after and _is_ack(r, command_id):
                    assert isinstance(r.message, Ack)
                    if not states or r.message.state.value in states:
                        return r
            return None

        return self.inbox.wait(find, timeout)

    def _final(self, command_id: str, after: int, timeout: float) -> Ack | None:
        found = self._ack(command_id, after, timeout, "played", "failed")
        return found.message if found is not None and isinstance(found.message, Ack) else None

    def _result(self, command_id: str, after: int, timeout: float) -> ControlResult | None:
        def find(items: list[Received]) -> ControlResult | None:
            for r in items:
                m = r.message
                if r.seq > after and isinstance(m, ControlResult) and m.command == command_id:
                    return m
            return None

        return self.inbox.wait(find, timeout)

    def _heartbeat(self, after: int, timeout: float) -> Heartbeat | None:
        def find(items: list[Received]) -> Heartbeat | None:
            for r in items:
                if r.seq > after and isinstance(r.message, Heartbeat):
                    return r.message
            return None

        return self.inbox.wait(find, timeout)

    def _latest_heartbeat(self) -> Heartbeat:
        beats = [r.message for r in self.inbox.snapshot() if isinstance(r.message, Heartbeat)]
        if beats:
            return beats[-1]
        hb = self._heartbeat(-1, 2 * self.timeout)
        if hb is None:
            raise Fail(
                f"no heartbeat within {2 * self.timeout:.0f} s: the box's capabilities are "
                "read from its heartbeat (§11)"
            )
        return hb

    def _play_bound(self, media_s: float) -> float:
        return self.timeout + media_s + 5

    def _refused_ack(
        self, payload: bytes, command_id: str, what: str, broadcast: str | None = None
    ) -> str:
        mark = self._send_bytes(payload)
        first = self._ack(command_id, mark, self.timeout)
        if first is None or not isinstance(first.message, Ack):
            raise Fail(f"{what}: no ack within {self.timeout:.0f} s (expected failed 'refused: …')")
        ack = first.message
        if ack.state is not AckState.FAILED or not (ack.reason or "").startswith(REFUSED_PREFIX):
            raise Fail(
                f"{what}: first ack {ack.state.value} with {_quote(ack.reason)}; "
                "expected failed 'refused: …'"
            )
        if broadcast is not None and ack.broadcast != broadcast:
            raise Fail(f"{what}: refusal names broadcast {ack.broadcast!r}, not {broadcast!r}")
        return ack.reason or ""

    def _refused_play(self, key: str, body: PlayCommand | bytes, what: str) -> str:
        payload = encode(body) if isinstance(body, PlayCommand) else body
        sent = json.loads(payload)
        acted = ("received", "staged", "playing", "played")
        self._never_play.setdefault(key, []).append((sent["id"], -1, acted))
        return self._refused_ack(payload, sent["id"], what, sent["broadcast"])

    def _play_through(self, command: PlayCommand, payload: bytes | None = None) -> list[str]:
        """Send a play command, wait for its final ack; its states in order."""
        mark = self._send_bytes(payload if payload is not None else encode(command))
        final = self._final(command.id, mark, self._play_bound(command.media.duration_s))
        states = _states(self.inbox.acks(command.id, mark))
        if final is None:
            raise Fail(f"no final ack within the bound; acks so far: {', '.join(states) or 'none'}")
        return states

    def _control(self, make: Callable[..., ControlCommand], **kw: object) -> ControlCommand:
        issued = kw.pop("issued", utcnow())
        assert isinstance(issued, datetime)
        lifetime = kw.pop("lifetime", timedelta(minutes=5))
        assert isinstance(lifetime, timedelta)
        return make(
            id=new_id(),
            cluster=self.options.cluster,
            issued_at=issued,
            expires_at=issued + lifetime,
            **kw,
        )

    # -- §1 availability -----------------------------------------------------------------------

    @check("status", "1", "retained status 'online' on subscribe")
    def _status(self) -> str:
        # A box still starting may leave an old retained "offline" for a moment: wait for
        # "online" and judge by the last status seen if it never comes.
        found = self.inbox.wait(
            lambda items: next(
                (r for r in items if isinstance(r.message, Status) and r.message.state == "online"),
                None,
            ),
            self.timeout,
        )
        if found is not None and isinstance(found.message, Status):
            return f"online (agent {found.message.agent!r})"
        seen = [r.message for r in self.inbox.snapshot() if isinstance(r.message, Status)]
        if not seen:
            raise Fail(
                f"no retained status within {self.timeout:.0f} s: is the box connected, and "
                "does it publish its status retained after every connect?"
            )
        raise Fail(f"status is {seen[-1].state!r} ({seen[-1].reason}); start the box")

    # -- §4 playing ----------------------------------------------------------------------------

    @check("play", "4", "play: received, staged, playing, played")
    def _play(self) -> str:
        cmd = self.ctl.sign(self.ctl.play(self.media.short, title="play"))
        assert isinstance(cmd, PlayCommand)
        payload = encode(cmd)
        states = self._play_through(cmd, payload)
        expected = ["received", "staged", "playing", "played"]
        if states != expected:
            raise Fail(f"acks {', '.join(states)}; expected {', '.join(expected)}")
        for r in self.inbox.acks(cmd.id):
            if isinstance(r.message, Ack) and r.message.broadcast != cmd.broadcast:
                raise Fail(f"ack names broadcast {r.message.broadcast!r}, not {cmd.broadcast!r}")
        self._played = (cmd, payload)
        return "four acks in order, right command and broadcast ids"

    @check("duplicate-done", "5", "duplicate of a finished command: nothing plays")
    def _duplicate_done(self) -> str:
        if self._played is None:
            raise Fail("not run: the §4 play check did not finish")
        cmd, payload = self._played
        mark = self._send_bytes(payload)
        answer = self._ack(cmd.id, mark, self.timeout)
        if answer is None or not isinstance(answer.message, Ack):
            raise Fail(f"no ack for the duplicate within {self.timeout:.0f} s")
        ack = answer.message
        problems = []
        if ack.state is not AckState.PLAYED or ack.reason != DUPLICATE_DONE:
            problems.append(
                f"answered {ack.state.value} with {_quote(ack.reason)}; expected played "
                f"with {DUPLICATE_DONE!r}"
            )
        # One item plays at a time in arrival order: once a later item has played, a
        # replay of the duplicate would have shown.
        later = self.ctl.sign(self.ctl.play(self.media.short, title="after duplicate"))
        assert isinstance(later, PlayCommand)
        self._play_through(later)
        again = [s for s in _states(self.inbox.acks(cmd.id, mark)) if s != "played"]
        replays = _states(self.inbox.acks(cmd.id, mark))
        if again or len(replays) > 1:
            problems.append(f"played it again (acks after the duplicate: {', '.join(replays)})")
        if problems:
            raise Fail("; ".join(problems))
        return f"answered played {DUPLICATE_DONE!r}; not replayed"

    @check("duplicate-pending", "5", "duplicate of an unfinished command: 'in progress'")
    def _duplicate_pending(self) -> str:
        cmd = self.ctl.sign(
            self.ctl.play(
                self.media.short,
                title="staged for later",
                start_in=timedelta(minutes=5),
                lifetime=timedelta(minutes=10),
            )
        )
        assert isinstance(cmd, PlayCommand)
        payload = encode(cmd)
        mark = self._send_bytes(payload)
        if self._ack(cmd.id, mark, self._play_bound(0), "staged") is None:
            states = _states(self.inbox.acks(cmd.id, mark))
            raise Fail(f"a future item was not staged; acks {', '.join(states) or 'none'}")
        self._staged_future = (cmd, payload)
        mark = self._send_bytes(payload)
        answer = self._ack(cmd.id, mark, self.timeout)
        if answer is None or not isinstance(answer.message, Ack):
            raise Fail(f"no ack for the duplicate within {self.timeout:.0f} s")
        ack = answer.message
        if ack.state is not AckState.STAGED or ack.reason != DUPLICATE_IN_PROGRESS:
            raise Fail(
                f"answered {ack.state.value} with {_quote(ack.reason)}; expected staged "
                f"with {DUPLICATE_IN_PROGRESS!r}"
            )
        return f"answered staged {DUPLICATE_IN_PROGRESS!r}"

    @check("withdraw", "3", "withdraw of a staged future item")
    def _withdraw(self) -> str:
        if self._staged_future is None:
            raise Fail("not run: no future item was staged (see the §5 duplicate check)")
        cmd, payload = self._staged_future
        issued = utcnow()
        withdraw = self.ctl.sign(
            WithdrawCommand(
                id=new_id(),
                cluster=self.options.cluster,
                broadcast=cmd.broadcast,
                command=cmd.id,
                issued_at=issued,
                expires_at=issued + timedelta(minutes=5),
            )
        )
        mark = self._send(withdraw)
        found = self._ack(cmd.id, mark, self.timeout, "failed")
        if found is None or not isinstance(found.message, Ack):
            self._stop_broadcast(cmd.broadcast)
            raise Fail(
                f"no failed {WITHDRAWN!r} for the play command within {self.timeout:.0f} s "
                "(the kit then stopped the item)"
            )
        if found.message.reason != WITHDRAWN:
            raise Fail(f"failed with {_quote(found.message.reason)}; expected {WITHDRAWN!r}")
        if found.message.broadcast != cmd.broadcast:
            raise Fail(f"the ack names broadcast {found.message.broadcast!r}, not the play's")
        # Judged again at the end: a withdrawn item must never start.
        self._never_play.setdefault("withdraw", []).append(
            (cmd.id, found.seq, ("playing", "played"))
        )
        mark = self._send_bytes(payload)
        again = self._ack(cmd.id, mark, self.timeout)
        if again is None or not isinstance(again.message, Ack):
            raise Fail("the withdrawn play command sent again got no answer")
        if again.message.state is not AckState.FAILED or again.message.reason != DUPLICATE_DONE:
            raise Fail(
                f"the withdrawn play command sent again: {again.message.state.value} with "
                f"{_quote(again.message.reason)}; expected failed {DUPLICATE_DONE!r}"
            )
        return f"failed {WITHDRAWN!r}; sent again: {DUPLICATE_DONE!r}"

    def _stop_broadcast(self, broadcast: str) -> None:
        issued = utcnow()
        stop = self.ctl.sign(
            StopCommand(
                id=new_id(),
                cluster=self.options.cluster,
                broadcast=broadcast,
                issued_at=issued,
                expires_at=issued + timedelta(minutes=5),
            )
        )
        try:
            self._send(stop)
        except ConformanceError as exc:
            logger.warning("clean-up stop not sent: %s", exc)

    # -- §3/§7/§10 refusals ---------------------------------------------------------------------

    @check("unknown-field", "3", "unknown field refused, not played")
    def _unknown_field(self) -> str:
        body = self.ctl.play(self.media.short, title="unknown field").model_dump(mode="json")
        body["colour"] = "red"
        return self._refused_play("unknown-field", self.ctl.sign_raw(body), "unknown field")

    @check("version", "7", "unknown version 'v' refused, not played")
    def _version(self) -> str:
        body = self.ctl.play(self.media.short, title="v 2").model_dump(mode="json")
        body["v"] = 2
        return self._refused_play("version", self.ctl.sign_raw(body), "v 2")

    @check("naive-time", "3", "time without an offset refused, not played")
    def _naive_time(self) -> str:
        body = self.ctl.play(self.media.short, title="naive time").model_dump(mode="json")
        body["expires_at"] = body["expires_at"].removesuffix("Z")[:19]
        return self._refused_play(
            "naive-time", self.ctl.sign_raw(body), "expires_at without offset"
        )

    @check("other-cluster", "8", "command for another cluster dropped")
    def _other_cluster(self) -> str:
        other = "zz-" + self.options.cluster[:29]
        body = self.ctl.play(self.media.short, title="not yours").model_dump(mode="json")
        body["cluster"] = other
        mark = self._send_bytes(self.ctl.sign_raw(body))
        # Commands are handled in order: once a later one is answered, the first was too.
        later = self.ctl.sign(
            self.ctl.play(
                self.media.short,
                title="after another's",
                issued_shift=-timedelta(minutes=10),
                lifetime=timedelta(minutes=5),
            )
        )
        self._send(later)
        if self._ack(later.id, mark, self.timeout) is None:
            raise Fail("no answer to the (expired) command sent after it; cannot tell")
        answers = _states(self.inbox.acks(body["id"], mark))
        # An answer naming the other cluster does not parse as ours: look there too.
        stray = [m for m in self.inbox.malformed if body["id"].encode() in m.payload]
        if answers or stray:
            shown = ", ".join(answers) or stray[0].payload.decode(errors="replace")[:120]
            raise Fail(f"answered a command for {other}: {shown}")
        acted = ("received", "staged", "playing", "played")
        self._never_play.setdefault("other-cluster", []).append((body["id"], mark, acted))
        return f"a play for {other} got no answer and did not play"

    @check("expired", "10", "already expired: 'refused: expired at …'")
    def _expired(self) -> str:
        cmd = self.ctl.sign(
            self.ctl.play(
                self.media.short,
                title="expired",
                issued_shift=-timedelta(minutes=10),
                lifetime=timedelta(minutes=5),
            )
        )
        assert isinstance(cmd, PlayCommand)
        payload = encode(cmd)
        reason = self._refused_play("expired", payload, "expired play")
        wanted = REFUSED_PREFIX + EXPIRED_AT + json.loads(payload)["expires_at"]
        if reason != wanted:
            raise Fail(f"reason {reason!r}; expected {wanted!r} (expires_at as sent)")
        return reason

    @check("future", "10", "issued beyond the allowed clock skew refused")
    def _future(self) -> str:
        cmd = self.ctl.sign(
            self.ctl.play(self.media.short, title="future", issued_shift=timedelta(minutes=10))
        )
        assert isinstance(cmd, PlayCommand)
        return self._refused_play("future", cmd, "issued 10 min ahead")

    @check("lifetime", "10", "lifetime over 48 h refused")
    def _lifetime(self) -> str:
        cmd = self.ctl.sign(
            self.ctl.play(self.media.short, title="long-lived", lifetime=timedelta(hours=49))
        )
        assert isinstance(cmd, PlayCommand)
        return self._refused_play("lifetime", cmd, "lifetime 49 h")

    @check("forged", "10", "forged signature refused")
    def _forged(self) -> str:
        if self.ctl.key is None:
            raise Skip("needs the box's key: give --keys-file")
        cmd = self.ctl.forge(self.ctl.play(self.media.short, title="forged"))
        assert isinstance(cmd, PlayCommand)
        return self._refused_play("forged", cmd, "forged MAC")

    @check("unsigned", "10", "unsigned command refused")
    def _unsigned(self) -> str:
        if self.ctl.key is None:
            raise Skip("a box with a key must refuse unsigned commands: give --keys-file")
        cmd = self.ctl.play(self.media.short, title="unsigned")
        return self._refused_play("unsigned", cmd, "unsigned")

    @check("keyless-sig", "10", "a box without keys ignores 'sig'")
    def _keyless_sig(self) -> str:
        if self.ctl.key is not None:
            raise Skip("for a box without keys (--insecure-unsigned); this one was given a key")
        body = self.ctl.play(self.media.short, title="any sig").model_dump(mode="json")
        body["sig"] = {"alg": "hmac-sha256", "kid": "kconformance", "mac": "0" * 64}
        command = PlayCommand.model_validate(body)
        states = self._play_through(command, json.dumps(body).encode())
        if states != ["received", "staged", "playing", "played"]:
            raise Fail(f"a play with a meaningless sig got {', '.join(states)}; expected played")
        return "a play with a meaningless sig played"

    # -- §3/§4 stop and emergencies ---------------------------------------------------------------

    @check("stop", "3", "stop of a playing item")
    def _stop(self) -> str:
        cmd = self.ctl.sign(self.ctl.play(self.media.long, title="to be stopped"))
        assert isinstance(cmd, PlayCommand)
        mark = self._send(cmd)
        if self._ack(cmd.id, mark, self._play_bound(0), "playing") is None:
            raise Fail(f"item never started; acks {', '.join(_states(self.inbox.acks(cmd.id)))}")
        self._stop_broadcast(cmd.broadcast)
        final = self._final(cmd.id, mark, self._play_bound(cmd.media.duration_s))
        if final is None:
            raise Fail("no final ack after the stop")
        if final.state is not AckState.FAILED or final.reason != STOPPED_BY_OPERATOR:
            raise Fail(
                f"final ack {final.state.value} with {_quote(final.reason)}; expected failed "
                f"{STOPPED_BY_OPERATOR!r}"
            )
        return f"failed {STOPPED_BY_OPERATOR!r}"

    @check("volume", "11", "volume command answered with its result")
    def _volume(self) -> str:
        before = self._latest_heartbeat().volume
        target = 40 if before != 40 else 45
        cmd = self.ctl.sign(self._control(VolumeCommand, volume=target))
        mark = self._send(cmd)
        result = self._result(cmd.id, mark, self.timeout)
        if result is None:
            raise Fail(f"no result within {self.timeout:.0f} s")
        if result.type != "volume" or not result.ok or result.detail.get("volume") != target:
            raise Fail(
                f"result {result.type} ok={result.ok} detail {result.detail} "
                f"({_quote(result.reason)}); expected ok with volume {target}"
            )
        self._volume_set = target
        assert isinstance(cmd, VolumeCommand)
        self._volume_cmd = (cmd, encode(cmd), result)
        return f"ok, volume {target}"

    @check("duplicate-control", "5", "duplicate of a finished control command")
    def _duplicate_control(self) -> str:
        if self._volume_cmd is None:
            raise Fail("not run: the §11 volume check did not finish")
        cmd, payload, first = self._volume_cmd
        mark = self._send_bytes(payload)
        again = self._result(cmd.id, mark, self.timeout)
        if again is None:
            raise Fail(f"no result for the duplicate within {self.timeout:.0f} s")
        if again.ok != first.ok or again.reason != DUPLICATE_DONE:
            raise Fail(
                f"answered ok={again.ok} with {_quote(again.reason)}; expected ok={first.ok} "
                f"with {DUPLICATE_DONE!r}"
            )
        if again.detail.get("duplicate") is not True:
            raise Fail(f"detail {again.detail}; expected {{'duplicate': true}}")
        return f"result again, {DUPLICATE_DONE!r}"

    @check("emergency", "4", "emergency pre-empts; interrupted item replayed")
    def _emergency(self) -> str:
        normal = self.ctl.sign(self.ctl.play(self.media.long, title="bulletin"))
        assert isinstance(normal, PlayCommand)
        mark = self._send(normal)
        if self._ack(normal.id, mark, self._play_bound(0), "playing") is None:
            raise Fail("the normal item never started")
        before = self._latest_heartbeat().volume
        if self._volume_set is not None:
            before = self._volume_set
        ev = 90 if before != 90 else 80
        emergency = self.ctl.sign(
            self.ctl.play(
                self.media.short, title="emergency", priority=Priority.EMERGENCY, volume=ev
            )
        )
        assert isinstance(emergency, PlayCommand)
        self._send(emergency)
        bound = self._play_bound(normal.media.duration_s + emergency.media.duration_s)
        done = self._final(normal.id, mark, bound)
        e_done = self._final(emergency.id, mark, self.timeout)
        n_acks = self.inbox.acks(normal.id, mark)
        e_acks = self.inbox.acks(emergency.id, mark)
        n_states, e_states = _states(n_acks), _states(e_acks)
        if done is None or e_done is None:
            raise Fail(
                f"not finished: bulletin {', '.join(n_states)}; emergency {', '.join(e_states)}"
            )
        want_n = ["received", "staged", "playing", "interrupted", "playing", "played"]
        want_e = ["received", "staged", "playing", "played"]
        if n_states != want_n or e_states != want_e:
            raise Fail(
                f"bulletin {', '.join(n_states)} (expected {', '.join(want_n)}); "
                f"emergency {', '.join(e_states)} (expected {', '.join(want_e)})"
            )
        interrupted = n_acks[3].message
        assert isinstance(interrupted, Ack)
        if not (interrupted.reason or "").startswith("interrupted by emergency"):
            raise Fail(f"interrupted with {_quote(interrupted.reason)}")
        order = n_acks[3].seq < e_acks[2].seq and e_acks[3].seq < n_acks[4].seq
        if not order:
            raise Fail("order wrong: expected interrupted, emergency played, bulletin again")
        self._emergency_done = (n_acks[5].seq, before)
        return "interrupted, emergency played, bulletin replayed and played"

    @check("volume-restored", "4", "volume restored after the emergency")
    def _volume_restored(self) -> str:
        latest = self._latest_heartbeat()
        if latest.volume is None:
            raise NotApplicable("the box reports no volume (heartbeat volume is null)")
        if self._emergency_done is None:
            raise Fail("not run: the emergency check did not finish")
        after, before = self._emergency_done
        if before is None:
            raise NotApplicable("the box reported no volume before the emergency")
        seen: list[int | None] = []
        bound = time.monotonic() + min(self.timeout, 1.5 * latest.interval_s + 2)

        def find(items: list[Received]) -> Heartbeat | None:
            seen.clear()
            for r in items:
                if r.seq > after and isinstance(r.message, Heartbeat):
                    seen.append(r.message.volume)
                    if r.message.volume == before or len(seen) >= 2:
                        return r.message
            return None

        hb = self.inbox.wait(find, max(0.0, bound - time.monotonic()))
        if hb is None or hb.volume != before:
            vols = ", ".join(str(v) for v in seen) or "no heartbeat"
            raise Fail(f"volume after the emergency: {vols}; expected {before} as before it")
        return f"heartbeat volume {before} again"

    # -- §11 control ----------------------------------------------------------------------------

    @check("power", "11", "power command answered with its result")
    def _power(self) -> str:
        has_relay = self._latest_heartbeat().amp_power is not None
        cmd = self.ctl.sign(self._control(PowerCommand, on=True))
        mark = self._send(cmd)
        result = self._result(cmd.id, mark, self.timeout)
        if result is None:
            raise Fail(f"no result within {self.timeout:.0f} s")
        if result.type != "power":
            raise Fail(f"result type {result.type!r}")
        if result.ok:
            if result.detail.get("amp_power") is not True:
                raise Fail(f"ok but detail {result.detail}; expected amp_power true")
            return "ok, amp_power true"
        if not result.reason:
            raise Fail("failed without a reason")
        if has_relay:
            raise Fail(f"the box reports a relay but failed: {result.reason!r}")
        return f"answered failed (heartbeat: no relay): {result.reason!r}"

    @check("diagnose", "11", "diagnose command answered with its result")
    def _diagnose(self) -> str:
        tests = ["self_test", "tone", "link", "clock"]
        cmd = self.ctl.sign(self._control(DiagnoseCommand, tests=tests, tone_s=1.0))
        mark = self._send(cmd)
        result = self._result(cmd.id, mark, self.timeout + 15)
        if result is None:
            raise Fail(f"no result within {self.timeout + 15:.0f} s")
        if result.type != "diagnose":
            raise Fail(f"result type {result.type!r}")
        if not result.ok:
            if not result.reason:
                raise Fail("failed without a reason")
            return f"answered failed: {result.reason!r}"
        try:
            detail = decode_diagnose_detail(result.detail)
        except ProtocolError as exc:
            raise Fail(f"{exc} (docs/protocol.md §11 DiagnoseDetail)") from None
        missing = [t for t in tests if getattr(detail.tests, t) is None]
        if missing:
            raise Fail(f"no report for {', '.join(missing)}; every test asked for is reported")
        shown = ", ".join(f"{t} {getattr(detail.tests, t).status}" for t in tests)
        return f"typed reports: {shown}"

    def _refused_result(self, command: ControlCommand, what: str) -> str | None:
        mark = self._send(command)
        result = self._result(command.id, mark, self.timeout)
        if result is None:
            return f"{what}: no result"
        if result.ok or not (result.reason or "").startswith(REFUSED_PREFIX):
            return f"{what}: ok={result.ok} {_quote(result.reason)}"
        return None

    @check("refused-control", "10", "forged and stale control commands refused")
    def _refused_control(self) -> str:
        vol = 5  # never a volume the box is left at
        cases: list[tuple[str, ControlCommand]] = []
        if self.ctl.key is not None:
            forged = self.ctl.forge(self._control(VolumeCommand, volume=vol))
            assert isinstance(forged, VolumeCommand)
            cases.append(("forged volume", forged))
            cases.append(("unsigned power", self._control(PowerCommand, on=False)))
            forged_diag = self.ctl.forge(self._control(DiagnoseCommand, tests=["clock"]))
            assert isinstance(forged_diag, DiagnoseCommand)
            cases.append(("forged diagnose", forged_diag))
        stale: list[tuple[str, dict[str, object]]] = [
            ("volume issued 10 min ahead", {"issued": utcnow() + timedelta(minutes=10)}),
            ("volume with a 49 h lifetime", {"lifetime": timedelta(hours=49)}),
            (
                "expired volume",
                {"issued": utcnow() - timedelta(minutes=10), "lifetime": timedelta(minutes=5)},
            ),
        ]
        for what, kw in stale:
            command = self.ctl.sign(self._control(VolumeCommand, volume=vol, **kw))
            assert isinstance(command, VolumeCommand)
            cases.append((what, command))
        problems = [p for what, c in cases if (p := self._refused_result(c, what)) is not None]
        if problems:
            raise Fail("; ".join(problems) + " (expected ok false, 'refused: …')")
        note = "" if self.ctl.key is not None else " (no key: signatures not tested)"
        return f"{len(cases)} refused on result{note}"

    @check("refused-stop-withdraw", "10", "forged and stale stop and withdraw refused")
    def _refused_stop_withdraw(self) -> str:
        def stop(**kw: object) -> StopCommand:
            issued = kw.pop("issued", utcnow())
            assert isinstance(issued, datetime)
            return StopCommand(
                id=new_id(),
                cluster=self.options.cluster,
                broadcast=new_id()[:16],
                issued_at=issued,
                expires_at=issued + timedelta(minutes=5),
            )

        def withdraw(lifetime: timedelta = timedelta(minutes=5)) -> WithdrawCommand:
            issued = utcnow()
            return WithdrawCommand(
                id=new_id(),
                cluster=self.options.cluster,
                broadcast=new_id()[:16],
                command=new_id(),
                issued_at=issued,
                expires_at=issued + lifetime,
            )

        cases: list[tuple[str, AnyCommand]] = []
        if self.ctl.key is not None:
            cases.append(("forged stop", self.ctl.forge(stop())))
            cases.append(("forged withdraw", self.ctl.forge(withdraw())))
        cases.append(
            (
                "stop issued 10 min ahead",
                self.ctl.sign(stop(issued=utcnow() + timedelta(minutes=10))),
            )
        )
        cases.append(
            ("withdraw with a 49 h lifetime", self.ctl.sign(withdraw(timedelta(hours=49))))
        )
        problems = []
        for what, command in cases:
            try:
                broadcast = getattr(command, "broadcast", None)
                self._refused_ack(encode(command), command.id, what, broadcast)
            except Fail as exc:
                problems.append(str(exc))
        if problems:
            raise Fail("; ".join(problems))
        return f"{len(cases)} answered on ack: failed 'refused: …' with their own ids"

    @check("reboot", "11", "reboot answered; back with a new boot_id")
    def _reboot(self) -> str:
        if not self.options.allow_reboot:
            raise Skip("reboots the box: pass --allow-reboot to run it")
        # An item waiting on the box when it goes down must come back (§4 Restart).
        waiting = self.ctl.sign(
            self.ctl.play(
                self.media.short,
                title="waits through a reboot",
                start_in=timedelta(minutes=5),
                lifetime=timedelta(minutes=10),
            )
        )
        assert isinstance(waiting, PlayCommand)
        staged_mark = self._send(waiting)
        staged = self._ack(waiting.id, staged_mark, self._play_bound(0), "staged") is not None
        boot = self._latest_heartbeat().boot_id
        cmd = self.ctl.sign(self._control(RebootCommand))
        mark = self._send(cmd)
        self._resume = (waiting, mark) if staged else "a future item was not staged before it"
        result = self._result(cmd.id, mark, self.timeout)
        if result is None:
            raise Fail(f"no result within {self.timeout:.0f} s")
        if not result.ok or result.type != "reboot":
            raise Fail(f"result {result.type} ok={result.ok} {_quote(result.reason)}")
        if result.detail.get("boot_id") != boot:
            raise Fail(f"detail {result.detail}; expected boot_id {boot!r} (the current boot)")
        bound = 3 * self.timeout

        def back(items: list[Received]) -> Heartbeat | None:
            for r in items:
                m = r.message
                if r.seq > mark and isinstance(m, Heartbeat) and m.boot_id != boot:
                    return m
            return None

        hb = self.inbox.wait(back, bound)
        if hb is None:
            raise Fail(f"no heartbeat with a new boot_id within {bound:.0f} s")
        online = self.inbox.wait(
            lambda items: next(
                (
                    r
                    for r in items
                    if r.seq > mark
                    and isinstance(r.message, Status)
                    and r.message.state == "online"
                ),
                None,
            ),
            self.timeout,
        )
        if online is None:
            raise Fail("back with a new boot_id but no retained 'online' after the reboot")
        return f"rebooting, back as boot {hb.boot_id}"

    @check("resume", "4", "after a restart: waiting item resumed, no 'received'")
    def _resumed(self) -> str:
        if not self.options.allow_reboot:
            raise Skip("needs a reboot: pass --allow-reboot to run it")
        if isinstance(self._resume, str):
            raise Fail(self._resume)
        cmd, mark = self._resume
        try:
            found = self._ack(cmd.id, mark, self.timeout, "staged")
            states = _states(self.inbox.acks(cmd.id, mark))
            if found is None or not isinstance(found.message, Ack):
                raise Fail(
                    f"no staged {RESUMED_AFTER_RESTART!r} within {self.timeout:.0f} s of the "
                    f"reboot for the item waiting on the box (acks: {', '.join(states) or 'none'})"
                )
            if found.message.reason != RESUMED_AFTER_RESTART:
                raise Fail(
                    f"staged with {_quote(found.message.reason)}; expected "
                    f"{RESUMED_AFTER_RESTART!r}"
                )
            if "received" in states:
                raise Fail(f"'received' sent again after the restart ({', '.join(states)})")
        finally:
            self._stop_broadcast(cmd.broadcast)
        return f"staged {RESUMED_AFTER_RESTART!r} once; no 'received'"

    # -- §11 heartbeat, §8 well-formed, §1 last will ---------------------------------------------

    @check("heartbeat", "11", "heartbeats within their interval, fields")
    def _heartbeats(self) -> str:
        latest = self._latest_heartbeat()
        # Slack for a loaded box or network; the controller itself alarms only after 3 misses.
        allowed = 1.5 * latest.interval_s + 2

        def same_boot(items: list[Received]) -> list[Received] | None:
            mine = [
                r
                for r in items
                if isinstance(r.message, Heartbeat) and r.message.boot_id == latest.boot_id
            ]
            return mine if len(mine) >= 2 else None

        beats = self.inbox.wait(same_boot, allowed + 1)
        if beats is None:
            raise Fail(f"only one heartbeat of this boot in {allowed + 1:.0f} s")
        by_boot: dict[str, list[Received]] = {}
        for r in self.inbox.snapshot():
            if isinstance(r.message, Heartbeat):
                by_boot.setdefault(r.message.boot_id, []).append(r)
        worst = 0.0
        for boot, rs in by_boot.items():
            seqs = [r.message.seq for r in rs if isinstance(r.message, Heartbeat)]
            if any(b <= a for a, b in itertools.pairwise(seqs)):
                raise Fail(f"seq does not increase within boot {boot}: {seqs}")
            gaps = [b.at - a.at for a, b in itertools.pairwise(rs)]
            worst = max([worst, *gaps])
        if worst > allowed:
            raise Fail(
                f"a gap of {worst:.1f} s between heartbeats; interval_s {latest.interval_s} "
                f"allows {allowed:.1f} s"
            )
        count = sum(len(rs) for rs in by_boot.values())
        return f"{count} heartbeats, interval {latest.interval_s} s, longest gap {worst:.1f} s"

    @check("well-formed", "8", "every message from the box parses")
    def _well_formed(self) -> str:
        bad = list(self.inbox.malformed)
        if bad:
            first = bad[0]
            raise Fail(f"{len(bad)} malformed; first on {first.topic}: {first.error}")
        return f"{len(self.inbox.snapshot())} messages, all valid"

    @check("will", "1", "last will: retained 'offline' when the box dies")
    def _will(self) -> str:
        command = self.options.kill_command
        if not command:
            raise Skip("needs the box to die: give --kill-command 'CMD' (e.g. kill -9 PID)")
        mark = self.inbox.last_seq()
        started = time.monotonic()
        try:
            # Through the shell, as the vendor typed it (ssh, systemctl, kill $(pidof ...)).
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Fail(f"kill command failed: {exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-200:]
            raise Fail(f"kill command exited {proc.returncode}: {err}")
        bound = self.options.will_timeout_s
        found = self.inbox.wait(
            lambda items: next(
                (
                    r
                    for r in items
                    if r.seq > mark
                    and isinstance(r.message, Status)
                    and r.message.state == "offline"
                ),
                None,
            ),
            bound,
        )
        if found is None or not isinstance(found.message, Status):
            raise Fail(f"no 'offline' status within {bound:.0f} s of the kill")
        took = found.at - started
        retained = self.ctl.read_retained(Kind.STATUS, self.timeout)
        try:
            kept = decode_status(retained) if retained is not None else None
        except ProtocolError as exc:
            raise Fail(f"the retained status does not parse: {exc}") from None
        if kept is None or kept.state != "offline":
            shown = "nothing" if kept is None else repr(kept.state)
            raise Fail(f"'offline' arrived, but a new subscriber gets {shown}: not retained")
        return f"offline ({found.message.reason}) {took:.1f} s after the kill, retained"
