"""``loudspeaker site generate``: a synthetic site of any size, for the simulator and benches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loudspeaker.commands.common import console, handle_errors, print_json


@handle_errors
def site_generate(
    clusters: Annotated[int, typer.Option("--clusters", help="How many clusters (1-100000)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Site file (TOML) to write")],
    site_id: Annotated[str, typer.Option("--site-id", help="The generated site's id")] = "sim",
    hamlet_size: Annotated[int, typer.Option(help="Clusters per generated hamlet")] = 10,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
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
