"""Progress on screen: a broadcast's per-cluster table (live), audio rendering's bar."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loudspeaker.auth import current_actor
from loudspeaker.broadcasts import BroadcastView
from loudspeaker.commands.common import State, console, err_console, local_time
from loudspeaker.services import broadcasts

_COLOURS = {"played": "green", "failed": "red", "unreachable": "red", "playing": "cyan"}
_STEPS = ("sent", "received", "staged", "playing")


def status_table(view: BroadcastView, zone: ZoneInfo) -> Table:
    """Per cluster: the state and, for each step, seconds since the broadcast was queued."""
    b = view.broadcast
    queued = b.created_at
    table = Table(
        title=f"Broadcast {b.id} “{b.title}”, queued {local_time(queued, zone)} "
        f"({b.priority}); seconds after that:",
        title_justify="left",
    )
    with_reason = any(d.reason for d in view.deliveries)
    for name in ("cluster", "hamlet", "state", "sent", "recv", "staged", "playing", "done"):
        table.add_column(
            name, justify="right" if name not in ("cluster", "hamlet", "state") else "left"
        )
    if with_reason:
        table.add_column("reason", overflow="fold")

    def since(ts: datetime | None) -> str:
        return "-" if ts is None else f"{(ts - queued).total_seconds():.2f}"

    for d in view.deliveries:
        t = d.times
        done_at = t.get("played") or t.get("failed") or t.get("unreachable") or t.get("missed")
        colour = _COLOURS.get(d.state, "yellow")
        row = [d.cluster, d.hamlet, f"[{colour}]{d.state}[/]"]
        row += [since(t[step]) for step in _STEPS] + [since(done_at)]
        table.add_row(*row, *([d.reason] if with_reason else []))
    return table


def follow(
    state: State,
    broadcast_id: str,
    timeout: float,
    live: bool,
    until: Literal["finished", "playing"] = "finished",
) -> BroadcastView:
    """Wait for a broadcast (see ``services.broadcasts.wait``), with a live table if asked."""
    actor = current_actor(state)
    if not live:
        return broadcasts.wait(state, actor, broadcast_id, timeout, until=until)
    zone = state.zone()
    first = broadcasts.status(state, actor, broadcast_id)
    with Live(status_table(first, zone), console=console, refresh_per_second=8) as lv:
        view = broadcasts.wait(
            state,
            actor,
            broadcast_id,
            timeout,
            until=until,
            on_update=lambda v: lv.update(status_table(v, zone)),
        )
    console.print()
    return view


@contextmanager
def render_progress(label: str, enabled: bool) -> Iterator[Callable[[float], None]]:
    """A transient progress bar on stderr fed by audio's progress callback."""
    if not enabled:
        yield lambda _f: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=1.0)
        yield lambda f: progress.update(task, completed=f)
