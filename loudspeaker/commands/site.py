"""``loudspeaker site``: load and show the site file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.commands.common import JsonOpt, State, console, face, print_json
from loudspeaker.services import site as site_service


@face
def site_load(
    state: State,
    file: Annotated[Path, typer.Argument(help="Site file (TOML), e.g. sites/luc-binh.toml")],
) -> None:
    """Validate a site file and store it (replaces the stored hamlets and clusters)."""
    site = site_service.load(state, state.actor(), file).site
    console.print(
        f"Loaded site [bold]{site.site.name}[/] ({site.site.id}): "
        f"{len(site.hamlets)} hamlets, {len(site.clusters)} clusters."
    )


@face
def site_show(
    state: State,
    as_json: JsonOpt = False,
) -> None:
    """Show the stored site: hamlets and clusters."""
    view = site_service.show(state, state.actor())
    site = view.site
    if as_json:
        print_json(site.model_dump(mode="json"))
        return
    console.print(f"[bold]{site.site.name}[/] ({site.site.id}), zone {site.site.timezone}")
    table = Table("cluster", "hamlet", "transport", "online", "location", "notes")
    names = {h.id: h.name for h in site.hamlets}
    for c in site.clusters:
        online = view.online.get(c.id)
        shown = "-" if online is None else ("yes" if online else "[red]no[/]")
        loc = c.location.description if c.location else ""
        table.add_row(c.id, names[c.hamlet], c.transport, shown, loc, c.notes)
    console.print(table)
