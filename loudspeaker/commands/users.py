"""``loudspeaker users``: who may act, in which role (admins only, except bootstrap)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from sqlmodel import col, select

from loudspeaker.auth import (
    Permission,
    Role,
    add_user,
    current_actor,
    default_token_path,
    remove_user,
    require,
    reset_token,
    set_role,
    write_token_file,
)
from loudspeaker.commands.common import (
    State,
    console,
    handle_errors,
    local_time,
    print_json,
    state_of,
)
from loudspeaker.models import UserRecord

app = typer.Typer(help="Users and roles: officer, hamlet-head, technician, admin.")

ROLE_HELP = "officer | hamlet-head | technician | admin"


def _token_path(state: State, name: str, given: Path | None, bootstrap: bool) -> Path:
    if given is not None:
        return given.expanduser()
    # The first admin is usually the person at this keyboard: log them in straight away.
    if bootstrap and not default_token_path().exists():
        return default_token_path()
    return state.settings.data_dir / "tokens" / f"{name}.token"


def _hand_over(path: Path, name: str) -> str:
    return (
        f"Token for [bold]{name}[/] written to {path} (mode 0600); it is shown nowhere "
        f"else. {name} keeps it at ~/.config/loudspeaker/token or points "
        "LOUDSPEAKER_TOKEN_FILE at it."
    )


@app.command("add")
@handle_errors
def users_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Login name, e.g. nguyen-van-a")],
    role: Annotated[str, typer.Option("--role", help=ROLE_HELP)],
    hamlet: Annotated[str | None, typer.Option(help="Hamlet id (hamlet heads only)")] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(help="Where to write the new token (mode 0600; never overwritten)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Add a user and write their token to a file. With no users yet: the first admin."""
    state = state_of(ctx)
    actor = require(state, Permission.USERS, action="users.add", target=name)
    with state.session() as s:
        user, token = add_user(s, name, role, hamlet, actor)
        path = _token_path(state, name, token_file, actor.bootstrap)
        write_token_file(path, token)
        s.commit()
        out = {
            "name": user.name,
            "role": user.role,
            "hamlet": user.hamlet_id,
            "token_file": str(path),
        }
    if as_json:
        print_json(out)
    else:
        console.print(_hand_over(path, name))
        if actor.bootstrap:
            console.print("Authentication is now on: every command needs a token.")


@app.command("list")
@handle_errors
def users_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Every user with role and hamlet (never tokens)."""
    state = state_of(ctx)
    require(state, Permission.USERS, action="users.list")
    zone = state.zone()
    with state.session() as s:
        users = s.exec(select(UserRecord).order_by(col(UserRecord.name))).all()
        rows = [
            {
                "name": u.name,
                "role": u.role,
                "hamlet": u.hamlet_id,
                "created_at": u.created_at.isoformat(),
                "created_by": u.created_by,
            }
            for u in users
        ]
        created = [u.created_at for u in users]
    if as_json:
        print_json(rows)
        return
    table = Table("name", "role", "hamlet", "created", "by")
    for r, c in zip(rows, created, strict=True):
        table.add_row(
            str(r["name"]),
            str(r["role"]),
            str(r["hamlet"] or "-"),
            local_time(c, zone, "%Y-%m-%d %H:%M"),
            str(r["created_by"]),
        )
    console.print(table)


@app.command("remove")
@handle_errors
def users_remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Login name")],
) -> None:
    """Remove a user; their token stops working at once."""
    state = state_of(ctx)
    actor = require(state, Permission.USERS, action="users.remove", target=name)
    with state.session() as s:
        remove_user(s, name, actor)
        s.commit()
    console.print(f"Removed user {name}.")


@app.command("set-role")
@handle_errors
def users_set_role(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Login name")],
    role: Annotated[str, typer.Argument(help=ROLE_HELP)],
    hamlet: Annotated[str | None, typer.Option(help="Hamlet id (hamlet heads only)")] = None,
) -> None:
    """Change a user's role (and hamlet)."""
    state = state_of(ctx)
    actor = require(state, Permission.USERS, action="users.set-role", target=name)
    with state.session() as s:
        set_role(s, name, role, hamlet, actor)
        s.commit()
    console.print(f"{name} is now {Role(role).value}{f' of {hamlet}' if hamlet else ''}.")


@app.command("reset-token")
@handle_errors
def users_reset_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Login name")],
    token_file: Annotated[
        Path | None, typer.Option(help="Where to write the new token (mode 0600)")
    ] = None,
) -> None:
    """Issue a new token (a lost or leaked one stops working)."""
    state = state_of(ctx)
    actor = require(state, Permission.USERS, action="users.reset-token", target=name)
    with state.session() as s:
        token = reset_token(s, name, actor)
        path = _token_path(state, name, token_file, False)
        write_token_file(path, token)
        s.commit()
    console.print(_hand_over(path, name))


@app.command("whoami")
@handle_errors
def users_whoami(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Who this shell acts as, and what they may do."""
    actor = current_actor(state_of(ctx))
    perms = sorted(p.value for p in actor.permissions)
    if as_json:
        print_json(
            {"name": actor.name, "role": actor.role, "hamlet": actor.hamlet, "permissions": perms}
        )
        return
    where = f" of {actor.hamlet}" if actor.hamlet else ""
    console.print(f"{actor.name} ({actor.role}{where}): {', '.join(perms)}")
