"""The controller's address card: how the CLI finds the running controller."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from loudspeaker.exceptions import ConfigError

if TYPE_CHECKING:
    from firmware_bridge.mqtt import BrokerEndpoint
    from loudspeaker.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControllerCard:
    """Written by ``loudspeaker serve`` at start, removed at a clean stop."""

    pid: int
    site: str
    broker_url: str
    http_url: str
    started_at: str

    @staticmethod
    def path(run_dir: Path) -> Path:
        """Where the card lives."""
        return run_dir / "controller.json"

    def write(self, run_dir: Path) -> None:
        """Write the card atomically."""
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = run_dir / "controller.json.tmp"
        tmp.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(tmp, self.path(run_dir))

    @classmethod
    def read(cls, run_dir: Path) -> ControllerCard | None:
        """The card of a controller that is alive, or None."""
        try:
            data = json.loads(cls.path(run_dir).read_text(encoding="utf-8"))
            card = cls(**data)
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(card.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return card

    def poke(self) -> bool:
        """Tell the controller to look for new work now (it also polls)."""
        req = urllib.request.Request(f"{self.http_url}/api/poke", method="POST", data=b"")
        try:
            with urllib.request.urlopen(req, timeout=0.5):
                return True
        except (urllib.error.URLError, OSError):
            logger.debug("poke to %s failed", self.http_url)
            return False


def remembered_port(run_dir: Path, name: str) -> int:
    """A port a previous controller used (kept across clean stops and crashes), or 0."""
    try:
        return int((run_dir / f"{name}.port").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return 0


def remember_port(run_dir: Path, name: str, port: int) -> None:
    """Keep ``port`` for the next controller start."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"{name}.port").write_text(f"{port}\n", encoding="utf-8")


@dataclass(frozen=True)
class Endpoints:
    """``DATA_DIR/run/endpoints.json``: where the last ``serve`` listened (docs/architecture.md).

    Written at every start and kept after the controller stops or dies, so the CLI's
    controller-down emergency path knows the broker and the operators' credentials file to
    log in with (``operator_credentials_file``: never the controller's own account). It
    never holds a secret: only the paths of the credentials files.
    """

    broker_url: str
    credentials_file: str | None
    media: str
    metrics: str
    pid: int
    started_at: str
    operator_credentials_file: str | None = None

    def to_json(self) -> dict[str, object]:
        """The documented file format."""
        return {
            "broker": {
                "url": self.broker_url,
                "credentials_file": self.credentials_file,
                "operator_credentials_file": self.operator_credentials_file,
            },
            "media": self.media,
            "metrics": self.metrics,
            "pid": self.pid,
            "started_at": self.started_at,
        }

    def lines(self) -> list[str]:
        """What ``serve`` prints at start: one line per address it listens on."""
        creds = f" (credentials {self.credentials_file})" if self.credentials_file else ""
        return [
            f"broker  {self.broker_url}{creds}",
            f"media   {self.media}",
            f"metrics {self.metrics}",
        ]

    def write(self, path: Path) -> None:
        """Write the file atomically (readable by the operators: no secret inside)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> Endpoints | None:
        """The last controller's endpoints, or None if it never started here."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            broker = data["broker"]
            creds = broker.get("credentials_file")
            operator = broker.get("operator_credentials_file")
            return cls(
                broker_url=str(broker["url"]),
                credentials_file=str(creds) if creds else None,
                operator_credentials_file=str(operator) if operator else None,
                media=str(data["media"]),
                metrics=str(data["metrics"]),
                pid=int(data["pid"]),
                started_at=str(data["started_at"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
            return None


def broker_endpoint(
    url: str | None, credentials_file: Path | None, *, group_readable: bool = False
) -> BrokerEndpoint | None:
    """The broker to log in to: ``url`` with the credentials file's user name and password.

    With only a credentials file its own ``url`` is used; with neither, None (the private
    broker). ``url`` wins over the file's URL, so ``--broker`` can name another address of
    the same broker. ``group_readable``: the file may be 0640 (the operators' own
    ``_operator.json``, shared with their group); the controller's must be 0600.
    """
    # Imported here: every CLI command imports this module, most never touch MQTT.
    from firmware_bridge.credentials import read_credentials
    from firmware_bridge.mqtt import BrokerEndpoint

    if credentials_file is None:
        return BrokerEndpoint.parse(url) if url else None
    return _merge(url, read_credentials(credentials_file, group_readable=group_readable))


def _merge(url: str | None, login: BrokerEndpoint) -> BrokerEndpoint:
    """``url`` with ``login``'s user name and password (``login`` itself without a url).

    A TLS ``url`` keeps the file's CA (installed beside it) unless the url names one; a
    plain ``url`` has none.
    """
    from firmware_bridge.mqtt import BrokerEndpoint

    if not url:
        return login
    given = BrokerEndpoint.parse(url)
    tls_ca = (login.tls_ca or given.tls_ca) if given.tls_ca else None
    return replace(given, username=login.username, password=login.password, tls_ca=tls_ca)


@dataclass(frozen=True)
class OperatorsBroker:
    """Where and as whom the operators' tools log in (see :func:`operators_broker`)."""

    endpoint: BrokerEndpoint | None  # None: no URL and no credentials file
    credentials: Path | None  # the credentials file used, if any
    site: str | None  # the site that file names


class ControllersAccountRefused(ConfigError):
    """The operators' tools were given the controller's own credentials file."""


def operators_credentials(settings: Settings, last: Endpoints | None) -> Path | None:
    """The operators' credentials file: ``LOUDSPEAKER_OPERATOR_CREDENTIALS``, else the one the
    last ``serve`` on this machine named in ``run/endpoints.json`` (``last``); else None."""
    if settings.operator_credentials is not None:
        return settings.operator_credentials
    if last is not None and last.operator_credentials_file:
        return Path(last.operator_credentials_file)
    return None


def operators_broker(url: str | None, credentials: Path | None) -> OperatorsBroker:
    """The operators' broker endpoint, for the controller-down emergency path and the
    conformance kit: ``url`` (if given) with ``credentials``' login, as
    :func:`broker_endpoint` merges them; the file may be group-readable only if it is the
    operators' own (``_operator``). ``KeyFileError`` says what is wrong with the file;
    ``ControllersAccountRefused`` when it is the controller's: the broker binds the client id
    to the user name, so using it would take over the controller's session.
    """
    from firmware_bridge.credentials import read_login
    from firmware_bridge.mqtt import BrokerEndpoint
    from loudspeaker.brokerconf import CONTROLLER_USER, OPERATOR_USER

    if credentials is None:
        return OperatorsBroker(BrokerEndpoint.parse(url) if url else None, None, None)
    login, site = read_login(credentials, group_readable=True)
    if login.username == CONTROLLER_USER:
        raise ControllersAccountRefused(
            f"{credentials} is the controller's own account: the broker binds the client id "
            "to the user name, so logging in with it would take over the controller's session "
            f"and disconnect it; use {OPERATOR_USER}.json from `loudspeaker broker config`"
        )
    return OperatorsBroker(_merge(url, login), credentials, site)
