"""``loudspeaker keys``: each cluster's command-signing key (admins)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker import keys as cluster_keys
from loudspeaker.auth import Permission, require
from loudspeaker.commands.common import (
    State,
    console,
    handle_errors,
    local_time,
    print_json,
    state_of,
)
from loudspeaker.exceptions import LoudspeakerError
from loudspeaker.site import current_site

app = typer.Typer(
    help="Command-signing keys of the clusters: issue, rotate, activate, export, reset."
)

OutOption = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", help="Key file to write (0600) [default DATA_DIR/keys/CLUSTER.json]"
    ),
]


def _out(state: State, cluster: str, given: Path | None) -> Path:
    return given.expanduser() if given else state.settings.data_dir / "keys" / f"{cluster}.json"


def _export(state: State, cluster: str, output: Path | None, what: str) -> None:
    actor = require(state, Permission.KEYS, action=f"keys.{what}", target=cluster)
    path = _out(state, cluster, output)
    with state.session() as s:
        site = current_site(s).site.id
        if what == "issue":
            cluster_keys.issue(s, cluster, actor, keystore=state.keystore)
        elif what == "rotate":
            cluster_keys.rotate(s, cluster, actor, keystore=state.keystore)
        s.flush()
        kids = cluster_keys.export(s, site, cluster, path, actor, keystore=state.keystore)
        s.commit()
    console.print(
        f"{cluster}: key file {path} (mode 0600) holds {', '.join(kids)}. Install it on the "
        "box as STATE_DIR/keys.json (mode 0600); the agent picks it up by itself."
    )
    if what == "rotate":
        console.print(
            f"The controller still signs with the old key. Once the box has this file, run "
            f"`loudspeaker keys activate {cluster}`."
        )


@app.command("issue")
@handle_errors
def keys_issue(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id")],
    output: OutOption = None,
) -> None:
    """Give a cluster its first key and write the box's key file."""
    _export(state_of(ctx), cluster, output, "issue")


@app.command("rotate")
@handle_errors
def keys_rotate(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id")],
    output: OutOption = None,
) -> None:
    """Make a new key and write a key file with old and new; activate once installed."""
    _export(state_of(ctx), cluster, output, "rotate")


@app.command("export")
@handle_errors
def keys_export(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id")],
    output: OutOption = None,
) -> None:
    """Write the box's key file again (a replaced box, or after `activate`)."""
    _export(state_of(ctx), cluster, output, "export")


@app.command("activate")
@handle_errors
def keys_activate(
    ctx: typer.Context,
    cluster: Annotated[str, typer.Argument(help="Cluster id")],
) -> None:
    """Sign with the cluster's new key from now on (the box must have it)."""
    state = state_of(ctx)
    actor = require(state, Permission.KEYS, action="keys.activate", target=cluster)
    with state.session() as s:
        key = cluster_keys.activate(s, cluster, actor)
        kid = key.kid
        s.commit()
    card = state.controller()
    if card is not None:
        card.poke()
    console.print(f"{cluster}: commands are now signed with key {kid}.")


@app.command("list")
@handle_errors
def keys_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Every cluster's keys and their state (never the secrets)."""
    state = state_of(ctx)
    require(state, Permission.KEYS, action="keys.list")
    with state.session() as s:
        infos = cluster_keys.list_keys(s)
    if as_json:
        print_json([k.to_json() for k in infos])
        return
    zone = state.zone()
    table = Table("cluster", "key id", "state", "created", "activated", "retired")
    fmt = "%Y-%m-%d %H:%M"
    for k in infos:
        table.add_row(
            k.cluster,
            k.kid,
            k.state,
            local_time(k.created_at, zone, fmt),
            local_time(k.activated_at, zone, fmt),
            local_time(k.retired_at, zone, fmt),
        )
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
    actor = require(state, Permission.KEYS, action="keys.reset", target="*")
    if not all_ or not yes:
        raise LoudspeakerError(
            "`keys reset` drops every cluster key the key store "
            f"{state.settings.keystore_path} cannot open; only do this when that key store is "
            "lost and there is no backup. Run `loudspeaker keys reset --all --yes`"
        )
    with state.session() as s:
        dropped = cluster_keys.reset_unopenable(s, actor, keystore=state.keystore)
        s.commit()
    card = state.controller()
    if card is not None:
        card.poke()
    if not dropped:
        console.print("Every key opens with the key store: nothing dropped.")
        return
    clusters = sorted({k.cluster for k in dropped})
    console.print(
        f"Dropped {len(dropped)} keys of {len(clusters)} clusters: {', '.join(clusters)}. "
        "Every one of these boxes needs its new key file: run `loudspeaker keys issue "
        "CLUSTER` for each and install the file on the box as STATE_DIR/keys.json (mode "
        "0600). Until then the box refuses the controller's commands.",
        highlight=False,
    )
