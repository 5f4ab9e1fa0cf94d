"""Settings of the controller and the CLI: command-line options, then environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from loudspeaker.exceptions import ConfigError

if TYPE_CHECKING:
    from loudspeaker.media_policy import MediaLimits

ENV_HOME = "LOUDSPEAKER_HOME"
ENV_DB_URL = "LOUDSPEAKER_DB_URL"
ENV_BROKER = "LOUDSPEAKER_BROKER"
ENV_BROKER_CREDENTIALS = "LOUDSPEAKER_BROKER_CREDENTIALS"
# The operators' credentials file (`broker config`'s credentials/_operator.json): what the
# CLI's controller-down emergency path logs in with; `serve` records it in endpoints.json.
ENV_OPERATOR_CREDENTIALS = "LOUDSPEAKER_OPERATOR_CREDENTIALS"
ENV_HTTP_HOST = "LOUDSPEAKER_HTTP_HOST"
ENV_HTTP_PORT = "LOUDSPEAKER_HTTP_PORT"
ENV_PUBLIC_URL = "LOUDSPEAKER_PUBLIC_URL"
# The media server under load (docs/architecture.md, "Media server"): connection cap, the
# deadline for a request head, and who may read /metrics and POST /api/poke
# (docs/security.md: "loopback", "any", or comma-separated addresses/networks).
ENV_HTTP_MAX_CONNECTIONS = "LOUDSPEAKER_HTTP_MAX_CONNECTIONS"
ENV_HTTP_HEADER_TIMEOUT = "LOUDSPEAKER_HTTP_HEADER_TIMEOUT"
ENV_HTTP_ADMIN_FROM = "LOUDSPEAKER_HTTP_ADMIN_FROM"
ENV_SCHEDULE_HORIZON = "LOUDSPEAKER_SCHEDULE_HORIZON"
ENV_SCHEDULE_GRACE = "LOUDSPEAKER_SCHEDULE_GRACE"
# The operators' OS group (docs/security.md, "Secrets"): the data directory and its secret
# files are shared with it (2770/0660) instead of private to the controller's account.
ENV_GROUP = "LOUDSPEAKER_GROUP"


def default_data_dir() -> Path:
    """``$LOUDSPEAKER_HOME``, else ``$XDG_DATA_HOME/loudspeaker``, else ``~/.local/share``."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "loudspeaker"


@dataclass(frozen=True)
class Settings:
    """Everything the controller needs; defaults work out of the box (embedded all)."""

    data_dir: Path = field(default_factory=default_data_dir)
    db_url: str | None = None
    broker_url: str | None = None  # None: start a private mosquitto
    # The controller's credentials file (`broker config`'s credentials/_controller.json):
    # user name and password for a locked-down broker, kept off the command line.
    broker_credentials: Path | None = None
    # The operators' credentials file (`_operator.json`); None: the one beside the
    # controller's, if there is one (see `operator_credentials_file`).
    operator_credentials: Path | None = None
    broker_port: int = 0  # embedded broker port; 0 picks a free one
    broker_host: str = "127.0.0.1"
    http_host: str = "127.0.0.1"
    http_port: int = 0  # 0 picks a free one; clusters learn it from each command's URL
    public_url: str | None = None  # base URL clusters use to fetch media
    # Media connections held at once (each costs up to two descriptors; serve lowers it,
    # with a warning, when the open-file limit cannot hold it: loudspeaker/fd_budget.py).
    http_max_connections: int = 1024
    http_header_timeout_s: float = 10.0  # a request head must arrive within this
    http_send_timeout_s: float = 30.0  # each write of a body must be taken within this
    # Who may read /metrics and POST /api/poke: "loopback", "any", or addresses/networks.
    http_admin_from: str = "loopback"
    ack_timeout_s: float = 10.0
    command_ttl_s: float = 600.0
    poll_interval_s: float = 0.2
    # Scheduling (docs/scheduling.md): items are sent to the clusters this far ahead...
    schedule_horizon_s: float = 24 * 3600.0
    # ...and one whose time passed unsent still plays this late, else it is "missed".
    schedule_grace_s: float = 15 * 60.0
    clock_warn_s: float = 2.0  # warn when a cluster's clock is off by more
    # How long a SQLite write waits for another writer before the dispatcher retries.
    db_busy_timeout_s: float = 30.0
    # The operators' OS group that shares the data directory; None: private (0700/0600).
    group: str | None = None

    def __post_init__(self) -> None:
        if self.ack_timeout_s <= 0 or self.command_ttl_s <= self.ack_timeout_s:
            raise ConfigError("ack timeout must be > 0 and shorter than the command TTL")
        if not 0 <= self.http_port <= 65535 or not 0 <= self.broker_port <= 65535:
            raise ConfigError("ports must be between 0 and 65535")
        if self.http_max_connections < 1:
            raise ConfigError("the media server needs at least 1 connection")
        if self.http_header_timeout_s <= 0 or self.http_send_timeout_s <= 0:
            raise ConfigError("the media server's timeouts must be more than 0 seconds")
        from loudspeaker.media_policy import parse_admin_from

        parse_admin_from(self.http_admin_from)  # a clear error now, not at the first scrape
        if self.schedule_horizon_s < 0 or self.schedule_grace_s < 0:
            raise ConfigError("the schedule horizon and grace must be 0 seconds or more")
        if self.schedule_horizon_s + self.schedule_grace_s > 47 * 3600:
            # Clusters refuse commands that live longer than 48 h (docs/security.md).
            raise ConfigError("the schedule horizon plus grace must stay under 47 hours")

    @classmethod
    def from_env(cls, data_dir: Path | None = None, **overrides: object) -> Settings:
        """Settings from the environment, with explicit ``overrides`` winning."""
        env: dict[str, object] = {}
        if os.environ.get(ENV_DB_URL):
            env["db_url"] = os.environ[ENV_DB_URL]
        if os.environ.get(ENV_BROKER):
            env["broker_url"] = os.environ[ENV_BROKER]
        if os.environ.get(ENV_BROKER_CREDENTIALS):
            env["broker_credentials"] = Path(os.environ[ENV_BROKER_CREDENTIALS]).expanduser()
        if os.environ.get(ENV_OPERATOR_CREDENTIALS):
            env["operator_credentials"] = Path(os.environ[ENV_OPERATOR_CREDENTIALS]).expanduser()
        if os.environ.get(ENV_HTTP_HOST):
            env["http_host"] = os.environ[ENV_HTTP_HOST]
        if os.environ.get(ENV_HTTP_PORT):
            try:
                env["http_port"] = int(os.environ[ENV_HTTP_PORT])
            except ValueError:
                raise ConfigError(f"{ENV_HTTP_PORT} must be a port number") from None
        if os.environ.get(ENV_PUBLIC_URL):
            env["public_url"] = os.environ[ENV_PUBLIC_URL]
        if os.environ.get(ENV_HTTP_ADMIN_FROM):
            env["http_admin_from"] = os.environ[ENV_HTTP_ADMIN_FROM]
        if os.environ.get(ENV_HTTP_MAX_CONNECTIONS):
            try:
                env["http_max_connections"] = int(os.environ[ENV_HTTP_MAX_CONNECTIONS])
            except ValueError:
                raise ConfigError(f"{ENV_HTTP_MAX_CONNECTIONS} must be a whole number") from None
        if os.environ.get(ENV_GROUP):
            env["group"] = os.environ[ENV_GROUP]
        for name, key in (
            (ENV_SCHEDULE_HORIZON, "schedule_horizon_s"),
            (ENV_SCHEDULE_GRACE, "schedule_grace_s"),
            (ENV_HTTP_HEADER_TIMEOUT, "http_header_timeout_s"),
        ):
            if os.environ.get(name):
                try:
                    env[key] = float(os.environ[name])
                except ValueError:
                    raise ConfigError(f"{name} must be a number of seconds") from None
        env.update({k: v for k, v in overrides.items() if v is not None})
        base = cls(data_dir=data_dir.expanduser() if data_dir else default_data_dir())
        return replace(base, **env)  # type: ignore[arg-type]

    def media_limits(self, max_connections: int | None = None) -> MediaLimits:
        """The media server's limits; ``max_connections`` overrides the configured cap."""
        from loudspeaker.media_policy import MediaLimits, parse_admin_from

        return MediaLimits(
            max_connections=max_connections or self.http_max_connections,
            header_timeout_s=self.http_header_timeout_s,
            send_timeout_s=self.http_send_timeout_s,
            admin_networks=parse_admin_from(self.http_admin_from),
        )

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL; SQLite under the data directory by default."""
        return self.db_url or f"sqlite:///{self.data_dir / 'loudspeaker.db'}"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for another database (or in memory)."""
        # Parsed, not split: ``sqlite://`` is in memory and ``?timeout=5`` is no part of the
        # file name.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.database_url)
        except ArgumentError:
            raise ConfigError(
                f"database URL {self.database_url!r} is not a URL "
                "(e.g. sqlite:////var/lib/loudspeaker/loudspeaker.db)"
            ) from None
        if url.get_backend_name() != "sqlite":
            return None
        db = url.database
        return Path(db) if db and db != ":memory:" else None

    @property
    def keystore_path(self) -> Path:
        """The key that seals the cluster signing keys in the database (loudspeaker.keystore)."""
        return self.data_dir / "secrets" / "keystore.key"

    @property
    def media_dir(self) -> Path:
        """Where rendered announcement audio lives, named by sha256."""
        return self.data_dir / "media"

    @property
    def run_dir(self) -> Path:
        """Runtime files: the controller's address card, endpoints, the embedded broker."""
        return self.data_dir / "run"

    @property
    def endpoints_file(self) -> Path:
        """Where ``serve`` writes its addresses (kept after it stops: docs/architecture.md)."""
        return self.run_dir / "endpoints.json"

    @property
    def operator_credentials_file(self) -> Path | None:
        """The operators' credentials ``serve`` records: ``LOUDSPEAKER_OPERATOR_CREDENTIALS``,
        else ``_operator.json`` beside the controller's credentials file when it exists."""
        if self.operator_credentials is not None:
            return self.operator_credentials
        if self.broker_credentials is None:
            return None
        beside = self.broker_credentials.parent / "_operator.json"
        return beside if beside.is_file() else None
