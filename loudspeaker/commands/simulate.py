"""``loudspeaker simulate``: run the site's clusters as simulated agents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import State, err_console, face


@face
def simulate(
    state: State,
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
    from loudspeaker import lifecycle
    from loudspeaker.services import simulation

    options = simulation.SimulationOptions(
        clusters, broker, time_scale, heartbeat, processes, broker_credentials_dir, keys_dir
    )
    sim = simulation.plan(state, options)
    lifecycle.log_at_least_info()
    if sim.keys_dir is None:
        err_console.print(
            "[yellow]warning:[/] no --keys-dir: the simulated boxes run insecure-unsigned "
            "(they do not verify signatures)"
        )
    fleet = sim.fleet(state.settings.data_dir / "simulated")
    where = f" in {sim.processes} processes" if sim.processes > 1 else ""
    lifecycle.run_until_signalled(
        fleet.start,
        fleet.stop,
        lambda: err_console.print(
            f"{len(sim.clusters)} simulated clusters running{where}; Ctrl-C to stop"
        ),
    )
