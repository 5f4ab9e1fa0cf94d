"""``loudspeaker conformance``: check one box against docs/protocol.md (for box vendors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import JsonOpt, State, err_console, face, print_json


@face
def conformance(
    state: State,
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
    as_json: JsonOpt = False,
) -> None:
    """Drive one box through every MUST of docs/protocol.md; exit 0 only if none fails."""
    from loudspeaker import conformance as kit

    options = kit.kit_options(
        state.settings,
        cluster=cluster,
        broker=broker,
        site=site,
        credentials=credentials,
        keys_file=keys_file,
        media_host=media_host,
        media_port=media_port,
        kill_command=kill_command,
        allow_reboot=allow_reboot,
        timeout_s=timeout,
        will_timeout_s=will_timeout,
    )
    checks = kit.selected_checks(only)
    where = f"{options.site}/{cluster} on {options.endpoint.url}"
    if not as_json:
        err_console.print(f"checking {where}; this takes a minute or two")
    results = kit.ConformanceKit(options).run(checks)
    if as_json:
        meta = {"site": options.site, "cluster": cluster, "broker": options.endpoint.url}
        print_json(kit.as_json(results, {**meta, "signed": options.key is not None}))
    else:
        typer.echo(kit.format_table(results, f"Conformance of {where} to docs/protocol.md"))
    if not kit.passed(results):
        raise typer.Exit(1)
