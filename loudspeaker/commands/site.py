"""``loudspeaker site``: load and show the site file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlmodel import select

from loudspeaker import audit
from loudspeaker.auth import Permission, require
from loudspeaker.commands.common import console, handle_errors, print_json, state_of
from loudspeaker.models import ClusterStatus


@handle_errors
def site_load(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Site file (TOML), e.g. sites/luc-binh.toml")],
) -> None:
    """Validate a site file and store it (replaces the stored hamlets and clusters)."""
    from loudspeaker.site import load_site_file, store_site

    state = state_of(ctx)
    actor = require(state, Permission.SITE, action="site.load", target=str(file))
    site = load_site_file(file)
    with state.session() as s:
        store_site(s, site)
        audit.record(
            s,
            actor.name,
            "site.load",
            site.site.id,
            detail={
                "file": str(file),
                "sha256": hashlib.sha256(file.read_bytes()).hexdigest(),
                "hamlets": len(site.hamlets),
                "clusters": len(site.clusters),
            },
            role=actor.role,
            commit=True,
        )
    console.print(
        f"Loaded site [bold]{site.site.name}[/] ({site.site.id}): "
        f"{len(site.hamlets)} hamlets, {len(site.clusters)} clusters."
    )
    card = state.controller()
    if card is not None:
        card.poke()


@handle_errors
def site_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show the stored site: hamlets and clusters."""
    from loudspeaker.site import current_site

    state = state_of(ctx)
    require(state, Permission.VIEW, action="site.show")
    with state.session() as s:
        site = current_site(s)
        statuses = {st.cluster_id: st for st in s.exec(select(ClusterStatus)).all()}
    if as_json:
        print_json(site.model_dump(mode="json"))
        return
    console.print(f"[bold]{site.site.name}[/] ({site.site.id}), zone {site.site.timezone}")
    table = Table("cluster", "hamlet", "transport", "online", "location", "notes")
    names = {h.id: h.name for h in site.hamlets}
    for c in site.clusters:
        st = statuses.get(c.id)
        online = "-" if st is None else ("yes" if st.online else "[red]no[/]")
        loc = c.location.description if c.location else ""
        table.add_row(c.id, names[c.hamlet], c.transport, online, loc, c.notes)
    console.print(table)
