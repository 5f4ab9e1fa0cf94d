"""``loudspeaker users``: who may act, in which role (admins only, except bootstrap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from loudspeaker.commands.common import JsonOpt, State, command, console, local_time, print_json
from loudspeaker.services import users
from loudspeaker.services.users import TokenIssued

app = typer.Typer(help="Users and roles: officer, hamlet-head, technician, admin.")

ROLE_HELP = "officer | hamlet-head | technician | admin"
NameArg = Annotated[str, typer.Argument(help="Login name")]
HamletOpt = Annotated[str | None, typer.Option(help="Hamlet id (hamlet heads only)")]


def _hand_over(done: TokenIssued) -> None:
    console.print(
        f"Token for [bold]{done.name}[/] written to {done.token_file} (mode 0600); it is shown "
        f"nowhere else. {done.name} keeps it at ~/.config/loudspeaker/token or points "
        "LOUDSPEAKER_TOKEN_FILE at it."
    )


@command(app, "add")
def users_add(
    state: State,
    name: Annotated[str, typer.Argument(help="Login name, e.g. nguyen-van-a")],
    role: Annotated[str, typer.Option("--role", help=ROLE_HELP)],
    hamlet: HamletOpt = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="Where to write the new token (mode 0600; never overwritten)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user and write their token to a file. With no users yet: the first admin."""
    done = users.add(state, state.actor(), name, role, hamlet, token_file)
    if as_json:
        print_json(done.to_json())
        return
    _hand_over(done)
    if done.ended_bootstrap:
        console.print("Authentication is now on: every command needs a token.")


@command(app, "list")
def users_list(state: State, as_json: JsonOpt = False) -> None:
    """Every user with role and hamlet (never tokens)."""
    rows = users.list_users(state, state.actor())
    if as_json:
        print_json([u.to_json() for u in rows])
        return
    zone = state.zone()
    table = Table("name", "role", "hamlet", "created", "by")
    for u in rows:
        created = local_time(u.created_at, zone, "%Y-%m-%d %H:%M")
        table.add_row(u.name, u.role, u.hamlet or "-", created, u.created_by)
    console.print(table)


@command(app, "remove")
def users_remove(state: State, name: NameArg) -> None:
    """Remove a user; their token stops working at once."""
    users.remove(state, state.actor(), name)
    console.print(f"Removed user {name}.")


@command(app, "set-role")
def users_set_role(
    state: State,
    name: NameArg,
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
    hamlet: HamletOpt = None,
) -> None:
    """Change a user's role (and hamlet)."""
    done = users.set_role(state, state.actor(), name, role, hamlet)
    console.print(f"{name} is now {done.role}{f' of {hamlet}' if hamlet else ''}.")


@command(app, "reset-token")
def users_reset_token(
    state: State,
    name: NameArg,
    token_file: Annotated[
        Path | None, typer.Option(help="Where to write the new token (mode 0600)")
    ] = None,
) -> None:
    """Issue a new token (a lost or leaked one stops working)."""
    _hand_over(users.reset_token(state, state.actor(), name, token_file))


@command(app, "whoami")
def users_whoami(state: State, as_json: JsonOpt = False) -> None:
    """Who this shell acts as, and what they may do."""
    actor = state.actor()
    perms = sorted(p.value for p in actor.permissions)
    if as_json:
        print_json({**users.identity(actor), "permissions": perms})
        return
    where = f" of {actor.hamlet}" if actor.hamlet else ""
    console.print(f"{actor.name} ({actor.role}{where}): {', '.join(perms)}")
