"""``loudspeaker keys``: each cluster's command-signing key (admins)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.commands.common import JsonOpt, State, command, console, local_time, print_json
from loudspeaker.services import keys
from loudspeaker.services.keys import KeyFileAction

app = typer.Typer(
    help="Command-signing keys of the clusters: issue, rotate, activate, export, reset."
)

ClusterArg = Annotated[str, typer.Argument(help="Cluster id")]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", help="Key file to write (0600) [default DATA_DIR/keys/CLUSTER.json]"
    ),
]


def _write(state: State, cluster: str, output: Path | None, action: KeyFileAction) -> None:
    done = keys.write_key_file(state, state.actor(), cluster, action, output)
    console.print(
        f"{cluster}: key file {done.path} (mode 0600) holds {', '.join(done.kids)}. Install it "
        "on the box as STATE_DIR/keys.json (mode 0600); the agent picks it up by itself."
    )
    if action == "rotate":
        console.print(
            f"The controller still signs with the old key. Once the box has this file, run "
            f"`loudspeaker keys activate {cluster}`."
        )


@command(app, "issue")
def keys_issue(state: State, cluster: ClusterArg, output: OutOption = None) -> None:
    """Give a cluster its first key and write the box's key file."""
    _write(state, cluster, output, "issue")


@command(app, "rotate")
def keys_rotate(state: State, cluster: ClusterArg, output: OutOption = None) -> None:
    """Make a new key and write a key file with old and new; activate once installed."""
    _write(state, cluster, output, "rotate")


@command(app, "export")
def keys_export(state: State, cluster: ClusterArg, output: OutOption = None) -> None:
    """Write the box's key file again (a replaced box, or after `activate`)."""
    _write(state, cluster, output, "export")


@command(app, "activate")
def keys_activate(state: State, cluster: ClusterArg) -> None:
    """Sign with the cluster's new key from now on (the box must have it)."""
    done = keys.activate(state, state.actor(), cluster)
    console.print(f"{cluster}: commands are now signed with key {done.kid}.")


@command(app, "list")
def keys_list(
    state: State,
    as_json: JsonOpt = False,
) -> None:
    """Every cluster's keys and their state (never the secrets)."""
    infos = keys.list_keys(state, state.actor())
    if as_json:
        print_json([k.to_json() for k in infos])
        return
    zone, fmt = state.zone(), "%Y-%m-%d %H:%M"
    table = Table("cluster", "key id", "state", "created", "activated", "retired")
    for k in infos:
        times = (k.created_at, k.activated_at, k.retired_at)
        table.add_row(k.cluster, k.kid, k.state, *(local_time(t, zone, fmt) for t in times))
    console.print(table)


@command(app, "reset")
def keys_reset(
    state: State,
    all_: Annotated[
        bool, typer.Option("--all", help="Every key the key store cannot open (required)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the boxes need new key files")] = (
        False
    ),
) -> None:
    """Drop the keys the key store cannot open (it is lost, no backup), so `issue` works."""
    done = keys.reset(state, state.actor(), confirmed=all_ and yes)
    if not done.dropped:
        console.print("Every key opens with the key store: nothing dropped.")
        return
    console.print(
        f"Dropped {len(done.dropped)} keys of {len(done.clusters)} clusters: "
        f"{', '.join(done.clusters)}. Every one of these boxes needs its new key file: run "
        "`loudspeaker keys issue CLUSTER` for each and install the file on the box as "
        "STATE_DIR/keys.json (mode 0600). Until then the box refuses the controller's commands.",
        highlight=False,
    )
