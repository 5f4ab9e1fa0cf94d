"""``loudspeaker conformance``: check one box against docs/protocol.md (for box vendors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import err_console, handle_errors, print_json, state_of
from loudspeaker.exceptions import ConfigError


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
    from firmware_bridge.keys import read_key_file
    from firmware_bridge.protocol import validate_cluster_id
    from loudspeaker import conformance as kit
    from loudspeaker.runtime import Endpoints, operators_broker, operators_credentials

    settings = state_of(ctx).settings
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
    endpoint = login.endpoint
    site = site or login.site
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
