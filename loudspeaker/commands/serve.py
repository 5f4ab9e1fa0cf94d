"""``loudspeaker serve``: run the controller."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import State, err_console, face


@face
def serve(
    state: State,
    broker: Annotated[
        str | None,
        typer.Option(
            help="mqtt://HOST:PORT of an external broker [env LOUDSPEAKER_BROKER]; "
            "default: start a private mosquitto"
        ),
    ] = None,
    broker_credentials: Annotated[
        Path | None,
        typer.Option(
            help="The controller's credentials file from `loudspeaker broker config` "
            "(credentials/_controller.json) for a locked-down broker "
            "\\[env LOUDSPEAKER_BROKER_CREDENTIALS]"
        ),
    ] = None,
    broker_port: Annotated[int, typer.Option(help="Port of the private mosquitto (0: any)")] = 0,
    broker_host: Annotated[
        str, typer.Option(help="Address the private mosquitto binds")
    ] = "127.0.0.1",
    http_host: Annotated[str, typer.Option(help="Address the media server binds")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="Port of the media server (0: any)")] = 0,
    public_url: Annotated[
        str | None, typer.Option(help="Base URL clusters use to fetch audio")
    ] = None,
    ack_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a cluster's first answer")
    ] = 10.0,
) -> None:
    """Run the controller: broker link, media server, dispatcher. Stop with Ctrl-C."""
    from dataclasses import replace

    from loudspeaker import lifecycle
    from loudspeaker.controller import Controller

    settings = replace(
        state.settings,
        broker_url=broker or state.settings.broker_url,
        broker_credentials=broker_credentials or state.settings.broker_credentials,
        broker_port=broker_port,
        broker_host=broker_host,
        http_host=http_host,
        http_port=http_port or state.settings.http_port,
        public_url=public_url or state.settings.public_url,
        ack_timeout_s=ack_timeout,
    )
    lifecycle.log_at_least_info()
    lifecycle.private_umask(settings.group)
    controller = Controller(settings)

    def started() -> None:
        # One line per address, on stdout for whoever started us (also in endpoints.json).
        assert controller.endpoints is not None
        for line in [*controller.endpoints.lines(), f"endpoints {settings.endpoints_file}"]:
            typer.echo(line)
        sys.stdout.flush()
        err_console.print(f"controller running for site {controller.site_id}; Ctrl-C to stop")

    lifecycle.run_until_signalled(controller.start, controller.stop, started)
