"""``loudspeaker conformance``: check one box against docs/protocol.md (for box vendors)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from loudspeaker.commands.common import err_console, handle_errors, print_json
from loudspeaker.exceptions import ConfigError


def _site_of(credentials: Path) -> str | None:
    try:
        data: Any = json.loads(credentials.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # read_credentials reports what is wrong with the file
    site = data.get("site") if isinstance(data, dict) else None
    return site if isinstance(site, str) else None


def _default_credentials(ctx: typer.Context) -> Path | None:
    """The operators' credentials: ``LOUDSPEAKER_OPERATOR_CREDENTIALS``, else the file the
    last ``serve`` on this machine named in ``run/endpoints.json``; else none (a bench)."""
    from loudspeaker.commands.common import state_of
    from loudspeaker.runtime import Endpoints

    settings = state_of(ctx).settings
    if settings.operator_credentials is not None:
        return settings.operator_credentials
    last = Endpoints.read(settings.endpoints_file)
    if last is not None and last.operator_credentials_file:
        return Path(last.operator_credentials_file)
    return None


@handle_errors
def conformance(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Option(help="The box's cluster id, e.g. lb-01")],
    broker: Annotated[
        str | None,
        typer.Option(
            help="mqtt://HOST:PORT or mqtts://HOST:PORT of the box's broker "
            "(default: the credentials file's url)"
        ),
    ] = None,
    site: Annotated[
        str | None, typer.Option(help="Site id (default: the credentials file's site)")
    ] = None,
    credentials: Annotated[
        Path | None,
        typer.Option(
            help="The operators' credentials JSON (credentials/_operator.json from "
            "`loudspeaker broker config`; the controller keeps running) "
            "\\[default: env LOUDSPEAKER_OPERATOR_CREDENTIALS, else the one in "
            "run/endpoints.json; none for an open bench broker]"
        ),
    ] = None,
    keys_file: Annotated[
        Path | None,
        typer.Option(help="The box's key file (docs/security.md); none: commands unsigned"),
    ] = None,
    media_host: Annotated[
        str | None,
        typer.Option(
            help="Address the box fetches test audio from "
            "(default: this machine's address toward the broker)"
        ),
    ] = None,
    media_port: Annotated[int, typer.Option(help="Port of the kit's media server (0: any)")] = 0,
    kill_command: Annotated[
        str | None,
        typer.Option(help="Shell command that kills the box, for the last-will check"),
    ] = None,
    allow_reboot: Annotated[
        bool, typer.Option("--allow-reboot", help="Also send a reboot command")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for each answer", min=1, max=600)
    ] = 30.0,
    will_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the last will", min=1, max=600)
    ] = 60.0,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only this check (by key; repeatable)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Drive one box through every MUST of docs/protocol.md; exit 0 only if none fails."""
    from firmware_bridge.credentials import read_credentials
    from firmware_bridge.keys import read_key_file
    from firmware_bridge.mqtt import BrokerEndpoint
    from firmware_bridge.protocol import validate_cluster_id
    from loudspeaker import conformance as kit
    from loudspeaker.brokerconf import CONTROLLER_USER, OPERATOR_USER

    credentials = credentials or _default_credentials(ctx)
    if broker is None and credentials is None:
        raise ConfigError(
            "give --broker mqtt://HOST:PORT, or --credentials _operator.json (its url is used)"
        )
    if credentials is not None:
        # 0640 allowed: the operators' group shares _operator.json (docs/security.md).
        login = read_credentials(credentials, group_readable=True)
        if login.username == CONTROLLER_USER:
            raise ConfigError(
                f"{credentials} is the controller's account: the broker binds the client id "
                "to the user name, so the kit would take over the controller's session and "
                f"disconnect it; use {OPERATOR_USER}.json from `loudspeaker broker config`"
            )
        endpoint = login
        if broker is not None:
            given = BrokerEndpoint.parse(broker)
            endpoint = replace(
                given,
                username=login.username,
                password=login.password,
                tls_ca=(login.tls_ca or given.tls_ca) if given.tls_ca else None,
            )
        site = site or _site_of(credentials)
    else:
        assert broker is not None
        endpoint = BrokerEndpoint.parse(broker)
    if site is None:
        raise ConfigError("give --site (or a --credentials file that names the site)")
    validate_cluster_id(site)
    validate_cluster_id(cluster)
    key = None
    if keys_file is not None:
        key = read_key_file(keys_file, site, cluster)[0]  # newest first
    known = {c.key for c in kit.CHECKS}
    unknown = sorted(set(only or ()) - known)
    if unknown:
        raise ConfigError(f"no check {', '.join(unknown)}; checks: {', '.join(sorted(known))}")
    options = kit.KitOptions(
        endpoint=endpoint,
        site=site,
        cluster=cluster,
        key=key,
        media_host=media_host,
        media_port=media_port,
        kill_command=kill_command,
        allow_reboot=allow_reboot,
        timeout_s=timeout,
        will_timeout_s=will_timeout,
    )
    if not as_json:
        err_console.print(
            f"checking {site}/{cluster} on {endpoint.url}; this takes a minute or two"
        )
    results = kit.ConformanceKit(options).run(set(only) if only else None)
    if as_json:
        meta = {"site": site, "cluster": cluster, "broker": endpoint.url, "signed": key is not None}
        print_json(kit.as_json(results, meta))
    else:
        heading = f"Conformance of {site}/{cluster} on {endpoint.url} to docs/protocol.md"
        typer.echo(kit.format_table(results, heading))
    if not kit.passed(results):
        raise typer.Exit(1)
