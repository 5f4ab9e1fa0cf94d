"""``loudspeaker keys``: each cluster's command-signing key (admins)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.auth import current_actor
from loudspeaker.commands.common import console, handle_errors, local_time, print_json, state_of
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


def _write(ctx: typer.Context, cluster: str, output: Path | None, action: KeyFileAction) -> None:
    state = state_of(ctx)
    done = keys.write_key_file(state, current_actor(state), cluster, action, output)
    console.print(
        f"{cluster}: key file {done.path} (mode 0600) holds {', '.join(done.kids)}. Install it "
        "on the box as STATE_DIR/keys.json (mode 0600); the agent picks it up by itself."
    )
    if action == "rotate":
        console.print(
            f"The controller still signs with the old key. Once the box has this file, run "
            f"`loudspeaker keys activate {cluster}`."
        )


@app.command("issue")
@handle_errors
def keys_issue(ctx: typer.Context, cluster: ClusterArg, output: OutOption = None) -> None:
    """Give a cluster its first key and write the box's key file."""
    _write(ctx, cluster, output, "issue")


@app.command("rotate")
@handle_errors
def keys_rotate(ctx: typer.Context, cluster: ClusterArg, output: OutOption = None) -> None:
    """Make a new key and write a key file with old and new; activate once installed."""
    _write(ctx, cluster, output, "rotate")


@app.command("export")
@handle_errors
def keys_export(ctx: typer.Context, cluster: ClusterArg, output: OutOption = None) -> None:
    """Write the box's key file again (a replaced box, or after `activate`)."""
    _write(ctx, cluster, output, "export")


@app.command("activate")
@handle_errors
def keys_activate(ctx: typer.Context, cluster: ClusterArg) -> None:
    """Sign with the cluster's new key from now on (the box must have it)."""
    state = state_of(ctx)
    done = keys.activate(state, current_actor(state), cluster)
    console.print(f"{cluster}: commands are now signed with key {done.kid}.")


@app.command("list")
@handle_errors
def keys_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Every cluster's keys and their state (never the secrets)."""
    state = state_of(ctx)
    infos = keys.list_keys(state, current_actor(state))
    if as_json:
        print_json([k.to_json() for k in infos])
        return
    zone, fmt = state.zone(), "%Y-%m-%d %H:%M"
    table = Table("cluster", "key id", "state", "created", "activated", "retired")
    for k in infos:
        times = (k.created_at, k.activated_at, k.retired_at)
        table.add_row(k.cluster, k.kid, k.state, *(local_time(t, zone, fmt) for t in times))
    console.print(table)


@app.command("reset")
@handle_errors
def keys_reset(
    ctx: typer.Context,
    all_: Annotated[
        bool, typer.Option("--all", help="Every key the key store cannot open (required)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: the boxes need new key files")] = (
        False
    ),
) -> None:
    """Drop the keys the key store cannot open (it is lost, no backup), so `issue` works."""
    state = state_of(ctx)
    done = keys.reset(state, current_actor(state), confirmed=all_ and yes)
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
