"""``loudspeaker simulate``: run the site's clusters as simulated agents."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import err_console, handle_errors, state_of
from loudspeaker.exceptions import ControllerNotRunning, LoudspeakerError


@handle_errors
def simulate(
    ctx: typer.Context,
    clusters: Annotated[
        int | None, typer.Option(help="How many of the site's clusters (default all)")
    ] = None,
    broker: Annotated[
        str | None, typer.Option(help="mqtt://HOST:PORT (default: the running controller's)")
    ] = None,
    time_scale: Annotated[float, typer.Option(help="Play each item for duration x this")] = 1.0,
    heartbeat: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Seconds between heartbeats")
    ] = 15.0,
    processes: Annotated[
        int | None,
        typer.Option(help="Processes to spread the clusters over (default: one per 500)"),
    ] = None,
    broker_credentials_dir: Annotated[
        Path | None,
        typer.Option(
            help="Each box logs in with its own CLUSTER.json from `loudspeaker broker config` "
            "(its output directory or the credentials/ directory in it); instead of --broker"
        ),
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option(
            help="Each box verifies commands with its own key file CLUSTER.json, as "
            "`loudspeaker keys issue CLUSTER -o DIR/CLUSTER.json` writes it; without it the "
            "simulated boxes do not verify signatures"
        ),
    ] = None,
) -> None:
    """Run simulated clusters of the site (real MQTT agents, pretend amplifiers)."""
    from firmware_bridge.fleetproc import ProcessFleet
    from firmware_bridge.mqtt import BrokerEndpoint
    from firmware_bridge.simulator import Fleet
    from loudspeaker.site import current_site

    state = state_of(ctx)
    with state.session() as s:
        site = current_site(s)
    ids = [c.id for c in site.clusters if c.transport == "mqtt"]
    if clusters is not None:
        if clusters > len(ids):
            raise LoudspeakerError(
                f"the site has {len(ids)} MQTT clusters; to simulate {clusters}, generate "
                f"and load a bigger one: loudspeaker site generate --clusters {clusters} "
                "-o big.toml && loudspeaker site load big.toml"
            )
        ids = ids[:clusters]
    credentials_dir: Path | None = None
    if broker_credentials_dir is not None:
        if broker is not None:
            raise LoudspeakerError(
                "give --broker or --broker-credentials-dir, not both: each credentials file names "
                "its broker"
            )
        credentials_dir = _credentials_dir(broker_credentials_dir.resolve(), ids)
    elif broker is None:
        card = state.controller()
        if card is None:
            raise ControllerNotRunning("start `loudspeaker serve` first, or give --broker")
        broker = card.broker_url
    if logging.getLogger().level > logging.INFO:
        logging.getLogger().setLevel(logging.INFO)
    endpoint = BrokerEndpoint.parse(broker) if broker is not None else None
    if keys_dir is not None:
        keys_dir = keys_dir.resolve()
        missing = [c for c in ids if not (keys_dir / f"{c}.json").is_file()]
        if missing:
            raise LoudspeakerError(
                f"no key file for {', '.join(missing)} in {keys_dir}: write them with "
                f"`loudspeaker keys issue CLUSTER -o {keys_dir}/CLUSTER.json` (or keys export)"
            )
    else:
        err_console.print(
            "[yellow]warning:[/] no --keys-dir: the simulated boxes run insecure-unsigned "
            "(they do not verify signatures)"
        )
    fleet: Fleet | ProcessFleet
    procs = processes if processes is not None else max(1, -(-len(ids) // 500))
    if procs > 1:
        # One process under one GIL tops out at a few hundred clusters (docs/scaling.md).
        fleet = ProcessFleet(
            site.site.id,
            ids,
            endpoint,
            state.settings.data_dir / "simulated",
            processes=procs,
            time_scale=time_scale,
            heartbeat_s=heartbeat,
            credentials_dir=credentials_dir,
            keys_dir=keys_dir,
        )
    else:
        fleet = Fleet(
            site.site.id,
            ids,
            endpoint,
            state.settings.data_dir / "simulated",
            time_scale=time_scale,
            heartbeat_s=heartbeat,
            credentials_dir=credentials_dir,
            keys_dir=keys_dir,
        )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    fleet.start()
    where = f" in {procs} processes" if procs > 1 else ""
    err_console.print(f"{len(ids)} simulated clusters running{where}; Ctrl-C to stop")
    done.wait()
    fleet.stop()


def _credentials_dir(given: Path, clusters: list[str]) -> Path:
    """The directory holding CLUSTER.json: ``given`` or its ``credentials/``."""
    for d in (given / "credentials", given):
        if all((d / f"{c}.json").is_file() for c in clusters):
            return d
    missing = [c for c in clusters if not (given / f"{c}.json").is_file()]
    raise LoudspeakerError(
        f"no credentials file for {', '.join(missing)} in {given} (nor in "
        f"{given / 'credentials'}): run `loudspeaker broker config -o {given}` after "
        "`loudspeaker site load`"
    )
