"""``loudspeaker demo``: the whole path on embedded defaults.

Real processes, as in production: ``loudspeaker serve`` (with its private mosquitto) and
``loudspeaker simulate`` run as children (``loudspeaker.demo``); this process loads the
site, renders a Vietnamese bulletin offline, queues the broadcast and follows the
acknowledgements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loudspeaker import demo as rig
from loudspeaker.commands.common import State, console, face, print_json
from loudspeaker.commands.progress import follow
from loudspeaker.services import demo as service


@face
def demo(
    outer: State,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON")] = False,
    site_file: Annotated[Path, typer.Option(help="Site file to load")] = Path(
        "sites/luc-binh.toml"
    ),
    demo_dir: Annotated[Path, typer.Option(help="Scratch data directory (wiped at start)")] = Path(
        "var/demo"
    ),
) -> None:
    """The whole path on embedded defaults: site, controller, simulated clusters, a bulletin."""
    state = State(service.scratch(outer.settings, demo_dir))
    settings, log = state.settings, demo_dir / "demo.log"

    def say(message: str) -> None:
        if not as_json:
            console.print(message)

    site = service.load_site(state, site_file)
    n = len(site.clusters)
    say(f"1. Site [bold]{site.site.name}[/]: {len(site.hamlets)} hamlets, {n} clusters")
    with rig.controller(settings, log) as card:
        say(
            f"2. Controller up (pid {card.pid}): private mosquitto {card.broker_url}, "
            f"media {card.http_url}"
        )
        with rig.simulated_clusters(settings, state.engine, log, n):
            say(f"3. {n} simulated clusters online")
            sent = service.send_bulletin(state)
            say(
                f"4. Rendered the bulletin offline ({sent.engine}): {sent.duration_s:.1f} s, "
                f"{sent.size} bytes"
            )
            say(f"5. Broadcast {sent.broadcast_id} to every cluster:")
            view = follow(state, sent.broadcast_id, 60 + sent.duration_s, live=not as_json)
    played = sum(d.state == "played" for d in view.deliveries)
    ok = played == len(view.deliveries)
    if as_json:
        print_json({"ok": ok, **view.to_json()})
    else:
        colour = "green" if ok else "red"
        console.print(
            f"[{colour}]Summary: {played}/{len(view.deliveries)} clusters played the bulletin.[/]"
        )
        if not ok:
            console.print(f"See {log} for the controller's and clusters' logs.")
    if not ok:
        raise typer.Exit(1)
