"""Stored records. Times are timezone-aware and stored in UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Dialect, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

from firmware_bridge.protocol import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: times must carry a zone")
        value = value.astimezone(UTC)
        # SQLite keeps no offset; storing naive UTC keeps its text sortable.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


class DeliveryState(StrEnum):
    """Where one broadcast stands on one cluster (see docs/protocol.md, state machine)."""

    QUEUED = "queued"
    SENT = "sent"
    RECEIVED = "received"
    STAGED = "staged"
    PLAYING = "playing"
    PLAYED = "played"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    MISSED = "missed"  # a scheduled item whose air time passed while nothing could send it

    @property
    def final(self) -> bool:
        """True for the states a delivery ends in."""
        return self in FINAL_STATES

    @property
    def rank(self) -> int:
        """Position in the forward order; transitions never go backwards."""
        return _RANK[self]


FINAL_STATES = frozenset(
    {DeliveryState.PLAYED, DeliveryState.FAILED, DeliveryState.UNREACHABLE, DeliveryState.MISSED}
)
_RANK = {s: i for i, s in enumerate(DeliveryState)}


class SiteRecord(SQLModel, table=True):
    """The commune this controller serves (one per database)."""

    __tablename__ = "site"

    id: str = Field(primary_key=True)
    name: str
    timezone: str = "Asia/Ho_Chi_Minh"
    source: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    loaded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class HamletRecord(SQLModel, table=True):
    """A hamlet (thôn)."""

    __tablename__ = "hamlet"

    id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    name: str


class ClusterRecord(SQLModel, table=True):
    """A speaker cluster (cụm loa) as the site file describes it."""

    __tablename__ = "cluster"

    id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    hamlet_id: str = Field(index=True)
    name: str = ""
    transport: str = "mqtt"
    lat: float | None = None
    lon: float | None = None
    location: str = ""
    notes: str = ""
    extra: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class ClusterStatus(SQLModel, table=True):
    """What the controller last heard from a cluster."""

    __tablename__ = "cluster_status"

    cluster_id: str = Field(primary_key=True)
    online: bool = False
    since: datetime | None = _when()
    last_seen: datetime | None = _when()
    agent: str = ""
    reason: str = ""


class ClusterAvailability(SQLModel, table=True):
    """An online or offline interval of a cluster (``ended_at`` null while it lasts)."""

    __tablename__ = "cluster_availability"

    id: int | None = Field(default=None, primary_key=True)
    cluster_id: str = Field(index=True)
    online: bool
    started_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    ended_at: datetime | None = _when()
    reason: str = ""


class MediaRecord(SQLModel, table=True):
    """Rendered announcement audio, stored under ``media/<sha256>.<format>``."""

    __tablename__ = "media"

    sha256: str = Field(primary_key=True, min_length=64, max_length=64)
    size: int
    duration_s: float
    format: str = "mp3"
    mime: str = "audio/mpeg"
    engine: str = ""
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Announcement(SQLModel, table=True):
    """A bulletin ready to play: typed text rendered by TTS, a recording, or a tone."""

    __tablename__ = "announcement"

    id: str = Field(primary_key=True)
    title: str
    kind: str  # text | file | tone
    source: str = ""  # the text as typed, or the original file name
    spoken_text: str = ""  # the text after normalization, as the engine read it
    engine: str = ""  # espeak-ng | gtts | recording | tone
    media_sha256: str = Field(index=True)
    duration_s: float
    size: int
    created_by: str = ""
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    removed_at: datetime | None = _when()


class Broadcast(SQLModel, table=True):
    """One broadcast: one announcement sent to a set of clusters."""

    __tablename__ = "broadcast"

    id: str = Field(primary_key=True)
    title: str
    priority: str = "normal"
    target: str
    media_sha256: str = Field(index=True)
    announcement_id: str | None = Field(default=None, index=True)
    source_kind: str = "text"  # text | file | tone
    source: str = ""  # the text, or the original file name
    engine: str = ""
    repeat: int = 1
    gap_s: float = 0.0
    volume: int | None = None  # emergencies: the site's emergency volume
    validity_s: float | None = None  # emergencies: how long a late cluster still gets it
    stopped_at: datetime | None = _when()
    stopped_by: str = ""
    created_by: str = ""
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    # When the broadcast was meant to air (set by the scheduler); None: sent on creation,
    # so the log and reports fall back to ``created_at``.
    scheduled_for: datetime | None = _when(index=True)


class Delivery(SQLModel, table=True):
    """One broadcast on one cluster, with a timestamp for every step it reached."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("broadcast_id", "cluster_id"),)

    id: int | None = Field(default=None, primary_key=True)
    broadcast_id: str = Field(index=True)
    cluster_id: str = Field(index=True)
    command_id: str = Field(unique=True)
    state: str = Field(default=DeliveryState.QUEUED.value, index=True)
    reason: str = ""
    queued_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    sent_at: datetime | None = _when()
    received_at: datetime | None = _when()
    staged_at: datetime | None = _when()
    playing_at: datetime | None = _when()
    played_at: datetime | None = _when()
    failed_at: datetime | None = _when()
    unreachable_at: datetime | None = _when()
    expires_at: datetime | None = _when()
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # Play at this time by the cluster's clock (a scheduled item staged ahead); None: now.
    start_at: datetime | None = _when()


class DeliveryEvent(SQLModel, table=True):
    """Append-only trail of every acknowledgement and decision about a delivery."""

    __tablename__ = "delivery_event"

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(index=True)
    state: str
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    cluster_ts: datetime | None = _when()
    reason: str = ""


class StopRequest(SQLModel, table=True):
    """An operator's stop of a broadcast, carried out by the controller."""

    __tablename__ = "stop_request"

    id: int | None = Field(default=None, primary_key=True)
    broadcast_id: str = Field(index=True)
    requested_by: str = ""
    requested_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    handled_at: datetime | None = _when()


class ScheduleRecord(SQLModel, table=True):
    """A programme the officer planned (``loudspeaker schedule add``); see schedules/."""

    __tablename__ = "schedule"

    id: int | None = Field(default=None, primary_key=True)
    title: str
    rule: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    # [{"announcement": ID, "priority": "normal"|"priority"}] in the order given
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    target: str
    priority: str = "normal"
    repeat: int = 1
    gap_s: float = 0.0
    on_conflict: str = ""  # "" | "after" | "replace" (the officer's decision, Circular 39)
    replaces: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    paused: bool = False
    version: int = 1  # bumped on every change; staged items of older versions are withdrawn
    created_by: str = ""
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    # Created or last resumed: an occurrence before this is never reported missed.
    active_since: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    removed_at: datetime | None = _when()


class ScheduleSlot(SQLModel, table=True):
    """One item of one occurrence of a schedule, once the controller acted on it.

    The unique key (schedule, occurrence, position) is what makes staging idempotent: a
    controller killed and restarted finds the row and never stages the item twice.
    """

    __tablename__ = "schedule_slot"
    __table_args__ = (UniqueConstraint("schedule_id", "slot_at", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    schedule_id: int = Field(index=True)
    slot_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    position: int = 0
    announcement_id: str
    planned_start: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    state: str = "staged"  # staged | withdrawn | missed | refused
    broadcast_id: str | None = Field(default=None, index=True)
    schedule_version: int = 1
    reason: str = ""
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ClusterClock(SQLModel, table=True):
    """A cluster's clock offset as the controller last estimated it (from ack times)."""

    __tablename__ = "cluster_clock"

    cluster_id: str = Field(primary_key=True)
    offset_s: float
    measured_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


def now() -> datetime:
    """The current UTC time (re-exported for the controller side)."""
    return utcnow()


# -- identities, keys and the audit log (docs/security.md) --------------------------------


class UserRecord(SQLModel, table=True):
    """A person who may act through the CLI; only a hash of their token is kept."""

    __tablename__ = "app_user"  # "user" is reserved in PostgreSQL

    name: str = Field(primary_key=True)
    role: str
    hamlet_id: str | None = None  # hamlet heads only: the hamlet they answer for
    token_sha256: str = Field(unique=True, min_length=64, max_length=64)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    created_by: str = ""


class ClusterKey(SQLModel, table=True):
    """A cluster's command-signing key: ``next`` -> ``active`` -> ``retired``."""

    __tablename__ = "cluster_key"
    __table_args__ = (UniqueConstraint("cluster_id", "kid"),)

    id: int | None = Field(default=None, primary_key=True)
    cluster_id: str = Field(index=True)
    kid: str
    # AES-GCM under the key store (loudspeaker.keystore), never the secret in clear.
    secret_sealed: str = Field(repr=False)
    state: str = Field(index=True)
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    activated_at: datetime | None = _when()
    retired_at: datetime | None = _when()


class AuditEntry(SQLModel, table=True):
    """One audited action; ``hash`` chains every row to the one before (append-only)."""

    __tablename__ = "audit"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    actor: str
    role: str = ""
    action: str = Field(index=True)
    target: str = ""
    outcome: str
    detail: str = "{}"  # canonical JSON text, hashed exactly as stored
    prev_hash: str
    hash: str


class AuditHead(SQLModel, table=True):
    """The last sequence number and hash of the audit chain (one row, id 1)."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = 0
    hash: str


# -- cluster health, alarms, remote control (docs/health.md) --------------------------------


class ClusterHealth(SQLModel, table=True):
    """The latest heartbeat of each cluster, as received (one row per cluster)."""

    __tablename__ = "cluster_health"

    cluster_id: str = Field(primary_key=True)
    received_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    cluster_ts: datetime | None = _when()
    seq: int = 0
    boot_id: str = ""
    interval_s: float = 15.0
    uptime_s: float = 0.0
    agent: str = ""
    firmware: str = ""
    clock_skew_s: float | None = None  # the box's clock minus ours, as measured on arrival
    volume: int | None = None
    amp_power: bool | None = None
    amp_temp_c: float | None = None
    supply_v: float | None = None
    amp_current_a: float | None = None
    line: str = "unknown"
    rssi_dbm: int | None = None
    playing: str = ""
    free_storage_mb: float | None = None
    play_failures: int = 0
    last_error: str = ""
    heartbeats: int = 0


class HealthSample(SQLModel, table=True):
    """A downsampled bucket of heartbeats: min/avg/max per ``resolution_s`` seconds."""

    __tablename__ = "health_sample"
    __table_args__ = (UniqueConstraint("cluster_id", "resolution_s", "bucket_start"),)

    id: int | None = Field(default=None, primary_key=True)
    cluster_id: str = Field(index=True)
    resolution_s: int
    bucket_start: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    n: int = 0
    temp_min: float | None = None
    temp_avg: float | None = None
    temp_max: float | None = None
    supply_min: float | None = None
    supply_avg: float | None = None
    supply_max: float | None = None
    current_max: float | None = None
    rssi_avg: float | None = None
    skew_max: float | None = None
    line: str = "unknown"  # the worst line state seen in the bucket
    play_failures_max: int = 0


class AlarmRecord(SQLModel, table=True):
    """One alarm of one cluster from raise to clear (``cleared_at`` null while active)."""

    __tablename__ = "alarm"

    id: int | None = Field(default=None, primary_key=True)
    cluster_id: str = Field(index=True)
    kind: str = Field(index=True)
    severity: str = "major"
    raised_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
    cleared_at: datetime | None = _when(index=True)
    message: str = ""
    clear_message: str = ""
    value: float | None = None
    threshold: float | None = None
    last_value: float | None = None
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ControlState(StrEnum):
    """Where a remote-control request stands."""

    QUEUED = "queued"
    SENT = "sent"
    ACCEPTED = "accepted"  # a reboot the cluster started; confirmed when it is back
    CONFIRMED = "confirmed"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        """True for the states a request ends in."""
        return self in (ControlState.CONFIRMED, ControlState.FAILED)


class ControlRequest(SQLModel, table=True):
    """A technician's volume/power/reboot/diagnose request; the controller sends it."""

    __tablename__ = "control_request"

    id: str = Field(primary_key=True)  # the command id on the wire
    cluster_id: str = Field(index=True)
    action: str
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    state: str = Field(default=ControlState.QUEUED.value, index=True)
    reason: str = ""
    result: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_by: str = ""
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    sent_at: datetime | None = _when()
    answered_at: datetime | None = _when()
    done_at: datetime | None = _when()
