"""What the kit is pointed at: broker, login, site, the box's key, which checks."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from firmware_bridge.keys import read_key_file
from firmware_bridge.protocol import validate_cluster_id
from loudspeaker.config import Settings
from loudspeaker.conformance.checks import CHECKS, KitOptions
from loudspeaker.exceptions import ConfigError


def kit_options(
    settings: Settings,
    *,
    cluster: str,
    broker: str | None = None,
    site: str | None = None,
    credentials: Path | None = None,
    keys_file: Path | None = None,
    media_host: str | None = None,
    media_port: int = 0,
    kill_command: str | None = None,
    allow_reboot: bool = False,
    timeout_s: float = 30.0,
    will_timeout_s: float = 60.0,
) -> KitOptions:
    """The kit's options: the broker from ``broker`` or the operators' credentials file
    (given, ``LOUDSPEAKER_OPERATOR_CREDENTIALS`` or the one the last ``serve`` named), the
    site from ``site`` or that file; ``ConfigError`` says what is missing."""
    from loudspeaker.runtime import Endpoints, operators_broker, operators_credentials

    credentials = credentials or operators_credentials(
        settings, Endpoints.read(settings.endpoints_file)
    )
    if broker is None and credentials is None:
        raise ConfigError(
            "give --broker mqtt://HOST:PORT, or --credentials _operator.json (its url is used)"
        )
    # 0640 allowed: the operators' group shares _operator.json (docs/security.md).
    login = operators_broker(broker, credentials)
    assert login.endpoint is not None  # a url or a credentials file was given
    site = site or login.site
    if site is None:
        raise ConfigError("give --site (or a --credentials file that names the site)")
    validate_cluster_id(site)
    validate_cluster_id(cluster)
    key = None
    if keys_file is not None:
        key = read_key_file(keys_file, site, cluster)[0]  # newest first
    return KitOptions(
        endpoint=login.endpoint,
        site=site,
        cluster=cluster,
        key=key,
        media_host=media_host,
        media_port=media_port,
        kill_command=kill_command,
        allow_reboot=allow_reboot,
        timeout_s=timeout_s,
        will_timeout_s=will_timeout_s,
    )


def selected_checks(only: Iterable[str] | None) -> set[str] | None:
    """The checks named in ``only`` (None: every check); ``ConfigError`` for an unknown one."""
    if not only:
        return None
    known = {c.key for c in CHECKS}
    unknown = sorted(set(only) - known)
    if unknown:
        raise ConfigError(f"no check {', '.join(unknown)}; checks: {', '.join(sorted(known))}")
    return set(only)
