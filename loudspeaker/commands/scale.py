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
    from loudspeaker.exceptions import LoudspeakerError
    from loudspeaker.sitegen import generate_site_text

    if output.exists() and not force:
        raise LoudspeakerError(f"{output} exists; choose another --output or add --force")
    text = generate_site_text(clusters, site_id=site_id, hamlet_size=hamlet_size)
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise LoudspeakerError(f"cannot write {output}: {exc}") from None
    hamlets = (clusters + hamlet_size - 1) // hamlet_size
    if as_json:
        print_json({"file": str(output), "site": site_id, "clusters": clusters, "hamlets": hamlets})
        return
    console.print(
        f"Wrote {output}: site {site_id}, {hamlets} hamlets, {clusters} clusters. "
        f"Next: loudspeaker site load {output}"
    )
