"""The wire contract between the controller and the clusters.

Both sides import this module and nothing else defines a topic or a payload. The
human-readable version is ``docs/protocol.md``; keep the two in step (a test checks that
every schema here appears there).

Topics (``{site}`` and ``{cluster}`` are ids matching :data:`ID_PATTERN`)::

    loudspeaker/{site}/{cluster}/cmd     controller -> cluster   QoS 1, not retained
    loudspeaker/{site}/{cluster}/ack     cluster -> controller   QoS 1, not retained
    loudspeaker/{site}/{cluster}/status  cluster -> controller   QoS 1, retained (+ last will)
    loudspeaker/{site}/{cluster}/health  cluster -> controller   QoS 0, not retained
    loudspeaker/{site}/{cluster}/result  cluster -> controller   QoS 1, not retained

Payloads are UTF-8 JSON objects, at most :data:`MAX_PAYLOAD_BYTES`, with ``"v": 1``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from firmware_bridge.exceptions import (
    BadSignature,
    PayloadTooDeep,
    PayloadTooLarge,
    ProtocolError,
    StaleCommand,
    UnknownKey,
    UnsignedCommand,
)

PROTOCOL_VERSION = 1
TOPIC_ROOT = "loudspeaker"
MAX_PAYLOAD_BYTES = 64 * 1024
# No message of the protocol nests deeper than a few levels; 32 leaves room to grow while
# a payload like 100,000 nested arrays is refused before json.loads recurses into it.
MAX_JSON_DEPTH = 32
MAX_MEDIA_BYTES = 200 * 1024 * 1024
ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
_ID_RE = re.compile(ID_PATTERN)


def _check_id(value: str) -> str:
    if not _ID_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid id: use 1-32 lowercase letters, digits or '-', "
            "starting with a letter or digit"
        )
    return value


# The pattern is repeated as a Field so it shows in the published JSON Schema.
ClusterId = Annotated[str, Field(pattern=ID_PATTERN), AfterValidator(_check_id)]
SiteId = Annotated[str, Field(pattern=ID_PATTERN), AfterValidator(_check_id)]
CommandId = Annotated[str, Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def validate_cluster_id(value: str) -> str:
    """Return ``value`` if it is a valid cluster/site id, else raise ``ProtocolError``."""
    try:
        return _check_id(value)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None


def new_id() -> str:
    """A fresh, URL-safe command or broadcast id (32 hex characters)."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Priority(StrEnum):
    """Bulletin levels from Circular 39/2020/TT-BTTTT."""

    NORMAL = "normal"
    PRIORITY = "priority"
    EMERGENCY = "emergency"


class AckState(StrEnum):
    """States a cluster reports for a command, in the order they happen."""

    RECEIVED = "received"
    STAGED = "staged"
    PLAYING = "playing"
    INTERRUPTED = "interrupted"
    PLAYED = "played"
    FAILED = "failed"


class Kind(StrEnum):
    """The last level of every topic."""

    CMD = "cmd"
    ACK = "ack"
    STATUS = "status"
    HEALTH = "health"
    RESULT = "result"


class Topic(BaseModel):
    """A parsed topic ``loudspeaker/{site}/{cluster}/{kind}``."""

    model_config = ConfigDict(frozen=True)

    site: SiteId
    cluster: ClusterId
    kind: Kind

    def __str__(self) -> str:
        return f"{TOPIC_ROOT}/{self.site}/{self.cluster}/{self.kind.value}"

    @classmethod
    def parse(cls, topic: str) -> Topic:
        """Parse a topic string, raising ``ProtocolError`` when it is not ours."""
        parts = topic.split("/")
        if len(parts) != 4 or parts[0] != TOPIC_ROOT:
            raise ProtocolError(f"topic {topic!r} is not {TOPIC_ROOT}/SITE/CLUSTER/KIND")
        try:
            return cls(site=parts[1], cluster=parts[2], kind=Kind(parts[3]))
        except (ValidationError, ValueError) as exc:
            raise ProtocolError(f"topic {topic!r}: {_first_error(exc)}") from None


def topic(site: str, cluster: str, kind: Kind) -> str:
    """The topic string for one cluster and kind."""
    return f"{TOPIC_ROOT}/{site}/{cluster}/{kind.value}"


def controller_subscriptions(site: str) -> list[str]:
    """The topic filters the controller subscribes to."""
    return [f"{TOPIC_ROOT}/{site}/+/{k.value}" for k in (Kind.ACK, Kind.STATUS)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1


KeyId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class Signature(BaseModel):
    """HMAC-SHA256 over :func:`signing_input` with the cluster's key ``kid``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alg: Literal["hmac-sha256"] = "hmac-sha256"
    kid: KeyId
    mac: Sha256Hex


class MediaRef(BaseModel):
    """Where the audio of a play command is, and how to check it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str, Field(pattern=r"^https?://", max_length=1024)]
    sha256: Sha256Hex
    size: Annotated[int, Field(gt=0, le=MAX_MEDIA_BYTES)]
    duration_s: Annotated[float, Field(gt=0, le=4 * 3600)]
    mime: Annotated[str, Field(max_length=64)] = "audio/mpeg"


class _Command(_Message):
    """What every command carries: who it is for, its id, its lifetime, its signature."""

    id: CommandId
    cluster: ClusterId
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    sig: Signature | None = None


class PlayCommand(_Command):
    """Play one announcement: download, verify, play ``repeat`` times."""

    type: Literal["play"] = "play"
    broadcast: CommandId
    priority: Priority = Priority.NORMAL
    title: Annotated[str, Field(max_length=200)] = ""
    media: MediaRef
    repeat: Annotated[int, Field(ge=1, le=10)] = 1
    gap_s: Annotated[float, Field(ge=0, le=7200)] = 0
    volume: Annotated[int | None, Field(ge=0, le=100)] = None
    start_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _times_in_order(self) -> PlayCommand:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.start_at is not None and self.start_at >= self.expires_at:
            raise ValueError("start_at must be before expires_at")
        return self


class StopCommand(_Command):
    """Stop a broadcast (or, with ``broadcast`` null, whatever is playing)."""

    type: Literal["stop"] = "stop"
    broadcast: CommandId | None = None


class VolumeCommand(_Command):
    """Set the amplifier's volume (0-100 %); answered by a :class:`ControlResult`."""

    type: Literal["volume"] = "volume"
    volume: Annotated[int, Field(ge=0, le=100)]


class PowerCommand(_Command):
    """Open or close the amplifier's mains relay (off is not muted: no hum, no draw)."""

    type: Literal["power"] = "power"
    on: bool


class RebootCommand(_Command):
    """Restart the cluster; the result says it is going, the next heartbeat that it is back."""

    type: Literal["reboot"] = "reboot"


DiagnoseTest = Literal["self_test", "tone", "link", "clock"]


def _all_tests() -> list[DiagnoseTest]:
    return ["self_test", "tone", "link", "clock"]


class DiagnoseCommand(_Command):
    """Run active tests and report raw measurements; the controller gives the verdict."""

    type: Literal["diagnose"] = "diagnose"
    tests: Annotated[list[DiagnoseTest], Field(min_length=1, max_length=8)] = Field(
        default_factory=_all_tests
    )
    tone_s: Annotated[float, Field(gt=0, le=10)] = 2.0


class WithdrawCommand(_Command):
    """Take back a play command that has not started (its schedule changed).

    The cluster removes the item if it is waiting and acknowledges the *play* command
    ``failed`` with reason ``withdrawn: schedule changed``; an item already playing or
    finished is left alone. A withdraw that arrives before its play command still
    counts: the play command is then refused as already handled.
    """

    type: Literal["withdraw"] = "withdraw"
    broadcast: CommandId | None = None
    command: CommandId


ControlCommand = VolumeCommand | PowerCommand | RebootCommand | DiagnoseCommand
AnyCommand = (
    PlayCommand
    | StopCommand
    | WithdrawCommand
    | VolumeCommand
    | PowerCommand
    | RebootCommand
    | DiagnoseCommand
)
Command = Annotated[AnyCommand, Field(discriminator="type")]
_COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(Command)


class Ack(_Message):
    """A cluster's report on one command."""

    cluster: ClusterId
    command: CommandId
    broadcast: CommandId | None = None
    state: AckState
    ts: AwareDatetime
    reason: Annotated[str | None, Field(max_length=500)] = None


class Status(_Message):
    """Availability of a cluster; retained, and the last will says ``offline``."""

    cluster: ClusterId
    state: Literal["online", "offline"]
    ts: AwareDatetime | None = None
    agent: Annotated[str, Field(max_length=64)] = ""
    reason: Annotated[str | None, Field(max_length=200)] = None


def encode(message: BaseModel) -> bytes:
    """Serialize a message to its wire form (compact UTF-8 JSON)."""
    data = message.model_dump_json(exclude_none=False).encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    return data


def _load(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8 JSON: {exc}") from None
    if json_depth(text, stop_past=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise PayloadTooDeep(f"JSON nested deeper than the limit of {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"payload is not UTF-8 JSON: {exc}") from None
    except RecursionError:  # the guard above should make this unreachable
        raise PayloadTooDeep("JSON nested too deep to parse") from None


# An escape pair (so an escaped quote never ends a string), a quote, or a bracket.
_JSON_TOKENS = re.compile(r'\\.|"|[\[\]{}]', re.DOTALL)


def json_depth(text: str, stop_past: int | None = None) -> int:
    """How deep ``text``'s arrays and objects nest (brackets inside strings not counted).

    Linear and iterative: it never recurses, whatever the input. Cheap for ordinary
    messages: with no more brackets than the limit it returns their count at once. With
    ``stop_past`` it returns as soon as the depth exceeds it (a value above it, not the
    full depth): a flood of deep messages then costs a few tokens each, not a full scan.
    """
    opened = text.count("[") + text.count("{")
    if opened <= MAX_JSON_DEPTH:
        return opened
    depth = deepest = 0
    in_string = False
    for m in _JSON_TOKENS.finditer(text):
        token = m.group()
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if stop_past is not None and deepest > stop_past:
                return deepest
        else:
            depth -= 1
    return deepest


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        return f"{where}: {err['msg']}"
    return str(exc)


def decode_command(payload: bytes) -> AnyCommand:
    """Parse a command payload; raise ``ProtocolError`` saying what is wrong."""
    data = _load(payload)
    try:
        return _COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(f"bad command: {_first_error(exc)}") from None


_M = TypeVar("_M", bound=BaseModel)


def _decode(model: type[_M], payload: bytes, what: str) -> _M:
    try:
        return model.model_validate(_load(payload))
    except ValidationError as exc:
        raise ProtocolError(f"bad {what}: {_first_error(exc)}") from None


def decode_ack(payload: bytes) -> Ack:
    """Parse an acknowledgement payload; raise ``ProtocolError`` saying what is wrong."""
    return _decode(Ack, payload, "ack")


def decode_status(payload: bytes) -> Status:
    """Parse a status payload; raise ``ProtocolError`` saying what is wrong."""
    return _decode(Status, payload, "status")


def offline_will(cluster: str, agent: str) -> bytes:
    """The last-will payload registered at connect time."""
    return encode(Status(cluster=cluster, state="offline", agent=agent, reason="connection lost"))


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every payload, for ``docs/protocol.md`` and third parties."""
    return {
        "PlayCommand": PlayCommand.model_json_schema(),
        "StopCommand": StopCommand.model_json_schema(),
        "WithdrawCommand": WithdrawCommand.model_json_schema(),
        "Ack": Ack.model_json_schema(),
        "Status": Status.model_json_schema(),
        "VolumeCommand": VolumeCommand.model_json_schema(),
        "PowerCommand": PowerCommand.model_json_schema(),
        "RebootCommand": RebootCommand.model_json_schema(),
        "DiagnoseCommand": DiagnoseCommand.model_json_schema(),
        "Heartbeat": Heartbeat.model_json_schema(),
        "ControlResult": ControlResult.model_json_schema(),
        "DiagnoseDetail": DiagnoseDetail.model_json_schema(),
    }


def write_schemas(directory: str) -> list[str]:
    """Write each payload's JSON Schema to ``directory`` (what docs/schemas holds)."""
    from pathlib import Path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(str(path))
    return written


# -- command signing (docs/security.md, "Signed commands") ----------------------------------

SIGNING_CONTEXT = b"loudspeaker-cmd-v1\n"
MIN_KEY_BYTES = 16
DEFAULT_MAX_SKEW = timedelta(seconds=120)
# A pre-staged item is issued up to a day ahead (the schedule horizon) plus its grace.
MAX_COMMAND_LIFETIME = timedelta(hours=48)

_C = TypeVar("_C", bound=AnyCommand)
Keyring = Mapping[str, bytes]
"""Key id -> secret: the keys a verifier accepts right now."""


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) serialization: sorted keys, no whitespace, ECMAScript numbers."""
    try:
        return _jcs(value).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("text is not valid Unicode (lone surrogate)") from None


def _jcs(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _jcs_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + ",".join(_jcs(x) for x in v) + "]"
    if isinstance(v, dict):
        # JCS orders keys by UTF-16 code units; big-endian UTF-16 bytes sort the same way.
        keys = sorted(v, key=lambda k: str(k).encode("utf-16-be"))
        return "{" + ",".join(f"{_jcs(str(k))}:{_jcs(v[k])}" for k in keys) + "}"
    raise ProtocolError(f"cannot canonicalize a {type(v).__name__}")


def _jcs_number(x: float) -> str:
    # ECMAScript Number::toString, which JCS prescribes; repr gives the shortest digits.
    if not math.isfinite(x):
        raise ProtocolError("NaN and infinity have no JSON form")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    dec = Decimal(repr(abs(x))).normalize()
    digits = "".join(str(d) for d in dec.as_tuple().digits)
    k = len(digits)
    n = int(dec.as_tuple().exponent) + k
    if k <= n <= 21:
        out = digits + "0" * (n - k)
    elif 0 < n <= 21:
        out = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        out = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mant = digits[0] + ("." + digits[1:] if k > 1 else "")
        out = f"{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + out


def signing_input(command: AnyCommand, kid: str) -> bytes:
    """The exact bytes the MAC covers: context, key id, and the command without ``sig``.

    ``SIGNING_CONTEXT || kid || "\\n" || JCS(command minus "sig")``. The command's every
    field is covered, so its content, cluster, id, issue time and expiry are all bound.
    """
    return body_signing_input(command.model_dump(mode="json"), kid)


def body_signing_input(body: Mapping[str, Any], kid: str) -> bytes:
    """:func:`signing_input` of a command given as its JSON object (``sig`` left out), for
    bodies the models cannot express (the conformance kit's malformed commands)."""
    data = {k: v for k, v in body.items() if k != "sig"}
    return SIGNING_CONTEXT + kid.encode("ascii") + b"\n" + canonical_json(data)


def mac_of(key: bytes, text: bytes) -> str:
    """The HMAC-SHA256 of a signing input, as ``sig.mac`` carries it (64 lowercase hex)."""
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def _mac(key: bytes, command: AnyCommand, kid: str) -> str:
    return mac_of(key, signing_input(command, kid))


def sign_command(command: _C, key: bytes, key_id: str) -> _C:
    """A copy of ``command`` signed with ``key`` (HMAC-SHA256), naming it ``key_id``."""
    if len(key) < MIN_KEY_BYTES:
        raise ProtocolError(f"signing key must be at least {MIN_KEY_BYTES} bytes")
    sig = Signature(kid=key_id, mac=_mac(key, command, key_id))
    # model_copy keeps the concrete class; mypy only sees the bound's union.
    return cast(_C, command.model_copy(update={"sig": sig}))


def check_signature(command: AnyCommand, keyring: Keyring) -> str:
    """Raise a :class:`CommandRefused` unless the command is signed by a key in ``keyring``.

    Returns the key id that verified it.
    """
    sig = command.sig
    if sig is None:
        raise UnsignedCommand("command is not signed")
    key = keyring.get(sig.kid)
    if key is None:
        held = ", ".join(sorted(keyring)) or "none"
        raise UnknownKey(f"unknown or retired key id {sig.kid!r} (this box accepts: {held})")
    if not hmac.compare_digest(_mac(key, command, sig.kid), sig.mac):
        raise BadSignature("signature does not match (wrong key, or command altered)")
    return sig.kid


def check_freshness(
    command: AnyCommand,
    now: datetime,
    *,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
    max_lifetime: timedelta = MAX_COMMAND_LIFETIME,
    expires_as_sent: str | None = None,
) -> None:
    """Raise :class:`StaleCommand` if the command is expired, from the future or too long-lived.

    Applies to every command type alike (docs/protocol.md §10). ``expires_as_sent`` is the
    ``expires_at`` string exactly as it came over the wire; the expiry refusal quotes it
    (``expired at <expires_at as sent>``) so the sender recognises its own value.
    """
    if command.issued_at > now + max_skew:
        ahead = (command.issued_at - now).total_seconds()
        raise StaleCommand(
            f"issued {ahead:.0f} s in the future by this box's clock "
            f"(allowed skew {max_skew.total_seconds():.0f} s); check the clocks"
        )
    if command.expires_at <= command.issued_at:
        raise StaleCommand("expires before it was issued")
    if command.expires_at - command.issued_at > max_lifetime:
        raise StaleCommand(
            f"lifetime longer than the {max_lifetime.total_seconds() / 3600:.0f} h allowed"
        )
    if command.expires_at <= now:
        sent = expires_as_sent or wire_time(command.expires_at)
        raise StaleCommand(f"{EXPIRED_AT}{sent}")


_TIME_ADAPTER: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)


def wire_time(value: datetime) -> str:
    """A time as this module writes it on the wire (RFC 3339, ``Z`` for UTC)."""
    return cast(str, _TIME_ADAPTER.dump_python(value, mode="json"))


def sent_string(payload: bytes, name: str) -> str | None:
    """The top-level string field ``name`` of a JSON payload exactly as sent, if any."""
    try:
        value = json.loads(payload).get(name)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def verify_command(
    command: AnyCommand,
    keyring: Keyring | None,
    now: datetime,
    *,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
    expires_as_sent: str | None = None,
) -> None:
    """Refuse (raise a :class:`CommandRefused` subclass) unless signed, valid and fresh.

    ``keyring`` None is a box without keys (``--insecure-unsigned``): ``sig`` is ignored,
    present or not, and only freshness is checked.
    """
    if keyring is not None:
        check_signature(command, keyring)
    check_freshness(command, now, max_skew=max_skew, expires_as_sent=expires_as_sent)


# Reason texts a box sends (docs/protocol.md); a conforming box uses them verbatim.
REFUSED_PREFIX = "refused: "
DUPLICATE_DONE = "duplicate command; already handled"
DUPLICATE_IN_PROGRESS = "duplicate command; in progress"
STOPPED_BY_OPERATOR = "stopped by operator"  # a play cut short by a stop command
EXPIRED_AT = "expired at "  # + expires_at as sent: a stale command (after REFUSED_PREFIX)
EXPIRED_BEFORE_PLAYBACK = "expired before playback"
RESUMED_AFTER_RESTART = "resumed after restart"
WITHDRAWN = "withdrawn: schedule changed"


# -- health and remote control (docs/health.md) -------------------------------------------

LineState = Literal["ok", "open", "short", "unknown"]


class Heartbeat(_Message):
    """A cluster's periodic health report on ``.../health`` (QoS 0, not retained).

    Sent every ``interval_s``, at once after (re)connecting, and early when a discrete
    state changes (line, relay, playback, error) or a sensor moves a lot. QoS 0 because
    each one supersedes the last: queuing stale heartbeats through an outage and replaying
    them in a burst would only mislead. Loss is covered by allowing several missed ones.
    ``None`` means the box cannot measure that value.
    """

    cluster: ClusterId
    ts: AwareDatetime
    seq: Annotated[int, Field(ge=0)]
    boot_id: Annotated[str, Field(min_length=1, max_length=64)]
    interval_s: Annotated[float, Field(gt=0, le=3600)]
    uptime_s: Annotated[float, Field(ge=0)]
    agent: Annotated[str, Field(max_length=64)] = ""
    firmware: Annotated[str, Field(max_length=64)] = ""
    clock_offset_s: float | None = None
    volume: Annotated[int | None, Field(ge=0, le=100)] = None
    amp_power: bool | None = None
    amp_temp_c: Annotated[float | None, Field(ge=-60, le=250)] = None
    supply_v: Annotated[float | None, Field(ge=0, le=400)] = None
    amp_current_a: Annotated[float | None, Field(ge=0, le=100)] = None
    line: LineState = "unknown"
    rssi_dbm: Annotated[int | None, Field(ge=-150, le=0)] = None
    playing: Annotated[str | None, Field(max_length=64)] = None
    free_storage_mb: Annotated[float | None, Field(ge=0)] = None
    play_failures: Annotated[int, Field(ge=0)] = 0
    last_error: Annotated[str | None, Field(max_length=300)] = None
    # The serial link to the box's MCU (or, for a gateway's serial cluster, to its
    # receiver on the bus); None when there is none. "down" raises the control_link alarm.
    control_link: Literal["ok", "down"] | None = None


class ControlResult(_Message):
    """A cluster's answer to a control command on ``.../result`` (QoS 1, not retained).

    ``ok`` false always carries a ``reason``. ``detail`` holds what the command
    measured (diagnose) or the state reached (volume, power).
    """

    cluster: ClusterId
    command: CommandId
    type: Literal["volume", "power", "reboot", "diagnose"]
    ok: bool
    ts: AwareDatetime
    reason: Annotated[str | None, Field(max_length=500)] = None
    detail: dict[str, Any] = Field(default_factory=dict)


TestStatus = Literal["passed", "failed", "skipped", "not_present"]
"""How one diagnose test ended on the box.

``passed``: it ran and the box's part succeeded (the controller still judges the numbers);
``failed``: it ran, or tried to, and did not succeed (``reason`` says why); ``skipped``: it
was not run this time (``reason`` says why, e.g. a broadcast was playing); ``not_present``:
the box has no such part (e.g. no microcontroller), so there is nothing to test.
"""


class DiagnoseReport(BaseModel):
    """What every diagnose test reports: its status, and why unless it passed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: TestStatus
    # Always set unless passed; a number the box could not measure is null, never a string.
    reason: Annotated[str | None, Field(max_length=300)] = None

    @model_validator(mode="after")
    def _reason_unless_passed(self) -> DiagnoseReport:
        if self.status != "passed" and not self.reason:
            raise ValueError(f"a {self.status} test must say why (reason)")
        return self


class SelfTestReport(DiagnoseReport):
    """The microcontroller's self-test: one boolean per check it ran."""

    checks: dict[Annotated[str, Field(max_length=64)], bool] = Field(default_factory=dict)


class ToneReport(DiagnoseReport):
    """A test tone through the amplifier, with its current draw measured around it."""

    result: Literal["completed", "stopped", "error", "timeout"] | None = None
    seconds: Annotated[float | None, Field(ge=0, le=10)] = None
    amp_power_before: bool | None = None
    volume: Annotated[int | None, Field(ge=0, le=100)] = None
    idle_a: Annotated[float | None, Field(ge=0, le=100)] = None
    tone_a: Annotated[float | None, Field(ge=0, le=100)] = None
    peak_a: Annotated[float | None, Field(ge=0, le=100)] = None
    samples: Annotated[int, Field(ge=0)] = 0
    line: LineState = "unknown"
    lines_during: list[LineState] = Field(default_factory=list)


class LinkReport(DiagnoseReport):
    """Error counters of the box's links; null where the box has no such counter."""

    rx_frames: Annotated[int | None, Field(ge=0)] = None
    rx_errors: Annotated[int | None, Field(ge=0)] = None
    timeouts: Annotated[int | None, Field(ge=0)] = None
    retransmissions: Annotated[int | None, Field(ge=0)] = None
    mqtt_reconnects: Annotated[int | None, Field(ge=0)] = None
    rssi_dbm: Annotated[int | None, Field(ge=-150, le=0)] = None


class ClockReport(DiagnoseReport):
    """The box's clock when it ran the test (the controller measures the offset)."""

    box_time: AwareDatetime | None = None


class DiagnoseTests(BaseModel):
    """One report per test the command asked for; a test not asked for is absent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    self_test: SelfTestReport | None = None
    tone: ToneReport | None = None
    link: LinkReport | None = None
    clock: ClockReport | None = None


class DiagnoseDetail(BaseModel):
    """``ControlResult.detail`` of a diagnose command (``type`` "diagnose", ``ok`` true)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    received: AwareDatetime
    took_s: Annotated[float, Field(ge=0)]
    hardware: Annotated[str, Field(max_length=64)] = ""
    tests: DiagnoseTests


def decode_diagnose_detail(detail: Mapping[str, Any]) -> DiagnoseDetail:
    """Parse a diagnose result's ``detail``; raise ``ProtocolError`` saying what is wrong."""
    try:
        return DiagnoseDetail.model_validate(detail)
    except ValidationError as exc:
        raise ProtocolError(f"bad diagnose detail: {_first_error(exc)}") from None


def health_subscriptions(site: str) -> list[str]:
    """The extra topic filters the controller subscribes to for health and results."""
    return [f"{TOPIC_ROOT}/{site}/+/{k.value}" for k in (Kind.HEALTH, Kind.RESULT)]


def decode_heartbeat(payload: bytes) -> Heartbeat:
    """Parse a heartbeat payload; raise ``ProtocolError`` saying what is wrong."""
    return _decode(Heartbeat, payload, "heartbeat")


def decode_result(payload: bytes) -> ControlResult:
    """Parse a control-result payload; raise ``ProtocolError`` saying what is wrong."""
    return _decode(ControlResult, payload, "result")


if __name__ == "__main__":
    import sys

    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
