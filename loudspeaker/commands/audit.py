"""``loudspeaker audit``: read and verify the tamper-evident audit log (admins)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from loudspeaker import audit as audit_log
from loudspeaker.commands import common as c
from loudspeaker.commands.common import JsonOpt, State, command, console, print_json
from loudspeaker.services import audit as audit_service

app = typer.Typer(
    help="The audit log: who did what, when, to what, and how it ended.",
    invoke_without_command=True,
)
_COLOURS = {"ok": "green", "denied": "red", "failed": "red"}


@app.callback()
@c.handle_errors
def audit_show(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="Newest N rows")] = 50,
    actor: Annotated[str | None, typer.Option(help="Only this user")] = None,
    action: Annotated[str | None, typer.Option(help="Only actions starting with this")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the newest audit rows (`audit verify` checks the chain)."""
    if ctx.invoked_subcommand is not None:
        return
    state = c.state_of(ctx)
    rows = audit_service.entries(state, state.actor(), limit=limit, by=actor, action=action)
    data = [audit_log.to_json(e) for e in rows]
    if as_json:
        print_json(data)
        return
    zone = state.zone()
    table = Table("#", "time", "actor", "action", "target", "outcome", "detail")
    for e, d in zip(rows, data, strict=True):
        table.add_row(
            str(e.seq),
            c.local_time(e.at, zone, "%Y-%m-%d %H:%M:%S"),
            f"{e.actor} ({e.role})" if e.role else e.actor,
            e.action,
            e.target,
            f"[{_COLOURS.get(e.outcome, 'yellow')}]{e.outcome}[/]",
            e.detail if d["detail"] else "",
        )
    console.print(table)


@command(app, "verify")
def audit_verify(
    state: State,
    head: Annotated[
        str | None,
        typer.Option(help="SEQ:HASH written down earlier: also check that row is unchanged"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recompute the hash chain; exit 1 and name the rows if any was edited or deleted."""
    result = audit_service.verify(state, state.actor(), head)
    if as_json:
        print_json(result.to_json())
    elif result.ok:
        console.print(
            f"[green]audit log intact:[/] {result.rows} rows; head {result.head} (write it down "
            "elsewhere to detect truncation later)"
        )
    else:
        console.print(f"[bold red]audit log damaged:[/] {len(result.problems)} problems")
        for p in result.problems:
            console.print(f"  - {p}")
    if not result.ok:
        raise typer.Exit(1)
