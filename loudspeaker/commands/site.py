"""``loudspeaker site``: load and show the site file; generate a synthetic one at scale."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.commands.common import JsonOpt, State, console, face, handle_errors, print_json
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


@handle_errors
def site_generate(
    clusters: Annotated[int, typer.Option("--clusters", help="How many clusters (1-100000)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Site file (TOML) to write")],
    site_id: Annotated[str, typer.Option("--site-id", help="The generated site's id")] = "sim",
    hamlet_size: Annotated[int, typer.Option(help="Clusters per generated hamlet")] = 10,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic site file (ids c00000...) to load and simulate at scale.

    Then: ``loudspeaker site load FILE`` and ``loudspeaker simulate --clusters N``.
    """
    from loudspeaker.sitegen import write_site_file

    done = write_site_file(output, clusters, site_id=site_id, hamlet_size=hamlet_size, force=force)
    if as_json:
        print_json(
            {"file": str(output), "site": site_id, "clusters": clusters, "hamlets": done.hamlets}
        )
        return
    console.print(
        f"Wrote {output}: site {site_id}, {done.hamlets} hamlets, {clusters} clusters. "
        f"Next: loudspeaker site load {output}"
    )
