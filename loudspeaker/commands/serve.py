"""``loudspeaker serve``: run the controller."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import err_console, handle_errors, state_of


@handle_errors
def serve(
    ctx: typer.Context,
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

    from loudspeaker.controller import Controller
    from loudspeaker.filemodes import FileModes

    state = state_of(ctx)
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
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    # Everything the daemon creates (media, run files, the broker's) is private to its
    # account, or shared with the operators' group only (docs/security.md, "Secrets").
    os.umask(FileModes.for_group(settings.group).umask)
    controller = Controller(settings)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    controller.start()
    # One line per address, on stdout for whoever started us (also in endpoints.json).
    assert controller.endpoints is not None
    for line in controller.endpoints.lines():
        typer.echo(line)
    typer.echo(f"endpoints {settings.endpoints_file}")
    sys.stdout.flush()
    err_console.print(f"controller running for site {controller.site_id}; Ctrl-C to stop")
    done.wait()
    controller.stop()
