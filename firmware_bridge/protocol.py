"""The wire contract between the controller and the clusters.

Both sides import this module and nothing else defines a topic or a payload. The
human-readable version is ``docs/protocol.md``; keep the two in step (a test checks that
every schema here appears there).

Topics (``{site}`` and ``{cluster}`` are ids matching :data:`ID_PATTERN`)::

    loudspeaker/{site}/{cluster}/cmd     controller -> cluster   QoS 1, not retained
    loudspeaker/{site}/{cluster}/ack     cluster -> controller   QoS 1, not retained
    loudspeaker/{site}/{cluster}/status  cluster -> controller   QoS 1, retained (+ last will)

Payloads are UTF-8 JSON objects, at most :data:`MAX_PAYLOAD_BYTES`, with ``"v": 1``.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

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

from firmware_bridge.exceptions import ProtocolError

PROTOCOL_VERSION = 1
TOPIC_ROOT = "loudspeaker"
MAX_PAYLOAD_BYTES = 64 * 1024
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


class MediaRef(BaseModel):
    """Where the audio of a play command is, and how to check it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: Annotated[str, Field(pattern=r"^https?://", max_length=1024)]
    sha256: Sha256Hex
    size: Annotated[int, Field(gt=0, le=MAX_MEDIA_BYTES)]
    duration_s: Annotated[float, Field(gt=0, le=4 * 3600)]
    mime: Annotated[str, Field(max_length=64)] = "audio/mpeg"


class PlayCommand(_Message):
    """Play one announcement: download, verify, play ``repeat`` times."""

    type: Literal["play"] = "play"
    id: CommandId
    cluster: ClusterId
    broadcast: CommandId
    issued_at: AwareDatetime
    expires_at: AwareDatetime
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


class StopCommand(_Message):
    """Stop a broadcast (or, with ``broadcast`` null, whatever is playing)."""

    type: Literal["stop"] = "stop"
    id: CommandId
    cluster: ClusterId
    broadcast: CommandId | None = None
    issued_at: AwareDatetime
    expires_at: AwareDatetime


class WithdrawCommand(_Message):
    """Take back a play command that has not started (its schedule changed).

    The cluster removes the item if it is waiting and acknowledges the *play* command
    ``failed`` with reason ``withdrawn: schedule changed``; an item already playing or
    finished is left alone. A withdraw that arrives before its play command still
    counts: the play command is then refused as already handled.
    """

    type: Literal["withdraw"] = "withdraw"
    id: CommandId
    cluster: ClusterId
    broadcast: CommandId | None = None
    command: CommandId
    issued_at: AwareDatetime
    expires_at: AwareDatetime


Command = Annotated[PlayCommand | StopCommand | WithdrawCommand, Field(discriminator="type")]
_COMMAND_ADAPTER: TypeAdapter[PlayCommand | StopCommand | WithdrawCommand] = TypeAdapter(Command)


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
        raise ProtocolError(
            f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not UTF-8 JSON: {exc}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "message"
        return f"{where}: {err['msg']}"
    return str(exc)


def decode_command(payload: bytes) -> PlayCommand | StopCommand | WithdrawCommand:
    """Parse a command payload; raise ``ProtocolError`` saying what is wrong."""
    data = _load(payload)
    try:
        return _COMMAND_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(f"bad command: {_first_error(exc)}") from None


def decode_ack(payload: bytes) -> Ack:
    """Parse an acknowledgement payload; raise ``ProtocolError`` saying what is wrong."""
    try:
        return Ack.model_validate(_load(payload))
    except ValidationError as exc:
        raise ProtocolError(f"bad ack: {_first_error(exc)}") from None


def decode_status(payload: bytes) -> Status:
    """Parse a status payload; raise ``ProtocolError`` saying what is wrong."""
    try:
        return Status.model_validate(_load(payload))
    except ValidationError as exc:
        raise ProtocolError(f"bad status: {_first_error(exc)}") from None


def offline_will(cluster: str, agent: str) -> bytes:
    """The last-will payload registered at connect time."""
    return encode(Status(cluster=cluster, state="offline", agent=agent, reason="connection lost"))


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of every payload, for ``docs/protocol.md`` and third parties."""
    return {
        "PlayCommand": PlayCommand.model_json_schema(),
        "StopCommand": StopCommand.model_json_schema(),
        "Ack": Ack.model_json_schema(),
        "Status": Status.model_json_schema(),
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


if __name__ == "__main__":
    import sys

    for p in write_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(p)
